"""Tests for kseg.models: shapes, argument checks, serialization, training, mixed precision, MaxUnpooling2D
and the complexity counters. Models are tiny (base_filters 4, 32x32) so the file runs in well under a minute."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import kseg  # noqa: F401  (sets KERAS_BACKEND before keras is imported)
from kseg.models import (
    MODEL_PRESETS,
    MaxUnpooling2D,
    build_preset,
    count_macs,
    count_params,
    get_model,
    segnet,
    unet,
)

TINY = dict(base_filters=4)


def _images(batch, size, seed=0):
    return np.random.default_rng(seed).random((batch, size[0], size[1], 3), dtype=np.float32)


@pytest.fixture
def bf16_policy():
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy("float32")


# --- shapes and names -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "image_size, depth, num_classes, upsampling",
    [
        ((32, 32), 1, 1, "transpose"),
        ((32, 32), 3, 3, "transpose"),
        ((32, 64), 4, 1, "bilinear"),
        ((64, 32), 2, 3, "bilinear"),
    ],
)
def test_unet_output_shape(image_size, depth, num_classes, upsampling):
    model = unet(image_size, num_classes=num_classes, depth=depth, upsampling=upsampling, **TINY)
    out = model(_images(2, image_size))
    assert tuple(out.shape) == (2, *image_size, num_classes)
    assert out.dtype == tf.float32
    assert model.input.name == "image"
    assert model.layers[-1].name == "logits"
    names = {layer.name for layer in model.layers}
    expected = {"image", "logits", "enc1_conv1", "enc1_bn1", "enc1_pool", "bottleneck_conv2", "dec1_up"}
    expected |= {f"enc{depth}_conv2", f"dec{depth}_up", f"dec{depth}_concat", "dec1_conv2"}
    assert expected <= names
    assert f"enc{depth + 1}_conv1" not in names


@pytest.mark.parametrize(
    "image_size, depth, num_classes, upsampling",
    [
        ((32, 32), 1, 1, "indices"),
        ((32, 32), 5, 3, "indices"),
        ((32, 64), 3, 1, "nearest"),
        ((64, 32), 2, 3, "bilinear"),
    ],
)
def test_segnet_output_shape(image_size, depth, num_classes, upsampling):
    model = segnet(image_size, num_classes=num_classes, depth=depth, upsampling=upsampling, **TINY)
    out = model(_images(2, image_size))
    assert tuple(out.shape) == (2, *image_size, num_classes)
    assert out.dtype == tf.float32
    names = {layer.name for layer in model.layers}
    assert {"image", "logits", "enc1_conv1", f"enc{depth}_pool", f"dec{depth}_up", "dec1_conv2"} <= names
    assert not any("concat" in name for name in names)  # SegNet has no skip concatenation
    up_type = MaxUnpooling2D if upsampling == "indices" else keras.layers.UpSampling2D
    assert isinstance(model.get_layer("dec1_up"), up_type)


def test_segnet_large_matches_vgg16_encoder_widths():
    model = segnet((32, 32), depth=5, base_filters=64)
    encoder_convs = [layer for layer in model.layers if layer.name.startswith("enc") and "_conv" in layer.name]
    assert [layer.filters for layer in encoder_convs] == [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]


def test_dropout_and_batch_norm_switches():
    with_dropout = unet((32, 32), depth=2, dropout=0.3, batch_norm=False, **TINY)
    assert with_dropout.get_layer("bottleneck_dropout").rate == pytest.approx(0.3)
    assert not any(isinstance(layer, keras.layers.BatchNormalization) for layer in with_dropout.layers)
    assert with_dropout.get_layer("enc1_conv1").use_bias  # no BN to absorb the bias

    plain = segnet((32, 32), depth=2, **TINY)
    assert "bottleneck_dropout" not in {layer.name for layer in plain.layers}
    assert not plain.get_layer("enc1_conv1").use_bias


# --- argument checks --------------------------------------------------------------------------------------


def test_indivisible_image_size_names_size_and_suggests_neighbours():
    with pytest.raises(ValueError, match=r"image_size \(250, 250\) is not divisible by 2\*\*4=16") as info:
        unet((250, 250), depth=4)
    assert "240 or 256" in str(info.value)

    with pytest.raises(ValueError, match=r"2\*\*5=32.*224 or 256"):
        segnet((250, 256), depth=5)

    with pytest.raises(ValueError, match=r"height 250 -> 240 or 256, width 100 -> 96 or 112"):
        unet((250, 100), depth=4)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(num_classes=0), "num_classes"),
        (dict(depth=0), "depth"),
        (dict(base_filters=0), "base_filters"),
        (dict(dropout=1.0), "dropout"),
        (dict(dropout=-0.1), "dropout"),
        (dict(upsampling="indices"), "upsampling"),  # SegNet-only mode
        (dict(image_size=(32, 32, 3)), "image_size"),
        (dict(image_size=(0, 32)), "image_size"),
    ],
)
def test_unet_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        unet(**{"image_size": (32, 32), **kwargs})


def test_segnet_rejects_unknown_upsampling():
    with pytest.raises(ValueError, match=r"upsampling must be one of \['indices', 'nearest', 'bilinear'\]"):
        segnet((32, 32), upsampling="transpose")


def test_registry_and_presets():
    model = get_model("unet", image_size=(32, 32), depth=2, name="my_unet", **TINY)
    assert model.name == "my_unet"
    with pytest.raises(ValueError, match="known models: segnet, unet"):
        get_model("deeplab")
    with pytest.raises(ValueError, match="known presets: .*unet-small.*segnet"):
        build_preset("unet-huge")

    assert {"unet-small", "unet", "unet-large", "segnet-small", "segnet"} <= set(MODEL_PRESETS)
    small = build_preset("unet-small", image_size=(32, 32), num_classes=2, depth=2)
    assert small.name == "unet_small"
    assert small.get_layer("enc1_conv1").filters == MODEL_PRESETS["unet-small"][1]["base_filters"]
    assert tuple(small.output.shape) == (None, 32, 32, 2)
    assert "enc3_conv1" not in {layer.name for layer in small.layers}  # override beat the preset's depth=4
    seg = build_preset("segnet-small", image_size=(64, 64))
    assert seg.get_layer("enc1_conv1").filters == MODEL_PRESETS["segnet-small"][1]["base_filters"]


# --- serialization ----------------------------------------------------------------------------------------


def _tiny_models():
    return [
        unet((32, 32), num_classes=3, depth=2, dropout=0.2, **TINY),
        unet((32, 32), depth=2, upsampling="bilinear", **TINY),
        segnet((32, 32), depth=3, upsampling="indices", **TINY),
    ]


def _randomize(model, seed=1):
    """Random BN statistics too, so a weight that fails to round-trip changes the output."""
    rng = np.random.default_rng(seed)
    model.set_weights([rng.uniform(0.5, 1.5, w.shape).astype("float32") for w in model.get_weights()])


def test_config_round_trip_gives_same_architecture_and_outputs():
    x = _images(2, (32, 32))
    for model in _tiny_models():
        _randomize(model)
        clone = keras.Model.from_config(model.get_config())
        assert [layer.name for layer in clone.layers] == [layer.name for layer in model.layers]
        assert [type(layer) for layer in clone.layers] == [type(layer) for layer in model.layers]
        assert clone.count_params() == model.count_params()
        clone.set_weights(model.get_weights())
        np.testing.assert_array_equal(clone.predict_on_batch(x), model.predict_on_batch(x))


def test_keras_file_round_trip_gives_same_outputs(tmp_path):
    x = _images(2, (32, 32))
    for i, model in enumerate(_tiny_models()):
        _randomize(model)
        path = tmp_path / f"model{i}.keras"
        model.save(path)
        loaded = keras.saving.load_model(path)
        assert [type(layer) for layer in loaded.layers] == [type(layer) for layer in model.layers]
        np.testing.assert_array_equal(loaded.predict_on_batch(x), model.predict_on_batch(x))


def test_segnet_indices_exports_to_saved_model(tmp_path):
    model = segnet((32, 32), depth=2, **TINY)
    _randomize(model)
    model.export(str(tmp_path / "saved"), verbose=False)
    reloaded = tf.saved_model.load(str(tmp_path / "saved"))
    x = _images(3, (32, 32))
    np.testing.assert_allclose(reloaded.serve(x).numpy(), model.predict_on_batch(x), rtol=1e-5, atol=1e-5)


# --- training ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("builder, kwargs", [(unet, dict(depth=2)), (segnet, dict(depth=3))])
def test_one_training_step_updates_weights(builder, kwargs):
    keras.utils.set_random_seed(0)
    model = builder((32, 32), **kwargs, **TINY)
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss=keras.losses.BinaryCrossentropy(from_logits=True))
    x = _images(2, (32, 32))
    y = (x[..., :1] > 0.5).astype("float32")
    before = model.get_layer("enc1_conv1").kernel.numpy().copy()
    history = model.fit(x, y, batch_size=2, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    assert not np.allclose(model.get_layer("enc1_conv1").kernel.numpy(), before)


# --- mixed precision --------------------------------------------------------------------------------------


@pytest.mark.parametrize("builder", [unet, segnet])
def test_mixed_bfloat16_gives_float32_logits(bf16_policy, builder):
    model = builder((32, 32), depth=2, **TINY)
    assert model.get_layer("enc1_conv1").compute_dtype == "bfloat16"
    assert model.get_layer("dec1_up").compute_dtype == "bfloat16"
    assert model.get_layer("logits").compute_dtype == "float32"
    out = model(_images(2, (32, 32)))
    assert out.dtype == tf.float32
    assert np.all(np.isfinite(out.numpy()))


# --- MaxUnpooling2D ---------------------------------------------------------------------------------------


def test_max_unpooling_puts_values_at_argmax_positions():
    features = np.array(
        [
            [1, 5, 0, 2],
            [3, 2, 9, 1],
            [7, 0, 4, 4],
            [1, 2, 8, 4],
        ],
        dtype="float32",
    ).reshape(1, 4, 4, 1)
    decoded = np.array([[10, 20], [30, 40]], dtype="float32").reshape(1, 2, 2, 1)
    expected = np.array(
        [
            [0, 10, 0, 0],
            [0, 0, 20, 0],
            [30, 0, 0, 0],
            [0, 0, 40, 0],
        ],
        dtype="float32",
    ).reshape(1, 4, 4, 1)
    out = MaxUnpooling2D(2)([features, decoded])
    np.testing.assert_array_equal(out.numpy(), expected)


def test_max_unpooling_ties_go_to_first_position_per_channel():
    features = np.zeros((1, 2, 2, 2), dtype="float32")  # channel 0: all tied (a dead ReLU window)
    features[0, 1, 0, 1] = 3.0  # channel 1: max at bottom-left
    features[0, 1, 1, 1] = 3.0  # ... tied with bottom-right
    decoded = np.array([5.0, 7.0], dtype="float32").reshape(1, 1, 1, 2)
    out = MaxUnpooling2D(2)([features, decoded]).numpy()
    expected = np.zeros((1, 2, 2, 2), dtype="float32")
    expected[0, 0, 0, 0] = 5.0
    expected[0, 1, 0, 1] = 7.0
    np.testing.assert_array_equal(out, expected)


def _reference_unpool(features, decoded):
    """Scatter with tf.nn.max_pool_with_argmax's indices: what the original SegNet does."""
    _, argmax = tf.nn.max_pool_with_argmax(features, 2, 2, "VALID", include_batch_in_index=True)
    flat = tf.scatter_nd(tf.reshape(argmax, (-1, 1)), tf.reshape(decoded, (-1,)), (int(np.prod(features.shape)),))
    return tf.reshape(flat, features.shape).numpy()


