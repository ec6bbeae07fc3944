"""Pieces shared by the PH2 and MADS readers: the error type, folder checks and the mask-size rule."""

from __future__ import annotations

import numpy as np
from etils import epath

from segio import images


class DatasetError(ValueError):
    """The downloaded files are not what the builder expects; the message names the file or row."""


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
