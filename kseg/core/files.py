"""Writing files so that nothing is lost or left half-written, and checking output folders up front.

Every file kseg writes goes to a temporary name in the same folder and is renamed into place (a rename is
atomic on one file system), so a crash, Ctrl-C or SIGKILL leaves the old file or the new one, never half of
one. Output folders are checked before any slow work, so a typo costs seconds, not an hour of training; an
output folder is never inside one that is read (``check_outside_inputs``), and one that a process writes
for a long time is locked against a second writer (``folder_lock``).
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import os
import pathlib
import shutil
import sys
import uuid

from kseg.core.errors import KsegError, OutputDirError

LOCK_FILE = ".kseg.lock"


class FolderLockedError(KsegError, BlockingIOError):
    """Another process is writing the folder (a training run, or its resume); the message names it."""


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


def check_outside_inputs(path, inputs: dict, flag: str = "--output-dir") -> None:
    """Fail if the output folder ``path`` is one of the folders read as inputs or lies inside one;
    ``inputs`` maps what each is (``"the dataset folder (folder:data)"``) to its path. Writing there would
    change the data (a run directory inside ``masks/`` becomes part of the dataset)."""
    output = pathlib.Path(path).resolve()
    for what, folder in inputs.items():
        if folder is None or "://" in str(folder):
            continue
        folder = pathlib.Path(folder).resolve()
        if output == folder or folder in output.parents:
            raise OutputDirError(
                f"{flag} {path} is inside {what} {folder}; kseg never writes into what it reads. Choose a "
                f"folder outside it"
            )


@contextlib.contextmanager
def folder_lock(path, holder: str):
    """Hold an exclusive lock on the folder ``path`` (created if needed) while the block runs.

    A second process that asks for the same folder gets a ``FolderLockedError`` at once, naming the holder
    (``holder`` and its pid). The lock is the operating system's (``flock`` on ``path/.kseg.lock``), so it
    is released on any exit, a crash or SIGKILL included, and never needs cleaning up. A folder this call
    created and that holds nothing but the lock afterwards is removed, so a command that fails its checks
    leaves nothing behind.
    """
    path = pathlib.Path(path)
    created = not path.exists()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputDirError(f"cannot create {path}: {e.strerror or e}") from None
    try:
        with open(path / LOCK_FILE, "a+") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                other = handle.read().strip() or "another process"
                raise FolderLockedError(
                    f"{path} is in use by {other}; wait for it to finish, or choose another folder"
                ) from None
            started = datetime.datetime.now().isoformat(timespec="seconds")
            handle.seek(0)
            handle.truncate()
            handle.write(f"{holder} (pid {os.getpid()}, started {started}, command: {' '.join(sys.argv)[:200]})\n")
            handle.flush()
            yield path
    finally:
        if created and path.is_dir() and [p.name for p in path.iterdir()] == [LOCK_FILE]:
            shutil.rmtree(path, ignore_errors=True)
