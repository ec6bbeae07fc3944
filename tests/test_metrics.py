"""Metrics against a plain NumPy reference written independently of kseg.tasks.metrics."""

import math
import zlib

import keras
import numpy as np
import pytest
import tensorflow as tf

from kseg.core.defaults import THRESHOLD
from kseg.tasks import metrics

METRIC_CLASSES = {
    "dice": metrics.Dice,
    "iou": metrics.IoU,
    "pixel_accuracy": metrics.PixelAccuracy,
    "sensitivity": metrics.Sensitivity,
    "specificity": metrics.Specificity,
}
SIZE = 6


# ----------------------------------------------------------------------------------------------------
# NumPy reference
# ----------------------------------------------------------------------------------------------------


def _ratio_or_one(num, den):
    return 1.0 if den == 0 else num / den


def _class_score(name, tp, fp, fn, tn):
    if name == "dice":
        return _ratio_or_one(2 * tp, 2 * tp + fp + fn)
    if name == "iou":
        return _ratio_or_one(tp, tp + fp + fn)
    if name == "sensitivity":
        return _ratio_or_one(tp, tp + fn)
    if name == "specificity":
        return _ratio_or_one(tn, tn + fp)
    raise AssertionError(name)


def _predicted_ids(logits, num_classes, threshold):
    if num_classes == 1:
        prob = 1.0 / (1.0 + np.exp(-logits[..., 0].astype(np.float64)))
        return (prob >= threshold).astype(int)
    return np.argmax(logits, axis=-1)


def _counts(true_ids, pred_ids, cls):
    t = true_ids == cls
    p = pred_ids == cls
    return (np.sum(t & p), np.sum(~t & p), np.sum(t & ~p), np.sum(~t & ~p))


def reference(name, batches, num_classes=1, threshold=THRESHOLD, per_image=True):
    """Score a list of ``(y_true, logits)`` batches the slow, obvious way."""
    true_ids = np.concatenate([np.round(y[..., 0]).astype(int) for y, _ in batches])
    pred_ids = np.concatenate([_predicted_ids(p, num_classes, threshold) for _, p in batches])
    foreground = range(1, max(num_classes, 2))

    def score(t, p):
        if name == "pixel_accuracy":
            return np.mean(t == p)
        return np.mean([_class_score(name, *_counts(t, p, c)) for c in foreground])

    if per_image:
        return float(np.mean([score(t, p) for t, p in zip(true_ids, pred_ids)]))
    if name == "pixel_accuracy":
        return float(np.mean(true_ids == pred_ids))
    pooled = [_counts(true_ids, pred_ids, c) for c in foreground]
    return float(np.mean([_class_score(name, *c) for c in pooled]))


# ----------------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------------


def _random_batch(rng, batch, num_classes):
    """Random masks and logits, with some empty truths and empty predictions mixed in."""
    if num_classes == 1:
        y_true = (rng.random((batch, SIZE, SIZE, 1)) < 0.3).astype(np.float32)
        logits = rng.normal(size=(batch, SIZE, SIZE, 1)).astype(np.float32)
        y_true[0] = 0.0  # empty truth
        if batch > 1:
            logits[1] = -5.0  # empty prediction
        if batch > 2:
            y_true[2] = 0.0  # both empty
            logits[2] = -5.0
    else:
        y_true = rng.integers(0, num_classes, (batch, SIZE, SIZE, 1)).astype(np.int32)
        logits = rng.normal(size=(batch, SIZE, SIZE, num_classes)).astype(np.float32)
        y_true[0] = 0  # only background in the truth
        if batch > 1:
            logits[1, ..., 0] += 10.0  # only background predicted
    return y_true, logits


def _accumulate(metric, batches, sample_weights=None):
    for i, (y_true, logits) in enumerate(batches):
        sw = None if sample_weights is None else sample_weights[i]
        metric.update_state(y_true, logits, sample_weight=sw)
    return float(metric.result())


# ----------------------------------------------------------------------------------------------------
# Tests
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(METRIC_CLASSES))
@pytest.mark.parametrize("per_image", [True, False])
@pytest.mark.parametrize("num_classes,threshold", [(1, 0.5), (1, 0.3), (1, 0.8), (3, 0.5)])
def test_matches_numpy_reference(name, per_image, num_classes, threshold):
    rng = np.random.default_rng(zlib.crc32(f"{name}-{per_image}-{num_classes}-{threshold}".encode()))
    batches = [_random_batch(rng, b, num_classes) for b in (4, 3, 1)]
    metric = METRIC_CLASSES[name](num_classes=num_classes, threshold=threshold, per_image=per_image)
    got = _accumulate(metric, batches)
    want = reference(name, batches, num_classes, threshold, per_image)
    assert math.isfinite(got)
    assert got == pytest.approx(want, abs=1e-5)


