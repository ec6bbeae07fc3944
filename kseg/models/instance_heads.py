"""Panoptic-DeepLab heads on a kseg encoder-decoder: every person their own mask, bottom-up.

The semantic model's ``logits`` (person vs background, full resolution) stays the foreground head; two small
heads read the decoder at stride 4 (``dec3``, where the U-Net decoder still has 64 channels and the
encoder's context): the instance-centre heatmap and the per-pixel offsets ``(dy, dx)`` to the centre, in
stride-4 pixels. Stride 4 is Panoptic-DeepLab's choice too: the centre and offset maps are smooth, and
their convs cost a sixteenth of full resolution. ``kseg.tasks.instance_ops`` turns the three maps into instances.

The model is one flat functional graph returning a dict, so ``get_config`` round trips, ``count_macs`` and
export handle it like the semantic models; the three outputs compute in float32 under mixed precision.
"""

from __future__ import annotations

import keras
from keras import layers

from kseg.core.errors import ModelArgumentError
from kseg.models.layers import conv_block

#: Output names (the keys of the model's output dict, of the targets and of the losses).
FOREGROUND = "foreground"
CENTRE_HEATMAP = "centre_heatmap"
OFFSETS = "offsets"
OUTPUTS = (FOREGROUND, CENTRE_HEATMAP, OFFSETS)

#: The decoder level whose output feeds the centre and offset heads, and its stride.
HEAD_LEVEL = 3
HEAD_STRIDE = 4
HEAD_FILTERS = 32
#: The offset head predicts offsets in units of this many stride-4 pixels. A person's offsets reach tens of
#: stride-4 pixels, and a 1x1 conv that starts near zero needs thousands of Adam steps to grow that far;
#: a CPU fine-tuning has a few hundred (seen: the L1 stayed at its all-zero value, ~16, for the first epochs).
OFFSET_UNIT = 16.0


def decoder_output(model: keras.Model, level: int):
    names = [layer.name for layer in model.layers if layer.name.startswith(f"dec{level}_relu")]
    if not names:
        raise ModelArgumentError(
            f"model {model.name!r} has no decoder level dec{level} (layers dec{level}_relu*); instance heads go on "
            f"kseg's U-Net decoders"
        )
    return model.get_layer(sorted(names)[-1]).output


def _head(features, filters, outputs, name, batch_norm, unit=1.0):
    """3x3 conv-BN-ReLU then a 1x1 conv to the outputs. The last conv starts near zero (std 0.001, as
    detectron2's heads do): a heatmap that starts at zero already has the loss of an empty image, where a
    default initialisation starts it at values around 1 and the x200 heatmap loss swamps the others for
    the first epochs."""
    x = conv_block(features, filters, 1, f"{name}_head", batch_norm)
    initializer = keras.initializers.RandomNormal(stddev=0.001)
    if unit == 1.0:
        return layers.Conv2D(outputs, 1, dtype="float32", kernel_initializer=initializer, name=name)(x)
    x = layers.Conv2D(outputs, 1, dtype="float32", kernel_initializer=initializer, name=f"{name}_conv")(x)
    return layers.Rescaling(unit, dtype="float32", name=name)(x)


def add_instance_heads(base: keras.Model, *, head_filters: int = HEAD_FILTERS, batch_norm=True) -> keras.Model:
    """``base`` (a U-Net whose ``logits`` has one channel) with the centre and offset heads added.

    Returns a model from ``image`` to ``{"foreground": [B, H, W, 1] logits, "centre_heatmap": [B, H/4, W/4, 1],
    "offsets": [B, H/4, W/4, 2]}`` sharing ``base``'s layers and weights.
    """
    if base.output.shape[-1] != 1:
        raise ModelArgumentError(
            f"instance heads need a one-channel foreground logit, got {base.output.shape[-1]} channels"
        )
    features = decoder_output(base, HEAD_LEVEL)
    outputs = {
        FOREGROUND: layers.Identity(dtype="float32", name=FOREGROUND)(base.output),
        CENTRE_HEATMAP: _head(features, head_filters, 1, CENTRE_HEATMAP, batch_norm),
        OFFSETS: _head(features, head_filters, 2, OFFSETS, batch_norm, unit=OFFSET_UNIT),
    }
    return keras.Model(base.input, outputs, name=base.name)
