"""Reading images and masks from files, with errors that name the file.

TensorFlow cannot decode 1-bit BMPs (PH2's masks) nor report which file is truncated, so every file-based
reader (the TFDS builder, kseg's folder datasets, prediction) goes through Pillow here. Files are opened
with ``tf.io.gfile`` so that the same code reads local paths, cloud buckets and TFDS's mocked file system;
TensorFlow is imported only when a file is read, so importing this module stays cheap.

Images come out as every viewer shows them: the EXIF orientation of phone photos is applied (to images
and masks alike, so the two stay aligned), and images of more than 8 bits are scaled by their real range
(``to_rgb_array``), never read as black.

The binary mask rule
--------------------
Every binary mask kseg reads (the TFDS builder's PH2 and MADS readers, kseg's folder datasets, and so
training, evaluation and ``kseg.show``) goes through ``mask_to_binary``. A mask is read by the values it
holds, not by the range of its file's pixel type: 0/255 in a 16-bit PNG, 0/100 and 0/1 are all common, and
all mean background/foreground.

1. Colour channels are collapsed with their maximum (an alpha channel counts only where the colour channels
   are all blank); 1-bit, palette, grey, 16-bit, 32-bit and float masks are read as the values they hold.
2. One value: the whole mask is foreground if that value is above 0, else it is empty.
3. Two values: the larger is foreground, whatever the two are (0/1, 0/100, 0/255, 0/65535, ...).
4. More values are taken for a two-level mask blurred by lossy compression (JPEG) or anti-aliased edges,
   and split at Otsu's threshold, when they are clustered at two levels (the medians on either side of the
   threshold): at most 10% of the pixels may lie more than a quarter of the gap away from both levels.
5. A lossless file (anything but JPEG and WebP) with areas of a third value (a pixel and its four neighbours
   alike, over 0.1% of the pixels, more than 1/16 of the gap away from both levels) holds class ids or a
   trimap, not two levels blurred.

Anything else (rules 4 and 5 failing, NaN or infinite values) is a ``MaskValuesError`` naming the file and
the values found, with ``--num-classes K`` suggested where the values can be class ids (small integers in
a single-channel lossless file; K is the largest id + 1, since ids must be below K). The old rule, a
threshold at half of the pixel type's range, read 0/255 in 16 bits, 0/100 and a 0/1 JPEG as empty, and class
ids as empty or as one class, all silently.
"""

from __future__ import annotations

import io
import re

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

#: File name endings read as images (case-insensitive).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff")

#: Pillow formats that may change pixel values when they store them: their masks are never class ids.
LOSSY_FORMATS = ("JPEG", "MPO", "WEBP", "JPEG2000")

#: Rule 4: the largest share of pixels that may lie between a mask's two levels.
MAX_BETWEEN_SHARE = 0.10
#: Rule 5: the largest share of pixels that may form areas of a third value in a lossless mask.
MAX_THIRD_LEVEL_SHARE = 0.001
#: A lossless mask with at most this many distinct values has no noise: each value is a level of its own.
FEW_LEVELS = 8

#: The largest mask value an error suggests reading as a class id (``--num-classes``).
MAX_HINTED_ID = 31

#: Integer images of more than 8 bits are scaled by the first of these at or above their maximum
#: (8-bit data stored in 16 bits, 10-bit, 12-bit and 16-bit sensors).
INTEGER_RANGES = (255, 1023, 4095, 65535)

_SINGLE_CHANNEL_INTEGER_MODES = ("I", "I;16", "I;16L", "I;16B", "I;16N")
#: Modes whose arrays ``mask_to_binary`` reads as they are; others are converted to RGB(A) first.
_DIRECT_MASK_MODES = ("1", "L", "LA", "RGB", "RGBA", "F", *_SINGLE_CHANNEL_INTEGER_MODES)
#: Modes ``read_label_mask`` accepts: the ones a ``--num-classes`` hint may be given for.
_LABEL_MODES = ("L", "P", "1", "I;16", "I")


class ImageReadError(ValueError):
    """A file could not be read as an image; the message names the file and the reason."""