def test_per_image_and_pooled_differ():
    """Guards against one mode silently computing the other: a tiny and a large lesion disagree."""
    y = np.zeros((2, SIZE, SIZE, 1), np.float32)
    y[0, 0, 0] = 1.0  # one-pixel lesion, missed
    y[1, :, :3] = 1.0  # large lesion, found
    logits = np.where(y > 0, 5.0, -5.0).astype(np.float32)
    logits[0, 0, 0] = -5.0
    per_image = _accumulate(metrics.Dice(per_image=True), [(y, logits)])
    pooled = _accumulate(metrics.Dice(per_image=False), [(y, logits)])
    assert per_image == pytest.approx(0.5)  # (0 + 1) / 2
    assert pooled == pytest.approx(2 * 18 / (2 * 18 + 1))


def _binary(y, logits):
    return np.asarray(y, np.float32)[None, ..., None], np.asarray(logits, np.float32)[None, ..., None]


@pytest.mark.parametrize("per_image", [True, False])
def test_both_empty_scores_one(per_image):
    y, logits = _binary(np.zeros((4, 4)), np.full((4, 4), -3.0))
    for name, cls in METRIC_CLASSES.items():
        assert _accumulate(cls(per_image=per_image), [(y, logits)]) == 1.0, name


@pytest.mark.parametrize("per_image", [True, False])
def test_empty_truth_with_false_positives(per_image):
    pred = np.full((4, 4), -3.0)
    pred[0, :] = 3.0  # 4 false positives out of 16 negatives
    y, logits = _binary(np.zeros((4, 4)), pred)
    got = {name: _accumulate(cls(per_image=per_image), [(y, logits)]) for name, cls in METRIC_CLASSES.items()}
    assert got == pytest.approx(
        {"dice": 0.0, "iou": 0.0, "pixel_accuracy": 0.75, "sensitivity": 1.0, "specificity": 0.75}
    )


@pytest.mark.parametrize("per_image", [True, False])
def test_empty_prediction(per_image):
    truth = np.zeros((4, 4))
    truth[:2, :2] = 1.0  # 4 positives, all missed
    y, logits = _binary(truth, np.full((4, 4), -3.0))
    got = {name: _accumulate(cls(per_image=per_image), [(y, logits)]) for name, cls in METRIC_CLASSES.items()}
    assert got == pytest.approx(
        {"dice": 0.0, "iou": 0.0, "pixel_accuracy": 0.75, "sensitivity": 0.0, "specificity": 1.0}
    )


def test_all_foreground_truth_specificity_is_one():
    y, logits = _binary(np.ones((4, 4)), np.full((4, 4), 3.0))
    assert _accumulate(metrics.Specificity(), [(y, logits)]) == 1.0


@pytest.mark.parametrize("num_classes", [1, 4])
@pytest.mark.parametrize("per_image", [True, False])
def test_perfect_prediction_scores_one(num_classes, per_image):
    rng = np.random.default_rng(3)
    if num_classes == 1:
        y = (rng.random((3, SIZE, SIZE, 1)) < 0.4).astype(np.float32)
        logits = np.where(y > 0, 4.0, -4.0).astype(np.float32)
    else:
        y = rng.integers(0, num_classes, (3, SIZE, SIZE, 1))
        logits = 8.0 * np.eye(num_classes, dtype=np.float32)[y[..., 0]]
    for metric in metrics.default_metrics(num_classes, per_image=per_image):
        assert _accumulate(metric, [(y, logits)]) == pytest.approx(1.0), metric.name


def test_no_nan_before_update_and_after_reset():
    rng = np.random.default_rng(4)
    batch = _random_batch(rng, 3, 1)
    for per_image in (True, False):
        for metric in metrics.default_metrics(per_image=per_image):
            assert float(metric.result()) == 0.0
            first = _accumulate(metric, [batch])
            assert first == pytest.approx(reference(metric.name, [batch], per_image=per_image), abs=1e-6)
            metric.reset_state()
            assert float(metric.result()) == 0.0
            other = _random_batch(rng, 2, 1)
            assert _accumulate(metric, [other]) == pytest.approx(
                reference(metric.name, [other], per_image=per_image), abs=1e-6
            )


