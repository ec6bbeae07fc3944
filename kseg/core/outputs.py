"""The files kseg writes for a predicted mask, shared by ``kseg.predict`` and ``kseg.client`` so that a mask
looks the same whether it came from a local model or from TF Serving.

For an input ``NAME.ext`` the files are ``NAME_mask.png`` (8-bit grayscale at the image's size: 0/255 for
binary masks, so that any viewer shows them, or the class ids for multi-class masks) and
``NAME_overlay.png`` (the image with a translucent fill and a solid outline of each class).

Every PNG kseg writes carries a text chunk ``kseg-output`` (``MARKER``). That is how kseg knows its own files
without a list that could go stale: it replaces an existing file only when the file carries the marker (a
user's ``a_mask.png`` next to ``a.png`` is never overwritten), and a folder given as input skips the files
that carry it (a second run over the same folder does not predict the first run's masks).
"""

from __future__ import annotations

import errno
import io
import json
import pathlib
import re

import numpy as np
from PIL import Image, PngImagePlugin

from kseg.core.errors import FAILURE, KsegError
from kseg.core.files import atomic_write_bytes

#: The PNG text chunk that marks a file as a prediction kseg wrote (never read back as an input).
MARKER = "kseg-output"
#: The one that marks an image kseg wrote to be read as an input (``kseg.show --save-images``): kseg may
#: replace it, and folders of inputs read it.
INPUT_MARKER = "kseg-input"


class OutputExistsError(KsegError, FileExistsError):
    """An output name is taken by a file kseg did not write; that file is kept and the input is skipped."""


class DiskFullError(KsegError, OSError):
    """The output disk is full: the run stops (whole files only are left), exit status 1."""

    exit_status = FAILURE


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


def _plane(mask) -> np.ndarray:
    """A ``[H, W]`` mask from ``[H, W]`` or ``[H, W, 1]`` (never squeezing a 1-pixel side away)."""
    mask = np.asarray(mask)
    return mask[..., 0] if mask.ndim == 3 and mask.shape[-1] == 1 else mask


def mask_to_png_values(mask: np.ndarray, binary: bool) -> np.ndarray:
    """What goes into the mask PNG: 0/255 for binary masks, class ids otherwise."""
    mask = _plane(mask).astype(np.uint8)
    return mask * 255 if binary else mask


def encode_png(array: np.ndarray, what: str, marker: str = MARKER) -> bytes:
    """PNG bytes of ``array`` (uint8 ``[H, W]`` or ``[H, W, 3]``) carrying kseg's ``marker``, with ``what`` as
    its text (what the file is, for a person who finds it)."""
    info = PngImagePlugin.PngInfo()
    info.add_text(marker, what)
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def encode_mask_png(mask: np.ndarray, binary: bool, what: str = "mask") -> bytes:
    return encode_png(mask_to_png_values(mask, binary), what)


#: A JSON file kseg wrote is small; a larger one is not kseg's (and is not read to find out).
MAX_JSON_BYTES = 1 << 24


def _json_markers(path) -> set:
    """kseg's marker in a JSON file it wrote (a top-level ``"kseg-output"`` key)."""
    try:
        if pathlib.Path(path).stat().st_size > MAX_JSON_BYTES:
            return set()
        values = json.loads(pathlib.Path(path).read_text())
    except (OSError, ValueError):
        return set()
    return {MARKER} if isinstance(values, dict) and MARKER in values else set()


def _markers(path) -> set:
    """kseg's markers that the PNG at ``path`` carries (read from its header chunks only), or the JSON file."""
    if str(path).endswith(".json"):
        return _json_markers(path)
    try:
        with Image.open(path) as image:
            return {m for m in (MARKER, INPUT_MARKER) if m in image.info} if image.format == "PNG" else set()
    except Exception:  # noqa: BLE001 - anything Pillow cannot open is not kseg's
        return set()


def is_kseg_output(path) -> bool:
    """Whether the file at ``path`` is a prediction kseg wrote (a PNG carrying ``MARKER``)."""
    return MARKER in _markers(path)


