"""kseg's file helpers for the command line, and the image readers of ``segio.images`` under their old names.

The Pillow readers (``read_image``, ``read_binary_mask``, ``ImageReadError``, ...) live in ``segio.images``,
shared with the TFDS builder; they are re-exported here so that ``from kseg import imageio`` keeps working.
"""

from __future__ import annotations

import pathlib

from segio.images import (  # noqa: F401  (re-exported)
    IMAGE_SUFFIXES,
    ImageReadError,
    MaskSizeError,
    check_mask_fits,
    decode_pil,
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


def expand_inputs(inputs) -> tuple[list[pathlib.Path], list[str]]:
    """Local image files named by command-line ``inputs`` (folders expanded, not recursively, to the files
    with an image suffix), and an error line for each input that does not exist or holds no image.
    Shared by ``kseg.predict`` and ``kseg.client`` (which must not need TensorFlow, hence plain pathlib)."""
    files, errors = [], []
    for item in inputs:
        path = pathlib.Path(item)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                errors.append(f"{path}: folder holds no images ({', '.join(IMAGE_SUFFIXES)})")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            errors.append(f"{path}: no such file or folder")
    return files, errors


def output_stems(files) -> list[str]:
    """File stems for output names, made unique by prefixing the parent folder where two inputs share one."""
    stems = [pathlib.Path(f).stem for f in files]
    repeated = {s for s in stems if stems.count(s) > 1}
    return [
        f"{pathlib.Path(f).parent.name}_{pathlib.Path(f).stem}"
        if pathlib.Path(f).stem in repeated
        else pathlib.Path(f).stem
        for f in files
    ]
