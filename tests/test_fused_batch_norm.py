"""``FusedBatchNormalization`` must be ``BatchNormalization`` computed faster: same outputs, gradients and
moving statistics in float32 and mixed bfloat16, in training and inference mode, and Keras' own path for the
inputs the fused kernel does not take."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from kseg.models import build_preset
from kseg.models.layers import FusedBatchNormalization, batch_normalization

rng = np.random.default_rng(0)


def _pair(policy, **kwargs):
    """A Keras and a fused layer with the same (non-default) weights."""
    reference = keras.layers.BatchNormalization(dtype=policy, **kwargs)
    fused = FusedBatchNormalization(dtype=policy, **kwargs)
    channels = 5
    weights = [rng.normal(size=channels).astype("float32") for _ in range(3)]
    weights.append(np.abs(rng.normal(size=channels)).astype("float32") + 0.5)
    for layer in (reference, fused):
        layer.build((None, 6, 8, channels))
        layer.set_weights(weights[-len(layer.get_weights()) :])  # without scale and offset: the statistics only
    return reference, fused


def _step(layer, x, training):
    x = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x, training=training)
        loss = tf.reduce_sum(tf.cast(y, tf.float32) ** 2)
    gradients = tape.gradient(loss, [x, *layer.trainable_variables])
    return y, gradients


@pytest.mark.parametrize("policy", ["float32", "mixed_bfloat16"])
@pytest.mark.parametrize("training", [True, False])
def test_same_outputs_gradients_and_moving_statistics_as_keras(policy, training):
    reference, fused = _pair(policy, momentum=0.9, epsilon=1e-3)
    x = (rng.normal(size=(4, 6, 8, 5)) * 3 + 1).astype("float32")
    start_mean = fused.moving_mean.numpy().copy()
    for _ in range(3):  # moving statistics drift the same way over several steps
        y_ref, grads_ref = _step(reference, x, training)
        y_fused, grads_fused = _step(fused, x, training)
    assert y_fused.dtype == y_ref.dtype == keras.DTypePolicy(policy).compute_dtype
    tolerance = 1e-5 if policy == "float32" else 1e-2
    np.testing.assert_allclose(np.float32(y_fused), np.float32(y_ref), atol=tolerance, rtol=tolerance)
    for g_fused, g_ref in zip(grads_fused, grads_ref, strict=True):
        np.testing.assert_allclose(np.float32(g_fused), np.float32(g_ref), atol=1e-3, rtol=1e-3)
    for w_fused, w_ref in zip(fused.get_weights(), reference.get_weights(), strict=True):
        np.testing.assert_allclose(w_fused, w_ref, rtol=1e-5, atol=1e-6)
    assert np.allclose(fused.moving_mean.numpy(), start_mean) != training, "moving mean updated iff training"


def test_frozen_layer_uses_moving_statistics_even_in_training_mode():
    reference, fused = _pair("float32")
    for layer in (reference, fused):
        layer.trainable = False
    x = rng.normal(size=(2, 6, 8, 5)).astype("float32")
    before = fused.get_weights()
    y_fused, _ = _step(fused, x, True)
    y_ref, _ = _step(reference, x, True)
    np.testing.assert_allclose(y_fused.numpy(), y_ref.numpy(), atol=1e-5)
    for w_after, w_before in zip(fused.get_weights(), before, strict=True):
        np.testing.assert_array_equal(w_after, w_before)


def test_without_scale_and_offset():
    reference, fused = _pair("float32", center=False, scale=False)
    x = rng.normal(size=(2, 6, 8, 5)).astype("float32")
    np.testing.assert_allclose(_step(fused, x, True)[0].numpy(), _step(reference, x, True)[0].numpy(), atol=1e-5)


def test_inputs_the_kernel_cannot_take_go_through_keras():
    fused = FusedBatchNormalization()
    flat = rng.normal(size=(16, 3)).astype("float32")
    assert fused(flat, training=True).shape == (16, 3)
    channels_first = FusedBatchNormalization(axis=1)
    images = rng.normal(size=(2, 3, 4, 4)).astype("float32")
    reference = keras.layers.BatchNormalization(axis=1)
    np.testing.assert_allclose(
        channels_first(images, training=True).numpy(), reference(images, training=True).numpy(), atol=1e-5
    )


def test_synchronized_batch_norm_stays_keras():
    assert type(batch_normalization("bn", 0.9, synchronized=True)) is keras.layers.BatchNormalization
    assert type(batch_normalization("bn", 0.9)) is FusedBatchNormalization


@pytest.mark.parametrize("preset", ["unet-small", "segnet-small", "unet-lite0"])
def test_models_use_the_fused_layer(preset):
    overrides = {"encoder_weights": None} if preset == "unet-lite0" else {}
    model = build_preset(preset, image_size=(64, 64), **overrides)
    norms = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert norms and all(type(layer) is FusedBatchNormalization for layer in norms)
