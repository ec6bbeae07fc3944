"""Tiny instance datasets for end-to-end tests: upright "people" (bright rectangles) on noise, 1-3 an image.

Written as a ``folder:`` instance dataset (``images/`` + ``instances/`` label PNGs in ``train/``,
``validation/`` and ``test/``), which a ``unet-small`` with instance heads separates perfectly after a few
epochs at 64x96. Deterministic for a seed. Real people are in ``../shared/data/PennFudanPed`` (the builder's
tests and ``bench/instances.py``); these exist so that the train -> export -> serve path is tested in seconds.
"""

from __future__ import annotations

import pathlib

import numpy as np
from PIL import Image

SIZE = (64, 96)


def scene(rng: np.random.Generator, size=SIZE) -> tuple[np.ndarray, np.ndarray]:
    """``(rgb [H, W, 3] uint8, ids [H, W] uint8)``: people in separate quarters of the width, ids 1..n from
    the left."""
    h, w = size
    image = rng.integers(40, 90, size=(h, w, 3)).astype(np.uint8)
    ids = np.zeros((h, w), np.uint8)
    quarter = w // 4
    slots = sorted(rng.permutation(4)[: int(rng.integers(1, 4))])
    for k, slot in enumerate(slots, start=1):
        pw, ph = int(rng.integers(10, 15)), int(rng.integers(h // 2, h * 3 // 4))
        x0 = int(slot * quarter + rng.integers(0, quarter - pw + 1))
        y0 = int(rng.integers(4, h - ph - 2))
        image[y0 : y0 + ph, x0 : x0 + pw] = rng.integers(150, 255, size=3)
        ids[y0 : y0 + ph, x0 : x0 + pw] = k
    return image, ids


def write_dataset(root, counts=(("train", 32), ("validation", 8), ("test", 8)), seed: int = 0) -> pathlib.Path:
    root = pathlib.Path(root)
    rng = np.random.default_rng(seed)
    for split, count in counts:
        for folder in ("images", "instances"):
            (root / split / folder).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            image, ids = scene(rng)
            Image.fromarray(image).save(root / split / "images" / f"scene{i:03d}.png")
            Image.fromarray(ids).save(root / split / "instances" / f"scene{i:03d}.png")
    return root
