"""Models and weight files are code: kseg loads only SavedModels it exported, checks them before TensorFlow
runs anything from them, loads ``.keras`` files in Keras' safe mode, and unpickles no global a weight file
does not need.

Every crafted file here is real and would do harm if loaded naively: each test checks that the file is
refused with one line, that the harm (a file written outside the output folder, a marker file) did not
happen, and, where it is safe to, that the same file does that harm when loaded without kseg's checks (so
the test cannot pass because the crafted file is broken).
"""

import collections
import io
import pathlib
import pickle
import shutil

import keras
import numpy as np
import pytest
import serving_double as sd
import tensorflow as tf
from PIL import Image
from tensorflow.core.protobuf import saved_model_pb2

from kseg import predict
from kseg.models import pretrained_weights
from kseg.models.pretrained_weights import (
    TORCH_LEGACY_MAGIC,
    TORCH_LEGACY_PROTOCOL,
    PretrainedWeightsError,
    read_torch_legacy,
)
from kseg.prediction import inference
from kseg.serving import saved_model_export

TRUST = "A SavedModel is a program: load only models from people you trust"
WRITES = "WriteFile, an op that writes files; kseg exports never touch files"
CONTRACT = "kseg loads only SavedModels written by python -m kseg.export"
IMAGE_SIZE = (64, 96)  # serving_double.save_test_model's


@pytest.fixture(scope="module")
def real_export(tmp_path_factory) -> pathlib.Path:
    """A real kseg export (``MODELS/m/1``) of the tiny test model; its version folder is returned."""
    root = tmp_path_factory.mktemp("trust")
    sd.save_test_model(root / "run" / "best.keras", image_size=IMAGE_SIZE)
    return saved_model_export.export_model(root / "run", root / "models", name="m")


@pytest.fixture
def target(tmp_path) -> pathlib.Path:
    """Where the crafted models write: outside the output folder kseg.predict is given."""
    path = tmp_path / "elsewhere" / "written-by-the-model.txt"
    path.parent.mkdir()
    return path


@pytest.fixture
def image_file(tmp_path) -> pathlib.Path:
    path = tmp_path / "in" / "x.png"
    path.parent.mkdir()
    Image.fromarray(np.full((40, 50, 3), 128, np.uint8)).save(path)
    return path


class _WritingResource(tf.saved_model.experimental.TrackableResource):
    """A resource whose initializer writes a file: ``tf.saved_model.load`` runs it while loading."""

    def __init__(self, target):
        self.target = str(target)
        super().__init__()

    def _create_resource(self):
        return tf.raw_ops.VarHandleOp(dtype=tf.float32, shape=[], shared_name="")

    def _initialize(self):
        return tf.io.write_file(self.target, "written while loading")


def craft_saved_model(
    folder, target, how="benign", contract_from=None, signatures=("serving_default", "predict_images")
):
    """A SavedModel shaped like a kseg export (same signatures, inputs and outputs) that writes ``target``:
    ``signature`` in both signatures, ``nested`` in a tf.cond branch of both, ``initializer`` while loading,
    ``benign`` never. ``contract_from`` (an export) gives it a copy of kseg's assets.extra files."""
    module = tf.Module()

    def write():
        if how == "signature":
            tf.io.write_file(str(target), "written by a signature")
        elif how == "nested":
            tf.cond(
                tf.random.uniform([]) >= 0,  # not known at trace time, so a real If with two branch functions
                lambda: (tf.io.write_file(str(target), "written by a branch"), tf.constant(1))[1],
                lambda: tf.constant(0),
            )

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
    def serve(image_bytes):
        write()
        count = tf.shape(image_bytes)[0]
        ones = tf.fill([count], 1)
        return {"mask_bytes": image_bytes, "height": ones, "width": ones, "foreground_fraction": tf.zeros([count])}

    @tf.function(input_signature=[tf.TensorSpec([None, *IMAGE_SIZE, 3], tf.float32, name="images")])
    def predict_images(images):
        write()
        return {"probabilities": images[..., :1]}

    if how == "initializer":
        module.resource = _WritingResource(target)
    functions = {"serving_default": serve, "predict_images": predict_images}
    tf.saved_model.save(
        module, str(folder), signatures={name: functions[name].get_concrete_function() for name in signatures}
    )
    if contract_from is not None:
        shutil.copytree(contract_from / "assets.extra", folder / "assets.extra")
    return folder