def test_max_unpooling_matches_argmax_scatter_with_dynamic_batch_and_xla():
    rng = np.random.default_rng(3)
    features = rng.standard_normal((3, 8, 6, 5)).astype("float32")  # distinct values: no ties
    decoded = rng.standard_normal((3, 4, 3, 5)).astype("float32")
    expected = _reference_unpool(features, decoded)

    features_in = keras.Input((8, 6, 5))
    decoded_in = keras.Input((4, 3, 5))
    model = keras.Model([features_in, decoded_in], MaxUnpooling2D(2)([features_in, decoded_in]))
    assert model.output.shape == (None, 8, 6, 5)
    np.testing.assert_array_equal(model.predict_on_batch([features, decoded]), expected)

    xla = tf.function(lambda f, d: model([f, d]), jit_compile=True)
    np.testing.assert_array_equal(xla(features, decoded).numpy(), expected)


def test_max_unpooling_rejects_mismatched_inputs():
    with pytest.raises(ValueError, match="channels differ"):
        MaxUnpooling2D(2)([keras.Input((8, 8, 4)), keras.Input((4, 4, 8))])
    with pytest.raises(ValueError, match="expected 4"):
        MaxUnpooling2D(2)([keras.Input((8, 8, 4)), keras.Input((2, 2, 4))])


