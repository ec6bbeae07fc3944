"""``--init-weights``: a run starts from another run's weights wherever layer names and shapes agree, e.g. an
instance model from a semantic person model (the same U-Net and person/background logits)."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from kseg.core.errors import UsageError
from kseg.prediction import inference
from kseg.tasks import instances
from kseg.training import setup


def test_an_instance_model_starts_from_a_semantic_run_and_keeps_its_own_heads(trained_synthetic_run):
    donor = inference.load_keras_model(trained_synthetic_run / "best.keras")  # unet-small, 128x128
    model = instances.build_model("unet-small", (64, 96))
    heads_before = model.get_layer("centre_heatmap").get_weights()
    copied = setup.copy_weights(trained_synthetic_run, model)
    assert copied == sum(1 for layer in donor.layers if layer.weights)
    for layer in donor.layers:
        for got, want in zip(model.get_layer(layer.name).get_weights(), layer.get_weights()):
            np.testing.assert_array_equal(got, want)
    for got, want in zip(model.get_layer("centre_heatmap").get_weights(), heads_before):
        np.testing.assert_array_equal(got, want)  # the new heads keep their own start


def test_a_model_with_nothing_in_common_is_one_line(tmp_path):
    inputs = keras.Input((8, 8, 3), name="image")
    stranger = keras.Model(inputs, keras.layers.Conv2D(2, 3, name="something_else")(inputs))
    stranger.save(tmp_path / "stranger.keras")
    with pytest.raises(UsageError, match="no layer of it matches"):
        setup.copy_weights(tmp_path / "stranger.keras", instances.build_model("unet-small", (64, 96)))
    with pytest.raises(UsageError, match="no such .keras file or run directory"):
        setup.copy_weights(tmp_path / "missing", instances.build_model("unet-small", (64, 96)))
