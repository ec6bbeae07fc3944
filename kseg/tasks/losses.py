"""Segmentation losses that take raw logits.

Every loss here returns one value per image (shape ``[B]``) and leaves the batch reduction to Keras, so
``sample_weight`` of shape ``[B]`` weights whole images the same way for every loss, and a combined loss
(BCE + Dice) adds like with like.

All arithmetic is float32: under a ``mixed_bfloat16``/``mixed_float16`` policy the logits arrive in half
precision, and sums of sigmoid/softmax over ``H*W`` pixels (Dice, Tversky) or logs of small probabilities
(cross-entropy, focal) lose too much precision there.

Binary losses expect ``y_pred`` logits ``[B, H, W, 1]`` and ``y_true`` in {0, 1} ``[B, H, W, 1]``.
Categorical losses expect ``y_pred`` logits ``[B, H, W, C]`` and ``y_true`` integer class ids
``[B, H, W, 1]`` (or ``[B, H, W]``); the class count is read from ``y_pred``.

Region losses (Dice, Tversky) are soft: they use probabilities, not thresholded masks, so they have a
gradient. For several classes they are computed per class and averaged over all classes (background
included). Summing over the class axis instead would make the denominator the constant ``2*H*W`` (softmax
sums to one) and reduce Dice to "one minus the mean probability of the true class", which throws away the
robustness to class imbalance that is the reason to use Dice at all.
"""

import keras
from keras import ops

_FLOAT = "float32"


def _binary_inputs(y_true, y_pred):
    """Float32 targets and foreground probabilities, both ``[B, H, W, 1]``."""
    y_pred = ops.cast(y_pred, _FLOAT)
    y_true = ops.cast(y_true, _FLOAT)
    if len(y_true.shape) == len(y_pred.shape) - 1:
        y_true = ops.expand_dims(y_true, -1)
    return y_true, ops.sigmoid(y_pred)


def _class_ids(y_true, y_pred):
    """Integer class ids ``[B, H, W]`` from ``[B, H, W, 1]`` or ``[B, H, W]`` labels, int or float."""
    if len(y_true.shape) == len(y_pred.shape):
        y_true = ops.squeeze(y_true, -1)
    # Keras casts y_true to the loss dtype before ``call``; round so 2.9999 is not truncated to 2.
    return ops.cast(ops.round(ops.cast(y_true, _FLOAT)), "int32")


def _categorical_inputs(y_true, y_pred):
    """One-hot float32 targets and softmax probabilities, both ``[B, H, W, C]``."""
    y_pred = ops.cast(y_pred, _FLOAT)
    num_classes = y_pred.shape[-1]
    if num_classes is None:
        raise ValueError("categorical losses need a static class axis on y_pred")
    one_hot = ops.one_hot(_class_ids(y_true, y_pred), num_classes, dtype=_FLOAT)
    return one_hot, ops.softmax(y_pred, axis=-1)


def _sparse_ce(y_true, y_pred):
    """Keras' logit sparse categorical cross-entropy, per pixel ``[B, H, W]``."""
    return keras.losses.sparse_categorical_crossentropy(
        _class_ids(y_true, y_pred), ops.cast(y_pred, _FLOAT), from_logits=True
    )


def _per_image_mean(values):
    """Mean over every axis except the batch axis: ``[B, ...] -> [B]``."""
    return ops.mean(values, axis=tuple(range(1, len(values.shape))))


def _soft_dice(target, prob, smooth):
    """Per-image soft Dice averaged over the class axis: ``[B, H, W, C] -> [B]``."""
    intersection = ops.sum(target * prob, axis=(1, 2))
    total = ops.sum(target, axis=(1, 2)) + ops.sum(prob, axis=(1, 2))
    dice = (2.0 * intersection + smooth) / (total + smooth)
    return ops.mean(dice, axis=-1)


def _soft_tversky(target, prob, alpha, beta, smooth):
    """Per-image soft Tversky index averaged over the class axis: ``[B, H, W, C] -> [B]``."""
    tp = ops.sum(target * prob, axis=(1, 2))
    fp = ops.sum((1.0 - target) * prob, axis=(1, 2))
    fn = ops.sum(target * (1.0 - prob), axis=(1, 2))
    index = (tp + smooth) / (tp + alpha * fp + beta * fn + smooth)
    return ops.mean(index, axis=-1)


class _SegLoss(keras.losses.Loss):
    """Pins the loss dtype to float32 whatever the global dtype policy, so outputs are never half precision."""

    def __init__(self, name, reduction="sum_over_batch_size"):
        super().__init__(name=name, reduction=reduction, dtype=_FLOAT)


