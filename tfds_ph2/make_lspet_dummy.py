"""Writes ``tfds_ph2/dummy_data/lspet/``: a tiny fake LSPET download for the builder's unit tests.

Ten made-up sports pictures in the release's layout: ``images/im00001.jpg``..``im00010.jpg`` (small RGB JPEGs of
a stick person on a field) and ``joints.mat``, a MATLAB 5 file (``scipy.io.savemat``) holding ``joints`` of shape
(14, 3, 10): x, y and a visibility flag for the 14 LSP joints (``lspet_source.JOINT_NAMES``) of each picture.
Like the real data the coordinates are fractional, some joints lie outside the picture (negative or beyond its
size, flagged 0) and some inside it are occluded (flagged 0, hidden behind a drawn hurdle). Ten, not six: the
split is a hash of the name, and im00010 is the first name that falls into validation (im00003 and im00008
go to test, the other seven to train).

Run from the repository root: ``python tfds_ph2/make_lspet_dummy.py`` (deterministic output, the .mat header
included; it rewrites only ``dummy_data/lspet/``).
"""

from __future__ import annotations

import io
import pathlib
import shutil

import numpy as np
import scipy.io
from PIL import Image, ImageDraw

OUT = pathlib.Path(__file__).resolve().parent / "dummy_data" / "lspet"

#: A standing person facing the camera, head top at (0, 0), ankles at y = 1 (so the person's right is on the
#: picture's left), in the LSP joint order.
TEMPLATE = np.array(
    [
        (-0.11, 1.0),  # right ankle
        (-0.10, 0.76),  # right knee
        (-0.08, 0.52),  # right hip
        (0.08, 0.52),  # left hip
        (0.10, 0.76),  # left knee
        (0.11, 1.0),  # left ankle
        (-0.24, 0.50),  # right wrist
        (-0.20, 0.36),  # right elbow
        (-0.12, 0.20),  # right shoulder
        (0.12, 0.20),  # left shoulder
        (0.20, 0.36),  # left elbow
        (0.24, 0.50),  # left wrist
        (0.0, 0.17),  # neck
        (0.0, 0.0),  # head top
    ]
)
#: Joint pairs drawn as limbs (indices into the LSP order).
LIMBS = [(0, 1), (1, 2), (3, 4), (4, 5), (2, 3), (6, 7), (7, 8), (9, 10), (10, 11), (8, 9), (12, 13)]
TORSO = [8, 9, 3, 2]

#: ``(height, width), (hip x, hip y), person height, rotation (degrees), arms up, occluded joints``; the
#: first picture's feet and the sixth one's head and arms leave the frame.
SCENES = [
    ((88, 120), (40.3, 77.6), 84.0, 0.0, False, ()),
    ((96, 80), (38.5, 50.2), 70.0, 10.0, True, (10,)),
    ((72, 112), (60.1, 36.9), 58.0, -75.0, False, ()),
    ((104, 96), (47.7, 55.4), 80.0, 180.0, True, (0, 1)),
    ((80, 128), (70.2, 44.0), 62.0, 25.0, False, (6,)),
    ((96, 72), (35.9, 30.8), 90.0, 0.0, True, ()),
    ((88, 104), (52.4, 47.1), 66.0, -20.0, True, (3, 4)),
    ((112, 88), (44.6, 60.3), 76.0, 90.0, False, ()),
    ((80, 96), (48.2, 42.5), 60.0, 5.0, False, (11,)),
    ((96, 120), (62.8, 50.9), 72.0, -160.0, True, ()),
]


def pose(hips: tuple, tall: float, degrees: float, arms_up: bool) -> np.ndarray:
    """The (14, 2) joints of one scene: the template, arms raised or not, scaled to ``tall`` pixels, turned
    by ``degrees`` about the hips' midpoint and put at ``hips``."""
    joints = TEMPLATE.copy()
    if arms_up:
        for wrist, elbow in ((6, 7), (11, 10)):
            joints[elbow] = joints[elbow] - (0, 0.3)
            joints[wrist] = joints[wrist] * (0.7, 1) - (0, 0.62)
    joints = (joints - joints[[2, 3]].mean(axis=0)) * tall
    angle = np.deg2rad(degrees)
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    return joints @ rotation.T + np.asarray(hips)