class MaskValuesError(ImageReadError):
    """A mask read as binary holds values that are not two levels (class ids, a trimap, a grey picture);
    the message names the file, the values found and what to do."""


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
    """Decode encoded image bytes with Pillow; ``source`` names them in errors.

    The image comes back as stored (EXIF orientation not applied, so ``exif_rotates`` can still see it);
    ``to_rgb_array`` and the mask readers turn it upright.
    """
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        # The warning arrives here only where warnings are errors (python -W error); either way one huge
        # file must be one named error, so that kseg.predict skips it like any unreadable file.
        raise ImageReadError(_bomb_message(source, e)) from None
    except UnidentifiedImageError as e:
        raise ImageReadError(f"{source}: not a recognised image format (expected PNG, JPEG, BMP, GIF or TIFF)") from e
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageReadError(f"{source}: cannot decode image ({e}); the file may be truncated or corrupt") from e
    return image


def _bomb_message(source: str, error: Exception) -> str:
    numbers = re.findall(r"\d+", str(error))
    if len(numbers) >= 2:
        pixels, limit = (int(n) for n in numbers[:2])
        return (
            f"{source}: {pixels} pixels, more than Pillow's decompression-bomb limit of {limit} pixels; "
            f"expected a smaller image (resize it, or split it into tiles)"
        )
    return f"{source}: refused by Pillow's decompression-bomb guard ({error}); expected a smaller image"


# ------------------------------------------------------------------------------------ orientation ---


def exif_rotates(image: Image.Image) -> bool:
    """Whether the EXIF orientation of ``image`` (as ``decode_pil`` returns it) turns or flips its pixels
    when shown. Phone photos are often stored sideways with such a tag; decoders that ignore it (TensorFlow's,
    hence TF Serving's) see another picture than every viewer, and than the masks drawn on it."""
    try:
        orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
    except Exception:  # noqa: BLE001  (unreadable EXIF: shown as stored, as viewers do)
        return False
    return orientation in (2, 3, 4, 5, 6, 7, 8)


def _upright(image: Image.Image) -> Image.Image:
    """``image`` as viewers show it: its EXIF orientation applied (no copy when there is none)."""
    return ImageOps.exif_transpose(image) if exif_rotates(image) else image


# ----------------------------------------------------------------------------------------- images ---


def to_rgb_array(image: Image.Image, source: str = "<image>") -> np.ndarray:
    """``uint8`` array of shape ``(H, W, 3)`` from any Pillow image (1-bit, grayscale, palette, RGBA, 16-bit,
    32-bit, float), upright (EXIF orientation applied).

    Grey images of more than 8 bits are scaled by their real range (``_grey_to_uint8``): dividing 8-bit
    values stored in 16 bits by 65535, or floats in [0, 1] by nothing, gives a black picture.
    """
    image = _upright(image)
    if image.mode in ("F", *_SINGLE_CHANNEL_INTEGER_MODES):
        return np.repeat(_grey_to_uint8(np.asarray(image), image.mode, source)[..., None], 3, axis=-1)
    if image.mode != "RGB":
        try:
            image = image.convert("RGB")
        except ValueError as e:
            raise ImageReadError(f"{source}: cannot convert mode {image.mode} to RGB ({e})") from None
    return np.asarray(image, dtype=np.uint8)


def _grey_to_uint8(array: np.ndarray, mode: str, source: str) -> np.ndarray:
    """8-bit values of a float or wide-integer grey image.

    Floats in [0, 1] are scaled by 255 and floats in [0, 255] kept; integers are scaled by the first of
    ``INTEGER_RANGES`` at or above their maximum (a dark 16-bit image whose maximum is below 4096 is taken
    for 12-bit data and brightened: stored 8-, 10- and 12-bit data is far commoner). Anything else is an
    ``ImageReadError`` naming the range found.
    """
    array = array.astype(np.float64)
    if array.size == 0:
        return np.zeros(array.shape, np.uint8)
    if not np.isfinite(array).all():
        raise ImageReadError(f"{source}: image of mode {mode} holds NaN or infinite values; expected finite values")
    low, high = float(array.min()), float(array.max())
    if mode == "F":
        if low < 0 or high > 255:
            raise ImageReadError(
                f"{source}: float image with values from {low:g} to {high:g}; expected values in [0, 1] "
                f"(scaled to 0-255) or in [0, 255]"
            )
        scale = 255.0 if high <= 1 else 1.0
    else:
        if low < 0 or high > INTEGER_RANGES[-1]:
            raise ImageReadError(
                f"{source}: integer image (mode {mode}) with values from {low:g} to {high:g}; expected values "
                f"in [0, {INTEGER_RANGES[-1]}]"
            )
        scale = 255.0 / next(r for r in INTEGER_RANGES if r >= high)
    return np.clip(np.round(array * scale), 0, 255).astype(np.uint8)


