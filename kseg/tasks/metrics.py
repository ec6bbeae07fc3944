"""Segmentation metrics computed from logits, usable in ``model.compile(metrics=...)``.

Predictions: binary models (``num_classes=1``, logits ``[B, H, W, 1]``) predict foreground where
``sigmoid(logit) >= threshold``, tested as ``logit >= probability_to_logit(threshold)`` so no sigmoid is
needed; multi-class models (logits ``[B, H, W, C]``) predict ``argmax`` over classes. Truth: binary masks in
{0, 1} (``> 0.5`` is foreground); multi-class integer class ids ``[B, H, W, 1]`` or ``[B, H, W]``.

A binary task is handled as two classes (0 = background, 1 = foreground) so that both kinds of task share
one confusion-count path. Dice, IoU, sensitivity and specificity are scored per *foreground* class (ids
``1 .. C-1``) and then averaged over those classes: background dominates most images, and letting it in
would push every score towards 1. Pixel accuracy is the fraction of pixels whose predicted class equals
the true class (all classes), which for a binary task is ``(TP + TN) / N``.

``per_image=True`` (default): each image gets its own score and the metric is the mean over all images
seen, so a small lesion counts as much as a large one. ``per_image=False``: TP/FP/FN/TN are pooled over all
pixels of all images seen and the score is computed once from the pooled counts.

Empty denominators never give NaN; the value used is what a perfect prediction would score:
Dice and IoU are 1.0 when prediction and truth are both empty (for that class), sensitivity is 1.0 when the
truth has no positives, specificity is 1.0 when the truth has no negatives. Before any update the metrics
return 0.0.

``sample_weight`` (optional) is one weight per image, shape ``[B]`` (or ``[B, 1]``, or a scalar). With
``per_image=True`` the result is the weighted mean of the image scores; with ``per_image=False`` each
image's pixel counts are multiplied by its weight before pooling. A weight of 0 leaves an image out.
Per-pixel weights are not supported.
"""

import keras
from keras import ops

from kseg.core.defaults import THRESHOLD, probability_to_logit

_FLOAT = "float32"


def _safe_ratio(numerator, denominator):
    """``numerator / denominator``, or 1.0 where the denominator is 0 (the empty-set convention above)."""
    empty = ops.equal(denominator, 0.0)
    return ops.where(empty, 1.0, numerator / ops.where(empty, 1.0, denominator))


def _foreground_mean(per_class):
    """Average ``[..., C]`` per-class scores over the foreground classes ``1 .. C-1``."""
    return ops.mean(per_class[..., 1:], axis=-1)


class _ConfusionMetric(keras.metrics.Metric):
    """Turns logits and labels into per-class TP/FP/FN/TN and accumulates them; subclasses only score."""

    def __init__(self, num_classes=1, threshold=THRESHOLD, per_image=True, name=None, dtype=None):
        super().__init__(name=name, dtype=dtype)
        if int(num_classes) < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes!r}")
        self.num_classes = int(num_classes)
        self.threshold = float(threshold)
        self.per_image = bool(per_image)
        self._logit_threshold = probability_to_logit(self.threshold)  # also validates the threshold
        # Binary is modelled as background + foreground, so there are always at least 2 classes.
        self._count_classes = max(self.num_classes, 2)
        shape = (self._count_classes,)
        self.tp = self.add_variable(shape=shape, initializer="zeros", dtype=_FLOAT, name="tp")
        self.fp = self.add_variable(shape=shape, initializer="zeros", dtype=_FLOAT, name="fp")
        self.fn = self.add_variable(shape=shape, initializer="zeros", dtype=_FLOAT, name="fn")
        self.tn = self.add_variable(shape=shape, initializer="zeros", dtype=_FLOAT, name="tn")
        self.score_sum = self.add_variable(shape=(), initializer="zeros", dtype=_FLOAT, name="score_sum")
        self.weight_sum = self.add_variable(shape=(), initializer="zeros", dtype=_FLOAT, name="weight_sum")

    def _score(self, tp, fp, fn, tn):
        """Map per-class counts ``[..., C]`` to one score ``[...]``. Implemented by subclasses."""
        raise NotImplementedError

    def _class_ids(self, y_true, y_pred):
        """Predicted and true class ids, both int32 ``[B, H, W]``."""
        y_pred = ops.cast(y_pred, _FLOAT)
        y_true = ops.cast(y_true, _FLOAT)
        if len(y_true.shape) == len(y_pred.shape):
            y_true = ops.squeeze(y_true, -1)
        if self.num_classes == 1:
            pred = ops.cast(ops.greater_equal(y_pred[..., 0], self._logit_threshold), "int32")
            true = ops.cast(ops.greater(y_true, 0.5), "int32")
        else:
            pred = ops.cast(ops.argmax(y_pred, axis=-1), "int32")
            true = ops.cast(ops.round(y_true), "int32")
        return pred, true

    def update_state(self, y_true, y_pred, sample_weight=None):
        pred_ids, true_ids = self._class_ids(y_true, y_pred)
        pred = ops.one_hot(pred_ids, self._count_classes, dtype=_FLOAT)
        true = ops.one_hot(true_ids, self._count_classes, dtype=_FLOAT)
        # Per-image, per-class counts: [B, C].
        tp = ops.sum(pred * true, axis=(1, 2))
        fp = ops.sum(pred * (1.0 - true), axis=(1, 2))
        fn = ops.sum((1.0 - pred) * true, axis=(1, 2))
        tn = ops.sum((1.0 - pred) * (1.0 - true), axis=(1, 2))

        weights = ops.ones_like(tp[:, 0])  # [B]; batch size may be unknown in graph mode
        if sample_weight is not None:
            weights = weights * ops.reshape(ops.cast(sample_weight, _FLOAT), (-1,))
        w = ops.expand_dims(weights, -1)

        self.tp.assign_add(ops.sum(w * tp, axis=0))
        self.fp.assign_add(ops.sum(w * fp, axis=0))
        self.fn.assign_add(ops.sum(w * fn, axis=0))
        self.tn.assign_add(ops.sum(w * tn, axis=0))
        self.score_sum.assign_add(ops.sum(weights * self._score(tp, fp, fn, tn)))
        self.weight_sum.assign_add(ops.sum(weights))

    def result(self):
        if self.per_image:
            value = self.score_sum / ops.maximum(self.weight_sum, 1e-12)
        else:
            value = self._score(self.tp, self.fp, self.fn, self.tn)
        return ops.where(ops.greater(self.weight_sum, 0.0), value, 0.0)

    def get_config(self):
        return {
            **super().get_config(),
            "num_classes": self.num_classes,
            "threshold": self.threshold,
            "per_image": self.per_image,
        }


