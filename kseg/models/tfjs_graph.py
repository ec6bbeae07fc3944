"""Read TensorFlow.js graph models (``model.json`` + ``.bin`` shards) as TensorFlow graphs, without ``tensorflowjs``.

The ``tensorflowjs`` package pins its own TensorFlow, Keras and JAX versions, so kseg reads the format itself:

* ``modelTopology`` is a ``GraphDef`` written as protobuf JSON; ``json_format.ParseDict`` reads it as it is
  (string attributes are base64, 64-bit integers are strings, enums are names).
* ``weightsManifest`` lists groups; each group's weights lie one after another, little-endian, in the
  concatenation of that group's shards. Quantized weights (``float16``, or ``uint8``/``uint16`` with ``scale``
  and ``min``) are turned back into their declared dtype, so the graph computes in float32 as TensorFlow's would.
  Every weight fills the ``Const`` node of the same name (the topology keeps only its dtype and shape).
* The TFJS converter fuses ops into forms that TensorFlow either lacks (``FusedDepthwiseConv2dNative``,
  ``Prelu``) or has only as CPU-internal ops (``_FusedConv2D``, ``_FusedMatMul``); :func:`split_fused_ops` turns
  them back into plain ops (convolution, ``BiasAdd``, activation), which run on any device.

The graph runs through ``tf.compat.v1.wrap_function`` + ``import_graph_def`` + ``prune``, the path TensorFlow
keeps for frozen GraphDefs; the result is a concrete function that can be called eagerly, inside a
``tf.function`` and from a SavedModel.
"""

from __future__ import annotations

import json
import pathlib

import numpy as np
import tensorflow as tf
from google.protobuf import json_format
from tensorflow.python.framework import op_def_registry

from kseg.core.errors import KsegError


class TfjsGraphError(KsegError, ValueError):
    """A TFJS graph model cannot be read or converted; the message names the file and what is wrong."""


#: Bytes per element of the dtypes a TFJS manifest stores (``string`` has its own length-prefixed layout).
STORED_DTYPES = {"float32": np.float32, "int32": np.int32, "bool": np.bool_}

#: Quantized storage: dtype on disk. ``float16`` needs no scale; the integer ones store ``q * scale + min``.
QUANTIZED_DTYPES = {"float16": np.float16, "uint8": np.uint8, "uint16": np.uint16}

#: Activations that a fused op may end with and that TensorFlow has as one op of the same name.
UNARY_ACTIVATIONS = ("Relu", "Relu6", "Elu", "Selu", "Sigmoid", "Tanh")

#: What each fused op is split into: the plain op, and the attributes that op takes from the fused node.
FUSED_BASE_OPS = {
    "_FusedConv2D": (
        "Conv2D",
        ("T", "strides", "padding", "explicit_paddings", "data_format", "dilations", "use_cudnn_on_gpu"),
    ),
    "FusedDepthwiseConv2dNative": (
        "DepthwiseConv2dNative",
        ("T", "strides", "padding", "explicit_paddings", "data_format", "dilations"),
    ),
    "_FusedDepthwiseConv2dNative": (
        "DepthwiseConv2dNative",
        ("T", "strides", "padding", "explicit_paddings", "data_format", "dilations"),
    ),
    "_FusedMatMul": ("MatMul", ("T", "transpose_a", "transpose_b")),
}


# --- the public entry points ------------------------------------------------------------------------------


def read_tfjs_graph(model_json_path):
    """``(graph_def, input_names, output_names)`` of a TFJS graph model, weights included, fused ops split.

    Names are tensor names (``"input:0"``), from the model's ``signature`` when it has one, else the
    placeholders and the nodes nothing consumes.
    """
    path = pathlib.Path(model_json_path)
    model = read_model_json(path)
    graph_def = parse_topology(path, model["modelTopology"])
    weights = read_weights(path, model.get("weightsManifest", []))
    fill_constants(path, graph_def, weights)
    graph_def = split_fused_ops(path, graph_def)
    check_ops_exist(path, graph_def)
    inputs, outputs = signature_names(model, graph_def)
    return graph_def, inputs, outputs


def load_tfjs_graph(model_json_path, inputs=None, outputs=None):
    """A concrete function running the TFJS graph model: positional ``inputs`` in, a list of ``outputs`` out.

    ``inputs``/``outputs`` are tensor (or node) names; by default the model's own signature.
    """
    graph_def, default_inputs, default_outputs = read_tfjs_graph(model_json_path)
    return prune_graph(
        graph_def,
        list(inputs or default_inputs),
        list(outputs or default_outputs),
        source=pathlib.Path(model_json_path),
    )


