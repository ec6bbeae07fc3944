"""COCO scores of instance label images against cases worked out by hand.

Every expected figure below is derived in the comments from COCO's rules, not read back from pycocotools:
IoU thresholds 0.50:0.05:0.95 (ten), recall points 0:0.01:1 (101), precision at a recall point = the
highest precision reached at any recall >= it (0 when that recall is never reached), detections matched
greedily by descending score to the unmatched truth of highest IoU (>= the threshold), maxDets 100, area
"all". AP@[.5:.95] is the mean over the ten thresholds.

Shapes are rectangles on small canvases so every IoU is an exact ratio of pixel counts.
"""

import math

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from kseg.tasks import coco
from kseg.tasks.coco import InstancePrediction, coco_scores, image_counts

H, W = 20, 40
KEYS = ("mask_ap", "mask_ap50", "mask_ap75", "box_ap", "box_ap50", "box_ap75")


def _labels(*rects, shape=(H, W)) -> np.ndarray:
    """Label image with instance i+1 filling rects[i]; a rect is (row0, row1, col0, col1), ends exclusive, or a
    list of such rects (one instance in several pieces)."""
    labels = np.zeros(shape, np.int32)
    for i, rect in enumerate(rects, start=1):
        for r0, r1, c0, c1 in rect if isinstance(rect, list) else [rect]:
            assert not labels[r0:r1, c0:c1].any(), "instances must not overlap"
            labels[r0:r1, c0:c1] = i
    return labels


def _pred(*scored_rects, shape=(H, W)) -> InstancePrediction:
    """Prediction from (score, rect) pairs, in label order."""
    rects = [rect for _, rect in scored_rects]
    return InstancePrediction(_labels(*rects, shape=shape), np.array([s for s, _ in scored_rects], np.float32))


def _assert_scores(scores: dict, expected: dict) -> None:
    assert set(scores) == set(KEYS)
    for key in KEYS:
        assert scores[key] == pytest.approx(expected[key], abs=1e-6), key


def _all(value: float) -> dict:
    return dict.fromkeys(KEYS, value)


A = (0, 10, 0, 10)  # 100 px
B = (0, 10, 20, 30)  # 100 px, apart from A
ELSEWHERE = (12, 18, 32, 38)  # touches no person


# ----------------------------------------------------------------------------------------------------
# AP
# ----------------------------------------------------------------------------------------------------


def test_perfect_prediction_of_two_people_in_two_images_scores_one():
    # Each prediction equals its person: IoU 1 at every threshold, 4 TPs and no FP -> precision 1 up to
    # recall 1 at all 101 points -> AP 1 everywhere, for masks and boxes alike.
    truths = [_labels(A, B), _labels(B, A)]
    predictions = [_pred((0.9, A), (0.8, B)), _pred((0.7, B), (0.6, A))]
    _assert_scores(coco_scores(truths, predictions), _all(1.0))


def test_mask_iou_of_exactly_point_six_counts_at_three_thresholds():
    # Person: rows 0-9, cols 0-24 -> 250 px, box 10 x 25 = 250.
    # Prediction inside it in two pieces: cols 0-7 (80 px) and cols 12-18 (70 px) -> 150 px.
    #   mask IoU = 150 / 250 = 0.6 exactly -> matched at 0.50, 0.55, 0.60 (the 0.60 threshold is exactly 0.6,
    #   and COCO matches at IoU >= threshold); AP per threshold = 1 (1 TP, precision 1 to recall 1), else 0.
    #   mask AP = 3/10, AP50 = 1, AP75 = 0.
    # Its box spans cols 0-18: 10 x 19 = 190, inside the person's box -> box IoU = 190 / 250 = 0.76
    #   -> matched at 0.50 ... 0.75 (six thresholds), not at 0.80: box AP = 6/10, AP50 = 1, AP75 = 1.
    person = (0, 10, 0, 25)
    guess = [(0, 10, 0, 8), (0, 10, 12, 19)]
    scores = coco_scores([_labels(person)], [_pred((0.9, guess))])
    _assert_scores(
        scores,
        {"mask_ap": 0.3, "mask_ap50": 1.0, "mask_ap75": 0.0, "box_ap": 0.6, "box_ap50": 1.0, "box_ap75": 1.0},
    )
    counts = image_counts(_labels(person), _pred((0.9, guess)))
    assert counts["found"] == 1 and counts["matched_iou"] == pytest.approx(0.6)


