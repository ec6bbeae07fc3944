"""Pieces shared by the PH2 and MADS readers: the error type, folder checks, the mask-size rule, and the
one-line error of the ``tfds build`` command."""

from __future__ import annotations

import os
import sys
import traceback

import numpy as np
from etils import epath

from segio import images

PROG = "tfds_ph2"
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


class DatasetError(ValueError):
    """The downloaded files are not what the builder expects; the message names the file or row."""


def install_error_line_hook() -> None:
    """Make an uncaught build error end with ``tfds_ph2: error: <first line of its message>`` on stderr.

    ``tfds build`` (absl's ``app.run``) lets a builder's error escape as a 40-line traceback whose last line
    is all that names the bad file, among lines of TFDS internals. The previous ``sys.excepthook`` still
    prints the traceback; this one line follows it, for ``DatasetError`` and segio's ``ImageReadError`` raised
    from this package's code only (kseg's own commands catch those and print their own line). Installing
    twice (a module imported under two names) chains once.
    """
    previous = sys.excepthook
    if getattr(previous, "tfds_ph2_error_line", False):
        return

    def hook(kind, error, trace):
        previous(kind, error, trace)
        if isinstance(error, (DatasetError, images.ImageReadError)) and _raised_here(trace):
            lines = str(error).strip().splitlines() or [kind.__name__]
            print(f"{PROG}: error: {lines[0]}", file=sys.stderr, flush=True)

    hook.tfds_ph2_error_line = True
    sys.excepthook = hook


def _raised_here(trace) -> bool:
    """Whether a traceback passes through a file of this package."""
    return any(
        os.path.abspath(frame.f_code.co_filename).startswith(_PACKAGE_DIR + os.sep)
        for frame, _ in traceback.walk_tb(trace)
    )


def require_dir(path: epath.Path, what: str, instructions: str) -> None:
    if not path.exists():
        raise DatasetError(f"{what} {path} does not exist.\n\n{instructions}")
    if not path.is_dir():
        raise DatasetError(f"{what} {path} is not a folder.\n\n{instructions}")
    if not any(path.iterdir()):
        raise DatasetError(f"{what} {path} is empty.\n\n{instructions}")


def subdirs(path: epath.Path) -> list[epath.Path]:
    return sorted((p for p in path.iterdir() if p.is_dir()), key=lambda p: p.name)


def fit_mask(mask: np.ndarray, image_shape, image_path, mask_path) -> np.ndarray:
    """``segio.images.fit_mask_to_image`` (the same rule as kseg's folder datasets), its error a ``DatasetError``."""
    try:
        return images.fit_mask_to_image(mask, image_shape, image_path, mask_path)
    except images.MaskSizeError as e:
        raise DatasetError(str(e)) from None
