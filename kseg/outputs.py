"""The files kseg writes for a predicted mask, shared by ``kseg.predict`` and ``kseg.client`` so that a mask
looks the same whether it came from a local model or from TF Serving.

For an input ``NAME.ext`` the files are ``NAME_mask.png`` (8-bit grayscale at the image's size: 0/255 for
binary masks, so that any viewer shows them, or the class ids for multi-class masks) and
``NAME_overlay.png`` (the image with a translucent fill and a solid outline of each class).
"""

from __future__ import annotations

import io
import pathlib

import numpy as np
from PIL import Image

from kseg.files import atomic_write_bytes

#: Fill and outline colours of classes 1, 2, ... in overlays (class 0 is background).
CLASS_COLOURS = np.array(
    [
        (255, 23, 68),
        (41, 121, 255),
        (255, 196, 0),
        (0, 230, 118),
        (213, 0, 249),
        (0, 229, 255),
        (255, 109, 0),
        (118, 255, 3),
    ],
    dtype=np.float32,
)
FILL_ALPHA = 0.35


def mask_to_png_values(mask: np.ndarray, binary: bool) -> np.ndarray:
    """What goes into the mask PNG: 0/255 for binary masks, class ids otherwise."""
    mask = np.asarray(mask).squeeze().astype(np.uint8)
    return mask * 255 if binary else mask


def encode_mask_png(mask: np.ndarray, binary: bool) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(mask_to_png_values(mask, binary), mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def decode_mask_png(data: bytes, binary: bool) -> np.ndarray:
    """The inverse of ``encode_mask_png``: {0, 1} (binary) or class ids as uint8 ``[H, W]``."""
    array = np.asarray(Image.open(io.BytesIO(data)).convert("L"))
    return (array > 127).astype(np.uint8) if binary else array.astype(np.uint8)


def _outline(region: np.ndarray) -> np.ndarray:
    """Pixels of ``region`` with a 4-neighbour outside it (the image border counts as outside)."""
    padded = np.pad(region, 1, constant_values=False)
    interior = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return region & ~interior


def overlay(image: np.ndarray, mask: np.ndarray, thickness: int = 2) -> np.ndarray:
    """uint8 ``[H, W, 3]``: ``image`` with each class filled translucently and outlined."""
    result = np.asarray(image, dtype=np.float32).copy()
    mask = np.asarray(mask).squeeze()
    if mask.shape != result.shape[:2]:
        raise ValueError(f"mask shape {mask.shape} differs from image shape {result.shape[:2]}")
    for class_id in np.unique(mask):
        if class_id == 0:
            continue
        colour = CLASS_COLOURS[(int(class_id) - 1) % len(CLASS_COLOURS)]
        region = mask == class_id
        result[region] = (1 - FILL_ALPHA) * result[region] + FILL_ALPHA * colour
        edge = _outline(region)
        for _ in range(thickness - 1):
            edge |= _outline(region & ~edge)
        result[edge] = colour
    return np.clip(np.round(result), 0, 255).astype(np.uint8)


def write_prediction(output_dir, stem: str, image: np.ndarray, mask: np.ndarray, binary: bool) -> tuple:
    """Write ``STEM_mask.png`` and ``STEM_overlay.png`` into ``output_dir``; returns both paths."""
    output_dir = pathlib.Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    mask_path = output_dir / f"{stem}_mask.png"
    overlay_path = output_dir / f"{stem}_overlay.png"
    buffer = io.BytesIO()
    Image.fromarray(overlay(image, mask)).save(buffer, format="PNG")
    # Each file appears whole or not at all (an interrupted run leaves no truncated PNG).
    atomic_write_bytes(mask_path, encode_mask_png(mask, binary))
    atomic_write_bytes(overlay_path, buffer.getvalue())
    return mask_path, overlay_path
