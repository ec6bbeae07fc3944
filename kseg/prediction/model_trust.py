"""Which SavedModels kseg loads: only its own exports, and only when nothing in them can touch files, the
process or Python.

A SavedModel is a program, not data: ``tf.saved_model.load`` runs functions stored in it and every call of a
signature runs the graph it holds, with the rights of whoever loads it (TensorFlow's security guide says the
same: run only models from people you trust). So before ``tf.saved_model.load`` sees a folder, kseg checks,
reading ``saved_model.pb`` as a protocol buffer (nothing in it runs):

1. **kseg's export contract** (what ``kseg.serving.saved_model_export.export_model`` writes): ``assets.extra/kseg.json``
   and ``assets.extra/postprocessing.json``, one TensorFlow 2 meta graph, and the signatures
   ``serving_default`` (input ``image_bytes``) and ``predict_images`` (input ``images``). Anyone can copy those
   files next to another graph, so this only turns away models that were never meant for kseg.
2. **Every op that can run**, found by walking the graph from each place execution starts (:func:`_roots`),
   through function calls: a node whose op names a library function, and every function-valued attribute
   (``f`` of ``StatefulPartitionedCall``, ``If``/``While``/``Case`` branches, dataset functions, nested
   ``NameAttrList`` attributes). Places execution starts:

   * the signatures, as ``tf.saved_model.load`` builds them (the object graph's ``signatures`` map) and as TF
     Serving runs them (``signature_def`` outputs and the graph nodes they depend on);
   * what ``tf.saved_model.load`` itself runs from the file (read in TF 2.21's
     ``tensorflow/python/saved_model/load.py``, ``Loader.__init__``): the ``_create_resource`` and
     ``_initialize`` functions of every ``resource`` object (``RestoredResource``; ``_destroy_resource`` runs
     when it is freed) and the save/restore functions of ``saveable_objects``, which replace the checkpoint
     restore of those objects. It restores variables with its own Python-built ``RestoreV2`` on
     ``variables/`` (``TrackableSaver.restore``), not with the file's saver, and it runs no init op;
   * what TF Serving runs when it loads a model: the ``saver_def`` restore op (fed ``variables/variables``) and
     the init op (``__saved_model_init_op``, ``saved_model_main_op``, ``legacy_init_op``);
   * then, so that nothing is missed, every other graph node and library function in the file.

   An op in :data:`FORBIDDEN_OPS`, or whose name matches :data:`FORBIDDEN_NAME_PARTS`, or that this
   TensorFlow does not know, is refused, naming where it runs. The one exception is the checkpoint code every
   SavedModel carries: ``RestoreV2`` in the function the ``saver_def`` restore op calls, reading the prefix
   that function is given (its variables), and ``SaveV2``/``MergeV2Checkpoints`` in its save function (which
   neither loader runs).
3. **Objects the loader brings to life**: kseg exports hold variables, functions and plain containers only,
   so resources and assets, custom checkpoint functions and Python classes or savers chosen by name are refused.

What this cannot promise: that a model is correct or harmless in what it computes (a graph can be slow,
allocate huge tensors or give wrong masks), nor anything about folders changed after the check. It keeps
out what kseg's exports never need; a model is still code, so load only models from people you trust.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib

from kseg.core.errors import KsegError
from kseg.core.serving_contract import (
    IMAGE_BYTES,
    INSTANCE_OUTPUTS,
    KEYPOINT_OUTPUTS,
    KSEG_FILE,
    POSTPROCESSING_FILE,
    PROBABILITIES_INPUT,
    PROBABILITIES_OUTPUT,
    PROBABILITIES_SIGNATURE,
    SAVED_MODEL_FILE,
    SERVING_OUTPUTS,
    SERVING_SIGNATURE,
)


class ModelLoadError(KsegError, ValueError):
    """A model path is missing or is not a kseg model; the message names the path and what was expected.

    Defined here (and re-exported as ``kseg.prediction.inference.ModelLoadError``) so that refusals are load errors too
    without this module importing ``kseg.prediction.inference``, which imports it."""


class ModelRefusedError(ModelLoadError):
    """A model is not a kseg export, or holds code kseg does not run; the message says why."""


TRUST_HINT = "A SavedModel is a program: load only models from people you trust"
CONTRACT_HINT = "kseg loads only SavedModels written by python -m kseg.export"

# --------------------------------------------------------------------------------- what is refused ---

_WRITES = ("an op that writes files", "touch files")
_READS = ("an op that reads files", "touch files")
_LISTS = ("an op that lists files", "touch files")
_PYTHON = ("an op that runs Python code", "run Python")
_PROCESS = ("an op that stops the process", "stop the process")
_PRINTS = ("an op that prints to the terminal or a file", "print")
_NETWORK = ("an op that talks to other processes or machines", "use the network")
_DEBUG = ("a debugger op that writes tensors to files or the network", "touch files")

#: Ops that reach outside the computation: files, Python, the process, the network. Built from TF 2.21's
#: op registry (``TF_GetAllOpList``, 1908 ops), by grepping the names for File, Save, Restore, Checkpoint,
#: Summary, Dataset, Reader, PyFunc, Print, Rpc, Debug and Dump and by reading the rest for ops whose
#: attributes name files (ImmutableConst's ``memory_region_name``, DecodeProtoV2's ``descriptor_source``,
#: RecordInput's ``file_pattern``) or that act on the process (Abort). No kseg export uses any of them (its
#: graphs decode, resize, run the network and encode PNGs): the checkpoint ops are allowed only where
#: every SavedModel keeps them (see the module docstring).
FORBIDDEN_OPS = {
    **dict.fromkeys(
        (
            "WriteFile",
            "Save",
            "SaveV2",
            "SaveSlices",
            "MergeV2Checkpoints",
            "DistributedSave",
            "CalibrationStatisticsSaver",
            "DumpTensor",
            "FileSystemSetConfiguration",
        ),
        _WRITES,
    ),
    **dict.fromkeys(
        (
            "ReadFile",
            "Restore",
            "RestoreV2",
            "RestoreSlice",
            "DTensorRestoreV2",
            "ImmutableConst",
            "InitializeTableFromTextFile",
            "InitializeTableFromTextFileV2",
            "LoadAndRemapMatrix",
            "GenerateVocabRemapping",
            "RecordInput",
            "DecodeProtoV2",
            "EncodeProto",
        ),
        _READS,
    ),
    "MatchingFiles": _LISTS,
    **dict.fromkeys(("PyFunc", "PyFuncStateless", "EagerPyFunc"), _PYTHON),
    "Abort": _PROCESS,
    **dict.fromkeys(("Print", "PrintV2"), _PRINTS),
    **dict.fromkeys(("RemoteCall", "Send", "Recv", "_Send", "_Recv", "_HostSend", "_HostRecv"), _NETWORK),
}

#: Name parts that mark whole families (and future members) of such ops, with what each family does:
#: summary writers and event files, tf.data (TFRecord/text/CSV/snapshot/cache files, data service), the
#: queue-based file readers, RPC and collective ops, the debugger's dump ops.
FORBIDDEN_NAME_PARTS = (
    ("PyFunc", _PYTHON),
    ("File", ("an op that works on files", "touch files")),
    ("Save", _WRITES),
    ("Restore", _READS),
    ("Checkpoint", ("an op that reads or writes checkpoints", "touch files")),
    ("Summary", ("a summary op (summaries are written to event files)", "write summaries")),
    ("Dataset", ("a tf.data op (datasets read, write and cache files)", "use tf.data")),
    ("Reader", ("a file reader op", "touch files")),
    ("Print", _PRINTS),
    ("Rpc", _NETWORK),
    ("Collective", _NETWORK),
    ("Debug", _DEBUG),
    ("Dump", _DEBUG),
)

#: Ops whose names match a part above but only format strings (the saver's shard file names).
HARMLESS_OPS = frozenset({"ShardedFilename", "ShardedFilespec"})

#: What ``restore_op_name`` and ``save_tensor_name`` of the saver may run (see :func:`_saver_roots`).
_RESTORE_OPS = frozenset({"RestoreV2"})
_SAVE_OPS = frozenset({"SaveV2", "MergeV2Checkpoints"})

#: The ``oneof kind`` values of objects in a kseg export: containers, functions, variables, constants.
ALLOWED_OBJECT_KINDS = frozenset(
    {"user_object", "function", "bare_concrete_function", "variable", "constant", "captured_tensor"}
)

#: Where TF Serving finds the op it runs once after loading (``loader.cc``: the init op).
_INIT_SIGNATURE = "__saved_model_init_op"
_INIT_COLLECTIONS = ("saved_model_main_op", "legacy_init_op")


def forbidden(op: str) -> tuple[str, str] | None:
    """``(what the op does, what kseg exports never do)`` for an op kseg refuses, else None."""
    if op in HARMLESS_OPS:
        return None
    if op in FORBIDDEN_OPS:
        return FORBIDDEN_OPS[op]
    for part, reason in FORBIDDEN_NAME_PARTS:
        if part in op:
            return reason
    return None


# -------------------------------------------------------------------------------------- the checks ---


def load_saved_model(path):
    """``tf.saved_model.load(path)`` once :func:`check_saved_model` accepts it. Use this instead of calling
    ``tf.saved_model.load`` on a folder a user names. Raises ``ModelRefusedError`` (not a kseg export, or
    code kseg does not run) or ``ModelLoadError`` (TensorFlow cannot load it)."""
    import tensorflow as tf

    path = pathlib.Path(path)
    check_saved_model(path)
    try:
        return tf.saved_model.load(str(path))
    except Exception as e:  # TensorFlow raises many types for a damaged model
        message = " ".join(str(e).split())
        raise ModelLoadError(f"{path}: cannot load as a SavedModel ({type(e).__name__}: {message})") from None


def check_saved_model(path) -> None:
    """Refuse (``ModelRefusedError``, one line naming ``path`` and why) a SavedModel version folder that is
    not a kseg export or that holds code touching files, the process or Python. Runs nothing from it."""
    path = pathlib.Path(path)
    task = _check_contract_files(path)
    meta_graph = _read_meta_graph(path)
    _check_signatures(path, meta_graph, task)
    _check_ops(path, meta_graph)
    _check_objects(path, meta_graph)


def _not_a_kseg_export(path, why: str) -> ModelRefusedError:
    return ModelRefusedError(f"{path}: not a kseg export ({why}); {CONTRACT_HINT}")


def _refused(path, why: str) -> ModelRefusedError:
    return ModelRefusedError(f"{path}: refused: {why}. {TRUST_HINT}")


def _check_contract_files(path: pathlib.Path) -> str:
    """The contract files are there; returns the task the export says it was made for."""
    for name in (KSEG_FILE, POSTPROCESSING_FILE):
        if not (path / name).is_file():
            raise _not_a_kseg_export(path, f"no {name}")
    try:
        metadata = json.loads((path / KSEG_FILE).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _not_a_kseg_export(path, f"{KSEG_FILE} is not readable JSON: {e}") from None
    if not isinstance(metadata, dict) or "kseg_version" not in metadata:
        raise _not_a_kseg_export(path, f"{KSEG_FILE} has no kseg_version")
    task = metadata.get("task", "semantic")  # exports older than the field are semantic
    if task not in CONTRACT_SIGNATURES:
        raise _not_a_kseg_export(
            path, f"{KSEG_FILE} names the task {task!r}; kseg's tasks: {sorted(CONTRACT_SIGNATURES)}"
        )
    return task


def _read_meta_graph(path: pathlib.Path):
    """The one TensorFlow 2 meta graph of ``saved_model.pb``; a TF1 model (no object graph) would be loaded
    by ``load_v1_in_v2``, which runs its init ops, so it is not a kseg export either."""
    from google.protobuf.message import DecodeError
    from tensorflow.core.protobuf import saved_model_pb2

    saved_model = saved_model_pb2.SavedModel()
    try:
        saved_model.ParseFromString((path / SAVED_MODEL_FILE).read_bytes())
    except (OSError, DecodeError) as e:
        raise ModelLoadError(
            f"{path}: {SAVED_MODEL_FILE} cannot be read ({type(e).__name__}: {e}); the file is truncated or "
            f"corrupt: export the model again with python -m kseg.export"
        ) from None
    if len(saved_model.meta_graphs) != 1 or not saved_model.meta_graphs[0].HasField("object_graph_def"):
        raise _not_a_kseg_export(
            path,
            f"{len(saved_model.meta_graphs)} meta graphs, or a TensorFlow 1 one without an object graph; a kseg "
            f"export has one TensorFlow 2 meta graph",
        )
    return saved_model.meta_graphs[0]


# --------------------------------------------------------------------------------------- signatures ---

#: The signatures a kseg export has, per task: inputs and outputs (as ``export_model`` writes them).
CONTRACT_SIGNATURES = {
    "semantic": {
        SERVING_SIGNATURE: ({IMAGE_BYTES}, set(SERVING_OUTPUTS)),
        PROBABILITIES_SIGNATURE: ({PROBABILITIES_INPUT}, {PROBABILITIES_OUTPUT}),
    },
    "instances": {SERVING_SIGNATURE: ({IMAGE_BYTES}, set(INSTANCE_OUTPUTS))},
    "keypoints": {SERVING_SIGNATURE: ({IMAGE_BYTES}, set(KEYPOINT_OUTPUTS))},
}


def _check_signatures(path, meta_graph, task: str) -> None:
    """Both loaders must see kseg's signatures: TF Serving reads ``signature_def``, ``tf.saved_model.load``
    the object graph's ``signatures`` map."""
    loaded = _object_graph_signatures(meta_graph.object_graph_def)
    expected = CONTRACT_SIGNATURES[task]
    for name, (inputs, outputs) in expected.items():
        served = meta_graph.signature_def.get(name)
        if served is None or name not in loaded or set(served.inputs) != inputs or set(served.outputs) != outputs:
            found = {n: sorted(s.inputs) for n, s in sorted(meta_graph.signature_def.items()) if n != _INIT_SIGNATURE}
            wanted = " and ".join(f"{n} (input {', '.join(sorted(i))})" for n, (i, _) in expected.items())
            raise _not_a_kseg_export(path, f"its signatures and inputs are {found}; a kseg {task} export has {wanted}")


