"""Writes ``tfds_ph2/dummy_data/PennFudanPed/``: a tiny fake Penn-Fudan download for the builder's unit tests.

Six street-like pictures (2 ``FudanPed``, 4 ``PennPed``) in the release's layout: RGB PNGs in ``PNGImages/``,
8-bit instance masks in ``PedMasks/`` (0 background, k = pedestrian k, a later pedestrian occluding an earlier
one) and PASCAL Annotation 1.00 box files in ``Annotation/``, word for word in the release's format. Like the
real data, the boxes are the masks' extents (1-based, inclusive) except one drawn 2 pixels wider, and both
``PASpersonWalking`` and ``PASpersonStanding`` occur; ``PennPed00004`` shows nobody (an empty mask and a box
file without boxes), which the real release lacks but any copy may have.

Run from the repository root: ``python tfds_ph2/make_pennfudan_dummy.py`` (deterministic output; it rewrites
only ``dummy_data/PennFudanPed/``).
"""

from __future__ import annotations

import pathlib
import shutil

import numpy as np
from PIL import Image

OUT = pathlib.Path(__file__).resolve().parent / "dummy_data" / "PennFudanPed"

#: ``(name, (height, width), pedestrians)``; a pedestrian is ``(x centre, feet y, height, label)``, drawn in
#: order so that a later one occludes an earlier one.
SCENES = [
    ("FudanPed00001", (96, 128), [(40, 88, 60, "PASpersonWalking"), (88, 90, 64, "PASpersonWalking")]),
    ("FudanPed00002", (104, 120), [(60, 96, 72, "PASpersonStanding")]),
    (
        "PennPed00001",
        (88, 144),
        [(30, 80, 52, "PASpersonWalking"), (44, 84, 56, "PASpersonWalking"), (110, 82, 54, "PASpersonStanding")],
    ),
    ("PennPed00002", (96, 112), [(56, 90, 66, "PASpersonWalking")]),
    ("PennPed00003", (80, 136), [(36, 74, 48, "PASpersonStanding"), (100, 76, 50, "PASpersonWalking")]),
    ("PennPed00004", (84, 120), []),
]
#: ``(name, object)`` whose box is drawn 2 pixels wider on the right than its mask (the real data has 16 such).
WIDER_BOX = ("PennPed00001", 3)


