"""A keypoint head on a kseg encoder-decoder: one heatmap per joint at stride 4 (SimpleBaseline's choice).

It reads the U-Net decoder at the same level as the instance heads (``dec3``: 64 channels, stride 4, the
encoder's context already merged in); the decoder's last two levels and the ``logits`` layer are left out of
the model, so they cost nothing. Sub-pixel decoding (``kseg.tasks.keypoint_ops``) recovers what the stride
costs in precision.
"""

from __future__ import annotations

import keras
from keras import layers

from kseg.core.errors import ModelArgumentError
from kseg.models.instance_heads import HEAD_LEVEL, HEAD_STRIDE, decoder_output
from kseg.models.layers import conv_block

#: The model's one output (a dict key, as instance models return a dict of heads).
HEATMAPS = "keypoint_heatmaps"
STRIDE = HEAD_STRIDE
HEAD_FILTERS = 64


@keras.saving.register_keras_serializable(package="kseg")
class JointNames(layers.Layer):
    """The heatmaps as they come (an identity) carrying the joints' names in its config, so a ``.keras`` file
    says which joint each channel is: flip TTA, drawing and PCK need to know."""

    def __init__(self, joint_names, **kwargs):
        super().__init__(**kwargs)
        self.joint_names = tuple(joint_names)

    def call(self, inputs):
        return inputs

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "joint_names": list(self.joint_names)}


def add_keypoint_heads(base: keras.Model, joint_names, *, head_filters: int = HEAD_FILTERS, batch_norm=True):
    """A model from ``base``'s ``image`` input to ``{"keypoint_heatmaps": [B, H/4, W/4, J]}`` (float32 under
    mixed precision; channel ``j`` is joint ``joint_names[j]``), sharing ``base``'s encoder and decoder layers
    and weights."""
    joint_names = tuple(joint_names)
    if not joint_names:
        raise ModelArgumentError("a keypoint head needs at least one joint name")
    features = decoder_output(base, HEAD_LEVEL)
    x = conv_block(features, head_filters, 1, f"{HEATMAPS}_head", batch_norm)
    # The last conv starts near zero: an all-zero heatmap already has the loss of the empty background.
    initializer = keras.initializers.RandomNormal(stddev=0.001)
    x = layers.Conv2D(len(joint_names), 1, dtype="float32", kernel_initializer=initializer, name=f"{HEATMAPS}_conv")(x)
    heatmaps = JointNames(joint_names, dtype="float32", name=HEATMAPS)(x)
    return keras.Model(base.input, {HEATMAPS: heatmaps}, name=base.name)