def _object_functions(object_graph, node_id) -> list[str]:
    """The concrete functions an object-graph node stands for (a function or a bare concrete function)."""
    node = object_graph.nodes[node_id]
    kind = node.WhichOneof("kind")
    if kind == "function":
        return list(node.function.concrete_functions)
    if kind == "bare_concrete_function":
        return [node.bare_concrete_function.concrete_function_name]
    return []


def _child(object_graph, node_id, name) -> int | None:
    for child in object_graph.nodes[node_id].children:
        if child.local_name == name:
            return child.node_id
    return None


def _object_graph_signatures(object_graph) -> dict[str, list[str]]:
    """``{signature name: its functions}`` as ``tf.saved_model.load`` builds ``loaded.signatures`` (the
    root's ``signatures`` child, a ``signature_map`` of concrete functions)."""
    if not object_graph.nodes:
        return {}
    map_id = _child(object_graph, 0, "signatures")
    if map_id is None:
        return {}
    return {
        child.local_name: _object_functions(object_graph, child.node_id)
        for child in object_graph.nodes[map_id].children
    }


# ------------------------------------------------------------------------------------ the graph walk ---


@dataclasses.dataclass
class _Root:
    """A place where execution starts: graph nodes and library functions, and the ``(function, node)``
    pairs that may use an otherwise forbidden op there (the saver's own checkpoint ops)."""

    where: str
    nodes: list = dataclasses.field(default_factory=list)
    functions: list = dataclasses.field(default_factory=list)
    allowed: set = dataclasses.field(default_factory=set)


