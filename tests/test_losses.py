"""Losses against plain NumPy references, plus names, dtypes and serialization."""

import keras
import numpy as np
import pytest

from kseg.tasks import losses, metrics

SIZE = 5
C = 3


# ----------------------------------------------------------------------------------------------------
# NumPy references, one value per image
# ----------------------------------------------------------------------------------------------------


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def ref_bce(y, x):
    per_pixel = np.maximum(x, 0) - x * y + np.log1p(np.exp(-np.abs(x)))
    return per_pixel.mean(axis=(1, 2, 3))


def ref_dice(t, p, smooth=1.0):
    """Soft Dice loss on ``[B, H, W, K]`` targets/probabilities, averaged over K."""
    inter = (t * p).sum(axis=(1, 2))
    dice = (2 * inter + smooth) / (t.sum(axis=(1, 2)) + p.sum(axis=(1, 2)) + smooth)
    return 1.0 - dice.mean(axis=-1)


def ref_tversky(t, p, alpha, beta, smooth=1.0):
    tp = (t * p).sum(axis=(1, 2))
    fp = ((1 - t) * p).sum(axis=(1, 2))
    fn = (t * (1 - p)).sum(axis=(1, 2))
    return 1.0 - ((tp + smooth) / (tp + alpha * fp + beta * fn + smooth)).mean(axis=-1)


def ref_binary_focal(y, x, gamma, alpha=None):
    p = _sigmoid(x)
    p_t = y * p + (1 - y) * (1 - p)
    focal = (1 - p_t) ** gamma * -np.log(p_t)
    if alpha is not None:
        focal *= y * alpha + (1 - y) * (1 - alpha)
    return focal.mean(axis=(1, 2, 3))


def _one_hot(ids):
    return np.eye(C)[ids[..., 0]]


def ref_ce(ids, x):
    p_true = (_softmax(x) * _one_hot(ids)).sum(-1)
    return -np.log(p_true).mean(axis=(1, 2))


def ref_categorical_focal(ids, x, gamma, alpha):
    p_true = (_softmax(x) * _one_hot(ids)).sum(-1)
    return (alpha * (1 - p_true) ** gamma * -np.log(p_true)).mean(axis=(1, 2))


@pytest.fixture
def binary_data():
    rng = np.random.default_rng(0)
    y = (rng.random((3, SIZE, SIZE, 1)) < 0.4).astype(np.float32)
    y[2] = 0.0  # an empty mask
    x = rng.normal(scale=2.0, size=(3, SIZE, SIZE, 1)).astype(np.float32)
    return y, x


@pytest.fixture
def categorical_data():
    rng = np.random.default_rng(1)
    ids = rng.integers(0, C, (3, SIZE, SIZE, 1)).astype(np.int32)
    x = rng.normal(scale=2.0, size=(3, SIZE, SIZE, C)).astype(np.float32)
    return ids, x


def _binary_cases(y, x):
    p = _sigmoid(x.astype(np.float64))
    return [
        (losses.BinaryCrossentropyLoss(), ref_bce(y, x)),
        (losses.DiceLoss(), ref_dice(y, p)),
        (losses.DiceLoss(smooth=0.1), ref_dice(y, p, 0.1)),
        (losses.BCEDiceLoss(), ref_bce(y, x) + ref_dice(y, p)),
        (losses.BCEDiceLoss(bce_weight=0.3, dice_weight=2.0), 0.3 * ref_bce(y, x) + 2.0 * ref_dice(y, p)),
        (losses.BinaryFocalLoss(), ref_binary_focal(y, x, 2.0)),
        (
            losses.BinaryFocalLoss(gamma=1.0, alpha=0.4, apply_class_balancing=True),
            ref_binary_focal(y, x, 1.0, alpha=0.4),
        ),
        (losses.TverskyLoss(), ref_tversky(y, p, 0.3, 0.7)),
        (losses.TverskyLoss(alpha=0.8, beta=0.2), ref_tversky(y, p, 0.8, 0.2)),
    ]


def _categorical_cases(ids, x):
    t, p = _one_hot(ids), _softmax(x.astype(np.float64))
    return [
        (losses.SparseCategoricalCrossentropyLoss(), ref_ce(ids, x)),
        (losses.CategoricalDiceLoss(), ref_dice(t, p)),
        (losses.CEDiceLoss(ce_weight=0.5, dice_weight=1.5), 0.5 * ref_ce(ids, x) + 1.5 * ref_dice(t, p)),
        (losses.CategoricalFocalLoss(), ref_categorical_focal(ids, x, 2.0, 0.25)),
        (losses.CategoricalFocalLoss(gamma=0.5, alpha=1.0), ref_categorical_focal(ids, x, 0.5, 1.0)),
        (losses.CategoricalTverskyLoss(alpha=0.6, beta=0.4), ref_tversky(t, p, 0.6, 0.4)),
    ]


def test_binary_losses_match_reference(binary_data):
    y, x = binary_data
    for loss, want in _binary_cases(y, x):
        assert float(loss(y, x)) == pytest.approx(want.mean(), rel=1e-4), loss.name


def test_categorical_losses_match_reference(categorical_data):
    ids, x = categorical_data
    for loss, want in _categorical_cases(ids, x):
        assert float(loss(ids, x)) == pytest.approx(want.mean(), rel=1e-4), loss.name
        # Float class ids and labels without the channel axis are accepted too.
        assert float(loss(ids.astype(np.float32), x)) == pytest.approx(want.mean(), rel=1e-4), loss.name
        assert float(loss(ids[..., 0], x)) == pytest.approx(want.mean(), rel=1e-4), loss.name