def test_false_positive_ranked_first_gives_two_thirds():
    # Two people, predictions by score: FP (0.9), A (0.8), B (0.7); same at every threshold (IoU 0 or 1).
    #   cumulative TP = 0, 1, 2; FP = 1, 1, 1 -> recall 0, 1/2, 1; precision 0, 1/2, 2/3.
    #   Interpolated (max precision at recall >= r): 2/3, 2/3, 2/3.
    #   Recall points r = 0 -> first recall >= 0 is the 1st detection -> 2/3; 0 < r <= 0.5 -> 2nd -> 2/3;
    #   0.5 < r <= 1 -> 3rd -> 2/3. So AP = 2/3 at all ten thresholds.
    # Labels are listed in another order than the scores (A = label 1): the rank must come from scores[i - 1].
    truths = [_labels(A, B)]
    predictions = [_pred((0.8, A), (0.7, B), (0.9, ELSEWHERE))]
    _assert_scores(coco_scores(truths, predictions), _all(2 / 3))


def test_false_positive_ranked_between_two_people():
    # By score: A (0.9), FP (0.8), B (0.7).
    #   cumulative TP = 1, 1, 2; FP = 0, 1, 1 -> recall 1/2, 1/2, 1; precision 1, 1/2, 2/3.
    #   Interpolated: 1, 2/3, 2/3.
    #   r = 0.00 ... 0.50 (51 points) -> first recall >= r is the 1st detection -> 1;
    #   r = 0.51 ... 1.00 (50 points) -> the 3rd -> 2/3.
    #   AP = (51 * 1 + 50 * 2/3) / 101 = (153 + 100) / 303 = 253/303 = 0.834983... at every threshold.
    truths = [_labels(A, B)]
    predictions = [_pred((0.9, A), (0.8, ELSEWHERE), (0.7, B))]
    _assert_scores(coco_scores(truths, predictions), _all(253 / 303))


def test_image_without_people_or_predictions_changes_nothing():
    # An image with nothing in it and nothing predicted adds no TP, FP or person: the other image's
    # perfect prediction still scores 1.
    truths = [np.zeros((H, W), np.int32), _labels(A)]
    predictions = [_pred(), _pred((0.9, A))]
    _assert_scores(coco_scores(truths, predictions), _all(1.0))


def test_spurious_prediction_on_an_image_without_people_is_a_false_positive():
    # Image 1: no people, one prediction; image 2: one person, predicted exactly (score 0.8).
    # COCO pools detections over images. FP scored 0.95 ranks first:
    #   TP = 0, 1; FP = 1, 1 -> recall 0, 1; precision 0, 1/2; interpolated 1/2, 1/2 -> AP = 1/2.
    truths = [np.zeros((H, W), np.int32), _labels(A)]
    _assert_scores(coco_scores(truths, [_pred((0.95, ELSEWHERE)), _pred((0.8, A))]), _all(0.5))
    # Scored 0.1 it ranks after the TP, once recall is already 1: precision 1 at every recall point -> AP 1.
    _assert_scores(coco_scores(truths, [_pred((0.1, ELSEWHERE)), _pred((0.8, A))]), _all(1.0))


def test_no_predictions_scores_zero():
    # People but not one prediction: recall never leaves 0 -> precision 0 at every recall point -> AP 0.
    truths = [_labels(A, B), _labels(A)]
    _assert_scores(coco_scores(truths, [_pred(), _pred()]), _all(0.0))


def test_no_people_anywhere_scores_zero():
    # COCO leaves AP undefined (-1) with no truth at all; kseg reports 0 rather than a negative score.
    truths = [np.zeros((H, W), np.int32)]
    _assert_scores(coco_scores(truths, [_pred((0.9, A))]), _all(0.0))
    _assert_scores(coco_scores(truths, [_pred()]), _all(0.0))


