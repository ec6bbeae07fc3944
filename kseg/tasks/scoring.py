"""Per-case segmentation scores in NumPy, at whatever resolution the masks have.

The Keras metrics in ``kseg.tasks.metrics`` score batches at the model's size during training; papers score each
image at its original resolution and report means over images, which is what these functions do for
``kseg.train``'s final report and ``kseg.evaluate``. Conventions match ``kseg.tasks.metrics``: a score whose
denominator is empty (e.g. Dice with both masks empty) is 1.0, never NaN.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

SCORE_NAMES = ("dice", "iou", "sensitivity", "specificity", "pixel_accuracy")
#: Per-case columns of ``kseg.evaluate``'s CSV, after ``image_id``.
CASE_COLUMNS = (*SCORE_NAMES, "hd95", "predicted_area", "true_area")


def _ratio(numerator: float, denominator: float) -> float:
    return 1.0 if denominator == 0 else float(numerator) / float(denominator)


def confusion(pred: np.ndarray, true: np.ndarray) -> tuple[int, int, int, int]:
    """(TP, FP, FN, TN) of two binary masks of the same shape."""
    pred, true = np.asarray(pred).astype(bool), np.asarray(true).astype(bool)
    if pred.shape != true.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from ground truth shape {true.shape}")
    tp = int(np.count_nonzero(pred & true))
    fp = int(np.count_nonzero(pred & ~true))
    fn = int(np.count_nonzero(~pred & true))
    return tp, fp, fn, pred.size - tp - fp - fn


def scores_from_confusion(tp: int, fp: int, fn: int, tn: int) -> dict[str, float]:
    return {
        "dice": _ratio(2 * tp, 2 * tp + fp + fn),
        "iou": _ratio(tp, tp + fp + fn),
        "sensitivity": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
        "pixel_accuracy": _ratio(tp + tn, tp + fp + fn + tn),
    }


def binary_scores(pred: np.ndarray, true: np.ndarray) -> dict[str, float]:
    """Dice, IoU, sensitivity, specificity and pixel accuracy of one binary prediction."""
    return scores_from_confusion(*confusion(pred, true))


def multiclass_scores(pred: np.ndarray, true: np.ndarray, num_classes: int) -> dict[str, float]:
    """Scores averaged over the foreground classes 1..K-1 (pixel accuracy over all classes)."""
    pred, true = np.asarray(pred), np.asarray(true)
    per_class = [binary_scores(pred == c, true == c) for c in range(1, num_classes)]
    result = {name: float(np.mean([s[name] for s in per_class])) for name in SCORE_NAMES}
    result["pixel_accuracy"] = float(np.mean(pred == true))
    return result


def _surface(mask: np.ndarray) -> np.ndarray:
    """Foreground pixels with a 4-neighbour in the background (the image border counts as background)."""
    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def hd95(pred: np.ndarray, true: np.ndarray) -> float:
    """95th-percentile symmetric Hausdorff distance in pixels between the two masks' surfaces.

    As in MedPy's ``hd95``: the distances from each surface pixel of one mask to the nearest surface pixel
    of the other, both directions pooled, 95th percentile. Both masks empty: 0.0; exactly one empty: NaN
    (undefined; summaries count these separately).
    """
    pred, true = np.asarray(pred).astype(bool), np.asarray(true).astype(bool)
    if pred.shape != true.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from ground truth shape {true.shape}")
    if not pred.any() and not true.any():
        return 0.0
    if not pred.any() or not true.any():
        return float("nan")
    pred_surface, true_surface = _surface(pred), _surface(true)
    to_true = ndimage.distance_transform_edt(~true_surface)[pred_surface]
    to_pred = ndimage.distance_transform_edt(~pred_surface)[true_surface]
    return float(np.percentile(np.concatenate([to_true, to_pred]), 95))


def case_scores(pred: np.ndarray, true: np.ndarray, num_classes: int = 1) -> dict[str, float]:
    """Every per-case column of ``CASE_COLUMNS`` (multi-class: foreground classes averaged, areas of any
    foreground class, HD95 of the foreground as one region)."""
    pred, true = np.asarray(pred), np.asarray(true)
    scores = binary_scores(pred, true) if num_classes == 1 else multiclass_scores(pred, true, num_classes)
    return {
        **scores,
        "hd95": hd95(pred > 0, true > 0),
        "predicted_area": int(np.count_nonzero(pred)),
        "true_area": int(np.count_nonzero(true)),
    }


def summarize(values) -> dict[str, float]:
    """Mean, standard deviation, median and quartiles of per-case values (NaNs, e.g. undefined distances,
    are left out and counted)."""
    array = np.asarray(list(values), dtype=np.float64)
    finite = array[np.isfinite(array)]
    if finite.size == 0:
        return {
            "mean": float("nan"),
            "std": float("nan"),
            "median": float("nan"),
            "q1": float("nan"),
            "q3": float("nan"),
            "min": float("nan"),
            "max": float("nan"),
            "count": 0,
            "undefined": int(array.size),
        }
    q1, median, q3 = np.percentile(finite, [25, 50, 75])
    return {
        "mean": float(finite.mean()),
        "std": float(finite.std()),
        "median": float(median),
        "q1": float(q1),
        "q3": float(q3),
        "min": float(finite.min()),
        "max": float(finite.max()),
        "count": int(finite.size),
        "undefined": int(array.size - finite.size),
    }