def test_multiclass_float_labels_and_rank3_labels():
    rng = np.random.default_rng(5)
    y, logits = _random_batch(rng, 3, 3)
    want = reference("dice", [(y, logits)], num_classes=3)
    assert _accumulate(metrics.Dice(num_classes=3), [(y.astype(np.float32), logits)]) == pytest.approx(want)
    assert _accumulate(metrics.Dice(num_classes=3), [(y[..., 0], logits)]) == pytest.approx(want)


def test_sample_weight_selects_and_weights_images():
    rng = np.random.default_rng(6)
    y, logits = _random_batch(rng, 4, 1)
    w = np.array([0.0, 1.0, 2.0, 0.0], np.float32)
    for name, cls in METRIC_CLASSES.items():
        # per_image: weighted mean of image scores.
        scores = [reference(name, [(y[i : i + 1], logits[i : i + 1])]) for i in range(4)]
        got = _accumulate(cls(), [(y, logits)], sample_weights=[w])
        assert got == pytest.approx((scores[1] + 2 * scores[2]) / 3, abs=1e-6), name
        # pooled: an integer weight is the same as repeating the image.
        repeated = [(y[[1, 2, 2]], logits[[1, 2, 2]])]
        got = _accumulate(cls(per_image=False), [(y, logits)], sample_weights=[w])
        assert got == pytest.approx(reference(name, repeated, per_image=False), abs=1e-6), name


def test_graph_mode_with_unknown_batch():
    metric = metrics.IoU(num_classes=3)
    spec = [tf.TensorSpec([None, SIZE, SIZE, 1], tf.int32), tf.TensorSpec([None, SIZE, SIZE, 3], tf.float32)]

    @tf.function(input_signature=spec)
    def update(y_true, y_pred):
        metric.update_state(y_true, y_pred)
        return metric.result()

    rng = np.random.default_rng(7)
    batches = [_random_batch(rng, b, 3) for b in (2, 5)]
    for y, logits in batches:
        update(tf.constant(y), tf.constant(logits))
    assert float(metric.result()) == pytest.approx(reference("iou", batches, num_classes=3), abs=1e-6)


def test_arguments_are_validated():
    with pytest.raises(ValueError):
        metrics.Dice(threshold=1.0)
    with pytest.raises(ValueError):
        metrics.Dice(num_classes=0)


def test_default_metrics():
    found = metrics.default_metrics(num_classes=3, threshold=0.4)
    assert [m.name for m in found] == ["dice", "iou", "pixel_accuracy", "sensitivity", "specificity"]
    assert [type(m) for m in found] == list(METRIC_CLASSES.values())
    assert all(m.num_classes == 3 and m.threshold == 0.4 and m.per_image for m in found)


@pytest.mark.parametrize("num_classes,threshold", [(1, 0.35), (3, 0.5)])
def test_compile_and_evaluate_match_reference(num_classes, threshold):
    keras.utils.set_random_seed(8)
    rng = np.random.default_rng(8)
    x = rng.normal(size=(6, SIZE, SIZE, 2)).astype(np.float32)
    if num_classes == 1:
        y = (rng.random((6, SIZE, SIZE, 1)) < 0.4).astype(np.float32)
        loss = keras.losses.BinaryCrossentropy(from_logits=True)
    else:
        y = rng.integers(0, num_classes, (6, SIZE, SIZE, 1)).astype(np.int32)
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model = keras.Sequential([keras.Input((SIZE, SIZE, 2)), keras.layers.Conv2D(num_classes, 1)])
    compiled = metrics.default_metrics(num_classes, threshold=threshold) + [
        metrics.Dice(num_classes, threshold, per_image=False, name="dice_pooled")
    ]
    model.compile(optimizer="sgd", loss=loss, metrics=compiled)
    got = model.evaluate(x, y, batch_size=4, verbose=0, return_dict=True)  # batches of 4 and 2
    logits = model.predict(x, verbose=0)
    for name in METRIC_CLASSES:
        want = reference(name, [(y, logits)], num_classes, threshold)
        assert got[name] == pytest.approx(want, abs=1e-5), name
    pooled = reference("dice", [(y, logits)], num_classes, threshold, per_image=False)
    assert got["dice_pooled"] == pytest.approx(pooled, abs=1e-5)