def field(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """Sky over grass or a running track, with a little sensor noise."""
    yy = np.mgrid[:height, :width][0]
    ground = np.array(rng.choice([[70, 140, 60], [180, 90, 70], [150, 150, 150]]), np.float32)
    image = np.where((yy < height * 0.4)[..., None], np.array([150, 185, 225], np.float32), ground)
    image += rng.normal(0, 4, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def draw(image: np.ndarray, joints: np.ndarray, occluded, tall: float, rng: np.random.Generator) -> Image.Image:
    """The stick person (limbs, torso, head) and a hurdle over each occluded joint."""
    picture = Image.fromarray(image)
    pen = ImageDraw.Draw(picture)
    clothes = tuple(int(v) for v in rng.integers(20, 220, 3))
    skin = (224, 180, 150)
    width = max(2, int(tall * 0.06))
    pen.polygon([tuple(joints[j]) for j in TORSO], fill=clothes)
    for a, b in LIMBS:
        pen.line([tuple(joints[a]), tuple(joints[b])], fill=clothes if a < 6 else skin, width=width)
    head = joints[13] + (joints[12] - joints[13]) * 0.5
    radius = tall * 0.075
    pen.ellipse([head[0] - radius, head[1] - radius, head[0] + radius, head[1] + radius], fill=skin)
    for j in occluded:
        x, y = joints[j]
        pen.rectangle([x - tall * 0.1, y - tall * 0.06, x + tall * 0.1, y + tall * 0.06], fill=(230, 230, 235))
    return picture


def visibility(joints: np.ndarray, height: int, width: int, occluded) -> np.ndarray:
    """1 for a joint inside the picture and not hidden, else 0 (as the annotators flagged it)."""
    inside = (joints[:, 0] >= 0) & (joints[:, 0] < width) & (joints[:, 1] >= 0) & (joints[:, 1] < height)
    flags = inside.astype(np.float64)
    flags[list(occluded)] = 0
    return flags


def mat_bytes(joints: np.ndarray) -> bytes:
    """``joints`` as a MATLAB 5 file; savemat writes today's date into the 116-byte header text, which is
    replaced by a fixed one so that the file does not change from one run to the next."""
    buffer = io.BytesIO()
    scipy.io.savemat(buffer, {"joints": joints}, format="5")
    header = b"MATLAB 5.0 MAT-file, written by tfds_ph2/make_lspet_dummy.py (made-up joints)"
    return header.ljust(116) + buffer.getvalue()[116:]


def write_lspet(root: pathlib.Path, seed: int = 20261204) -> np.ndarray:
    """Write the ten dummy pictures and ``joints.mat`` under ``root``; returns ``joints`` (14, 3, 10)."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    joints = np.zeros((14, 3, len(SCENES)))
    for n, ((height, width), hips, tall, degrees, arms_up, occluded) in enumerate(SCENES):
        points = pose(hips, tall, degrees, arms_up)
        picture = draw(field(height, width, rng), points, occluded, tall, rng)
        picture.save(root / "images" / f"im{n + 1:05d}.jpg", quality=90)
        joints[:, :2, n] = np.round(points, 4)
        joints[:, 2, n] = visibility(points, height, width, occluded)
    (root / "joints.mat").write_bytes(mat_bytes(joints))
    return joints


def main() -> None:
    if OUT.exists():
        shutil.rmtree(OUT)
    write_lspet(OUT)
    print(f"wrote {sum(1 for p in OUT.rglob('*') if p.is_file())} files under {OUT}")


if __name__ == "__main__":
    main()
