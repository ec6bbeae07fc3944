"""Custom layers and the small building blocks that ``unet`` and ``segnet`` share.

Everything here is written with ``keras.ops`` so that, on the TensorFlow backend, it lowers to core TF ops
(reshape, transpose, reduce_max, equal, cumsum, multiply) that every TF runtime, XLA and SavedModel export
support, instead of ``tf.nn.max_pool_with_argmax`` plus a scatter of flattened indices.
"""

import keras
from keras import layers, ops

from kseg.core.distribute import accelerator_kind
from kseg.core.errors import ModelArgumentError


@keras.saving.register_keras_serializable(package="kseg")
class MaxUnpooling2D(layers.Layer):
    """SegNet's decoder upsampling: put each decoded value back where its encoder's max-pooling found the max.

    Called on ``[features_before_pool, decoded]``, where ``decoded`` has the pooled spatial size and the same
    channels as ``features_before_pool``. The pooling switches are recomputed from ``features_before_pool``
    instead of being carried from the pooling layer, so the encoder can use a plain ``MaxPooling2D`` and the
    model graph stays ordinary Keras (serializable, XLA-compilable, exportable).

    The result is ``upsample_nearest(decoded) * mask`` with ``mask`` 1 at the argmax of each
    ``pool_size`` window. Ties (frequent after ReLU: all-zero windows) go to the first position in row-major
    order, so exactly one value per window is non-zero, as with real pooling indices, and the decoder sees
    the sparse maps the SegNet paper describes rather than copies of the value in every tied position.

    Only ``padding="valid"`` pooling with ``strides == pool_size`` is supported, and the input's height and
    width must be multiples of ``pool_size`` (the model builders guarantee this).
    """

    def __init__(self, pool_size=2, **kwargs):
        super().__init__(**kwargs)
        if isinstance(pool_size, int):
            pool_size = (pool_size, pool_size)
        pool_size = tuple(int(p) for p in pool_size)
        if len(pool_size) != 2 or min(pool_size) < 1:
            raise ModelArgumentError(f"pool_size must be a positive int or a pair of them, got {pool_size!r}")
        self.pool_size = pool_size

    def _check_shapes(self, features_shape, decoded_shape):
        if len(features_shape) != 4 or len(decoded_shape) != 4:
            raise ModelArgumentError(
                f"{self.name} expects two 4-D (batch, height, width, channels) inputs, "
                f"got shapes {features_shape} and {decoded_shape}"
            )
        ph, pw = self.pool_size
        for axis, p in ((1, ph), (2, pw)):
            f, d = features_shape[axis], decoded_shape[axis]
            if f is not None and f % p:
                raise ModelArgumentError(
                    f"{self.name}: features_before_pool has size {f} on axis {axis}, not a multiple of {p}"
                )
            if f is not None and d is not None and f // p != d:
                raise ModelArgumentError(
                    f"{self.name}: decoded has size {d} on axis {axis}, expected {f // p} "
                    f"(features_before_pool {f} / pool {p}); shapes {features_shape} and {decoded_shape}"
                )
        fc, dc = features_shape[3], decoded_shape[3]
        if fc is not None and dc is not None and fc != dc:
            raise ModelArgumentError(
                f"{self.name}: channels differ, features_before_pool has {fc} and decoded has {dc}; "
                "the decoder must restore the encoder's channel count before unpooling"
            )

    def build(self, input_shape):
        features_shape, decoded_shape = input_shape
        self._check_shapes(tuple(features_shape), tuple(decoded_shape))

    def compute_output_shape(self, input_shape):
        features_shape, decoded_shape = input_shape
        return (decoded_shape[0],) + tuple(features_shape[1:])

    def call(self, inputs):
        features, decoded = inputs
        ph, pw = self.pool_size
        shape = ops.shape(features)  # static ints where known, tensors where not (batch)
        height, width, channels = shape[1], shape[2], shape[3]
        rows, cols = height // ph, width // pw

        # Gather each pooling window into the last axis: (batch, rows, cols, channels, ph * pw).
        windows = ops.reshape(features, (-1, rows, ph, cols, pw, channels))
        windows = ops.transpose(windows, (0, 1, 3, 5, 2, 4))
        windows = ops.reshape(windows, (-1, rows, cols, channels, ph * pw))

        # Where the max is; on ties keep only the first hit, so each window gets exactly one value.
        is_max = ops.cast(ops.equal(windows, ops.max(windows, axis=-1, keepdims=True)), "int32")
        first_max = ops.logical_and(ops.equal(is_max, 1), ops.equal(ops.cumsum(is_max, axis=-1), 1))
        mask = ops.cast(first_max, decoded.dtype)

        scattered = ops.expand_dims(decoded, -1) * mask
        # Undo the window gathering: back to (batch, height, width, channels).
        scattered = ops.reshape(scattered, (-1, rows, cols, channels, ph, pw))
        scattered = ops.transpose(scattered, (0, 1, 4, 2, 5, 3))
        return ops.reshape(scattered, (-1, height, width, channels))

    def get_config(self):
        config = super().get_config()
        config["pool_size"] = self.pool_size
        return config