def prune_graph(graph_def, inputs, outputs, source="graph"):
    """Import ``graph_def`` into a wrapped function and prune it to ``inputs`` -> ``outputs`` (tensor names)."""
    wrapped = tf.compat.v1.wrap_function(lambda: tf.compat.v1.import_graph_def(graph_def, name=""), [])
    graph = wrapped.graph
    feeds = [_graph_tensor(graph, name, source) for name in inputs]
    fetches = [_graph_tensor(graph, name, source) for name in outputs]
    return wrapped.prune(feeds, fetches)


def _graph_tensor(graph, name, source):
    name = tensor_name(name)
    try:
        return graph.get_tensor_by_name(name)
    except (KeyError, ValueError) as error:
        raise TfjsGraphError(f"{source}: the graph has no tensor {name!r}; pass a node name from the model") from error


def tensor_name(name):
    """``"node"`` -> ``"node:0"``; names that already say which output are kept."""
    return name if ":" in name else f"{name}:0"


# --- model.json and its topology --------------------------------------------------------------------------


def read_model_json(path):
    """The parsed ``model.json``; a missing file or one that is not a graph model fails naming the file."""
    if not path.is_file():
        raise TfjsGraphError(f"{path}: no such TFJS model.json; give the path of the model's .json file")
    try:
        model = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise TfjsGraphError(f"{path}: not valid JSON ({error}); the download is damaged, fetch it again") from error
    if not isinstance(model, dict) or "modelTopology" not in model or "node" not in model["modelTopology"]:
        raise TfjsGraphError(f"{path}: no modelTopology.node, so not a TFJS graph model (layers models are not read)")
    return model


def parse_topology(path, topology):
    """The GraphDef written in ``topology``; protobuf's JSON reader accepts TFJS's encoding unchanged."""
    try:
        return json_format.ParseDict(topology, tf.compat.v1.GraphDef())
    except json_format.ParseError as error:
        raise TfjsGraphError(f"{path}: modelTopology is not a GraphDef: {_one_line(error)}") from error


def _one_line(error):
    return " ".join(str(error).split())


# --- weights ----------------------------------------------------------------------------------------------


def read_weights(path, manifest):
    """``{name: np.ndarray}`` of every weight in the manifest, dequantized to its declared dtype."""
    weights = {}
    for group in manifest:
        buffer = read_group_buffer(path, group)
        weights.update(decode_group(path, group, buffer))
    return weights


def read_group_buffer(path, group):
    """One group's shards concatenated; each shard must exist, and together they must hold every weight."""
    shards = [path.parent / shard for shard in group.get("paths", [])]
    for shard in shards:
        if not shard.is_file():
            raise TfjsGraphError(f"{shard}: weight shard named in {path.name} is missing; fetch the model again")
    buffer = b"".join(shard.read_bytes() for shard in shards)
    expected = group_byte_size(path, group, buffer)
    if len(buffer) != expected:
        names = ", ".join(shard.name for shard in shards)
        raise TfjsGraphError(
            f"{path}: weight shards {names} hold {len(buffer)} bytes, the manifest needs {expected}; "
            "the download is truncated or from another model version, fetch it again"
        )
    return buffer


def group_byte_size(path, group, buffer):
    """Bytes the manifest says the group's weights take (strings read their lengths from ``buffer``)."""
    offset = 0
    for spec in group["weights"]:
        offset += weight_byte_size(path, spec, buffer, offset)
    return offset


def weight_byte_size(path, spec, buffer, offset):
    count = int(np.prod(spec["shape"], dtype=np.int64))
    quantization = spec.get("quantization")
    if quantization:
        return count * np.dtype(_quantized_dtype(path, spec)).itemsize
    if spec["dtype"] == "string":
        return _string_byte_size(path, spec, buffer, offset, count)
    return count * np.dtype(_stored_dtype(path, spec)).itemsize


def _stored_dtype(path, spec):
    if spec["dtype"] not in STORED_DTYPES:
        raise TfjsGraphError(
            f"{path}: weight {spec['name']!r} has dtype {spec['dtype']!r}, which kseg cannot read "
            f"(known: {', '.join([*STORED_DTYPES, 'string'])})"
        )
    return STORED_DTYPES[spec["dtype"]]


def _quantized_dtype(path, spec):
    quantization = spec["quantization"]
    if quantization.get("dtype") not in QUANTIZED_DTYPES:
        raise TfjsGraphError(
            f"{path}: weight {spec['name']!r} is quantized as {quantization.get('dtype')!r}, which kseg cannot read "
            f"(known: {', '.join(QUANTIZED_DTYPES)})"
        )
    _stored_dtype(path, spec)  # the declared dtype must be one kseg can turn the values back into
    if quantization["dtype"] != "float16" and not {"scale", "min"} <= set(quantization):
        raise TfjsGraphError(f"{path}: weight {spec['name']!r} is quantized without scale and min; the file is damaged")
    return QUANTIZED_DTYPES[quantization["dtype"]]