def _tensor_node(name: str) -> str:
    """``^node``, ``node:1`` -> ``node``."""
    return name.lstrip("^").split(":")[0]


def _functions_in_attr(value) -> list[str]:
    """Library functions named by an attribute value (``func``, ``list.func``, and functions named in their
    own attributes)."""
    funcs = ([value.func] if value.HasField("func") else []) + list(value.list.func)
    names = []
    for func in funcs:
        names.append(func.name)
        for inner in func.attr.values():
            names += _functions_in_attr(inner)
    return names


def _called_functions(node, library) -> list[str]:
    """The functions a node calls: its op, when that names a library function, and function-valued attrs."""
    names = [node.op] if node.op in library else []
    for value in node.attr.values():
        names += _functions_in_attr(value)
    return names


def _walk(root: _Root, graph_nodes, library, seen_nodes: set, seen_functions: set):
    """``(function name or None, node)`` for every node that can run from ``root``; marks what it visits."""
    stack = list(root.functions)
    for name in root.nodes:
        if name in graph_nodes:
            seen_nodes.add(name)
            node = graph_nodes[name]
            yield None, node
            stack += _called_functions(node, library)
    done = set()
    while stack:
        function_name = stack.pop()
        if function_name in done:
            continue
        done.add(function_name)
        seen_functions.add(function_name)
        function = library.get(function_name)
        if function is None:
            continue  # TensorFlow refuses a call of a missing function when it loads the graph
        for attr in function.attr.values():
            stack += _functions_in_attr(attr)
        for node in function.node_def:
            yield function_name, node
            stack += _called_functions(node, library)