def check_replaceable(path) -> None:
    """An ``OutputExistsError`` unless ``path`` is free or holds a file kseg wrote."""
    path = pathlib.Path(path)
    if (path.exists() or path.is_symlink()) and not (path.is_file() and _markers(path)):
        raise OutputExistsError(
            f"{path} exists and kseg did not write it (it carries no {MARKER} marker); it was left as it "
            f"is. Move it away or choose another output"
        )


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
    mask = _plane(mask)
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


MASK_SUFFIX = "_mask.png"
OVERLAY_SUFFIX = "_overlay.png"


def semantic_files(image: np.ndarray, mask: np.ndarray, binary: bool, source: str = "") -> dict[str, bytes]:
    """``{suffix: bytes}`` of a semantic prediction: the mask PNG and the overlay PNG."""
    of = f" of {source}" if source else ""
    return {
        MASK_SUFFIX: encode_mask_png(mask, binary, f"kseg mask{of}"),
        OVERLAY_SUFFIX: encode_png(overlay(image, mask), f"kseg overlay{of}"),
    }


def write_prediction(
    output_dir, stem: str, image: np.ndarray, mask: np.ndarray, binary: bool, source: str = ""
) -> tuple:
    """Write ``STEM_mask.png`` and ``STEM_overlay.png`` into ``output_dir``; returns both paths.

    Neither is written when either name is taken by a file kseg did not write (``OutputExistsError``).
    Each file appears whole or not at all (an interrupted run leaves no truncated PNG).
    """
    return write_files(output_dir, stem, semantic_files(image, mask, binary, source))


def write_files(output_dir, stem: str, files: dict[str, bytes]) -> tuple:
    """Write ``STEM + suffix`` for each ``{suffix: bytes}`` of ``files`` (each carries kseg's marker); returns
    the paths. None is written when any name is taken by a file kseg did not write (``OutputExistsError``)."""
    output_dir = pathlib.Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    paths = [output_dir / f"{stem}{suffix}" for suffix in files]
    for path in paths:
        check_replaceable(path)
    for path, data in zip(paths, files.values()):
        atomic_write_bytes(path, data)
    return tuple(paths)


def safe_stem(text: str) -> str:
    """A file stem from any text (an image id): letters, digits, ``.``, ``_`` and ``-`` only, no leading dot,
    never a path (``../x`` cannot leave the output folder)."""
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", text).lstrip(".") or "image"
    return stem[:200]


def is_disk_full(error: OSError) -> bool:
    return error.errno in (errno.ENOSPC, errno.EDQUOT)


class PredictionWriter:
    """Writes each input's mask and overlay and keeps the tally, the same for ``kseg.predict`` and
    ``kseg.client``: a file that cannot be written is an error line naming it and the run goes on, except a
    full disk, which stops the run (``DiskFullError``) since every later file would fail the same way."""

    def __init__(self, output_dir):
        self.output_dir = pathlib.Path(output_dir)
        self.written: list[tuple] = []
        self.errors: list[str] = []

    def write(self, source, stem: str, image: np.ndarray, mask: np.ndarray, binary: bool) -> tuple | None:
        """A semantic mask and its overlay (``write_prediction``)."""
        name = pathlib.Path(source).name
        return self._write(source, lambda: write_prediction(self.output_dir, stem, image, mask, binary, source=name))

    def write_files(self, source, stem: str, files: dict[str, bytes]) -> tuple | None:
        """Any task's files, made by the task (``{suffix: bytes}``)."""
        return self._write(source, lambda: write_files(self.output_dir, stem, files))

    def _write(self, source, write) -> tuple | None:
        try:
            paths = write()
        except OutputExistsError as e:
            self.errors.append(f"{source}: {e}")
            return None
        except OSError as e:
            if is_disk_full(e):
                raise DiskFullError(
                    f"the disk of {self.output_dir} is full ({e.strerror}) while writing the outputs of "
                    f"{source}; {len(self.written)} image(s) were written before it, each whole. Free some "
                    f"space and run again"
                ) from None
            self.errors.append(f"{source}: cannot write its outputs in {self.output_dir}: {e.strerror or e}")
            return None
        self.written.append(paths)
        return paths