# --------------------------------------------------------------------------------------------------
# Binary (C == 1)
# --------------------------------------------------------------------------------------------------


@keras.saving.register_keras_serializable(package="kseg")
class BinaryCrossentropyLoss(_SegLoss):
    """Keras' logit BCE, averaged per image so it composes with the per-image region losses."""

    def __init__(self, name="bce", reduction="sum_over_batch_size"):
        super().__init__(name=name, reduction=reduction)

    def call(self, y_true, y_pred):
        y_true, _ = _binary_inputs(y_true, y_pred)
        bce = keras.losses.binary_crossentropy(y_true, ops.cast(y_pred, _FLOAT), from_logits=True)
        return _per_image_mean(bce)


@keras.saving.register_keras_serializable(package="kseg")
class DiceLoss(_SegLoss):
    """``1 - soft Dice`` per image; ``smooth`` makes an empty truth with an empty prediction cost ~0, not NaN."""

    _inputs = staticmethod(_binary_inputs)

    def __init__(self, smooth=1.0, name="dice", reduction="sum_over_batch_size"):
        super().__init__(name=name, reduction=reduction)
        self.smooth = float(smooth)

    def call(self, y_true, y_pred):
        target, prob = self._inputs(y_true, y_pred)
        return 1.0 - _soft_dice(target, prob, self.smooth)

    def get_config(self):
        return {**super().get_config(), "smooth": self.smooth}


@keras.saving.register_keras_serializable(package="kseg")
class BCEDiceLoss(_SegLoss):
    """BCE gives dense per-pixel gradients early on; Dice keeps small structures from being swamped."""

    def __init__(self, bce_weight=1.0, dice_weight=1.0, smooth=1.0, name="bce_dice", reduction="sum_over_batch_size"):
        super().__init__(name=name, reduction=reduction)
        self.bce_weight = float(bce_weight)
        self.dice_weight = float(dice_weight)
        self.smooth = float(smooth)

    def call(self, y_true, y_pred):
        target, prob = _binary_inputs(y_true, y_pred)
        bce = _per_image_mean(keras.losses.binary_crossentropy(target, ops.cast(y_pred, _FLOAT), from_logits=True))
        dice = 1.0 - _soft_dice(target, prob, self.smooth)
        return self.bce_weight * bce + self.dice_weight * dice

    def get_config(self):
        return {
            **super().get_config(),
            "bce_weight": self.bce_weight,
            "dice_weight": self.dice_weight,
            "smooth": self.smooth,
        }


@keras.saving.register_keras_serializable(package="kseg")
class BinaryFocalLoss(_SegLoss):
    """Keras' logit binary focal cross-entropy (same parameters and defaults), averaged per image."""

    def __init__(
        self, gamma=2.0, alpha=0.25, apply_class_balancing=False, name="focal", reduction="sum_over_batch_size"
    ):
        super().__init__(name=name, reduction=reduction)
        self.gamma = float(gamma)
        self.alpha = float(alpha)
        self.apply_class_balancing = bool(apply_class_balancing)

    def call(self, y_true, y_pred):
        y_true, _ = _binary_inputs(y_true, y_pred)
        focal = keras.losses.binary_focal_crossentropy(
            y_true,
            ops.cast(y_pred, _FLOAT),
            apply_class_balancing=self.apply_class_balancing,
            alpha=self.alpha,
            gamma=self.gamma,
            from_logits=True,
        )
        return _per_image_mean(focal)

    def get_config(self):
        return {
            **super().get_config(),
            "gamma": self.gamma,
            "alpha": self.alpha,
            "apply_class_balancing": self.apply_class_balancing,
        }


@keras.saving.register_keras_serializable(package="kseg")
class TverskyLoss(_SegLoss):
    """``1 - soft Tversky`` per image.

    ``alpha`` weights false positives and ``beta`` false negatives. The defaults (0.3, 0.7) favour recall,
    which suits small lesions; ``alpha == beta == 0.5`` is exactly the Dice loss.
    """

    _inputs = staticmethod(_binary_inputs)

    def __init__(self, alpha=0.3, beta=0.7, smooth=1.0, name="tversky", reduction="sum_over_batch_size"):
        super().__init__(name=name, reduction=reduction)
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.smooth = float(smooth)

    def call(self, y_true, y_pred):
        target, prob = self._inputs(y_true, y_pred)
        return 1.0 - _soft_tversky(target, prob, self.alpha, self.beta, self.smooth)

    def get_config(self):
        return {**super().get_config(), "alpha": self.alpha, "beta": self.beta, "smooth": self.smooth}