def _ancestors(graph_nodes, names) -> list[str]:
    """Graph nodes that ``names`` depend on, themselves included (what a session run of them executes)."""
    found, stack = [], [_tensor_node(n) for n in names]
    seen = set()
    while stack:
        name = stack.pop()
        if name in seen or name not in graph_nodes:
            continue
        seen.add(name)
        found.append(name)
        stack += [_tensor_node(i) for i in graph_nodes[name].input]
    return found


def _signature_roots(meta_graph, graph_nodes) -> list[_Root]:
    loaded = _object_graph_signatures(meta_graph.object_graph_def)
    names = [SERVING_SIGNATURE, PROBABILITIES_SIGNATURE]
    names += sorted((set(loaded) | set(meta_graph.signature_def)) - set(names) - {_INIT_SIGNATURE})
    roots = []
    for name in names:
        served = meta_graph.signature_def.get(name)
        outputs = [t.name for t in served.outputs.values()] if served is not None else []
        roots.append(_Root(f"its {name} signature", _ancestors(graph_nodes, outputs), loaded.get(name, [])))
    return roots


def _loader_roots(object_graph) -> list[_Root]:
    """What ``tf.saved_model.load`` runs from the file: resource functions and custom checkpoint functions."""
    labels = {
        "_create_resource": "its resource creator (run by tf.saved_model.load)",
        "_initialize": "its resource initializer (run by tf.saved_model.load)",
        "_destroy_resource": "its resource destructor (run when the loaded model is freed)",
    }
    roots = []
    for node in object_graph.nodes:
        if node.WhichOneof("kind") == "resource":
            for child in node.children:
                where = labels.get(child.local_name, f"the {child.local_name} function of a resource in it")
                roots.append(_Root(where, functions=_object_functions(object_graph, child.node_id)))
        for saveable in node.saveable_objects.values():
            for function_id in (saveable.restore_function, saveable.save_function):
                roots.append(
                    _Root(
                        "its checkpoint functions (run by tf.saved_model.load)",
                        functions=_object_functions(object_graph, function_id),
                    )
                )
    return roots


