"""What a keypoint prediction looks like on disk, the same from ``kseg.predict`` and ``kseg.client``.

For an input ``NAME.ext``: ``NAME_skeleton.png`` (the image with each person's skeleton drawn in their own
colour) and ``NAME_keypoints.json``: the image, its size, the joint names, and under ``"results"`` COCO's
keypoint-results list (one entry per person: ``image_id``, ``category_id`` 1, ``keypoints`` as flat ``[x1,
y1, s1, x2, ...]`` in the image's pixels, ``score``), which ``pycocotools``' ``COCO.loadRes`` reads as it
is. The list sits in an object because every JSON file kseg writes carries its marker at the top (so kseg
replaces only its own files), and an image without people still says which image it was. NumPy and Pillow
only: ``kseg.client`` must not need TensorFlow.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
from PIL import Image, ImageDraw

from kseg.core.outputs import MARKER, encode_png
from kseg.tasks.instance_files import colours

SKELETON_SUFFIX = "_skeleton.png"
JSON_SUFFIX = "_keypoints.json"
#: Joints scored below this are not drawn (they are still in the JSON, with their score).
DRAW_THRESHOLD = 0.1

#: Bones by joint name; a model draws those whose two ends it has (LSP's 14 joints, COCO's 17 or 18).
BONES = (
    ("right_ankle", "right_knee"),
    ("right_knee", "right_hip"),
    ("left_ankle", "left_knee"),
    ("left_knee", "left_hip"),
    ("right_hip", "left_hip"),
    ("right_shoulder", "right_hip"),
    ("left_shoulder", "left_hip"),
    ("right_shoulder", "left_shoulder"),
    ("right_shoulder", "right_elbow"),
    ("right_elbow", "right_wrist"),
    ("left_shoulder", "left_elbow"),
    ("left_elbow", "left_wrist"),
    ("neck", "head_top"),
    ("neck", "nose"),
    ("nose", "right_eye"),
    ("nose", "left_eye"),
    ("right_eye", "right_ear"),
    ("left_eye", "left_ear"),
)


@dataclasses.dataclass
class KeypointResult:
    """One image's people as NumPy: ``keypoints`` [P, J, 3] (x, y, score) in the image's pixels (pixel
    centres), ``scores`` [P] descending, ``joint_names`` naming the J joints, the image's ``size`` (h, w)."""

    keypoints: np.ndarray
    scores: np.ndarray
    joint_names: tuple
    size: tuple

    @property
    def count(self) -> int:
        return len(self.scores)

    def to_json(self, source: str = "") -> dict:
        """The image, its size, the joint names and COCO keypoint results (``image_id``: the file's stem)."""
        stem = source.rsplit("/", 1)[-1].rsplit(".", 1)[0] if source else ""
        return {
            MARKER: f"kseg keypoints of {source}" if source else "kseg keypoints",
            "image": source,
            "height": int(self.size[0]),
            "width": int(self.size[1]),
            "joint_names": list(self.joint_names),
            "count": self.count,
            "results": [
                {
                    "image_id": stem,
                    "category_id": 1,
                    "keypoints": [round(float(v), 2) for v in self.keypoints[p].reshape(-1)],
                    "score": round(float(self.scores[p]), 4),
                }
                for p in range(self.count)
            ],
        }


def bones(joint_names) -> list[tuple[int, int]]:
    names = list(joint_names)
    return [(names.index(a), names.index(b)) for a, b in BONES if a in names and b in names]


def draw_skeletons(image, keypoints, joint_names, threshold: float = DRAW_THRESHOLD, colour=None) -> np.ndarray:
    """uint8 [H, W, 3]: ``image`` with each person's bones and joints (``keypoints`` [P, J, 3]) drawn; line
    widths follow the image's size, so a small photo stays readable."""
    picture = Image.fromarray(np.asarray(image, np.uint8))
    pen = ImageDraw.Draw(picture)
    width = max(1, round(max(picture.size) / 150))
    palette = colours(max(len(keypoints), 1))
    for p, person in enumerate(np.asarray(keypoints, np.float32)):
        ink = tuple(int(v) for v in (palette[p] if colour is None else colour))
        for a, b in bones(joint_names):
            if person[a, 2] >= threshold and person[b, 2] >= threshold:
                pen.line([tuple(person[a, :2]), tuple(person[b, :2])], fill=ink, width=width)
        for x, y, score in person:
            if score >= threshold:
                r = width + 1
                pen.ellipse([x - r, y - r, x + r, y + r], fill=ink, outline=(255, 255, 255))
    return np.asarray(picture)


def prediction_files(image, result: KeypointResult, source: str = "") -> dict[str, bytes]:
    """``{suffix: bytes}`` of the two files written for one input image."""
    of = f" of {source}" if source else ""
    picture = draw_skeletons(image, result.keypoints, result.joint_names)
    return {
        SKELETON_SUFFIX: encode_png(picture, f"kseg skeletons{of}"),
        JSON_SUFFIX: (json.dumps(result.to_json(source), indent=2) + "\n").encode(),
    }
