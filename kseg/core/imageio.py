"""The image readers of ``segio.images`` under their old name.

The Pillow readers (``read_image``, ``read_binary_mask``, ``ImageReadError``, ...) live in ``segio.images``,
shared with the TFDS builder; they are re-exported here so that ``from kseg.core import imageio`` serves both.
The binary mask rule (what counts as foreground) is documented there, once.
Command-line input files and output names: ``kseg.core.inputs``.
"""

from __future__ import annotations

from segio.images import (  # noqa: F401  (re-exported)
    IMAGE_SUFFIXES,
    ImageReadError,
    MaskSizeError,
    MaskValuesError,
    check_mask_fits,
    decode_pil,
    exif_rotates,
    fit_mask_to_image,
    list_images,
    mask_fits_image,
    mask_to_binary,
    open_image,
    read_binary_mask,
    read_image,
    read_label_mask,
    resize_mask_nearest,
    to_rgb_array,
)