def _init_root(meta_graph, graph_nodes) -> _Root:
    names = []
    if _INIT_SIGNATURE in meta_graph.signature_def:
        names += [t.name for t in meta_graph.signature_def[_INIT_SIGNATURE].outputs.values()]
    for collection in _INIT_COLLECTIONS:
        if collection in meta_graph.collection_def:
            names += list(meta_graph.collection_def[collection].node_list.value)
    return _Root("its init op (run by TF Serving when it loads the model)", _ancestors(graph_nodes, names))


def _saver_roots(meta_graph, graph_nodes, library) -> list[_Root]:
    """The saver every SavedModel carries. Its restore op (TF Serving runs it, feeding the path of
    ``variables/``) calls a function whose ``RestoreV2`` reads that function's first argument: allowed only
    when that argument is the saver's filename placeholder, so that the restore reads nothing but the
    model's own variables. Its save function (``SaveV2``, ``MergeV2Checkpoints``) runs only when someone
    saves the graph's checkpoint, never when loading or serving."""
    saver = meta_graph.saver_def
    filename = _tensor_node(saver.filename_tensor_name)
    roots = []
    for node_name, where, ops in (
        (_tensor_node(saver.restore_op_name), "its variable restore (run by TF Serving)", _RESTORE_OPS),
        (_tensor_node(saver.save_tensor_name), "its checkpoint save function", _SAVE_OPS),
    ):
        node = graph_nodes.get(node_name)
        if node is None or not node_name:
            continue
        allowed = set()
        fed_the_filename = node.input and _tensor_node(node.input[0]) == filename
        if fed_the_filename and graph_nodes.get(filename) is not None and graph_nodes[filename].op == "Placeholder":
            for function_name in _called_functions(node, library):
                function = library.get(function_name)
                if function is None or not function.signature.input_arg:
                    continue
                prefix = function.signature.input_arg[0].name
                for inner in function.node_def:
                    reads_prefix = inner.input and _tensor_node(inner.input[0]) == prefix
                    if inner.op in ops and (inner.op != "RestoreV2" or reads_prefix):
                        allowed.add((function_name, inner.name))
        roots.append(_Root(where, [node_name], allowed=allowed))
    return roots


