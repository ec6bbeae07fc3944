"""U-Net (Ronneberger et al., 2015) with "same" padding, so the output mask has the input's size."""

import keras
from keras import layers

from kseg.models.layers import bottleneck_dropout, check_common_args, conv_block

UPSAMPLING_MODES = ("transpose", "bilinear")


def unet(
    image_size=(256, 256),
    num_classes=1,
    depth=4,
    base_filters=32,
    batch_norm=True,
    dropout=0.0,
    upsampling="transpose",
    name="unet",
):
    """Build a U-Net that maps ``image`` (H, W, 3) float32 in [0, 1] to ``logits`` (H, W, num_classes).

    Args:
        image_size: ``(height, width)``, each divisible by ``2**depth`` so every pooling halves exactly and
            the skip connections line up with the upsampled maps.
        num_classes: output channels; 1 for binary tasks (use a sigmoid / BCE-from-logits downstream).
        depth: number of poolings. Level ``i`` (1-based) has ``base_filters * 2**(i-1)`` filters and the
            bottleneck ``base_filters * 2**depth``.
        base_filters: width of the first level; cost grows with its square.
        batch_norm: conv -> BN -> ReLU when True (``"sync"``: BN statistics over the global batch across
            replicas, for distributed training) (convs then drop their redundant bias), conv -> ReLU when False.
        dropout: ``SpatialDropout2D`` rate at the bottleneck; 0 disables it.
        upsampling: ``"transpose"`` learns the upsampling (2x2 stride-2 ``Conv2DTranspose`` that also halves
            the channels, as in the paper); ``"bilinear"`` is parameter-free and avoids checkerboard
            artefacts, and the following convs see the full channel count of the level below.
        name: model name.

    Returns:
        A functional ``keras.Model``. The ``logits`` layer computes in float32 whatever the global
        mixed-precision policy, so losses and thresholds see float32 outputs.
    """
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
