"""Several trained models as one: the average of their probabilities, inside the graph.

A cross-validation run (``kseg.train --folds K``) predicts with the mean of its K models' probabilities, as
nnU-Net does. Built as a Keras model whose output is, like every kseg model's, float32 ``logits``: the logits
*of the averaged probabilities* (``log(p / (1 - p))`` for one channel, ``log p`` for a softmax), so the
sigmoid or softmax that evaluation, prediction and export apply gives back exactly the average, and every
path that takes a model takes an ensemble unchanged, into one SavedModel.
"""

from __future__ import annotations

import keras
from keras import ops

#: Probabilities are kept this far from 0 and 1 before taking logits, so no logit is infinite; it moves a
#: probability by at most 1e-6, far below any threshold's resolution.
EPSILON = 1e-6


@keras.saving.register_keras_serializable(package="kseg")
class ProbabilityAverage(keras.layers.Layer):
    """Logits of the mean probability of several logit tensors (sigmoid for one channel, softmax for more)."""

    def __init__(self, **kwargs):
        kwargs.setdefault("dtype", "float32")  # the output of a mixed-precision ensemble stays float32
        super().__init__(**kwargs)

    def call(self, logits_list):
        logits_list = [ops.cast(x, "float32") for x in logits_list]
        binary = logits_list[0].shape[-1] == 1
        to_probability = ops.sigmoid if binary else (lambda x: ops.softmax(x, axis=-1))
        mean = ops.mean(ops.stack([to_probability(x) for x in logits_list]), axis=0)
        mean = ops.clip(mean, EPSILON, 1 - EPSILON)
        return ops.log(mean) - ops.log(1 - mean) if binary else ops.log(mean)

    def compute_output_shape(self, input_shapes):
        return input_shapes[0]


def average_model(models, name: str = "fold_ensemble") -> keras.Model:
    """One functional model taking ``image`` that returns the logits of the mean of ``models``' probabilities.
    The models must agree on input size and output channels; each keeps its weights as a sub-model
    ``member_i``."""
    if not models:
        raise ValueError("average_model needs at least one model")
    shapes = {(tuple(m.inputs[0].shape[1:]), tuple(m.outputs[0].shape[1:])) for m in models}
    if len(shapes) != 1:
        raise ValueError(f"the models disagree on input size or output channels: {sorted(shapes)}")
    image = keras.Input(shape=tuple(models[0].inputs[0].shape[1:]), name="image")
    members = [keras.Model(m.inputs[0], m.outputs[0], name=f"member_{i}") for i, m in enumerate(models)]
    logits = ProbabilityAverage(name="logits")([member(image) for member in members])
    return keras.Model(image, logits, name=name)