def refused_by_predict(model, image_file, out, capsys) -> str:
    """kseg.predict's one error line for ``model`` (exit 2, no traceback, nothing written)."""
    code = predict.main([str(image_file), "--model", str(model), "--output-dir", str(out)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kseg.predict: error: "), err
    assert not out.exists()
    return lines[0].removeprefix("kseg.predict: error: ")


def functions_holding(saved_model: pathlib.Path, op: str) -> list[str]:
    proto = saved_model_pb2.SavedModel.FromString((saved_model / "saved_model.pb").read_bytes())
    library = proto.meta_graphs[0].graph_def.library.function
    return [f.signature.name for f in library if any(node.op == op for node in f.node_def)]


# ----------------------------------------------------------------------------------------- SavedModels ---


@pytest.mark.parametrize("how", ["signature", "nested"])
def test_a_model_that_writes_a_file_is_refused_before_it_runs(how, real_export, target, image_file, tmp_path, capsys):
    crafted = craft_saved_model(tmp_path / "crafted" / "1", target, how, contract_from=real_export)
    if how == "nested":  # the write is only in the branch functions: the check must follow If's attrs
        assert functions_holding(crafted, "WriteFile") and all(
            name.startswith("cond_true") for name in functions_holding(crafted, "WriteFile")
        )
    expected = f"{crafted}: refused: its serving_default signature runs {WRITES}. {TRUST}"

    with pytest.raises(inference.ModelLoadError) as info:
        inference.load_predictor(crafted)
    assert str(info.value) == expected
    assert not target.exists()

    with pytest.raises(inference.ModelLoadError) as info:  # the models folder: its newest version is checked
        inference.load_predictor(crafted.parent)
    assert str(info.value) == expected

    assert refused_by_predict(crafted, image_file, tmp_path / "out", capsys) == expected
    assert not target.exists()

    from kseg import client  # kseg.client --saved-model runs the serving signature in process

    assert client.main([str(image_file), "--saved-model", str(crafted), "--output-dir", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and f"kseg.client: error: {expected}" in err.splitlines()
    assert not target.exists() and not (tmp_path / "o").exists()

    # The crafted model does write when run without the check (kseg.predict runs predict_images).
    tf.saved_model.load(str(crafted)).signatures["predict_images"](images=tf.zeros([1, *IMAGE_SIZE, 3]))
    assert target.exists()


def test_a_model_that_writes_a_file_while_loading_is_refused(real_export, target, image_file, tmp_path, capsys):
    """tf.saved_model.load runs a resource's initializer from the file, before any signature is called."""
    crafted = craft_saved_model(tmp_path / "crafted", target, "initializer", contract_from=real_export)
    expected = f"{crafted}: refused: its resource initializer (run by tf.saved_model.load) runs {WRITES}. {TRUST}"

    with pytest.raises(inference.ModelLoadError) as info:
        inference.load_predictor(crafted)
    assert str(info.value) == expected
    assert refused_by_predict(crafted, image_file, tmp_path / "out", capsys) == expected
    assert not target.exists()

    tf.saved_model.load(str(crafted))  # loading alone writes the file
    assert target.exists()


def test_a_saved_model_that_is_not_a_kseg_export_is_refused(real_export, target, image_file, tmp_path, capsys):
    plain = craft_saved_model(tmp_path / "plain" / "1", target)
    expected = f"{plain}: not a kseg export (no assets.extra/kseg.json); {CONTRACT}"
    with pytest.raises(inference.ModelLoadError) as info:
        inference.load_predictor(plain.parent)
    assert str(info.value) == expected
    assert refused_by_predict(plain, image_file, tmp_path / "out", capsys) == expected

    (plain / "assets.extra").mkdir()
    shutil.copy(real_export / "assets.extra" / "kseg.json", plain / "assets.extra")
    with pytest.raises(inference.ModelLoadError) as info:
        inference.load_predictor(plain)
    assert str(info.value) == f"{plain}: not a kseg export (no assets.extra/postprocessing.json); {CONTRACT}"

    one_signature = craft_saved_model(
        tmp_path / "one" / "1", target, contract_from=real_export, signatures=("serving_default",)
    )
    with pytest.raises(inference.ModelLoadError) as info:
        inference.load_predictor(one_signature)
    assert str(info.value) == (
        f"{one_signature}: not a kseg export (its signatures and inputs are {{'serving_default': "
        f"['image_bytes']}}; a kseg semantic export has serving_default (input image_bytes) and predict_images "
        f"(input images)); {CONTRACT}"
    )


def test_a_real_export_still_loads_and_predicts(real_export, image_file):
    predictor = inference.load_predictor(real_export.parent)
    assert predictor.image_size == IMAGE_SIZE and predictor.keras_model is None
    (mask,) = predictor.predict([np.asarray(Image.open(image_file))])
    assert mask.shape == (40, 50) and set(np.unique(mask)) <= {0, 1}


def test_every_refused_op_name_is_a_real_tensorflow_op():
    """A misspelt name would refuse nothing."""
    from tensorflow.python.framework import op_def_registry

    from kseg.prediction import model_trust

    assert [op for op in model_trust.FORBIDDEN_OPS if op_def_registry.get(op) is None] == []
    assert model_trust.forbidden("ShardedFilename") is None and model_trust.forbidden("Conv2D") is None
    assert model_trust.forbidden("TFRecordDatasetV2") and model_trust.forbidden("WriteScalarSummary")


# ------------------------------------------------------------------------------------------ .keras files ---


def test_a_keras_file_with_python_code_is_refused_and_the_code_does_not_run(tmp_path):
    marker = tmp_path / "lambda-ran"
    code = eval(f"lambda x: (__import__('pathlib').Path({str(marker)!r}).write_text('ran'), x)[1]")
    image = keras.Input((*IMAGE_SIZE, 3), name="image")
    model = keras.Model(image, keras.layers.Conv2D(1, 1, name="logits")(keras.layers.Lambda(code)(image)))
    path = tmp_path / "lambda.keras"
    model.save(path)
    marker.unlink()  # building the model ran the lambda once

    with pytest.raises(inference.ModelLoadError) as info:
        inference.load_predictor(path)
    message = str(info.value)
    assert message.startswith(f"{path}: refused: it holds Python code, which Keras' safe mode does not load (")
    assert message.endswith(
        "kseg models never hold Python code. A model file is a program: load only models from people you trust"
    )
    assert "\n" not in message and "safe_mode=False" not in message
    assert not marker.exists()

    keras.models.load_model(path, compile=False, safe_mode=False)  # what safe mode kept from running
    assert marker.exists()


# --------------------------------------------------------------------------------------- weight files ---


class _CreatesMarker:
    """Unpickling this opens (creates) a file: what a crafted pickle can do with any callable it names."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


def legacy_file(evil_part: str, marker) -> bytes:
    """A legacy torch.save file (empty state dict) with ``evil_part``'s pickle replaced by one that creates
    ``marker`` when unpickled."""
    parts = {
        "magic number": TORCH_LEGACY_MAGIC,
        "protocol": TORCH_LEGACY_PROTOCOL,
        "sys_info": {"protocol_version": TORCH_LEGACY_PROTOCOL, "little_endian": True},
        "state dict": collections.OrderedDict(),
        "storage keys": [],
    }
    parts[evil_part] = _CreatesMarker(marker)
    return b"".join(pickle.dumps(value, protocol=2) for value in parts.values())


def test_a_plain_legacy_file_still_reads(tmp_path):
    path = tmp_path / "empty.pth"
    parts = (TORCH_LEGACY_MAGIC, TORCH_LEGACY_PROTOCOL, {"little_endian": True}, collections.OrderedDict(), [])
    path.write_bytes(b"".join(pickle.dumps(value, protocol=2) for value in parts))
    assert read_torch_legacy(path) == {}


@pytest.mark.parametrize("evil_part", ["magic number", "protocol", "sys_info", "state dict", "storage keys"])
def test_a_weight_file_whose_pickle_runs_code_is_refused_before_it_runs(evil_part, tmp_path):
    marker = tmp_path / "pickle-ran"
    path = tmp_path / "crafted.pth"
    path.write_bytes(legacy_file(evil_part, marker))

    with pytest.raises(PretrainedWeightsError) as info:
        read_torch_legacy(path)
    assert not marker.exists()
    assert str(info.value).startswith(f"{path}: refused: a pickle in it names io.open, which a torch state dict")
    assert "\n" not in str(info.value)

    stream = io.BytesIO(path.read_bytes())
    values = [pickle.load(stream) for _ in range(5)]  # what the plain pickle module does with the same bytes
    assert marker.exists()
    for value in values:
        if isinstance(value, io.IOBase):
            value.close()


def test_the_real_lite0_weight_file_still_reads():
    tensors = read_torch_legacy(pretrained_weights.locate_weight_file("efficientnet_lite0"))
    assert tensors["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert tensors["_fc.weight"].shape == (1000, 1280)