def test_losses_are_per_image(binary_data, categorical_data):
    """One value per image: ``reduction=None`` exposes them and ``sample_weight`` weights whole images."""
    y, x = binary_data
    for loss, want in _binary_cases(y, x):
        unreduced = type(loss).from_config({**loss.get_config(), "reduction": None})
        np.testing.assert_allclose(unreduced(y, x), want, rtol=1e-4, err_msg=loss.name)
        weighted = float(loss(y, x, sample_weight=np.array([1.0, 0.0, 2.0])))
        assert weighted == pytest.approx((want[0] + 2 * want[2]) / 3, rel=1e-4), loss.name
    ids, x = categorical_data
    for loss, want in _categorical_cases(ids, x):
        unreduced = type(loss).from_config({**loss.get_config(), "reduction": None})
        np.testing.assert_allclose(unreduced(ids, x), want, rtol=1e-4, err_msg=loss.name)


def test_perfect_logits_give_zero_region_loss():
    rng = np.random.default_rng(2)
    y = (rng.random((2, SIZE, SIZE, 1)) < 0.4).astype(np.float32)
    y[1] = 0.0  # empty truth predicted empty
    x = np.where(y > 0, 30.0, -30.0).astype(np.float32)
    for name in ("dice", "tversky"):
        assert float(losses.get_loss(name)(y, x)) == pytest.approx(0.0, abs=1e-5), name
    wrong = float(losses.get_loss("dice")(y, -x))
    assert wrong > 0.5

    ids = rng.integers(0, C, (2, SIZE, SIZE, 1))
    x = 30.0 * np.eye(C, dtype=np.float32)[ids[..., 0]]
    for name in ("dice", "tversky"):
        assert float(losses.get_loss(name, num_classes=C)(ids, x)) == pytest.approx(0.0, abs=1e-5), name


def test_float32_under_bfloat16(binary_data, categorical_data):
    y, x = binary_data
    ids, xc = categorical_data
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        for name in losses.LOSS_NAMES:
            binary = losses.get_loss(name)
            x16 = keras.ops.cast(x, "bfloat16")
            value = binary(keras.ops.cast(y, "bfloat16"), x16)
            assert value.dtype == "float32", name
            # The loss matches the float32 loss on the same (bfloat16-rounded) logits.
            x_rounded = keras.ops.convert_to_numpy(keras.ops.cast(x16, "float32"))
            assert float(value) == pytest.approx(float(losses.get_loss(name)(y, x_rounded)), rel=1e-5)
            categorical = losses.get_loss(name, num_classes=C)
            assert categorical(ids, keras.ops.cast(xc, "bfloat16")).dtype == "float32", name
    finally:
        keras.config.set_dtype_policy(previous)


def test_get_loss_names_and_errors():
    expected = {
        "bce": (losses.BinaryCrossentropyLoss, losses.SparseCategoricalCrossentropyLoss),
        "dice": (losses.DiceLoss, losses.CategoricalDiceLoss),
        "bce_dice": (losses.BCEDiceLoss, losses.CEDiceLoss),
        "focal": (losses.BinaryFocalLoss, losses.CategoricalFocalLoss),
        "tversky": (losses.TverskyLoss, losses.CategoricalTverskyLoss),
    }
    assert set(losses.LOSS_NAMES) == set(expected)
    for name, (binary, categorical) in expected.items():
        assert type(losses.get_loss(name)) is binary
        assert type(losses.get_loss(name, num_classes=1)) is binary
        assert type(losses.get_loss(name, num_classes=2)) is categorical
        assert type(losses.get_loss(name, num_classes=5)) is categorical
    assert losses.get_loss("tversky", alpha=0.2, beta=0.8).beta == 0.8
    with pytest.raises(ValueError) as excinfo:
        losses.get_loss("jaccard")
    assert all(name in str(excinfo.value) for name in expected)
    with pytest.raises(ValueError):
        losses.get_loss("dice", num_classes=0)


def test_loss_and_metrics_survive_keras_save_load(tmp_path):
    keras.utils.set_random_seed(3)
    rng = np.random.default_rng(3)
    x = rng.normal(size=(4, SIZE, SIZE, 2)).astype(np.float32)
    y = (rng.random((4, SIZE, SIZE, 1)) < 0.4).astype(np.float32)
    model = keras.Sequential([keras.Input((SIZE, SIZE, 2)), keras.layers.Conv2D(1, 1)])
    loss = losses.BCEDiceLoss(bce_weight=0.3, dice_weight=2.0, smooth=0.5)
    model.compile(
        optimizer="sgd",
        loss=loss,
        metrics=metrics.default_metrics(threshold=0.3) + [metrics.IoU(per_image=False, name="iou_pooled")],
    )
    before = model.evaluate(x, y, batch_size=2, verbose=0, return_dict=True)

    path = tmp_path / "tiny.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)

    assert isinstance(loaded.loss, losses.BCEDiceLoss)
    assert loaded.loss.get_config() == loss.get_config()
    after = loaded.evaluate(x, y, batch_size=2, verbose=0, return_dict=True)
    assert set(after) == set(before)
    for key in before:
        assert after[key] == pytest.approx(before[key], abs=1e-6), key
    # The loaded metrics still use threshold 0.3: compare with a fresh metric on the same logits.
    dice = metrics.Dice(threshold=0.3)
    dice.update_state(y, loaded.predict(x, verbose=0))
    assert after["dice"] == pytest.approx(float(dice.result()), abs=1e-6)
    assert after["dice"] != pytest.approx(float(metrics.Dice(threshold=0.7)(y, loaded.predict(x, verbose=0))), abs=1e-6)