@keras.saving.register_keras_serializable(package="kseg")
class FusedBatchNormalization(layers.BatchNormalization):
    """``BatchNormalization`` computed by TensorFlow's fused kernel (``FusedBatchNormV3``) where it applies.

    Keras 3 builds batch norm from ``moments`` and elementwise ops in float32, casting every bfloat16 or
    float16 activation up and the result back down (and again in the gradient). The fused kernel is one op
    forward and one backward, reads bfloat16/float16 activations directly with float32 statistics, and is the
    op cuDNN runs on GPUs: on the 2-core Xeon of docs/speed.md, a training-mode forward and backward
    pass took a third to a quarter of Keras' time, the batch norm share of a U-Net step fell accordingly, in
    float32 and bfloat16 alike (``bench/profile.py``).

    Same weights, config and maths as ``BatchNormalization`` (outputs, gradients and moving statistics agree to
    float rounding; ``tests/test_fused_batch_norm.py``), so weight files and checkpoints move between the two.
    Inputs the kernel does not take (another backend, rank other than 4, channels not last, a mask,
    ``synchronized`` or ``renorm``, float64) go through Keras' own computation.
    """

    def _fused_applies(self, inputs, mask):
        return (
            keras.backend.backend() == "tensorflow"
            and mask is None
            and not self.synchronized
            and not self.renorm
            and len(inputs.shape) == 4
            and self.axis in (-1, 3)
            and keras.backend.standardize_dtype(inputs.dtype) in ("float32", "bfloat16", "float16")
        )

    def call(self, inputs, training=None, mask=None):
        if not self._fused_applies(inputs, mask):
            return super().call(inputs, training=training, mask=mask)
        import tensorflow as tf

        channels = inputs.shape[-1]
        scale = self.gamma if self.scale else tf.ones((channels,), tf.float32)
        offset = self.beta if self.center else tf.zeros((channels,), tf.float32)
        if training and self.trainable:
            # The kernel returns the batch mean and the unbiased batch variance; Keras averages the biased
            # one into the moving variance, and so does this layer, so that both give the same statistics.
            outputs, batch_mean, unbiased_variance = tf.compat.v1.nn.fused_batch_norm(
                inputs, scale, offset, epsilon=self.epsilon, is_training=True
            )
            pixels = tf.cast(tf.size(inputs) // channels, tf.float32)
            batch_variance = unbiased_variance * (pixels - 1.0) / pixels
            self.moving_mean.assign(self.moving_mean * self.momentum + batch_mean * (1.0 - self.momentum))
            self.moving_variance.assign(self.moving_variance * self.momentum + batch_variance * (1.0 - self.momentum))
        else:
            outputs, _, _ = tf.compat.v1.nn.fused_batch_norm(
                inputs,
                scale,
                offset,
                mean=self.moving_mean,
                variance=self.moving_variance,
                epsilon=self.epsilon,
                is_training=False,
            )
        return ops.cast(outputs, self.compute_dtype)


def batch_normalization(name, momentum, epsilon=1e-3, synchronized=False):
    """The batch norm every kseg model uses: the fused layer, or Keras' own when statistics are synchronized
    across replicas (the fused kernel only sees its replica's batch)."""
    layer_class = layers.BatchNormalization if synchronized else FusedBatchNormalization
    return layer_class(momentum=momentum, epsilon=epsilon, synchronized=synchronized, name=name)


def depthwise_compute_dtype():
    """The dtype policy for depthwise convolutions: ``"float32"`` under a bfloat16 policy on a CPU, else the
    global policy (``None``).

    oneDNN has no fast bfloat16 backward pass for depthwise convolutions: profiling a Lite0 U-Net fine-tuning
    step on the Xeon of docs/speed.md (``bench/profile.py``), their two gradient kernels took 904 ms a step in
    bfloat16 against 248 ms in float32, 44% of the 2.06 s step. In float32 they read and return float32
    (Keras casts the bfloat16 input up and the next layer casts back down), which costs far less than the
    slow kernels, and the weights stay float32 as under any mixed policy. TPUs and GPUs (float16 there) keep
    the global policy: their depthwise kernels are fast in reduced precision.
    """
    if keras.config.dtype_policy().compute_dtype != "bfloat16" or accelerator_kind() == "tpu":
        return None
    return "float32"


def depthwise_conv(kernel_size, strides, name):
    """``DepthwiseConv2D`` (TF "SAME" padding, no bias: BN follows) in :func:`depthwise_compute_dtype`."""
    return layers.DepthwiseConv2D(
        kernel_size, strides=strides, padding="same", use_bias=False, dtype=depthwise_compute_dtype(), name=name
    )


#: Moving-average momentum of batch norm. Keras' 0.99 needs several hundred steps before the inference
#: statistics catch up with the weights; small medical datasets give 20 steps an epoch, and with 0.99 the
#: validation predictions of the first dozens of epochs are garbage (measured on the synthetic set).
BN_MOMENTUM = 0.9


def conv_block(x, filters, num_convs, name, batch_norm=True, out_filters=None):
    """``num_convs`` x (3x3 conv -> BN -> ReLU), the unit both architectures stack.

    ``out_filters`` (default ``filters``) is the last conv's width: SegNet's decoder narrows there so the next
    unpooling gets its switches' channel count. The conv has no bias when BN follows, because BN's offset
    makes it redundant. Layers are named ``{name}_conv{j}``, ``{name}_bn{j}``, ``{name}_relu{j}`` so weights
    can be found and transferred by name. ``batch_norm="sync"`` computes batch statistics over the global
    batch across replicas and workers, so every worker keeps identical moving statistics.
    """
    if out_filters is None:
        out_filters = filters
    for j in range(1, num_convs + 1):
        x = layers.Conv2D(
            out_filters if j == num_convs else filters,
            3,
            padding="same",
            use_bias=not batch_norm,
            kernel_initializer="he_normal",
            name=f"{name}_conv{j}",
        )(x)
        if batch_norm:
            x = batch_normalization(f"{name}_bn{j}", BN_MOMENTUM, synchronized=batch_norm == "sync")(x)
        x = layers.Activation("relu", name=f"{name}_relu{j}")(x)
    return x


def bottleneck_dropout(x, rate, name="bottleneck_dropout"):
    """Channel-wise dropout at the lowest resolution, where features are most redundant spatially.

    ``SpatialDropout2D`` drops whole feature maps: neighbouring pixels are strongly correlated, so dropping
    single activations would barely regularize. Returns ``x`` unchanged when ``rate`` is 0.
    """
    if rate > 0:
        x = layers.SpatialDropout2D(rate, name=name)(x)
    return x


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def check_common_args(
    image_size, num_classes, depth, base_filters, dropout, upsampling, allowed_upsampling, batch_norm=True
):
    """Fail at build time with a message that says what to change, instead of a shape error deep in Keras.

    Returns ``image_size`` normalised by :func:`check_image_size` (divisible by ``2**depth``).
    """
    if not _is_int(depth) or depth < 1:
        raise ModelArgumentError(f"depth must be an int >= 1, got {depth!r}")
    if not _is_int(base_filters) or base_filters < 1:
        raise ModelArgumentError(f"base_filters must be an int >= 1, got {base_filters!r}")
    check_decoder_args(num_classes, dropout, upsampling, allowed_upsampling, batch_norm)
    return check_image_size(image_size, 2**depth, f"2**{depth}={2**depth}")


def check_decoder_args(num_classes, dropout, upsampling, allowed_upsampling, batch_norm=True):
    """The arguments every kseg model has, with or without a pretrained encoder."""
    if not _is_int(num_classes) or num_classes < 1:
        raise ModelArgumentError(f"num_classes must be an int >= 1 (1 for binary segmentation), got {num_classes!r}")
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
        raise ModelArgumentError(f"dropout must be a number with 0 <= dropout < 1, got {dropout!r}")
    if batch_norm not in (True, False, "sync"):
        raise ModelArgumentError(f"batch_norm must be True, False or 'sync', got {batch_norm!r}")
    if upsampling not in allowed_upsampling:
        raise ModelArgumentError(f"upsampling must be one of {list(allowed_upsampling)}, got {upsampling!r}")


def check_image_size(image_size, multiple, multiple_text=None):
    """``image_size`` as a ``(height, width)`` tuple of ints (an int means a square image), each divisible by
    ``multiple``; otherwise a ValueError that names the nearest sizes that work. ``multiple_text`` says where
    the multiple comes from in the message (e.g. ``"2**4=16"``)."""
    if _is_int(image_size):
        image_size = (image_size, image_size)
    try:
        size = tuple(image_size)
    except TypeError:
        size = ()
    if len(size) != 2 or not all(_is_int(s) and s > 0 for s in size):
        raise ModelArgumentError(f"image_size must be (height, width) with positive ints, got {image_size!r}")

    bad = {axis: s for axis, s in zip(("height", "width"), size) if s % multiple}
    if bad:
        message = f"image_size {size} is not divisible by {multiple_text or multiple}; use a multiple of {multiple}"
        if len(set(bad.values())) == 1:
            message += f" such as {_nearest_multiples(next(iter(bad.values())), multiple)}"
        else:
            message += ": " + ", ".join(f"{axis} {s} -> {_nearest_multiples(s, multiple)}" for axis, s in bad.items())
        raise ModelArgumentError(message)
    return size


def _nearest_multiples(value, multiple):
    lower = (value // multiple) * multiple
    upper = lower + multiple
    return f"{lower} or {upper}" if lower > 0 else f"{upper}"
