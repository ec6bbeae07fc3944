"""Writing files so that nothing is lost or left half-written, and checking output folders up front.

Every file kseg writes goes to a temporary name in the same folder and is renamed into place (a rename is
atomic on one file system), so a crash, Ctrl-C or SIGKILL leaves the old file or the new one, never half of
one. Output folders are checked before any slow work, so a typo costs seconds, not an hour of training.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import uuid

from kseg.errors import OutputDirError


def atomic_write_bytes(path, data: bytes, *, sync: bool = False) -> pathlib.Path:
    """Write ``data`` to ``path`` through a temporary sibling and a rename; ``sync`` also flushes to disk."""
    path = pathlib.Path(path)
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(temporary, "wb") as f:
            f.write(data)
            if sync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(temporary, path)
    finally:
        if temporary.exists():
            temporary.unlink()
    return path


def atomic_write_text(path, text: str, *, sync: bool = False) -> pathlib.Path:
    return atomic_write_bytes(path, text.encode("utf-8"), sync=sync)


def check_output_dir(path, flag: str = "--output-dir") -> pathlib.Path:
    """Fail now if ``path`` could not be created or written; creates nothing (a refused command leaves no
    empty folder behind). Root ignores permission bits, so only what root too would hit is caught there."""
    path = pathlib.Path(path)
    if path.exists() and not path.is_dir():
        raise OutputDirError(f"{flag} {path} is an existing file, not a folder; choose a folder")
    existing = path
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if not existing.is_dir():
        raise OutputDirError(f"{flag} {path} is not writable: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputDirError(f"{flag} {path} is not writable ({existing}: permission denied)")
    return path


def make_output_dir(path, flag: str = "--output-dir", needed_bytes: int = 0) -> pathlib.Path:
    """Create ``path`` and prove it writable with a small probe file; optionally check free space."""
    path = check_output_dir(path, flag)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{uuid.uuid4().hex[:8]}"
        probe.write_bytes(b"x" * 1024)
        probe.unlink()
    except OSError as e:
        raise OutputDirError(f"{flag} {path} is not writable: {e.strerror or e}") from None
    if needed_bytes:
        free = shutil.disk_usage(path).free
        if free < needed_bytes:
            raise OutputDirError(
                f"{flag} {path} has {free / 2**20:.0f} MiB free; this needs about {needed_bytes / 2**20:.0f} MiB"
            )
    return path