def test_mismatched_lengths_are_refused():
    with pytest.raises(ValueError):
        coco_scores([_labels(A)], [])


def test_label_images_with_a_channel_axis_score_the_same():
    # [H, W, 1] truths and predictions: same figures as the IoU-0.6 case above (mask AP 0.3, box AP 0.6).
    person = (0, 10, 0, 25)
    guess = [(0, 10, 0, 8), (0, 10, 12, 19)]
    prediction = _pred((0.9, guess))
    prediction = InstancePrediction(prediction.labels[..., None], prediction.scores)
    scores = coco_scores([_labels(person)[..., None]], [prediction])
    assert scores["mask_ap"] == pytest.approx(0.3) and scores["box_ap"] == pytest.approx(0.6)


def test_box_is_xywh_in_pixel_edges_like_coco():
    # Pixels rows 3-6, cols 5-12 -> box from edge x=5 to x=13, y=3 to y=7: [5, 3, 8, 4], as pycocotools
    # derives it from the RLE (toBbox).
    binary = _labels((3, 7, 5, 13)) == 1
    assert coco._box(binary) == [5.0, 3.0, 8.0, 4.0]
    rle = mask_utils.encode(np.asfortranarray(binary.astype(np.uint8)))
    assert mask_utils.toBbox(rle).tolist() == [5.0, 3.0, 8.0, 4.0]


# ----------------------------------------------------------------------------------------------------
# Touching people predicted as one mask, and one person predicted in two halves
# ----------------------------------------------------------------------------------------------------

LEFT = (0, 10, 0, 12)  # 120 px
RIGHT = (0, 10, 12, 20)  # 80 px, touches LEFT
BOTH = (0, 10, 0, 20)  # 200 px = LEFT + RIGHT


def test_touching_people_predicted_as_one_mask():
    # The merged mask has IoU 120/200 = 0.6 with LEFT and 80/200 = 0.4 with RIGHT (its box equals its mask,
    # so box IoUs are the same). At 0.50, 0.55, 0.60 it matches LEFT: 1 TP, recall 1/2, precision 1 ->
    # recall points 0 ... 0.50 (51 of 101) get 1, the rest 0 -> AP = 51/101. Above 0.60: 0.
    #   AP50 = 51/101 = 0.50495..., AP75 = 0, AP = 3 * 51/101 / 10 = 153/1010 = 0.151485...
    # So merging two people costs at least half the recall; it never counts as two people.
    truth = _labels(LEFT, RIGHT)
    prediction = _pred((0.9, BOTH))
    expected = {"ap": 153 / 1010, "ap50": 51 / 101, "ap75": 0.0}
    expected = {f"{kind}_{name}": value for kind in ("mask", "box") for name, value in expected.items()}
    _assert_scores(coco_scores([truth], [prediction]), expected)
    # Per image: one kept prediction, matched once (to LEFT at 0.6); RIGHT is missed, nothing spurious.
    counts = image_counts(truth, prediction)
    assert counts == {**counts, "people": 2, "predicted": 1, "found": 1, "missed": 1, "spurious": 0}
    assert counts["matched_iou"] == pytest.approx(0.6)


def test_iou_of_exactly_one_half_is_a_match():
    # Two equal touching people (100 px each) predicted as one 200 px mask: IoU 100/200 = 0.5 with each.
    # COCO matches at IoU >= 0.5, so at 0.50 alone it finds one: AP50 = 51/101 (as above), AP = 51/1010.
    # image_counts uses the same rule: found 1.
    truth = _labels((0, 10, 0, 10), (0, 10, 10, 20))
    prediction = _pred((0.9, BOTH))
    scores = coco_scores([truth], [prediction])
    assert scores["mask_ap50"] == pytest.approx(51 / 101, abs=1e-6)
    assert scores["mask_ap"] == pytest.approx(51 / 1010, abs=1e-6)
    assert image_counts(truth, prediction)["found"] == 1