def read_image(path) -> np.ndarray:
    """The image at ``path`` as ``uint8`` ``(H, W, 3)``, upright."""
    return to_rgb_array(open_image(path), source=str(path))


# ------------------------------------------------------------------------------------------ masks ---


def mask_to_binary(image: Image.Image, source: str = "<mask>") -> np.ndarray:
    """``uint8`` ``(H, W)`` array with values {0, 1} from a mask image of any mode, upright, by the binary
    mask rule of this module's docstring:

    one value: foreground iff above 0; two values: the larger is foreground, whatever they are; more values:
    split at Otsu's threshold if they cluster at two levels (JPEG noise, anti-aliased edges), else (or, in
    a lossless file, with areas of a third value, as class ids and trimaps have) a ``MaskValuesError``
    naming ``source`` and the values found.

    The rule looks at values, not at the pixel type, because a mask's pixel type says little: 0/255 stored
    in 16 bits, 0/100 and 0/1 were all read as empty by a threshold at half the type's range.
    """
    lossy = image.format in LOSSY_FORMATS  # read before _upright, which returns an image without a format
    image = _upright(image)
    values = _mask_values(image, source)
    levels, counts = _histogram(values)
    if levels.size <= 2:
        foreground = values > 0 if levels.size < 2 else values == levels[-1]
        return foreground.astype(np.uint8)
    threshold, low, high = otsu_levels(levels, counts)
    if not lossy:
        # A few exact values (0/1/255: a mask with a VOC-style "ignore" border) are each a level of their own;
        # only a mask of many values (a PNG saved from a JPEG) has near-level noise to tolerate.
        tolerance = 0.0 if levels.size <= FEW_LEVELS else (high - low) / 16
        _refuse_third_level(values, low, high, tolerance, image, source)
    _refuse_spread(levels, counts, low, high, image, lossy, source)
    return (values > threshold).astype(np.uint8)


def _mask_values(image: Image.Image, source: str) -> np.ndarray:
    """The 2-D values of a mask (rule 1): colour collapsed with its maximum; the alpha channel instead where the
    colour channels hold one value and alpha several (masks drawn as opacity: blank or white cut-outs)."""
    if image.mode not in _DIRECT_MASK_MODES:
        with_alpha = image.mode in ("PA", "La", "RGBa") or "transparency" in image.info
        try:
            image = image.convert("RGBA" if with_alpha else "RGB")
        except ValueError as e:
            raise ImageReadError(f"{source}: cannot read a mask of mode {image.mode} ({e})") from None
    array = np.asarray(image)
    if array.ndim == 3:
        has_alpha = image.mode in ("RGBA", "LA")
        colour = array[..., :-1] if has_alpha else array
        if has_alpha and np.ptp(colour) == 0 and np.ptp(array[..., -1]) > 0:
            colour = array[..., -1:]
        array = colour.max(axis=-1)
    if array.dtype == bool:
        return array.astype(np.uint8)
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise MaskValuesError(f"{source}: the mask holds NaN or infinite values; expected two finite values")
    return array


