"""Reading images and masks from files, with errors that name the file.

TensorFlow cannot decode 1-bit BMPs (PH2's masks) nor report which file is truncated, so every file-based
reader (the TFDS builder, kseg's folder datasets, prediction) goes through Pillow here. Files are opened
with ``tf.io.gfile`` so that the same code reads local paths, cloud buckets and TFDS's mocked file system;
TensorFlow is imported only when a file is read, so importing this module stays cheap.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, UnidentifiedImageError

#: File name endings read as images (case-insensitive).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff")


class ImageReadError(ValueError):
    """A file could not be read as an image; the message names the file and the reason."""


def _read_bytes(path) -> bytes:
    import tensorflow as tf  # deferred: importing TF costs seconds and most callers already have it

    try:
        with tf.io.gfile.GFile(str(path), "rb") as f:
            return f.read()
    except tf.errors.NotFoundError as e:
        raise ImageReadError(f"{path}: file not found") from e
    except tf.errors.OpError as e:
        raise ImageReadError(f"{path}: cannot read file ({e.message})") from e


def open_image(path) -> Image.Image:
    """Open and fully decode an image with Pillow, so truncated files fail here and not later."""
    data = _read_bytes(path)
    if not data:
        raise ImageReadError(f"{path}: file is empty, expected an encoded image (PNG, JPEG, BMP, ...)")
    return decode_pil(data, source=str(path))


def decode_pil(data: bytes, source: str = "<bytes>") -> Image.Image:
    """Decode encoded image bytes with Pillow; ``source`` names them in errors."""
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except UnidentifiedImageError as e:
        raise ImageReadError(f"{source}: not a recognised image format (expected PNG, JPEG, BMP, GIF or TIFF)") from e
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageReadError(f"{source}: cannot decode image ({e}); the file may be truncated or corrupt") from e
    return image


def to_rgb_array(image: Image.Image) -> np.ndarray:
    """``uint8`` array of shape ``(H, W, 3)`` from any Pillow image (1-bit, grayscale, palette, RGBA, 16-bit)."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if image.mode.startswith("I;16") or array.max(initial=0) > 255 else 255.0
        array = np.clip(np.round(array * (255.0 / peak)), 0, 255).astype(np.uint8)
        return np.repeat(array[..., None], 3, axis=-1)
    if image.mode != "RGB":
        image = image.convert("RGB")
    return np.asarray(image, dtype=np.uint8)


def read_image(path) -> np.ndarray:
    """The image at ``path`` as ``uint8`` ``(H, W, 3)``."""
    return to_rgb_array(open_image(path))


def mask_to_binary(image: Image.Image, source: str = "<mask>") -> np.ndarray:
    """``uint8`` ``(H, W)`` array with values {0, 1} from a mask image of any mode.

    Colour masks are collapsed with the maximum over the colour channels (an alpha channel is ignored
    unless the colour channels are blank); masks already stored as {0, 1} stay as they are, anything with
    larger values is thresholded at half of its range.
    """
    if image.mode == "1":
        return np.asarray(image, dtype=np.uint8)
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    array = np.asarray(image)
    if array.ndim == 3:
        has_alpha = image.mode in ("RGBA", "LA", "PA")
        colour = array[..., :-1] if has_alpha else array
        if has_alpha and colour.max(initial=0) == 0:
            colour = array[..., -1:]
        array = colour.max(axis=-1)
    if array.dtype == bool:
        return array.astype(np.uint8)
    peak = array.max(initial=0)
    if peak <= 1:
        return array.astype(np.uint8)
    full_scale = 65535 if array.dtype == np.uint16 or peak > 255 else 255
    return (array > full_scale // 2).astype(np.uint8)


def read_binary_mask(path) -> np.ndarray:
    """The mask at ``path`` as ``uint8`` ``(H, W)`` with values {0, 1}."""
    return mask_to_binary(open_image(path), source=str(path))


def read_label_mask(path) -> np.ndarray:
    """A multi-class mask stored as integer class ids (grayscale or palette PNG) as ``uint8`` ``(H, W)``."""
    image = open_image(path)
    if image.mode not in ("L", "P", "1", "I;16", "I"):
        raise ImageReadError(
            f"{path}: multi-class masks must be single-channel images of class ids (mode L, P or I;16), "
            f"got mode {image.mode}"
        )
    array = np.asarray(image)
    if array.max(initial=0) > 255:
        raise ImageReadError(f"{path}: class ids above 255 are not supported (max {array.max()})")
    return array.astype(np.uint8)


def resize_mask_nearest(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest-neighbour resize of a 2-D label mask (values are labels, so never interpolated)."""
    resized = Image.fromarray(mask).resize((width, height), Image.NEAREST)
    return np.asarray(resized, dtype=mask.dtype)


class MaskSizeError(ImageReadError):
    """A mask's size does not fit its image's; the message names both files and sizes."""


def mask_fits_image(mask_size: tuple[int, int], image_size: tuple[int, int]) -> bool:
    """Whether a ``(height, width)`` mask can stand for an image of ``(height, width)``: the same size, or the
    same aspect ratio within one pixel, i.e. one is the other scaled by a single factor with each side
    within one pixel of exact (stored at another scale, sides rounded or cropped to whole pixels).

    The pixel is one of the smaller of the two, where the rounding happened.
    """
    mask_size, image_size = tuple(mask_size), tuple(image_size)
    if mask_size == image_size:
        return True
    (small_h, small_w), (large_h, large_w) = sorted((mask_size, image_size), key=lambda s: s[0] * s[1])
    if min(small_h, small_w, large_h, large_w) < 1:
        return False
    # The scale factors that bring each large side within one pixel of the small side must overlap.
    low = max((small_h - 1) / large_h, (small_w - 1) / large_w)
    high = min((small_h + 1) / large_h, (small_w + 1) / large_w)
    return low <= high + 1e-12


def check_mask_fits(mask_size, image_size, image_path, mask_path) -> None:
    """Raise a ``MaskSizeError`` naming both files and sizes unless a mask of ``(height, width)`` ``mask_size``
    can stand for its image of ``image_size`` (``mask_fits_image``)."""
    (mask_height, mask_width), (height, width) = tuple(mask_size)[:2], tuple(image_size)[:2]
    if not mask_fits_image((mask_height, mask_width), (height, width)):
        raise MaskSizeError(
            f"{mask_path} is {mask_width}x{mask_height} but its image {image_path} is {width}x{height}: "
            f"expected the same size, or the same aspect ratio within one pixel (a mask stored at another scale)"
        )


def fit_mask_to_image(mask: np.ndarray, image_shape, image_path, mask_path) -> np.ndarray:
    """``mask`` (2-D labels) at the height and width of ``image_shape``: unchanged when the sizes agree,
    resized with nearest neighbour when the aspect ratios agree within one pixel (``mask_fits_image``).

    Anything else is a ``MaskSizeError`` naming both files and their sizes: stretching a mask of another
    shape over its image would silently misplace every label. The TFDS builder (PH2, MADS) and kseg's
    folder datasets all go through here, so one rule holds everywhere.
    """
    height, width = (int(s) for s in tuple(image_shape)[:2])
    if mask.shape[:2] == (height, width):
        return mask
    check_mask_fits(mask.shape[:2], (height, width), image_path, mask_path)
    return resize_mask_nearest(mask, height, width)


def list_images(folder) -> list:
    """Image files directly inside ``folder``, sorted by name."""
    import tensorflow as tf

    names = sorted(tf.io.gfile.listdir(str(folder)))
    return [f"{str(folder).rstrip('/')}/{n}" for n in names if n.lower().endswith(IMAGE_SUFFIXES)]
