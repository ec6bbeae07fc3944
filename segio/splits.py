"""Deterministic train/validation/test assignment from a stable hash of a name.

Used by the MADS and PH2 builders and by ``folder:`` datasets, so that a file's split depends only on its own name:
adding, removing or reordering other files never moves it (Python's ``hash`` is salted per process, so it
cannot be used).
"""

from __future__ import annotations

import hashlib

DEFAULT_SHARES = {"train": 0.8, "validation": 0.1, "test": 0.1}


def stable_fraction(text: str) -> float:
    """A number in [0, 1) that depends only on ``text``."""
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def split_for_fraction(fraction: float, shares: dict[str, float] = DEFAULT_SHARES) -> str:
    """The split whose cumulative share interval holds ``fraction`` (``shares`` in order, summing to 1)."""
    total = 0.0
    for name, share in shares.items():
        total += share
        if fraction < total:
            return name
    return name


def split_of_name(name: str, shares: dict[str, float] = DEFAULT_SHARES, salt: str = "") -> str:
    return split_for_fraction(stable_fraction(f"{salt}{name}"), shares)