# --- complexity -------------------------------------------------------------------------------------------


def test_count_params_matches_keras():
    for model in _tiny_models():
        assert count_params(model) == model.count_params()
        assert count_params(model) > 0


def test_count_macs_single_conv_by_hand():
    image = keras.Input((8, 10, 3))
    same = keras.Model(image, keras.layers.Conv2D(4, 3, padding="same")(image))
    assert count_macs(same) == 8 * 10 * 4 * (3 * 3 * 3)  # output positions * filters * kernel volume

    strided = keras.Model(image, keras.layers.Conv2D(4, 3, strides=2, padding="valid")(image))
    assert count_macs(strided) == 3 * 4 * 4 * (3 * 3 * 3)  # output 3x4


def test_count_macs_transpose_depthwise_dense_and_ignored_layers():
    image = keras.Input((4, 4, 2))
    x = keras.layers.Conv2DTranspose(6, 2, strides=2)(image)  # 4*4 inputs * 2 ch * 2*2 kernel * 6 filters
    x = keras.layers.BatchNormalization()(x)  # ignored
    x = keras.layers.DepthwiseConv2D(3, padding="same")(x)  # 8*8 * 6 ch * 3*3
    x = keras.layers.MaxPooling2D()(x)  # ignored
    x = keras.layers.Dense(5)(x)  # 4*4 positions * 6 * 5
    model = keras.Model(image, x)
    assert count_macs(model) == 4 * 4 * 2 * 4 * 6 + 8 * 8 * 6 * 9 + 4 * 4 * 6 * 5


def test_count_macs_of_tiny_unet_by_hand():
    model = unet((8, 8), depth=1, base_filters=2, num_classes=1)
    hw = 8 * 8
    expected = (
        hw * 2 * 9 * 3  # enc1_conv1: 3 -> 2
        + hw * 2 * 9 * 2  # enc1_conv2: 2 -> 2
        + (hw // 4) * 4 * 9 * 2  # bottleneck_conv1 at 4x4: 2 -> 4
        + (hw // 4) * 4 * 9 * 4  # bottleneck_conv2: 4 -> 4
        + (hw // 4) * 4 * 4 * 2  # dec1_up: 2x2 transpose, 4 -> 2, per input pixel
        + hw * 2 * 9 * 4  # dec1_conv1 after concat: 4 -> 2
        + hw * 2 * 9 * 2  # dec1_conv2
        + hw * 1 * 2  # logits 1x1: 2 -> 1
    )
    assert count_macs(model) == expected
