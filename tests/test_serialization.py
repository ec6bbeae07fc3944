"""One serialization battery (keras-hub's ``run_serialization_test`` idea) over every class kseg registers
with ``@keras.saving.register_keras_serializable``: config round trip, ``serialize``/``deserialize``, and the
same outputs before and after. A newly registered class without an example here fails the first test."""

import keras
import numpy as np
import pytest

import kseg.models  # noqa: F401
import kseg.tasks.instances  # noqa: F401
import kseg.tasks.losses  # noqa: F401  (registers the classes below)
import kseg.tasks.metrics  # noqa: F401
from kseg.models import layers as model_layers
from kseg.models.backbones import EncoderPreprocessing
from kseg.models.ensemble import ProbabilityAverage
from kseg.models.keypoint_heads import JointNames
from kseg.tasks import instances, keypoints, losses, metrics
from kseg.training import optimizers

#: One instance of each registered class, with arguments away from their defaults, so a dropped argument
#: shows; and inputs to compare outputs on.
rng = np.random.default_rng(0)
BINARY = ((rng.random((2, 8, 8, 1)) < 0.4).astype(np.float32), rng.normal(size=(2, 8, 8, 1)).astype(np.float32))
CLASSES = (rng.integers(0, 3, (2, 8, 8, 1)).astype(np.int32), rng.normal(size=(2, 8, 8, 3)).astype(np.float32))
IMAGES = rng.random((2, 8, 8, 3)).astype(np.float32)
HEATMAP = (rng.random((2, 4, 4, 1)).astype(np.float32), rng.random((2, 4, 4, 1)).astype(np.float32))
OFFSETS = (  # (dy, dx, weight) targets, (dy, dx) predictions
    np.concatenate([rng.normal(size=(2, 4, 4, 2)), rng.random((2, 4, 4, 1)) < 0.5], -1).astype(np.float32),
    rng.normal(size=(2, 4, 4, 2)).astype(np.float32),
)
JOINT_MAPS = (  # two joints' target heatmaps, then their weights; two joints' logits
    np.concatenate([rng.random((2, 4, 4, 2)), np.ones((2, 4, 4, 1)), np.zeros((2, 4, 4, 1))], -1).astype(np.float32),
    rng.normal(size=(2, 4, 4, 2)).astype(np.float32),
)
EXAMPLES = {
    losses.BinaryCrossentropyLoss: (dict(name="b", reduction="sum"), BINARY),
    losses.DiceLoss: (dict(smooth=2.0, name="d"), BINARY),
    losses.BCEDiceLoss: (dict(bce_weight=0.25, dice_weight=2.0, smooth=3.0), BINARY),
    losses.BinaryFocalLoss: (dict(gamma=1.5, alpha=0.4, apply_class_balancing=True), BINARY),
    losses.TverskyLoss: (dict(alpha=0.4, beta=0.6, smooth=0.5), BINARY),
    losses.SparseCategoricalCrossentropyLoss: (dict(name="c"), CLASSES),
    losses.CategoricalDiceLoss: (dict(smooth=2.0), CLASSES),
    losses.CEDiceLoss: (dict(ce_weight=0.5, dice_weight=1.5, smooth=2.0), CLASSES),
    losses.CategoricalFocalLoss: (dict(gamma=1.0, alpha=0.3), CLASSES),
    losses.CategoricalTverskyLoss: (dict(alpha=0.2, beta=0.8), CLASSES),
    instances.CentreHeatmapLoss: (dict(name="heat", reduction="sum"), HEATMAP),
    instances.OffsetLoss: (dict(name="off", reduction="sum"), OFFSETS),
    keypoints.HeatmapLoss: (dict(name="joints", reduction="sum"), JOINT_MAPS),
    metrics.Dice: (dict(num_classes=3, threshold=0.3, per_image=False, name="dice3"), CLASSES),
    metrics.IoU: (dict(threshold=0.3, per_image=False, name="iou_pooled"), BINARY),
    metrics.PixelAccuracy: (dict(num_classes=3, name="acc"), CLASSES),
    metrics.Sensitivity: (dict(threshold=0.7), BINARY),
    metrics.Specificity: (dict(num_classes=3, per_image=False), CLASSES),
    model_layers.MaxUnpooling2D: (dict(pool_size=(2, 2), name="unpool"), None),
    model_layers.FusedBatchNormalization: (dict(momentum=0.8, epsilon=0.01, center=False, name="bn"), (IMAGES,)),
    EncoderPreprocessing: (dict(mode="caffe", name="pre"), (IMAGES,)),
    JointNames: (dict(joint_names=["left_knee", "right_knee"], name="joints"), (JOINT_MAPS[1],)),
    ProbabilityAverage: (dict(name="mean_of_folds"), ([BINARY[1], 2 * BINARY[1]],)),
    optimizers.AdamW: (dict(learning_rate=0.5, weight_decay=0.25, lr_multipliers={"encoder_": 0.1}), "no outputs"),
    optimizers.Adam: (dict(learning_rate=0.25, lr_multipliers={"encoder_": 0.2}), "no outputs"),
    optimizers.SGD: (dict(learning_rate=0.125, momentum=0.5, lr_multipliers={"enc": 0.5}), "no outputs"),
}


def _registered():
    return sorted(
        (cls for key, cls in keras.saving.get_custom_objects().items() if key.startswith("kseg>")),
        key=lambda cls: cls.__name__,
    )


def _outputs(obj, inputs):
    if inputs is None:
        features = rng.random((1, 4, 4, 2)).astype(np.float32)
        decoded = rng.random((1, 2, 2, 2)).astype(np.float32)
        return keras.ops.convert_to_numpy(obj([features, decoded]))
    if isinstance(obj, keras.metrics.Metric):
        obj.reset_state()
        obj.update_state(*inputs)
        return float(obj.result())
    return keras.ops.convert_to_numpy(obj(*inputs))


def test_every_registered_class_has_an_example():
    assert set(_registered()) == set(EXAMPLES), "add an example for each registered class"


@pytest.mark.parametrize("cls", _registered(), ids=lambda cls: cls.__name__)
def test_serialization_round_trip(cls):
    kwargs, inputs = EXAMPLES[cls]
    original = cls(**kwargs)
    config = original.get_config()
    for key, value in kwargs.items():
        assert config[key] == value, f"get_config drops or changes {key}"
    clone = cls.from_config(config)
    assert clone.get_config() == config
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(original))
    assert type(restored) is cls and restored.get_config() == config
    if inputs != "no outputs":
        state = rng.bit_generator.state
        expected = _outputs(original, inputs)
        rng.bit_generator.state = state
        np.testing.assert_allclose(_outputs(restored, inputs), expected, rtol=1e-6)
