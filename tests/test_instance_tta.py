"""Flip TTA for instance models (``kseg.tasks.instances.model_outputs``): the mirrored image's maps are
mirrored back and the offsets' dx negated, so a mirror-equivariant model gives exactly its plain outputs."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from kseg.models import instance_heads
from kseg.tasks import instances


def _pool(x):
    return tf.nn.avg_pool2d(x, 4, 4, "VALID")


def _horizontal_gradient(x):
    """Central difference with zero padding: the mirrored image's gradient is the mirrored, negated one."""
    padded = tf.pad(x, [[0, 0], [0, 0], [1, 1], [0, 0]])
    return padded[:, :, 2:] - padded[:, :, :-2]


def equivariant_model(batch, training=False):
    """Maps that mirror with the image: mirroring the input mirrors each map and flips the sign of dx."""
    del training
    red, green = batch[..., :1], batch[..., 1:2]
    return {
        instance_heads.FOREGROUND: red,
        instance_heads.CENTRE_HEATMAP: _pool(green),
        instance_heads.OFFSETS: tf.concat([_pool(green), _pool(_horizontal_gradient(red))], -1),
    }


def test_an_equivariant_model_gives_its_plain_outputs_under_tta():
    batch = tf.constant(np.random.default_rng(0).random((2, 8, 12, 3)), tf.float32)
    plain = instances.model_outputs(equivariant_model, batch, tta=False)
    averaged = instances.model_outputs(equivariant_model, batch, tta=True)
    assert np.abs(plain[instance_heads.OFFSETS][..., 1].numpy()).max() > 0.05  # dx is not trivially zero
    for name in instance_heads.OUTPUTS:
        np.testing.assert_allclose(averaged[name].numpy(), plain[name].numpy(), atol=1e-6)


def test_a_constant_rightward_offset_cancels_out():
    def rightward(batch, training=False):
        outputs = equivariant_model(batch)
        offsets = outputs[instance_heads.OFFSETS]
        outputs[instance_heads.OFFSETS] = tf.concat([offsets[..., :1], tf.ones_like(offsets[..., 1:])], -1)
        return outputs

    batch = tf.zeros((1, 8, 8, 3))
    averaged = instances.model_outputs(rightward, batch, tta=True)
    np.testing.assert_allclose(averaged[instance_heads.OFFSETS][..., 1].numpy(), 0.0)
