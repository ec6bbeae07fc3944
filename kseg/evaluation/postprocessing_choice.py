"""Choosing post-processing on validation cases, nnU-Net style, and the ablation that reports each step."""

from __future__ import annotations

import dataclasses

from kseg.evaluation.cases import MaskMaker, mean_dice
from kseg.tasks.postprocess import PostProcessing

#: A post-processing step must raise mean validation Dice by this much to be kept (avoids fitting noise).
MIN_GAIN = 0.001
#: The threshold moves only a little and only for a clear gain: on a small validation split a lower
#: threshold can win on validation and lose on test (docs/evaluation.md), and a new camera or clinic shifts
#: probabilities first. Users can still set any threshold with --threshold.
THRESHOLD_GRID = (0.4, 0.45, 0.5, 0.55, 0.6)
THRESHOLD_MIN_GAIN = 0.005


def choose_postprocessing(
    cases, make_mask: MaskMaker, start: PostProcessing = PostProcessing()
) -> tuple[PostProcessing, list[dict]]:
    """Greedy choice on validation cases: TTA, then hole filling, then the largest component, each kept only
    if it raises mean Dice by ``MIN_GAIN``; then a threshold from ``THRESHOLD_GRID`` if it gains
    ``THRESHOLD_MIN_GAIN``. Returns the choice and the steps tried (with their Dice) for the record."""
    binary = make_mask.num_classes == 1
    current = dataclasses.replace(start, tta=False, fill_holes=False, largest_component=False)
    best = mean_dice(cases, current, make_mask)
    steps = [{"step": "start", "postprocessing": current.to_dict(), "dice": best, "kept": True}]
    flags = ("tta", "fill_holes", "largest_component") if binary else ("tta",)
    for flag in flags:
        if flag == "tta" and True not in cases[0].probs:
            continue
        candidate = dataclasses.replace(current, **{flag: True})
        dice = mean_dice(cases, candidate, make_mask)
        kept = dice >= best + MIN_GAIN
        steps.append({"step": flag, "postprocessing": candidate.to_dict(), "dice": dice, "kept": kept})
        if kept:
            current, best = candidate, dice
    if binary:
        tried = {t: mean_dice(cases, dataclasses.replace(current, threshold=t), make_mask) for t in THRESHOLD_GRID}
        threshold = max(tried, key=tried.get)
        kept = tried[threshold] >= best + THRESHOLD_MIN_GAIN
        steps.append(
            {
                "step": "threshold",
                "tried": {str(t): d for t, d in tried.items()},
                "best_threshold": threshold,
                "dice": tried[threshold],
                "kept": kept,
            }
        )
        if kept:
            current, best = dataclasses.replace(current, threshold=threshold), tried[threshold]
    return current, steps


def ablation(cases, chosen: PostProcessing, make_mask: MaskMaker) -> dict:
    """Mean Dice with no post-processing, with each step alone, and with the chosen combination."""
    plain = dataclasses.replace(chosen, tta=False, fill_holes=False, largest_component=False, threshold=0.5)
    variants = {
        "plain (threshold 0.5)": plain,
        "tta": dataclasses.replace(plain, tta=True),
        "fill_holes": dataclasses.replace(plain, fill_holes=True),
        "largest_component": dataclasses.replace(plain, largest_component=True),
        f"threshold {chosen.threshold:g}": dataclasses.replace(plain, threshold=chosen.threshold),
        "all of tta, fill_holes, largest_component": dataclasses.replace(
            plain, tta=True, fill_holes=True, largest_component=True
        ),
        f"chosen ({chosen.describe()})": chosen,
    }
    return {name: mean_dice(cases, pp, make_mask) for name, pp in variants.items()}
