"""Per-case scores at original resolution: HD95 against a brute-force reference, areas, edge cases."""

import math

import numpy as np
from scipy.spatial.distance import cdist

from kseg.tasks import scoring


def _surface_points(mask):
    padded = np.pad(mask, 1)
    interior = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return np.argwhere(mask & ~interior)


def _hd95_brute_force(pred, true):
    a, b = _surface_points(pred), _surface_points(true)
    distances = cdist(a, b)
    return np.percentile(np.concatenate([distances.min(axis=1), distances.min(axis=0)]), 95)


def _rectangle(shape, top, left, bottom, right):
    mask = np.zeros(shape, bool)
    mask[top:bottom, left:right] = True
    return mask


def test_hd95_matches_brute_force_on_shifted_and_irregular_shapes():
    true = _rectangle((60, 80), 10, 10, 40, 50)
    shifted = _rectangle((60, 80), 14, 13, 44, 53)
    assert math.isclose(scoring.hd95(shifted, true), _hd95_brute_force(shifted, true))
    rng = np.random.default_rng(0)
    blob = true.copy()
    blob[rng.random(blob.shape) < 0.05] ^= True  # speckles far and near
    assert math.isclose(scoring.hd95(blob, true), _hd95_brute_force(blob, true))


def test_hd95_of_perfect_empty_and_one_sided_cases():
    true = _rectangle((20, 20), 5, 5, 15, 15)
    assert scoring.hd95(true, true) == 0.0
    empty = np.zeros_like(true)
    assert scoring.hd95(empty, empty) == 0.0
    assert math.isnan(scoring.hd95(empty, true)) and math.isnan(scoring.hd95(true, empty))


def test_case_scores_areas_and_hand_computed_values():
    true = _rectangle((10, 10), 0, 0, 4, 5)  # 20 pixels
    pred = _rectangle((10, 10), 0, 0, 4, 4)  # 16 pixels, all inside
    scores = scoring.case_scores(pred, true)
    assert scores["predicted_area"] == 16 and scores["true_area"] == 20
    assert math.isclose(scores["dice"], 2 * 16 / 36) and math.isclose(scores["iou"], 16 / 20)
    assert math.isclose(scores["sensitivity"], 0.8) and scores["specificity"] == 1.0
    assert math.isclose(scores["pixel_accuracy"], 0.96) and scores["hd95"] == 1.0
    assert set(scores) == set(scoring.CASE_COLUMNS)


def test_summary_counts_undefined_values():
    summary = scoring.summarize([1.0, 2.0, 3.0, float("nan")])
    assert summary["mean"] == 2.0 and summary["median"] == 2.0 and summary["undefined"] == 1
    assert summary["q1"] == 1.5 and summary["q3"] == 2.5 and summary["count"] == 3
