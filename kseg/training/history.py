"""``history.csv``: one row per finished epoch, written by Keras' ``CSVLogger`` (``fit``) or by the custom
loop, in the same format, and cut back to the last checkpoint when a run resumes."""

from __future__ import annotations

import csv
import io
import pathlib

from kseg.core.files import atomic_write_text

FILE_NAME = "history.csv"


def read_history(path) -> list[dict]:
    path = pathlib.Path(path)
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def truncate_history(path, epochs_done: int) -> None:
    """Drop rows of epochs that ran after the last checkpoint (they are about to run again)."""
    path = pathlib.Path(path)
    if not path.exists():
        return
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows:
        return
    kept = [rows[0]] + [r for r in rows[1:] if r and int(r[0]) < epochs_done]
    text = io.StringIO()
    csv.writer(text).writerows(kept)
    atomic_write_text(path, text.getvalue())


def append_epoch(path, epoch: int, logs: dict) -> None:
    """Add one epoch's row (``epoch`` counted from 0, as ``CSVLogger`` writes it)."""
    path = pathlib.Path(path)
    new = not path.exists()
    with open(path, "a", newline="") as f:
        writer = csv.writer(f)
        if new:
            writer.writerow(["epoch", *logs])
        writer.writerow([epoch, *(f"{v:.6f}" for v in logs.values())])