def street(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """Sky, a building front with windows, a pavement and a road, with a little sensor noise."""
    yy, xx = np.mgrid[:height, :width]
    image = np.zeros((height, width, 3), np.float32)
    horizon, kerb = int(height * 0.35), int(height * 0.8)
    sky = np.array([150, 180, 215], np.float32) + (yy[..., None] / height) * np.array([40, 30, 10], np.float32)
    image[:] = sky
    wall = np.array(rng.choice([[170, 120, 95], [185, 175, 160], [140, 140, 150]]), np.float32)
    building = yy >= int(height * 0.08)
    image[building] = wall
    windows = building & (yy < horizon + 10) & ((yy // 9) % 2 == 1) & ((xx // 11) % 3 == 1)
    image[windows] = [60, 75, 95]
    image[yy >= horizon + 14] = [175, 170, 160]  # pavement
    image[(yy >= horizon + 14) & ((xx + yy) % 16 == 0)] = [150, 145, 138]  # paving joints
    image[yy >= kerb] = [85, 85, 90]  # road
    image += rng.normal(0, 3, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def pedestrian(height: int, width: int, cx: int, feet: int, tall: int, walking: bool) -> np.ndarray:
    """Boolean silhouette: head, torso, arms and two legs (apart when walking)."""
    yy, xx = np.mgrid[:height, :width]
    head_r = tall / 14
    head_y = feet - tall + head_r
    shape = ((yy - head_y) / head_r) ** 2 + ((xx - cx) / (head_r * 0.85)) ** 2 <= 1
    shoulders, hips = feet - tall * 0.82, feet - tall * 0.45
    half = tall * 0.11 * (1 - 0.25 * (yy - shoulders) / (hips - shoulders))
    shape |= (yy >= shoulders) & (yy <= hips) & (np.abs(xx - cx) <= half)
    arm = tall * 0.035
    shape |= (yy >= shoulders) & (yy <= hips + tall * 0.05) & (np.abs(np.abs(xx - cx) - tall * 0.13) <= arm)
    spread = 0.12 if walking else 0.04
    for side in (-1, 1):
        leg_x = cx + side * tall * (0.05 + spread * (yy - hips) / (feet - hips))
        shape |= (yy >= hips) & (yy <= feet) & (np.abs(xx - leg_x) <= tall * 0.04)
    return shape


def annotation(name: str, width: int, height: int, labels: list[str], boxes: list[tuple]) -> str:
    """A box file in the release's exact wording (PASCAL Annotation 1.00, corners counted from (1, 1))."""
    quoted = " ".join(f'"{label}"' for label in labels)
    lines = [
        "# Compatible with PASCAL Annotation Version 1.00",
        f'Image filename : "PennFudanPed/PNGImages/{name}.png"',
        f"Image size (X x Y x C) : {width} x {height} x 3",
        'Database : "The Penn-Fudan-Pedestrian Database"',
        f"Objects with ground truth : {len(labels)} {{ {quoted}{' ' if labels else ''}}}",
        "# Note there may be some objects not included in the ground truth list for they are severe-occluded",
        "# or have very small size.",
        "# Top left pixel co-ordinates : (1, 1)",
    ]
    for k, (label, (x0, y0, x1, y1)) in enumerate(zip(labels, boxes), start=1):
        lines += [
            f'# Details for pedestrian {k} ("{label}")',
            f'Original label for object {k} "{label}" : "PennFudanPed"',
            f'Bounding box for object {k} "{label}" (Xmin, Ymin) - (Xmax, Ymax) : ({x0}, {y0}) - ({x1}, {y1})',
            f'Pixel mask for object {k} "{label}" : "PennFudanPed/PedMasks/{name}_mask.png"',
            "",
        ]
    return "\n".join(lines) + "\n"


def write_pennfudan(root: pathlib.Path, seed: int = 20261203) -> None:
    """Write the six dummy cases under ``root`` (``PNGImages/``, ``PedMasks/``, ``Annotation/``)."""
    rng = np.random.default_rng(seed)
    for folder in ("PNGImages", "PedMasks", "Annotation"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for name, (height, width), people in SCENES:
        image = street(height, width, rng)
        mask = np.zeros((height, width), np.uint8)
        for k, (cx, feet, tall, label) in enumerate(people, start=1):
            shape = pedestrian(height, width, cx, feet, tall, walking=label == "PASpersonWalking")
            tone = rng.integers(20, 200, 3)
            clothes = np.clip(tone + rng.normal(0, 6, (height, width, 3)), 0, 255).astype(np.uint8)
            image[shape] = clothes[shape]
            mask[shape] = k
        boxes = []
        for k in range(1, len(people) + 1):
            rows, cols = np.flatnonzero((mask == k).any(axis=1)), np.flatnonzero((mask == k).any(axis=0))
            x0, y0, x1, y1 = cols[0] + 1, rows[0] + 1, cols[-1] + 1, rows[-1] + 1
            if (name, k) == WIDER_BOX:
                x1 = min(x1 + 2, width)
            boxes.append((int(x0), int(y0), int(x1), int(y1)))
        Image.fromarray(image).save(root / "PNGImages" / f"{name}.png", optimize=True)
        Image.fromarray(mask).save(root / "PedMasks" / f"{name}_mask.png", optimize=True)
        labels = [label for *_, label in people]
        (root / "Annotation" / f"{name}.txt").write_text(annotation(name, width, height, labels, boxes))


def main() -> None:
    if OUT.exists():
        shutil.rmtree(OUT)
    write_pennfudan(OUT)
    print(f"wrote {sum(1 for p in OUT.rglob('*') if p.is_file())} files under {OUT}")


if __name__ == "__main__":
    main()
