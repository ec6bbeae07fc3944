"""Pieces shared by the PH2 and MADS readers: the error type and folder checks."""

from __future__ import annotations

from etils import epath

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