def test_one_person_predicted_in_two_halves():
    # Person 100 px; halves of 50 px scored 0.9 and 0.8: IoU 50/100 = 0.5 each. At 0.50 the 0.9 half takes
    # the person and the 0.8 half is a FP: TP 1, 1; FP 0, 1 -> recall 1, 1; precision 1, 1/2; interpolated
    # 1, 1/2. Every recall point's first recall >= r is the 1st detection -> AP50 = 1. Above 0.50: 0.
    #   AP = 1/10, AP75 = 0. Per image: found 1, spurious 1.
    truth = _labels(A)
    prediction = _pred((0.9, (0, 10, 0, 5)), (0.8, (0, 10, 5, 10)))
    scores = coco_scores([truth], [prediction])
    assert scores["mask_ap50"] == pytest.approx(1.0)
    assert scores["mask_ap"] == pytest.approx(0.1)
    assert scores["mask_ap75"] == 0.0
    counts = image_counts(truth, prediction)
    assert (counts["found"], counts["missed"], counts["spurious"]) == (1, 0, 1)
    assert counts["matched_iou"] == pytest.approx(0.5)


# ----------------------------------------------------------------------------------------------------
# Per-image counts
# ----------------------------------------------------------------------------------------------------

C = (12, 18, 0, 6)  # a third person, 36 px


def test_counts_found_missed_spurious_and_threshold():
    # People A, B, C. Predictions: A exactly (0.9), a blob on background (0.8), B exactly (0.3).
    truth = _labels(A, B, C)
    prediction = _pred((0.9, A), (0.8, ELSEWHERE), (0.3, B))
    # Default threshold 0.5 keeps A and the blob: A found; B and C missed; the blob spurious.
    assert image_counts(truth, prediction) == {
        "people": 3,
        "predicted": 2,
        "found": 1,
        "missed": 2,
        "spurious": 1,
        "matched_iou": 1.0,
    }
    # Threshold 0.3 (inclusive) keeps B too: found 2, missed 1 (C), spurious 1.
    low = image_counts(truth, prediction, score_threshold=0.3)
    assert (low["predicted"], low["found"], low["missed"], low["spurious"]) == (3, 2, 1, 1)
    # Threshold 0.95 keeps nothing: every person missed, no mean IoU.
    none = image_counts(truth, prediction, score_threshold=0.95)
    assert (none["predicted"], none["found"], none["missed"], none["spurious"]) == (0, 0, 3, 0)
    assert math.isnan(none["matched_iou"])


def test_counts_mean_matched_iou():
    # A predicted exactly (IoU 1); B by its left 6 columns (60 px of 100 -> IoU 0.6): mean (1 + 0.6) / 2 = 0.8.
    truth = _labels(A, B)
    prediction = _pred((0.9, A), (0.8, (0, 10, 20, 26)))
    counts = image_counts(truth, prediction)
    assert counts["found"] == 2 and counts["matched_iou"] == pytest.approx(0.8)


def test_counts_accept_label_images_with_a_channel_axis():
    truth = _labels(A, B, C)
    prediction = _pred((0.9, A), (0.8, ELSEWHERE), (0.3, B))
    flat = image_counts(truth, prediction, score_threshold=0.3)
    channel = image_counts(truth[..., None], InstancePrediction(prediction.labels[..., None], prediction.scores), 0.3)
    assert channel == flat
    assert channel["found"] == 2


def test_counts_with_no_people_or_no_predictions():
    empty = np.zeros((H, W), np.int32)
    counts = image_counts(empty, _pred((0.9, A)))
    assert (counts["people"], counts["found"], counts["spurious"]) == (0, 0, 1)
    counts = image_counts(_labels(A, B), _pred())
    assert (counts["people"], counts["found"], counts["missed"], counts["spurious"]) == (2, 0, 2, 0)


def test_prediction_of_another_size_is_refused():
    # pycocotools scores masks of different sizes as IoU 0 silently; a resized prediction must not read as
    # "found nobody". (Before the check this case gave mask AP 0 but box AP 1.)
    truth = _labels(A)
    prediction = _pred((0.9, A), shape=(H // 2, W))
    with pytest.raises(ValueError, match="truth"):
        coco_scores([truth], [prediction])
    with pytest.raises(ValueError, match="truth"):
        image_counts(truth, prediction)
