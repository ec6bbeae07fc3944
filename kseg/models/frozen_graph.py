"""Run a frozen TF1 GraphDef (a ``.pb`` of constants and plain ops) in TensorFlow 2.

Published pretrained models often exist only as frozen TF1 graphs. TF2 can still run them without a
``Session``: ``tf.compat.v1.wrap_function`` imports the GraphDef into a function graph and ``prune`` cuts out
a concrete function from the named inputs to the named outputs. That function is an ordinary
``ConcreteFunction``: callable eagerly, callable inside a ``tf.function``, and saved with a SavedModel whose
``tf.Module`` holds it (its weights are graph constants, so they travel inside the function).
"""

from __future__ import annotations

import difflib
import os

import tensorflow as tf
from google.protobuf.message import DecodeError

from kseg.core.errors import KsegError


class FrozenGraphError(KsegError, ValueError):
    """A frozen graph file is missing, is not a GraphDef, or lacks a named tensor; the message names the file."""


def read_graph_def(path) -> tf.compat.v1.GraphDef:
    """The GraphDef stored in ``path``; one-line errors for a missing file and for bytes that are not a GraphDef."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FrozenGraphError(f"{path}: no such frozen graph file; check the path (or fetch the model again)")
    with open(path, "rb") as f:
        data = f.read()
    graph_def = tf.compat.v1.GraphDef()
    try:
        graph_def.ParseFromString(data)
    except (DecodeError, RuntimeWarning, ValueError) as error:
        raise FrozenGraphError(
            f"{path}: not a TensorFlow GraphDef ({type(error).__name__}: {error}); the file is damaged or of "
            f"another format, fetch it again"
        ) from None
    # Protobuf parses many byte strings "successfully" into an empty or nameless message; a real graph has nodes.
    if not graph_def.node or any(not node.name or not node.op for node in graph_def.node):
        raise FrozenGraphError(
            f"{path}: not a TensorFlow GraphDef (no named nodes); the file is damaged or of another format"
        )
    return graph_def


def _tensor_name(name: str) -> str:
    """``"image"`` -> ``"image:0"``: a node's first output, the way GraphDef users usually name tensors."""
    return name if ":" in name else f"{name}:0"


def _check_names(path, graph_def, names, role):
    """Fail naming the file and the closest node names when a requested tensor's node is not in the graph."""
    node_names = [node.name for node in graph_def.node]
    known = set(node_names)
    for name in names:
        node = _tensor_name(name).rsplit(":", 1)[0]
        if node not in known:
            close = difflib.get_close_matches(node, node_names, n=4, cutoff=0.4)
            hint = f"close names: {', '.join(close)}" if close else f"e.g. {', '.join(node_names[:4])}"
            raise FrozenGraphError(f"{path}: {role} {name!r} is not a node of this graph ({hint})")


def load_frozen_graph(path, inputs: list[str], outputs: list[str]):
    """A concrete function ``f(*inputs) -> list of outputs`` running the frozen graph in ``path``.

    ``inputs`` and ``outputs`` are tensor names (``"image:0"``; a bare node name means its first output).
    The graph is imported under the prefix ``frozen/`` so its names never clash with the caller's. Errors
    (missing file, not a GraphDef, unknown name) are :class:`FrozenGraphError`, one line naming the file.
    """
    graph_def = read_graph_def(path)
    _check_names(path, graph_def, inputs, "input")
    _check_names(path, graph_def, outputs, "output")

    def import_graph():
        tf.compat.v1.import_graph_def(graph_def, name="frozen")

    wrapped = tf.compat.v1.wrap_function(import_graph, [])
    graph = wrapped.graph
    try:
        return wrapped.prune(
            [graph.as_graph_element(f"frozen/{_tensor_name(name)}") for name in inputs],
            [graph.as_graph_element(f"frozen/{_tensor_name(name)}") for name in outputs],
        )
    except (KeyError, ValueError) as error:  # e.g. "image:3" on a node with one output
        raise FrozenGraphError(f"{path}: cannot cut the graph from {inputs} to {outputs}: {error}") from None
