"""``kseg.export``: the SavedModel TF Serving loads, checked without a model server.

The export is loaded back with ``tf.saved_model.load`` (in this process and in a fresh one), inspected and run
with ``saved_model_cli``, and its masks are compared with the Keras model's
(``kseg.prediction.inference.load_predictor`` with the same post-processing) on real PH2 images of different
sizes sent in one batch.

Tolerance for "the same mask": at most 0.05% of an image's pixels (plus 2) may differ. The serving graph
decodes, resizes and thresholds with the same TF ops as the Keras path, but the model runs inside a bigger
graph whose convolutions TF may fuse or schedule differently; float32 results then differ in the last bits
and flip only pixels whose probability is within ~1e-6 of the threshold (0 or 1 pixels per image in
practice). JPEG inputs are compared with the Keras model run on TensorFlow's decoding of the same bytes:
Pillow's JPEG decoder (what ``kseg.predict`` uses) differs from TensorFlow's by a few grey levels.
"""

import json
import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest
import serving_double as sd
import tensorflow as tf
from PIL import Image
from tensorflow.core.protobuf import saved_model_pb2

from kseg import export
from kseg.core import imageio, serving_contract
from kseg.prediction import inference
from kseg.serving import saved_model_export
from kseg.tasks import postprocess

REPO = pathlib.Path(__file__).resolve().parents[1]
SIDECAR_CHOICE = postprocess.PostProcessing(threshold=0.45, fill_holes=True)


def assert_same_mask(served, expected, what=""):
    assert served.shape == expected.shape, what
    allowed = 2 + int(0.0005 * expected.size)
    assert sd.mismatch(served, expected) <= allowed, f"{what}: {sd.mismatch(served, expected)} pixels differ"


