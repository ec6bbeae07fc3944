"""Model size and cost, computed from the architecture alone so presets can be compared without timing them.

``count_macs`` is analytic: multiply-accumulates (one multiply plus one add = 1 MAC; FLOPs are about 2x MACs)
for **one image**, from each layer's static input/output shapes. Counted:

* ``Conv1D/2D/3D`` (grouped too): ``output positions * filters * kernel volume * in_channels / groups``.
* ``Conv1D/2D/3DTranspose``: ``input positions * in_channels * kernel volume * filters`` (every input pixel is
  multiplied into a full kernel window of the output; for the usual kernel == stride case this equals the
  output-based count).
* ``DepthwiseConv1D/2D``: ``output positions * in_channels * depth_multiplier * kernel volume``.
* ``SeparableConv1D/2D``: the depthwise part above plus a 1x1 conv from ``in_channels * depth_multiplier``.
* ``Dense``: ``positions * in_features * units`` (positions = every axis but batch and last).

Not counted, because they are cheap next to the convs (at most a few ops per activation) and their cost
depends on the backend: biases, batch normalization, activations, pooling, upsampling, concatenation,
dropout, ``MaxUnpooling2D``. Nested models are walked into; a layer called several times is counted once
per call in the model. Spatial sizes must be static: build the model with a fixed ``image_size``.
"""

import math

import keras


def count_params(model):
    """Every weight, trainable or not (BN moving statistics included), as ``model.count_params()`` does."""
    return int(sum(math.prod(weight.shape) for weight in model.weights))


def count_macs(model):
    """Multiply-accumulates per image of ``model`` (see the module docstring for what is counted)."""
    return int(sum(_layer_macs(layer, in_shape, out_shape) for layer, in_shape, out_shape in _calls(model)))


def _calls(model):
    """(layer, input shape, output shape) for every layer call in ``model``'s graph, nested models expanded.

    Walks the model's own graph rather than each layer's call history, so a layer shared with another model
    is counted only for the calls made here.
    """
    if isinstance(model, keras.Sequential):
        model = model._functional
    nodes_by_depth = getattr(model, "_nodes_by_depth", None)
    if nodes_by_depth is None:
        raise ValueError(
            f"count_macs needs a functional or Sequential model (a graph of layers), got {type(model).__name__}"
        )
    for depth in sorted(nodes_by_depth, reverse=True):  # inputs first, for a readable order
        for node in nodes_by_depth[depth]:
            layer = node.operation
            if not node.input_tensors or not node.output_tensors:
                continue  # an InputLayer
            if isinstance(layer, keras.Model):
                yield from _calls(layer)
                continue
            yield layer, tuple(node.input_tensors[0].shape), tuple(node.output_tensors[0].shape)


def _split(shape, data_format, layer_name):
    """(spatial sizes, channels) of a conv input/output, without the batch axis."""
    spatial = shape[1:-1] if data_format == "channels_last" else shape[2:]
    channels = shape[-1] if data_format == "channels_last" else shape[1]
    if any(s is None for s in spatial) or channels is None:
        raise ValueError(
            f"count_macs needs static shapes, but layer {layer_name!r} has shape {shape}; "
            "build the model with a fixed image_size"
        )
    return spatial, channels


def _layer_macs(layer, input_shape, output_shape):
    transposed = (keras.layers.Conv1DTranspose, keras.layers.Conv2DTranspose, keras.layers.Conv3DTranspose)
    if isinstance(layer, transposed):
        in_spatial, in_channels = _split(input_shape, layer.data_format, layer.name)
        return math.prod(in_spatial) * in_channels * math.prod(layer.kernel_size) * layer.filters

    if isinstance(layer, (keras.layers.SeparableConv1D, keras.layers.SeparableConv2D)):
        out_spatial, _ = _split(output_shape, layer.data_format, layer.name)
        _, in_channels = _split(input_shape, layer.data_format, layer.name)
        depthwise_channels = in_channels * layer.depth_multiplier
        return math.prod(out_spatial) * depthwise_channels * (math.prod(layer.kernel_size) + layer.filters)

    if isinstance(layer, (keras.layers.DepthwiseConv1D, keras.layers.DepthwiseConv2D)):
        out_spatial, _ = _split(output_shape, layer.data_format, layer.name)
        _, in_channels = _split(input_shape, layer.data_format, layer.name)
        return math.prod(out_spatial) * in_channels * layer.depth_multiplier * math.prod(layer.kernel_size)

    if isinstance(layer, (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D)):
        out_spatial, out_channels = _split(output_shape, layer.data_format, layer.name)
        _, in_channels = _split(input_shape, layer.data_format, layer.name)
        return math.prod(out_spatial) * out_channels * math.prod(layer.kernel_size) * (in_channels // layer.groups)

    if isinstance(layer, keras.layers.Dense):
        in_features, positions = input_shape[-1], output_shape[1:-1]
        if in_features is None or any(p is None for p in positions):
            raise ValueError(f"count_macs needs static shapes, but layer {layer.name!r} has shape {input_shape}")
        return math.prod(positions) * in_features * layer.units

    return 0