@keras.saving.register_keras_serializable(package="kseg")
class Dice(_ConfusionMetric):
    """Dice (F1) = 2TP / (2TP + FP + FN): the usual headline number for lesion segmentation."""

    def __init__(self, num_classes=1, threshold=THRESHOLD, per_image=True, name="dice", dtype=None):
        super().__init__(num_classes=num_classes, threshold=threshold, per_image=per_image, name=name, dtype=dtype)

    def _score(self, tp, fp, fn, tn):
        return _foreground_mean(_safe_ratio(2.0 * tp, 2.0 * tp + fp + fn))


@keras.saving.register_keras_serializable(package="kseg")
class IoU(_ConfusionMetric):
    """Jaccard index TP / (TP + FP + FN); unlike ``keras.metrics.IoU`` it takes logits and skips background."""

    def __init__(self, num_classes=1, threshold=THRESHOLD, per_image=True, name="iou", dtype=None):
        super().__init__(num_classes=num_classes, threshold=threshold, per_image=per_image, name=name, dtype=dtype)

    def _score(self, tp, fp, fn, tn):
        return _foreground_mean(_safe_ratio(tp, tp + fp + fn))


@keras.saving.register_keras_serializable(package="kseg")
class PixelAccuracy(_ConfusionMetric):
    """Fraction of correctly classified pixels over all classes, background included."""

    def __init__(self, num_classes=1, threshold=THRESHOLD, per_image=True, name="pixel_accuracy", dtype=None):
        super().__init__(num_classes=num_classes, threshold=threshold, per_image=per_image, name=name, dtype=dtype)

    def _score(self, tp, fp, fn, tn):
        # Every pixel has exactly one true class, so summing TP + FN over classes counts the pixels.
        return _safe_ratio(ops.sum(tp, axis=-1), ops.sum(tp + fn, axis=-1))


@keras.saving.register_keras_serializable(package="kseg")
class Sensitivity(_ConfusionMetric):
    """Recall TP / (TP + FN): how much of the lesion was found."""

    def __init__(self, num_classes=1, threshold=THRESHOLD, per_image=True, name="sensitivity", dtype=None):
        super().__init__(num_classes=num_classes, threshold=threshold, per_image=per_image, name=name, dtype=dtype)

    def _score(self, tp, fp, fn, tn):
        return _foreground_mean(_safe_ratio(tp, tp + fn))


@keras.saving.register_keras_serializable(package="kseg")
class Specificity(_ConfusionMetric):
    """TN / (TN + FP): how much healthy tissue was left alone."""

    def __init__(self, num_classes=1, threshold=THRESHOLD, per_image=True, name="specificity", dtype=None):
        super().__init__(num_classes=num_classes, threshold=threshold, per_image=per_image, name=name, dtype=dtype)

    def _score(self, tp, fp, fn, tn):
        return _foreground_mean(_safe_ratio(tn, tn + fp))


def default_metrics(num_classes=1, threshold=THRESHOLD, per_image=True):
    """The metrics every training and evaluation run reports, so their logs line up."""
    kwargs = {"num_classes": num_classes, "threshold": threshold, "per_image": per_image}
    return [
        Dice(name="dice", **kwargs),
        IoU(name="iou", **kwargs),
        PixelAccuracy(name="pixel_accuracy", **kwargs),
        Sensitivity(name="sensitivity", **kwargs),
        Specificity(name="specificity", **kwargs),
    ]