def _string_byte_size(path, spec, buffer, offset, count):
    """TFJS stores each string as a little-endian uint32 byte length followed by the bytes."""
    start = offset
    for _ in range(count):
        if offset + 4 > len(buffer):
            raise TfjsGraphError(f"{path}: weight {spec['name']!r} runs past the end of its shards; fetch it again")
        offset += 4 + int(np.frombuffer(buffer, "<u4", 1, offset)[0])
    return offset - start


def decode_group(path, group, buffer):
    """``{name: array}`` for one group, read in manifest order from the group's concatenated shards."""
    weights, offset = {}, 0
    for spec in group["weights"]:
        size = weight_byte_size(path, spec, buffer, offset)
        weights[spec["name"]] = decode_weight(path, spec, buffer[offset : offset + size])
        offset += size
    return weights


def decode_weight(path, spec, data):
    """One weight as the dtype it had before conversion (quantized values scaled back, float16 upcast)."""
    shape = [int(d) for d in spec["shape"]]
    if spec["dtype"] == "string" and not spec.get("quantization"):
        return np.array(_split_strings(data), dtype=object).reshape(shape)
    dtype = _stored_dtype(path, spec)
    quantization = spec.get("quantization")
    if not quantization:
        return np.frombuffer(data, np.dtype(dtype).newbyteorder("<")).astype(dtype).reshape(shape)
    stored = np.frombuffer(data, np.dtype(_quantized_dtype(path, spec)).newbyteorder("<")).astype(np.float32)
    if quantization["dtype"] != "float16":
        stored = stored * np.float32(quantization["scale"]) + np.float32(quantization["min"])
    if np.issubdtype(dtype, np.integer):
        stored = np.round(stored)
    return stored.astype(dtype).reshape(shape)


def _split_strings(data):
    strings, offset = [], 0
    while offset < len(data):
        length = int(np.frombuffer(data, "<u4", 1, offset)[0])
        strings.append(data[offset + 4 : offset + 4 + length])
        offset += 4 + length
    return strings


def fill_constants(path, graph_def, weights):
    """Put each weight into the ``Const`` node of its name; a ``Const`` left without a value is an error."""
    for node in graph_def.node:
        if node.op != "Const":
            continue
        if node.name in weights:
            node.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(weights[node.name]))
            node.attr["dtype"].type = node.attr["value"].tensor.dtype
        elif not _has_value(node.attr["value"].tensor):
            raise TfjsGraphError(f"{path}: Const node {node.name!r} has no weight in weightsManifest; fetch it again")


def _has_value(tensor):
    """Whether a TensorProto holds values (or needs none: an empty tensor)."""
    if not all(d.size for d in tensor.tensor_shape.dim) and tensor.tensor_shape.dim:
        return True
    return any(field.name not in ("dtype", "tensor_shape", "version_number") for field, _ in tensor.ListFields())


# --- fused ops back into plain ops ------------------------------------------------------------------------


def split_fused_ops(path, graph_def):
    """A copy of ``graph_def`` with TFJS's fused ops and ``Prelu`` replaced by plain ops, devices cleared.

    The last node of each replacement keeps the fused node's name, so every consumer still finds its input.
    Devices are cleared because the converter pins some nodes to ``/device:CPU:0``.
    """
    names = {node.name for node in graph_def.node}
    result = tf.compat.v1.GraphDef()
    result.versions.CopyFrom(graph_def.versions)
    result.library.CopyFrom(graph_def.library)
    for node in graph_def.node:
        node = _copy_without_device(node)
        if node.op in FUSED_BASE_OPS:
            result.node.extend(_split_fused(path, node, names))
        elif node.op == "Prelu":
            data, alpha, *control = node.input
            result.node.extend(_prelu_nodes(node, data, alpha, node.name, names, control))
        else:
            result.node.append(node)
    return result


def _copy_without_device(node):
    copy = tf.compat.v1.NodeDef()
    copy.CopyFrom(node)
    copy.ClearField("device")
    return copy