def served_masks(outputs, binary=True):
    masks = [sd.decode_png(png) for png in outputs["mask_bytes"].numpy()]
    return [(m > 127).astype(np.uint8) for m in masks] if binary else masks


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run directory: a tiny binary model (64x96) and a stored post-processing choice."""
    run = tmp_path_factory.mktemp("runs") / "lesion-run"
    sd.save_test_model(run / "best.keras")
    postprocess.write(postprocess.sidecar_path(run / "best.keras"), SIDECAR_CHOICE, chosen_on="validation")
    return run


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("export") / "models"


@pytest.fixture(scope="module")
def exported(run_dir, export_dir):
    return saved_model_export.export_model(run_dir, export_dir)


@pytest.fixture(scope="module")
def serving(exported):
    return tf.saved_model.load(str(exported)).signatures["serving_default"]


@pytest.fixture(scope="module")
def keras_predictor(run_dir):
    return inference.load_predictor(run_dir)


@pytest.fixture(scope="module")
def ph2(ph2_dir):
    """Three real PH2 images (two 765x572-ish, one 382x287) and one resized to 233x301: four sizes."""
    paths = sd.ph2_image_paths(ph2_dir)
    images = [imageio.read_image(p) for p in paths]
    images.append(np.asarray(Image.fromarray(images[0]).resize((301, 233), Image.BILINEAR)))
    return paths, images


@pytest.fixture(scope="module")
def small_image(ph2):
    return np.asarray(Image.fromarray(ph2[1][2]).resize((128, 96), Image.BILINEAR))


# ------------------------------------------------------------------------------------------ layout ---


def test_export_layout_metadata_and_postprocessing(exported, export_dir, run_dir):
    assert exported == export_dir / "kseg" / "1"  # the name in export/models.config, versions from 1
    assert (exported / "saved_model.pb").is_file() and (exported / "variables").is_dir()
    assert postprocess.read(exported / postprocess.SAVEDMODEL_FILE) == SIDECAR_CHOICE
    metadata = json.loads((exported / serving_contract.KSEG_FILE).read_text())
    assert metadata["image_size"] == [64, 96] and metadata["num_classes"] == 1
    assert metadata["postprocessing"] == SIDECAR_CHOICE.to_dict()
    assert metadata["source_model"] == str((run_dir / "best.keras").resolve())
    assert metadata["kseg_version"] and metadata["tensorflow_version"] == tf.__version__
    assert sorted(p.name for p in exported.parent.iterdir()) == ["1"]  # no staging folder left behind

    # Core TensorFlow ops only: nothing that needs a Python interpreter in the model server.
    saved_model = saved_model_pb2.SavedModel.FromString((exported / "saved_model.pb").read_bytes())
    graph = saved_model.meta_graphs[0].graph_def
    ops = {n.op for n in graph.node} | {n.op for f in graph.library.function for n in f.node_def}
    assert {"DecodeImage", "EncodePng", "Conv2D", "Assert"} <= ops
    assert not ops & {"PyFunc", "PyFuncStateless", "EagerPyFunc"}

    loaded = tf.saved_model.load(str(exported))
    assert set(loaded.signatures) == {"serving_default", "predict_images"}
    serving = loaded.signatures["serving_default"]
    assert {k: (s.dtype, s.shape.as_list()) for k, s in serving.structured_input_signature[1].items()} == {
        "image_bytes": (tf.string, [None])
    }
    assert {k: s.dtype for k, s in serving.structured_outputs.items()} == {
        "mask_bytes": tf.string,
        "height": tf.int32,
        "width": tf.int32,
        "foreground_fraction": tf.float32,
    }
    probabilities = loaded.signatures["predict_images"]
    assert probabilities.structured_input_signature[1]["images"].shape.as_list() == [None, 64, 96, 3]
    assert probabilities.structured_outputs["probabilities"].shape.as_list() == [None, 64, 96, 1]


def test_versions_count_up_and_are_never_overwritten(run_dir, tmp_path):
    base = tmp_path / "models"
    for name in ("1", "3", "not-a-version", ".export-9-abc"):
        (base / "m" / name).mkdir(parents=True)
    assert saved_model_export.next_version(base / "m") == 4
    assert saved_model_export.next_version(base / "empty") == 1

    target = saved_model_export.export_model(run_dir / "best.keras", base, name="m")
    assert target.name == "4"
    assert saved_model_export.export_model(run_dir, base, name="m", version=12).name == "12"
    with pytest.raises(saved_model_export.ExportError, match="12 already exists; versions are never overwritten.*13"):
        saved_model_export.export_model(run_dir, base, name="m", version=12)
    assert sorted(p.name for p in (base / "m").iterdir()) == [".export-9-abc", "1", "12", "3", "4", "not-a-version"]


def test_a_failed_export_leaves_no_version_and_no_staging_folder(run_dir, tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(postprocess, "write", fail)  # fails after the SavedModel itself is written
    with pytest.raises(saved_model_export.ExportError, match="No space left on device"):
        saved_model_export.export_model(run_dir, tmp_path, name="m")
    assert not (tmp_path / "m").exists()  # the model folder it created is removed with the failed version


@pytest.mark.parametrize(
    "case", ["missing", "not_a_model_file", "empty_folder", "version_exists", "unwritable", "bad_name", "saved_model"]
)
def test_cli_errors_are_one_clear_line(case, run_dir, exported, export_dir, tmp_path, capsys):
    args = {
        "missing": ["--model", str(tmp_path / "nope"), "--export-dir", str(tmp_path)],
        "not_a_model_file": ["--model", str(_write(tmp_path / "notes.txt", "hello")), "--export-dir", str(tmp_path)],
        "empty_folder": ["--model", str(tmp_path), "--export-dir", str(tmp_path / "out")],
        "version_exists": ["--model", str(run_dir), "--export-dir", str(export_dir), "--version", "1"],
        "unwritable": ["--model", str(run_dir), "--export-dir", str(_write(tmp_path / "a-file", "x") / "models")],
        "bad_name": ["--model", str(run_dir), "--export-dir", str(tmp_path), "--name", "../up"],
        "saved_model": ["--model", str(exported), "--export-dir", str(tmp_path)],
    }[case]
    expected = {
        "missing": "nope: no such file or directory",
        "not_a_model_file": "notes.txt: expected a .keras file",
        "empty_folder": "found neither best.keras",
        "version_exists": "1 already exists; versions are never overwritten",
        "unwritable": "cannot create the export folder",
        "bad_name": "--name '../up'",
        "saved_model": "already an exported SavedModel",
    }[case]
    assert export.main(args) == 2  # a usage error: the arguments cannot be used as they are
    err = capsys.readouterr().err
    assert err.startswith("kseg.export: error: ") and expected in err and "Traceback" not in err
    assert sorted(p.name for p in (export_dir / "kseg").iterdir()) == ["1"]


def test_cli_exports_and_says_what_it_did(run_dir, tmp_path, capsys):
    assert export.main(["--model", str(run_dir / "best.keras"), "--export-dir", str(tmp_path), "--name", "cli"]) == 0
    out = capsys.readouterr().out
    assert f"to {tmp_path / 'cli' / '1'}" in out
    assert "post-processing in the graph: threshold 0.45, fill_holes" in out
    assert (tmp_path / "cli" / "1" / "saved_model.pb").is_file()


def test_cli_error_as_a_process_has_no_traceback(tmp_path):
    result = _run(
        [
            sys.executable,
            "-m",
            "kseg.export",
            "--model",
            str(tmp_path / "missing"),
            "--export-dir",
            str(tmp_path / "models"),
        ]
    )
    assert result.returncode == 2
    assert "kseg.export: error: " in result.stderr and "no such file or directory" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "models").exists()


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root ignores directory permissions")
def test_cli_error_for_a_read_only_export_dir(run_dir, tmp_path, capsys):
    (tmp_path / "models").mkdir()
    (tmp_path / "models").chmod(0o500)
    try:
        assert export.main(["--model", str(run_dir), "--export-dir", str(tmp_path / "models")]) == 2
    finally:
        (tmp_path / "models").chmod(0o700)
    assert "cannot" in capsys.readouterr().err


def _write(path, text):
    path.write_text(text)
    return path


# ------------------------------------------------------------------- the SavedModel outside this process ---


def _run(command, **kwargs):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.run(command, capture_output=True, text=True, cwd=REPO, env=env, timeout=300, **kwargs)


def test_fresh_process_loads_and_serves_the_export(exported, serving, ph2, tmp_path):
    """A new Python process (no kseg, no Keras imported) loads the SavedModel and serves PNG bytes."""
    png = tmp_path / "image.png"
    png.write_bytes(sd.encode(ph2[1][3], "PNG"))
    script = (
        "import json, sys, tensorflow as tf\n"
        "sig = tf.saved_model.load(sys.argv[1]).signatures['serving_default']\n"
        "out = sig(image_bytes=tf.constant([open(sys.argv[2], 'rb').read()]))\n"
        "print(json.dumps({'height': out['height'].numpy().tolist(), 'width': out['width'].numpy().tolist(),\n"
        "                  'mask': out['mask_bytes'].numpy()[0].hex(), 'modules': [m for m in sys.modules\n"
        "                  if m.split('.')[0] in ('kseg', 'keras')]}))\n"
    )
    result = _run([sys.executable, "-c", script, str(exported), str(png)])
    assert result.returncode == 0, result.stderr[-2000:]
    answer = json.loads(result.stdout.strip().splitlines()[-1])
    assert answer["height"] == [233] and answer["width"] == [301]
    here = serving(image_bytes=tf.constant([png.read_bytes()]))["mask_bytes"].numpy()[0]
    assert sd.mismatch(sd.decode_png(bytes.fromhex(answer["mask"])), sd.decode_png(here)) == 0
    assert not [m for m in answer["modules"] if m.startswith("kseg")]


def test_saved_model_cli_lists_and_runs_the_signatures(exported, tmp_path):
    cli = str(pathlib.Path(sys.executable).with_name("saved_model_cli"))
    shown = _run([cli, "show", "--dir", str(exported), "--all"])
    assert shown.returncode == 0, shown.stderr[-2000:]
    for text in (
        "signature_def['serving_default']",
        "signature_def['predict_images']",
        "image_bytes",
        "mask_bytes",
        "foreground_fraction",
        "probabilities",
        "(-1, 64, 96, 3)",
    ):
        assert text in shown.stdout
    np.save(tmp_path / "images.npy", np.full((2, 64, 96, 3), 0.5, np.float32))
    ran = _run(
        [
            cli,
            "run",
            "--dir",
            str(exported),
            "--tag_set",
            "serve",
            "--signature_def",
            "predict_images",
            "--inputs",
            f"images={tmp_path / 'images.npy'}",
            "--outdir",
            str(tmp_path / "out"),
        ]
    )
    assert ran.returncode == 0, ran.stderr[-2000:]
    assert np.load(tmp_path / "out" / "probabilities.npy").shape == (2, 64, 96, 1)


# -------------------------------------------------------------------------- masks match the Keras path ---


def test_masks_match_keras_for_mixed_sizes_and_formats_in_one_batch(serving, keras_predictor, exported, ph2):
    paths, images = ph2
    jpeg = sd.encode(images[2], "JPEG", quality=92)
    batch = [sd.encode(images[0], "PNG"), paths[1].read_bytes(), jpeg, sd.encode(images[3], "BMP")]
    outputs = serving(image_bytes=tf.constant(batch))

    tf_decoded_jpeg = tf.io.decode_jpeg(jpeg, channels=3).numpy()
    references = keras_predictor.predict([images[0], images[1], tf_decoded_jpeg, images[3]])
    assert keras_predictor.postprocessing == SIDECAR_CHOICE  # threshold 0.45 and hole filling, in both paths
    masks = served_masks(outputs)
    for i, (mask, reference) in enumerate(zip(masks, references)):
        assert_same_mask(mask, reference, f"image {i}")
        assert 0 < reference.mean() < 1  # a real test: neither all background nor all foreground
    assert outputs["height"].numpy().tolist() == [im.shape[0] for im in images]
    assert outputs["width"].numpy().tolist() == [im.shape[1] for im in images]
    np.testing.assert_allclose(outputs["foreground_fraction"].numpy(), [m.mean() for m in masks], atol=1e-6)
    assert set(np.unique(sd.decode_png(outputs["mask_bytes"].numpy()[0]))) <= {0, 255}  # as kseg.predict writes

    # What kseg.predict computes from Pillow's decoding of the JPEG differs only by the decoders' rounding.
    pillow = keras_predictor.predict([imageio.to_rgb_array(imageio.decode_pil(jpeg))])[0]
    assert sd.mismatch(masks[2], pillow) <= 0.01 * pillow.size

    # kseg.prediction.inference reads the export (folder of versions -> newest) through predict_images.
    saved = inference.load_predictor(exported.parent)
    assert saved.postprocessing == SIDECAR_CHOICE and saved.image_size == (64, 96) and saved.num_classes == 1
    for mask, reference in zip(saved.predict([images[0], images[3]]), [references[0], references[3]]):
        assert_same_mask(mask, reference)


def test_tta_and_largest_component_are_in_the_graph(run_dir, tmp_path, keras_predictor, ph2):
    choice = postprocess.PostProcessing(threshold=0.5, tta=True, fill_holes=True, largest_component=True)
    target = saved_model_export.export_model(run_dir, tmp_path, version=3, postprocessing=choice)
    assert postprocess.read(target / postprocess.SAVEDMODEL_FILE) == choice
    serving = tf.saved_model.load(str(target)).signatures["serving_default"]
    images = [ph2[1][2], ph2[1][3]]
    masks = served_masks(serving(image_bytes=tf.constant([sd.encode(im, "PNG") for im in images])))
    references = keras_predictor.predict(images, postprocessing=choice)
    plain = keras_predictor.predict(images, postprocessing=postprocess.PostProcessing())
    for mask, reference, untouched in zip(masks, references, plain):
        assert_same_mask(mask, reference)
        assert sd.mismatch(reference, untouched) > 100  # the choice changes the masks, so the match means something


def test_an_empty_request_is_refused_clearly(exported):
    loaded = tf.saved_model.load(str(exported))
    with pytest.raises(tf.errors.InvalidArgumentError, match="image_bytes holds no images"):
        loaded.signatures["serving_default"](image_bytes=tf.constant([], tf.string))
    with pytest.raises(tf.errors.InvalidArgumentError, match="images holds no images"):
        loaded.signatures["predict_images"](images=tf.zeros([0, 64, 96, 3]))


def test_multiclass_models_return_class_id_masks(tmp_path, ph2):
    run = tmp_path / "run"
    sd.save_test_model(run / "best.keras", num_classes=3)
    target = saved_model_export.export_model(run, tmp_path / "models", name="parts")
    assert json.loads((target / serving_contract.KSEG_FILE).read_text())["num_classes"] == 3
    loaded = tf.saved_model.load(str(target))
    images = [ph2[1][3], ph2[1][2]]
    outputs = loaded.signatures["serving_default"](image_bytes=tf.constant([sd.encode(im, "PNG") for im in images]))
    masks = served_masks(outputs, binary=False)
    references = inference.load_predictor(run).predict(images)
    for mask, reference in zip(masks, references):
        assert_same_mask(mask, reference)
    assert set(np.unique(np.concatenate([m.ravel() for m in masks]))) == {0, 1, 2}
    np.testing.assert_allclose(outputs["foreground_fraction"].numpy(), [(m > 0).mean() for m in masks], atol=1e-6)
    probabilities = loaded.signatures["predict_images"](images=tf.fill([1, 64, 96, 3], 0.5))["probabilities"]
    np.testing.assert_allclose(tf.reduce_sum(probabilities, axis=-1).numpy(), 1.0, rtol=1e-5)  # softmax


# ------------------------------------------------------------------------------------------ bad inputs ---

BAD_INPUT_CASES = sd.BAD_INPUT_CASES


@pytest.fixture(scope="module")
def bad_cases(small_image):
    cases = sd.bad_inputs(small_image)
    assert list(cases) == sd.BAD_INPUT_CASES
    return cases


@pytest.mark.parametrize("case", BAD_INPUT_CASES)
def test_bad_inputs_fail_clearly_or_work_and_the_model_keeps_answering(
    case, bad_cases, serving, small_image, keras_predictor
):
    data, expected = bad_cases[case]
    good = sd.encode(small_image, "PNG")
    if expected is None:
        outputs = serving(image_bytes=tf.constant([good, data]))
        decoded = imageio.to_rgb_array(imageio.decode_pil(data))
        mask = served_masks(outputs)[1]
        assert mask.shape == decoded.shape[:2]
        if case != "photo_6000x4000":  # 16-bit: TF truncates to 8 bits where Pillow rounds; masks barely differ
            assert_same_mask(mask, keras_predictor.predict([decoded])[0], case)
    else:
        with pytest.raises(tf.errors.InvalidArgumentError, match=re.escape(expected)):
            serving(image_bytes=tf.constant([good, data]))
    again = serving(image_bytes=tf.constant([good]))  # the next request still works
    assert again["height"].numpy().tolist() == [small_image.shape[0]]
