"""COCO-style scores of instance predictions, computed by pycocotools (the reference implementation).

Truth and predictions are label images (0 background, 1..n one instance each); predictions add a score per
instance. Both are turned into COCO annotations in memory (RLE masks, ``[x, y, w, h]`` boxes, one category
"person"), and ``COCOeval`` scores them: mask AP@[.5:.95], AP50, AP75, and the same for boxes. Nothing here
matches masks or integrates precision-recall curves by hand, so the figures are the ones every detection
paper reports.

Per-image counts (found / missed / spurious) are the plain reading a user wants from one photo: a true
person is *found* when a prediction with score >= ``score_threshold`` overlaps it with mask IoU >= 0.5
(greedy, best score first, each prediction used once, as COCO matches); the predictions left are *spurious*.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

CATEGORY_ID = 1
#: Predictions below this score are not counted as people in the per-image counts (AP uses every score).
SCORE_THRESHOLD = 0.5
MATCH_IOU = 0.5


@dataclasses.dataclass
class InstancePrediction:
    """One image's instances: ``labels`` int [H, W] (0 background, i = the i-th score), ``scores`` [n]."""

    labels: np.ndarray
    scores: np.ndarray


def _encode(binary: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(binary.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def _plain(labels) -> np.ndarray:
    """A label image as [H, W]: datasets keep masks as [H, W, 1]."""
    labels = np.asarray(labels)
    return labels[..., 0] if labels.ndim == 3 else labels


def _check_shapes(truth: np.ndarray, prediction: InstancePrediction, where: str = "") -> None:
    """Refuse a prediction drawn at another size than its truth: pycocotools gives masks of different sizes
    IoU 0 without a word, so a resizing slip upstream would read as a model that finds nobody."""
    shape = _plain(prediction.labels).shape
    if shape != truth.shape:
        raise ValueError(f"{where}prediction labels are {shape} but the truth is {truth.shape}")


def instance_masks(labels: np.ndarray) -> tuple[list[int], list[np.ndarray]]:
    """``(ids, binary masks)`` of the instances in a label image, ids ascending, background excluded."""
    labels = _plain(labels)
    ids = [int(i) for i in np.unique(labels) if i != 0]
    return ids, [labels == i for i in ids]


def _box(binary: np.ndarray) -> list[float]:
    rows = np.flatnonzero(binary.any(axis=1))
    cols = np.flatnonzero(binary.any(axis=0))
    return [float(cols[0]), float(rows[0]), float(cols[-1] + 1 - cols[0]), float(rows[-1] + 1 - rows[0])]


def _coco_sets(truths, predictions) -> tuple[COCO, list[dict]]:
    images, annotations, results = [], [], []
    for image_id, (truth, prediction) in enumerate(zip(truths, predictions), start=1):
        truth = _plain(truth)
        _check_shapes(truth, prediction, f"image {image_id}: ")
        images.append({"id": image_id, "height": int(truth.shape[0]), "width": int(truth.shape[1])})
        for binary in instance_masks(truth)[1]:
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": CATEGORY_ID,
                    "segmentation": _encode(binary),
                    "area": float(binary.sum()),
                    "bbox": _box(binary),
                    "iscrowd": 0,
                }
            )
        ids, masks = instance_masks(prediction.labels)
        for instance_id, binary in zip(ids, masks):
            results.append(
                {
                    "image_id": image_id,
                    "category_id": CATEGORY_ID,
                    "segmentation": _encode(binary),
                    "bbox": _box(binary),
                    "score": float(prediction.scores[instance_id - 1]),
                    "area": float(binary.sum()),
                }
            )
    truth_set = COCO()
    truth_set.dataset = {
        "images": images,
        "annotations": annotations,
        "categories": [{"id": CATEGORY_ID, "name": "person"}],
    }
    with contextlib.redirect_stdout(io.StringIO()):
        truth_set.createIndex()
    return truth_set, results


def _average_precision(truth_set: COCO, results: list[dict], kind: str) -> dict:
    if not results or not truth_set.getAnnIds():
        # COCOeval cannot load an empty result list; no prediction (or no person to find) scores 0.
        return {"ap": 0.0, "ap50": 0.0, "ap75": 0.0}
    with contextlib.redirect_stdout(io.StringIO()):
        detections = truth_set.loadRes([dict(r) for r in results])
        evaluator = COCOeval(truth_set, detections, kind)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    stats = [max(float(s), 0.0) for s in evaluator.stats[:3]]  # -1 means "no truth at this threshold"
    return {"ap": stats[0], "ap50": stats[1], "ap75": stats[2]}


def coco_scores(truths, predictions: list[InstancePrediction]) -> dict:
    """Mask and box AP@[.5:.95], AP50 and AP75 over all images (``mask_ap``, ``mask_ap50``, ... ``box_ap75``)."""
    if len(truths) != len(predictions):
        raise ValueError(f"{len(truths)} truth images but {len(predictions)} predictions")
    truth_set, results = _coco_sets(truths, predictions)
    scores = {}
    for kind, prefix in (("segm", "mask"), ("bbox", "box")):
        for name, value in _average_precision(truth_set, results, kind).items():
            scores[f"{prefix}_{name}"] = value
    return scores


def image_counts(truth, prediction: InstancePrediction, score_threshold: float = SCORE_THRESHOLD) -> dict:
    """People in the truth, found (IoU >= 0.5 with a kept prediction), missed, spurious, and mean matched IoU."""
    _check_shapes(_plain(truth), prediction)
    truth_ids, truth_masks = instance_masks(truth)
    ids, masks = instance_masks(prediction.labels)
    kept = [
        (float(prediction.scores[i - 1]), m) for i, m in zip(ids, masks) if prediction.scores[i - 1] >= score_threshold
    ]
    kept.sort(key=lambda pair: -pair[0])
    found, ious = 0, []
    if kept and truth_masks:
        iou = mask_utils.iou(
            [_encode(m) for _, m in kept], [_encode(m) for m in truth_masks], [0] * len(truth_masks)
        )  # [predictions, truths]
        taken = np.zeros(len(truth_masks), bool)
        for row in iou:
            candidates = np.where(taken, -1.0, row)
            best = int(np.argmax(candidates))
            if candidates[best] >= MATCH_IOU:
                taken[best] = True
                found += 1
                ious.append(float(candidates[best]))
    return {
        "people": len(truth_ids),
        "predicted": len(kept),
        "found": found,
        "missed": len(truth_ids) - found,
        "spurious": len(kept) - found,
        "matched_iou": float(np.mean(ious)) if ious else float("nan"),
    }