def _split_fused(path, node, names):
    """The plain base op, then each entry of ``fused_ops`` in order, each taking its extra inputs."""
    base_op, base_attrs = FUSED_BASE_OPS[node.op]
    data_inputs = [name for name in node.input if not name.startswith("^")]
    control = [name for name in node.input if name.startswith("^")]
    fused_ops = [op.decode() for op in node.attr["fused_ops"].list.s]
    args = data_inputs[2:]
    if len(args) != node.attr["num_args"].i:
        raise TfjsGraphError(
            f"{path}: node {node.name!r} ({node.op}) has {len(args)} extra inputs but num_args "
            f"{node.attr['num_args'].i}; the file is damaged"
        )
    last_name = node.name if not fused_ops else _fresh_name(f"{node.name}/{base_op}", names)
    nodes = [
        _node(last_name, base_op, data_inputs[:2] + control, {k: node.attr[k] for k in base_attrs if k in node.attr})
    ]
    for index, fused in enumerate(fused_ops):
        is_last = index == len(fused_ops) - 1
        name = node.name if is_last else _fresh_name(f"{node.name}/{fused}", names)
        new_nodes, args = _fused_step(path, node, fused, last_name, name, args, names)
        nodes.extend(new_nodes)
        last_name = name
    if args:
        raise TfjsGraphError(f"{path}: node {node.name!r} ({node.op}) has extra inputs its fused_ops do not use")
    return nodes


def _fused_step(path, node, fused, source, name, args, names):
    """Nodes for one fused op reading ``source`` and ending in ``name``; returns them and the unused args."""
    dtype = {"T": node.attr["T"]}
    if fused == "BiasAdd" and args:
        layout = {"data_format": node.attr["data_format"]} if "data_format" in node.attr else {}
        return [_node(name, "BiasAdd", [source, args[0]], {**dtype, **layout})], args[1:]
    if fused in UNARY_ACTIVATIONS:
        return [_node(name, fused, [source], dtype)], args
    if fused == "LeakyRelu":
        alpha = node.attr["leakyrelu_alpha"].f if "leakyrelu_alpha" in node.attr else 0.2
        return [_node(name, "LeakyRelu", [source], {**dtype, "alpha": tf.compat.v1.AttrValue(f=alpha)})], args
    if fused == "Prelu" and args:
        return _prelu_nodes(node, source, args[0], name, names), args[1:]
    raise TfjsGraphError(
        f"{path}: node {node.name!r} ({node.op}) fuses {fused!r}, which kseg cannot convert "
        "(known: BiasAdd, Prelu, LeakyRelu, " + ", ".join(UNARY_ACTIVATIONS) + ")"
    )


def _prelu_nodes(node, data, alpha, name, names, control=()):
    """``prelu(x) = relu(x) - alpha * relu(-x)``: TensorFlow has no Prelu op, and these four run everywhere."""
    dtype = {"T": node.attr["T"]}
    positive = _fresh_name(f"{name}/positive", names)
    negated = _fresh_name(f"{name}/negated", names)
    negative = _fresh_name(f"{name}/negative", names)
    scaled = _fresh_name(f"{name}/scaled", names)
    return [
        _node(positive, "Relu", [data, *control], dtype),
        _node(negated, "Neg", [data, *control], dtype),
        _node(negative, "Relu", [negated], dtype),
        _node(scaled, "Mul", [alpha, negative], dtype),
        _node(name, "Sub", [positive, scaled], dtype),
    ]


def _node(name, op, inputs, attrs):
    node = tf.compat.v1.NodeDef(name=name, op=op, input=list(inputs))
    for key, value in attrs.items():
        node.attr[key].CopyFrom(value)
    return node


def _fresh_name(base, names):
    """``base``, or ``base_1``, ``base_2``... : a node name not yet in the graph (recorded in ``names``)."""
    name, index = base, 0
    while name in names:
        index += 1
        name = f"{base}_{index}"
    names.add(name)
    return name


def check_ops_exist(path, graph_def):
    """Fail naming the first node whose op TensorFlow does not have, instead of import_graph_def's long error."""
    for node in graph_def.node:
        if op_def_registry.get(node.op) is None:
            raise TfjsGraphError(
                f"{path}: node {node.name!r} uses op {node.op!r}, which TensorFlow does not have and kseg "
                "cannot convert"
            )


# --- inputs and outputs -----------------------------------------------------------------------------------


def signature_names(model, graph_def):
    """Input and output tensor names: the model's ``signature``, else placeholders and unconsumed nodes."""
    signature = model.get("signature") or {}
    if signature.get("inputs") and signature.get("outputs"):
        return (
            [tensor_name(spec.get("name", key)) for key, spec in signature["inputs"].items()],
            [tensor_name(spec.get("name", key)) for key, spec in signature["outputs"].items()],
        )
    consumed = {name.lstrip("^").split(":")[0] for node in graph_def.node for name in node.input}
    inputs = [f"{node.name}:0" for node in graph_def.node if node.op == "Placeholder"]
    outputs = [
        f"{node.name}:0"
        for node in graph_def.node
        if node.name not in consumed and node.op not in ("Placeholder", "Const", "NoOp")
    ]
    return inputs, outputs