def _roots(meta_graph, graph_nodes, library) -> list[_Root]:
    """Every place execution can start, the ones kseg uses first (so that a refusal names them)."""
    return [
        *_signature_roots(meta_graph, graph_nodes),
        *_loader_roots(meta_graph.object_graph_def),
        _init_root(meta_graph, graph_nodes),
        *_saver_roots(meta_graph, graph_nodes, library),
    ]


def _check_ops(path, meta_graph) -> None:
    from tensorflow.python.framework import op_def_registry

    graph_nodes = {node.name: node for node in meta_graph.graph_def.node}
    library = {function.signature.name: function for function in meta_graph.graph_def.library.function}
    seen_nodes, seen_functions = set(), set()

    def check(root: _Root) -> None:
        for function_name, node in _walk(root, graph_nodes, library, seen_nodes, seen_functions):
            if node.op in library or (function_name, node.name) in root.allowed:
                continue
            problem = forbidden(node.op)
            if problem is None and op_def_registry.get(node.op) is None:
                problem = ("an op this TensorFlow does not have", "use ops outside core TensorFlow")
            if problem is not None:
                what, never = problem
                raise _refused(path, f"{root.where} runs {node.op}, {what}; kseg exports never {never}")

    for root in _roots(meta_graph, graph_nodes, library):
        check(root)
    # Anything the roots did not reach: a loader could still run it (by name, or by a path missed above).
    for name in graph_nodes:
        if name not in seen_nodes:
            check(_Root(f"its graph (node {name})", [name]))
    for name in library:
        if name not in seen_functions:
            check(_Root(f"a function stored in it ({name})", functions=[name]))


# ------------------------------------------------------------------------------------------- objects ---


def _check_objects(path, meta_graph) -> None:
    """Objects ``tf.saved_model.load`` brings to life. Resources and custom checkpoint functions are code
    it runs while loading (their ops were checked above, but kseg exports have none), and a registered
    name or saver picks Python code of this process by name from the file."""
    for node_id, node in enumerate(meta_graph.object_graph_def.nodes):
        kind = node.WhichOneof("kind")
        if kind not in ALLOWED_OBJECT_KINDS:
            raise _refused(
                path,
                f"it holds a {kind} object (object {node_id}), which tf.saved_model.load sets up by running "
                f"code from the file; kseg exports hold only variables and functions",
            )
        if node.saveable_objects:
            raise _refused(
                path,
                f"object {node_id} brings its own checkpoint functions ({', '.join(sorted(node.saveable_objects))}), "
                f"which tf.saved_model.load runs; kseg exports have none",
            )
        for field, value in (("registered_name", node.registered_name), ("registered_saver", node.registered_saver)):
            if value:
                raise _refused(
                    path,
                    f"object {node_id} asks for the Python code registered as {value!r} ({field}); kseg exports "
                    f"use none",
                )