def _histogram(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct ``values`` in increasing order and their counts (``np.bincount`` for 8- and 16-bit masks:
    it does not sort, which matters for a 12-megapixel photo's mask)."""
    if values.dtype.kind == "u" and values.dtype.itemsize <= 2:
        counts = np.bincount(values.ravel(), minlength=1)
        levels = np.flatnonzero(counts)
        return levels, counts[levels]
    return np.unique(values, return_counts=True)


def otsu_levels(levels: np.ndarray, counts: np.ndarray) -> tuple[float, float, float]:
    """``(threshold, low, high)`` for a histogram of at least two ``levels``: Otsu's threshold (halfway between
    the two neighbouring levels that split the pixels into the two groups of largest between-group variance)
    and the median of each group, the two levels a blurred two-level mask was made of."""
    levels = levels.astype(np.float64)
    total = counts.sum()
    below = np.cumsum(counts)[:-1] / total  # share of pixels at or below each candidate split
    below_sum = np.cumsum(counts * levels)[:-1] / total
    mean = below_sum[-1] + counts[-1] * levels[-1] / total
    between = (mean * below - below_sum) ** 2 / (below * (1 - below))
    split = int(np.argmax(between)) + 1
    median = lambda lv, c: float(lv[np.searchsorted(np.cumsum(c), c.sum() / 2)])
    low, high = median(levels[:split], counts[:split]), median(levels[split:], counts[split:])
    return (levels[split - 1] + levels[split]) / 2, low, high


def _refuse_third_level(
    values: np.ndarray, low: float, high: float, tolerance: float, image: Image.Image, source: str
) -> None:
    """Rule 5: in a lossless file, flat areas away from both levels are a third level (class ids, a trimap,
    an "ignore" value).

    Anti-aliased edges have no such areas (their values change from pixel to pixel across the edge); in a
    mask of many values, values within ``tolerance`` of a level (a PNG saved from a JPEG) are that level.
    """
    flat = (np.abs(values - low) > tolerance) & (np.abs(values - high) > tolerance)
    flat[1:] &= values[1:] == values[:-1]
    flat[:-1] &= values[:-1] == values[1:]
    flat[:, 1:] &= values[:, 1:] == values[:, :-1]
    flat[:, :-1] &= values[:, :-1] == values[:, 1:]
    if np.count_nonzero(flat) <= MAX_THIRD_LEVEL_SHARE * values.size:
        return
    third = np.unique(values[flat])
    raise MaskValuesError(
        f"{source}: not a binary mask: it holds {_values_listed(values)}, with areas of {_values_listed(third, 3)} "
        f"besides its two levels {low:g} and {high:g}, as class ids and trimaps do; "
        f"{_class_id_hint(image, lossy=False)}a binary mask holds two values (e.g. 0 and 255)"
    )


def _refuse_spread(levels, counts, low: float, high: float, image: Image.Image, lossy: bool, source: str) -> None:
    """Rule 4: JPEG noise and anti-aliased edges leave most pixels near one of two levels."""
    quarter = (high - low) / 4
    between = counts[(levels > low + quarter) & (levels < high - quarter)].sum() / counts.sum()
    if between <= MAX_BETWEEN_SHARE:
        return
    raise MaskValuesError(
        f"{source}: not a binary mask: {between:.0%} of its pixels lie between its two levels {low:g} and "
        f"{high:g} (it holds {_values_listed(levels)}), expected at most {MAX_BETWEEN_SHARE:.0%} (anti-aliased "
        f"edges, JPEG noise); {_class_id_hint(image, lossy)}a binary mask holds two values (e.g. 0 and 255)"
    )


def _values_listed(values: np.ndarray, shown: int = 6) -> str:
    """``values 0, 1, 2`` or ``1043 values from 0 to 255``."""
    levels = np.unique(values)
    text = lambda v: f"{float(v):g}"
    if levels.size <= shown:
        return f"the value{'s' if levels.size > 1 else ''} {', '.join(text(v) for v in levels)}"
    return f"{levels.size} values from {text(levels[0])} to {text(levels[-1])}"


def _class_id_hint(image: Image.Image, lossy: bool) -> str:
    """What to pass if the mask's values can be class ids: small integers (at most ``MAX_HINTED_ID``) in a
    lossless single-channel image that ``read_label_mask`` reads (palette masks by index); else nothing. A
    trimap's 0/128/255 would need 256 classes: that is no advice."""
    if lossy or image.mode not in _LABEL_MODES:
        return ""
    ids = np.asarray(image)
    if ids.max(initial=0) > MAX_HINTED_ID:
        return ""
    count = int(ids.max()) + 1
    return f"if they are class ids pass --num-classes {count} (ids 0 to {count - 1}); "


def read_binary_mask(path) -> np.ndarray:
    """The mask at ``path`` as ``uint8`` ``(H, W)`` with values {0, 1}, by the binary mask rule (module
    docstring); a ``MaskValuesError`` names a file that holds something else."""
    return mask_to_binary(open_image(path), source=str(path))


def read_label_mask(path) -> np.ndarray:
    """A multi-class mask stored as integer class ids (grayscale or palette PNG) as ``uint8`` ``(H, W)``,
    upright."""
    image = _upright(open_image(path))
    if image.mode not in _LABEL_MODES:
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
