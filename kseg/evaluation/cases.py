"""Predicting the cases of a split once and scoring them at each image's original resolution.

Probabilities are kept at the model's size (with and/or without test-time augmentation), so that every
post-processing variant (threshold, hole filling, largest component) is scored from the same predictions
without running the model again.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
import tensorflow as tf

from kseg.data.preprocessing import model_input
from kseg.prediction import inference
from kseg.tasks import postprocess, scoring
from kseg.tasks.postprocess import PostProcessing


@dataclasses.dataclass
class PredictedCase:
    """One image's ground truth and model-size probabilities (with and/or without TTA)."""

    image_id: str
    true_mask: np.ndarray  # uint8 [h, w] at the original size
    probs: dict  # {tta (bool): float32 [H, W, C] at the model size}
    group: str | None = None  # the value of the group-by feature (e.g. PH2's clinical diagnosis)
    image: np.ndarray | None = None  # uint8 [h, w, 3], kept only for the first few cases (figures)


def collect_cases(
    predictor: inference.Predictor,
    examples: tf.data.Dataset,
    tta_modes=(False,),
    *,
    batch_size: int = 8,
    group_by: str | None = None,
    keep_images: int = 0,
    progress: Callable[[int], None] | None = None,
) -> list[PredictedCase]:
    """Model-size probabilities of every example for each TTA mode in ``tta_modes``.

    ``examples`` are ``kseg.data.load_examples`` dicts; ``group_by`` names a string feature they carry.
    """
    cases, chunk = [], []

    def flush():
        batch = model_input([ex["image"] for ex in chunk], predictor.image_size)
        probs = {tta: predictor.model_probabilities(batch, tta=tta).numpy() for tta in tta_modes}
        for index, ex in enumerate(chunk):
            group = ex[group_by] if group_by else None
            cases.append(
                PredictedCase(
                    ex["image_id"].decode(),
                    ex["mask"][..., 0],
                    {tta: p[index] for tta, p in probs.items()},
                    group.decode() if isinstance(group, bytes) else group,
                    ex["image"] if len(cases) < keep_images else None,
                )
            )
        chunk.clear()
        if progress:
            progress(len(cases))

    for example in examples.as_numpy_iterator():
        chunk.append(example)
        if len(chunk) == batch_size:
            flush()
    if chunk:
        flush()
    return cases


class MaskMaker:
    """``postprocess.final_mask`` compiled once per post-processing choice (eager while-loops are slow)."""

    def __init__(self, num_classes: int):
        self.num_classes = num_classes
        self._functions = {}

    def __call__(self, probs, size, postprocessing: PostProcessing) -> np.ndarray:
        key = dataclasses.replace(postprocessing, tta=False)
        if key not in self._functions:
            self._functions[key] = tf.function(
                lambda p, s: postprocess.final_mask(p, s, key),
                input_signature=[
                    tf.TensorSpec([None, None, self.num_classes], tf.float32),
                    tf.TensorSpec([2], tf.int32),
                ],
            )
        return self._functions[key](probs, tf.constant(size, tf.int32)).numpy()


def masks_for(cases, postprocessing: PostProcessing, make_mask: MaskMaker) -> list[np.ndarray]:
    """Each case's final mask at its original size under ``postprocessing``."""
    return [make_mask(case.probs[postprocessing.tta], case.true_mask.shape, postprocessing) for case in cases]


def mean_score(cases, postprocessing: PostProcessing, make_mask: MaskMaker, score: str = "dice") -> float:
    """The mean over ``cases`` of one of ``scoring.SCORE_NAMES`` for the masks ``postprocessing`` makes."""
    if score not in scoring.SCORE_NAMES:
        raise ValueError(f"score {score!r} is not one of {', '.join(scoring.SCORE_NAMES)}")
    masks = masks_for(cases, postprocessing, make_mask)
    scorer = (
        scoring.binary_scores
        if make_mask.num_classes == 1
        else (lambda p, t: scoring.multiclass_scores(p, t, make_mask.num_classes))
    )
    return float(np.mean([scorer(m, c.true_mask)[score] for m, c in zip(masks, cases)]))


def mean_dice(cases, postprocessing: PostProcessing, make_mask: MaskMaker) -> float:
    return mean_score(cases, postprocessing, make_mask, "dice")


def score_cases(cases, masks, num_classes: int, group_by: str | None = None) -> list[dict]:
    """One row per case: ``image_id``, every ``scoring.CASE_COLUMNS`` score, and the group if asked for."""
    rows = []
    for case, mask in zip(cases, masks):
        row = {"image_id": case.image_id, **scoring.case_scores(mask, case.true_mask, num_classes)}
        if group_by:
            row[group_by] = case.group
        rows.append(row)
    return rows


def mean_scores(rows) -> dict:
    """Means over images of the headline scores (what training's ``metrics.json`` reports)."""
    result = {name: float(np.mean([r[name] for r in rows])) for name in scoring.SCORE_NAMES}
    result["median_dice"] = float(np.median([r["dice"] for r in rows]))
    result["images"] = len(rows)
    return result


def summarize(rows, cases, masks, num_classes: int, group_by: str | None = None) -> dict:
    """Distribution of every column, Dice over all pixels pooled (binary), and mean Dice per group."""
    summary = {column: scoring.summarize(r[column] for r in rows) for column in scoring.CASE_COLUMNS}
    if num_classes == 1:
        pooled = np.sum([scoring.confusion(m, c.true_mask) for m, c in zip(masks, cases)], axis=0)
        summary["pooled_dice"] = scoring.scores_from_confusion(*pooled)["dice"]
    if group_by:
        groups = sorted({r[group_by] for r in rows})
        summary[f"dice_by_{group_by}"] = {
            g: {
                "mean": float(np.mean([r["dice"] for r in rows if r[group_by] == g])),
                "images": sum(r[group_by] == g for r in rows),
            }
            for g in groups
        }
    summary["images"] = len(rows)
    return summary


def dice_vs_threshold(cases, use_tta: bool, thresholds, make_mask: MaskMaker) -> dict:
    """Mean Dice at each threshold alone (no component clean-up), for binary models."""
    return {str(t): mean_dice(cases, PostProcessing(threshold=t, tta=use_tta), make_mask) for t in thresholds}
