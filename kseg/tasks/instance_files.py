"""What an instance prediction looks like on disk, the same from ``kseg.predict`` and ``kseg.client``.

For an input ``NAME.ext``: ``NAME_instances.png`` (the label image at the image's size: 0 background, person
``i`` has value ``i`` in descending score order; 8-bit, or 16-bit when there are more than 255 people),
``NAME_overlay.png`` (each person tinted and outlined in their own colour) and ``NAME_instances.json``
(each person's id, score, box and area). NumPy and Pillow only: ``kseg.client`` must not need TensorFlow.
"""

from __future__ import annotations

import colorsys
import dataclasses
import io
import json
import logging

import numpy as np
from PIL import Image

from kseg.core.outputs import MARKER, encode_png
from kseg.core.serving_contract import MAX_INSTANCES

log = logging.getLogger(__name__)

#: Suffixes of the files written per input image.
LABELS_SUFFIX = "_instances.png"
OVERLAY_SUFFIX = "_overlay.png"
JSON_SUFFIX = "_instances.json"
FILL_ALPHA = 0.45


@dataclasses.dataclass
class InstanceResult:
    """One image's people as NumPy: ``labels`` [H, W] (0 background, i the i-th), ``scores`` [n] descending,
    ``boxes`` [n, 4] (ymin, xmin, ymax, xmax) pixel edges at the image's size, ``areas`` [n] pixel counts."""

    labels: np.ndarray
    scores: np.ndarray
    boxes: np.ndarray
    areas: np.ndarray

    @property
    def count(self) -> int:
        return len(self.scores)

    def to_json(self, source: str = "") -> dict:
        return {
            MARKER: f"kseg instances of {source}" if source else "kseg instances",
            "image": source,
            "height": int(self.labels.shape[0]),
            "width": int(self.labels.shape[1]),
            "count": self.count,
            "people": [
                {
                    "id": i + 1,
                    "score": round(float(self.scores[i]), 4),
                    "box": dict(zip(("ymin", "xmin", "ymax", "xmax"), (round(float(v), 2) for v in self.boxes[i]))),
                    "area": int(self.areas[i]),
                }
                for i in range(self.count)
            ],
        }


def colours(count: int) -> np.ndarray:
    """``count`` distinct RGB colours (uint8 [count, 3]); person ``i`` gets row ``i - 1`` everywhere."""
    golden = 0.618033988749895
    rows = [colorsys.hsv_to_rgb((i * golden) % 1.0, 0.85, 0.95) for i in range(count)]
    return np.round(np.array(rows, np.float64).reshape(count, 3) * 255).astype(np.uint8)


def _outline(region: np.ndarray) -> np.ndarray:
    padded = np.pad(region, 1, constant_values=False)
    interior = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return region & ~interior


def overlay(image, labels, alpha: float = FILL_ALPHA) -> np.ndarray:
    """uint8 [H, W, 3]: ``image`` with each person tinted and outlined in their own colour."""
    image = np.asarray(image, np.uint8)
    labels = np.asarray(labels)
    labels = labels[..., 0] if labels.ndim == 3 else labels
    if labels.shape != image.shape[:2]:
        raise ValueError(f"label image shape {labels.shape} differs from image shape {image.shape[:2]}")
    count = int(labels.max(initial=0))
    if count == 0:
        return image.copy()
    palette = np.concatenate([np.zeros((1, 3), np.uint8), colours(count)]).astype(np.float32)
    tint = palette[labels]
    person = labels > 0
    result = image.astype(np.float32)
    result[person] = (1 - alpha) * result[person] + alpha * tint[person]
    # Outlines where the label changes: each person's border, also between two touching people.
    edge = np.zeros_like(person)
    edge[:-1] |= labels[:-1] != labels[1:]
    edge[:, :-1] |= labels[:, :-1] != labels[:, 1:]
    edge &= person
    result[edge] = tint[edge]
    return np.clip(np.round(result), 0, 255).astype(np.uint8)


def label_png(labels, what: str = "kseg instances") -> bytes:
    """The label image as a PNG with kseg's marker: 8-bit up to 255 people, 16-bit above."""
    labels = np.asarray(labels)
    labels = labels[..., 0] if labels.ndim == 3 else labels
    dtype = np.uint8 if labels.max(initial=0) <= 255 else np.uint16
    return encode_png(labels.astype(dtype), what)


def read_label_png(data: bytes) -> np.ndarray:
    """The inverse of ``label_png`` (and of the serving signature's ``label_bytes``): int32 [H, W]."""
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image).astype(np.int32)


def prediction_files(image, result: InstanceResult, source: str = "") -> dict[str, bytes]:
    """``{suffix: bytes}`` of the three files written for one input image. An image with as many people as a
    model returns at most is named in a warning: more may be there, only the best-scoring are kept."""
    of = f" of {source}" if source else ""
    if result.count >= MAX_INSTANCES:
        log.warning(
            "%s: %d people, the most a kseg instance model returns per image; any more are left out "
            "(the best-scoring %d are kept)",
            source or "image",
            result.count,
            MAX_INSTANCES,
        )
    return {
        LABELS_SUFFIX: label_png(result.labels, f"kseg instance labels{of}"),
        OVERLAY_SUFFIX: encode_png(overlay(image, result.labels), f"kseg instance overlay{of}"),
        JSON_SUFFIX: (json.dumps(result.to_json(source), indent=2) + "\n").encode(),
    }