# --------------------------------------------------------------------------------------------------
# Categorical (C > 1, integer class ids)
# --------------------------------------------------------------------------------------------------


@keras.saving.register_keras_serializable(package="kseg")
class SparseCategoricalCrossentropyLoss(_SegLoss):
    """Keras' logit sparse categorical cross-entropy, averaged per image."""

    def __init__(self, name="ce", reduction="sum_over_batch_size"):
        super().__init__(name=name, reduction=reduction)

    def call(self, y_true, y_pred):
        return _per_image_mean(_sparse_ce(y_true, y_pred))


@keras.saving.register_keras_serializable(package="kseg")
class CategoricalDiceLoss(DiceLoss):
    """``1 - soft Dice`` per image, Dice computed per class over the one-hot truth and averaged over classes."""

    _inputs = staticmethod(_categorical_inputs)


@keras.saving.register_keras_serializable(package="kseg")
class CEDiceLoss(_SegLoss):
    """Multi-class counterpart of :class:`BCEDiceLoss`: sparse CE plus class-averaged soft Dice."""

    def __init__(self, ce_weight=1.0, dice_weight=1.0, smooth=1.0, name="ce_dice", reduction="sum_over_batch_size"):
        super().__init__(name=name, reduction=reduction)
        self.ce_weight = float(ce_weight)
        self.dice_weight = float(dice_weight)
        self.smooth = float(smooth)

    def call(self, y_true, y_pred):
        target, prob = _categorical_inputs(y_true, y_pred)
        ce = _per_image_mean(_sparse_ce(y_true, y_pred))
        dice = 1.0 - _soft_dice(target, prob, self.smooth)
        return self.ce_weight * ce + self.dice_weight * dice

    def get_config(self):
        return {
            **super().get_config(),
            "ce_weight": self.ce_weight,
            "dice_weight": self.dice_weight,
            "smooth": self.smooth,
        }


@keras.saving.register_keras_serializable(package="kseg")
class CategoricalFocalLoss(_SegLoss):
    """Keras' logit categorical focal cross-entropy (same parameters and defaults) on one-hot truth, per image."""

    def __init__(self, gamma=2.0, alpha=0.25, name="focal", reduction="sum_over_batch_size"):
        super().__init__(name=name, reduction=reduction)
        self.gamma = float(gamma)
        self.alpha = float(alpha)

    def call(self, y_true, y_pred):
        target, _ = _categorical_inputs(y_true, y_pred)
        focal = keras.losses.categorical_focal_crossentropy(
            target, ops.cast(y_pred, _FLOAT), alpha=self.alpha, gamma=self.gamma, from_logits=True
        )
        return _per_image_mean(focal)

    def get_config(self):
        return {**super().get_config(), "gamma": self.gamma, "alpha": self.alpha}


@keras.saving.register_keras_serializable(package="kseg")
class CategoricalTverskyLoss(TverskyLoss):
    """``1 - soft Tversky`` per image, computed per class and averaged over classes (see :class:`TverskyLoss`)."""

    _inputs = staticmethod(_categorical_inputs)


# --------------------------------------------------------------------------------------------------
# Lookup by name
# --------------------------------------------------------------------------------------------------

#: name -> (binary loss class, categorical loss class)
_LOSSES = {
    "bce": (BinaryCrossentropyLoss, SparseCategoricalCrossentropyLoss),
    "dice": (DiceLoss, CategoricalDiceLoss),
    "bce_dice": (BCEDiceLoss, CEDiceLoss),
    "focal": (BinaryFocalLoss, CategoricalFocalLoss),
    "tversky": (TverskyLoss, CategoricalTverskyLoss),
}

#: Names accepted by :func:`get_loss` (configs and the CLI refer to losses by these).
LOSS_NAMES = tuple(_LOSSES)


def get_loss(name, num_classes=1, **kwargs):
    """Build a loss from a config name; the task's class count picks the binary or categorical variant.

    ``kwargs`` go to the loss constructor. Note that the categorical ``"bce_dice"`` takes ``ce_weight``
    where the binary one takes ``bce_weight``.
    """
    if name not in _LOSSES:
        raise ValueError(f"unknown loss {name!r}; valid names: {', '.join(LOSS_NAMES)}")
    if int(num_classes) < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes!r}")
    binary_cls, categorical_cls = _LOSSES[name]
    cls = binary_cls if int(num_classes) == 1 else categorical_cls
    return cls(**kwargs)
