"""Instance segmentation from training to TF Serving: one model trained on drawn people (``people_scenes``),
exported, and run through ``kseg.predict``, ``kseg.evaluate``, the SavedModel's ``serving_default`` and
``kseg.client`` over REST and gRPC (the ``serving_double``). Every path must give the same people.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import serving_double as sd
from PIL import Image

from kseg import client, evaluate, export, predict, train
from kseg.core import imageio
from kseg.prediction import inference
from kseg.serving import saved_model_export
from kseg.tasks import instance_files


@pytest.fixture(scope="module")
def exported(trained_instance_run, tmp_path_factory):
    models = tmp_path_factory.mktemp("instance-export")
    saved_model_export.export_model(trained_instance_run, models, name="people")
    return models / "people"


@pytest.fixture(scope="module")
def inputs(people_dataset, tmp_path_factory):
    """Four test scenes: two as stored, one enlarged to 96x144 (other size than the model's), one as JPEG."""
    folder = tmp_path_factory.mktemp("instance-inputs")
    scenes = sorted((people_dataset / "test" / "images").iterdir())
    shutil.copy(scenes[0], folder / "a.png")
    shutil.copy(scenes[1], folder / "b.png")
    Image.open(scenes[2]).resize((144, 96), Image.NEAREST).save(folder / "c.png")
    Image.open(scenes[3]).save(folder / "d.jpg", quality=95)
    return folder


def _people(out, stem) -> tuple[np.ndarray, dict]:
    labels = instance_files.read_label_png((out / f"{stem}_instances.png").read_bytes())
    document = json.loads((out / f"{stem}_instances.json").read_text())
    return labels, document


def _truth(people_dataset, index: int) -> np.ndarray:
    masks = sorted((people_dataset / "test" / "instances").iterdir())
    return np.asarray(Image.open(masks[index]))


def _same_people(found: np.ndarray, truth: np.ndarray, min_iou: float = 0.8) -> None:
    """Each true person matches one found person with IoU >= ``min_iou`` and nobody else was found."""
    assert found.max() == truth.max(), (found.max(), truth.max())
    for person in range(1, truth.max() + 1):
        region = truth == person
        ids, counts = np.unique(found[region], return_counts=True)
        best = ids[np.argmax(counts)]
        assert best > 0
        iou = np.sum(region & (found == best)) / np.sum(region | (found == best))
        assert iou >= min_iou, (person, iou)


# ----------------------------------------------------------------------------------- training ---


def test_training_writes_mask_ap_and_separates_every_drawn_person(trained_instance_run):
    metrics = json.loads((trained_instance_run / "metrics.json").read_text())
    assert metrics["test"]["mask_ap"] >= 0.8 and metrics["test"]["missed"] <= 1
    assert metrics["test"]["people"] == metrics["test"]["found"] + metrics["test"]["missed"]
    config = json.loads((trained_instance_run / "config.json").read_text())
    assert config["task"] == "instances"
    header = (trained_instance_run / "history.csv").read_text().splitlines()[0].split(",")
    assert {"val_mask_ap", "val_mask_ap50", "offsets_loss", "centre_heatmap_loss"} <= set(header)


def test_predict_writes_labels_overlay_and_json_for_every_image(trained_instance_run, people_dataset, inputs, tmp_path):
    code = predict.main(["--model", str(trained_instance_run), str(inputs), "--out", str(tmp_path)])
    assert code == 0
    for stem in "abcd":
        assert {p.name for p in tmp_path.glob(f"{stem}_*")} == {
            f"{stem}_instances.png",
            f"{stem}_overlay.png",
            f"{stem}_instances.json",
        }
        labels, document = _people(tmp_path, stem)
        image = imageio.read_image(next(inputs.glob(f"{stem}.*")))
        assert labels.shape == image.shape[:2] == (document["height"], document["width"])
        assert document["count"] == labels.max() == len(document["people"])
        for person in document["people"]:
            assert person["area"] == np.sum(labels == person["id"]) and 0 < person["score"] <= 1
        overlay = np.asarray(Image.open(tmp_path / f"{stem}_overlay.png"))
        assert overlay.shape == image.shape and np.any(overlay != image)
    _same_people(_people(tmp_path, "a")[0], _truth(people_dataset, 0))
    _same_people(_people(tmp_path, "b")[0], _truth(people_dataset, 1))


def test_semantic_flags_are_refused_for_an_instance_model_and_flip_tta_applies(
    trained_instance_run, people_dataset, inputs, tmp_path, capsys
):
    for flags in (["--threshold", "0.4"], ["--fill-holes"], ["--largest-component"]):
        code = predict.main(["--model", str(trained_instance_run), str(inputs), "--out", str(tmp_path), *flags])
        assert code == 2
        error = capsys.readouterr().err.strip().splitlines()[-1]
        assert flags[0] in error and "instance" in error, error
    assert not list(tmp_path.iterdir())
    assert predict.main(["--model", str(trained_instance_run), str(inputs), "--out", str(tmp_path), "--tta"]) == 0
    assert "flip TTA" in "".join(capsys.readouterr())
    _same_people(_people(tmp_path, "a")[0], _truth(people_dataset, 0))


# ------------------------------------------------------------------------------------ evaluation ---


def test_evaluate_scores_the_run_and_its_export_alike(trained_instance_run, exported, people_dataset, tmp_path):
    scores = {}
    for name, model in (("run", trained_instance_run), ("export", exported)):
        out = tmp_path / name
        code = evaluate.main(
            [
                "--model",
                str(model),
                "--dataset",
                f"folder:{people_dataset}",
                "--split",
                "test",
                "--output-dir",
                str(out),
            ]
        )
        assert code == 0
        scores[name] = json.loads((out / "summary.json").read_text())
        assert (out / "cases.csv").read_text().count("\n") == 1 + 8  # a row per test image
    truth = sum(int(np.asarray(Image.open(p)).max()) for p in (people_dataset / "test" / "instances").iterdir())
    assert scores["run"]["task"] == "instances" and scores["run"]["mask_ap"] >= 0.8
    assert abs(scores["run"]["mask_ap"] - scores["export"]["mask_ap"]) <= 0.02
    assert scores["run"]["people"] == scores["export"]["people"] == truth


def test_evaluate_refuses_a_semantic_dataset_and_semantic_flags(trained_instance_run, people_dataset, tmp_path, capsys):
    code = evaluate.main(
        ["--model", str(trained_instance_run), "--dataset", "tfds_ph2/synthetic", "--output-dir", str(tmp_path / "a")]
    )
    assert code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert "semantic" in error and "instances" in error, error
    assert not (tmp_path / "a").exists()
    for flags in (["--ablation"], ["--threshold", "0.3"], ["--group-by", "source"]):
        args = ["--model", str(trained_instance_run), "--dataset", f"folder:{people_dataset}"]
        code = evaluate.main([*args, "--output-dir", str(tmp_path / "b"), *flags])
        assert code == 2
        error = capsys.readouterr().err.strip().splitlines()[-1]
        assert flags[0] in error and "semantic models only" in error, error
        assert not (tmp_path / "b").exists()


def test_choosing_flip_tta_on_validation_is_stored_and_exported(trained_instance_run, people_dataset, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(trained_instance_run / "best.keras", run / "best.keras")
    args = ["--model", str(run), "--dataset", f"folder:{people_dataset}", "--split", "test"]
    assert evaluate.main([*args, "--choose-postprocessing", "--output-dir", str(tmp_path / "e")]) == 0
    stored = json.loads((run / "best.postprocessing.json").read_text())
    scores = stored["steps"]
    assert stored["tta"] == (scores["flip TTA (mask AP)"] >= scores["no TTA (mask AP)"] + 0.005)
    summary = json.loads((tmp_path / "e" / "summary.json").read_text())
    assert summary["postprocessing"] == {"tta": stored["tta"]} and "postprocessing_choice" in summary
    # The choice travels: predictor, export and the export's predictor all use it.
    assert inference.load_predictor(run).postprocessing.tta == stored["tta"]
    target = saved_model_export.export_model(run, tmp_path / "models", name="people")
    assert inference.load_predictor(target).postprocessing.tta == stored["tta"]
    # Forcing TTA on (or off) for that export would need another graph: one line says so.
    assert evaluate.main([*args[:1], str(target), *args[2:], "--output-dir", str(tmp_path / "f")]) == 0
    forced = ["--tta"] if not stored["tta"] else ["--no-tta"]
    code = evaluate.main([*args[:1], str(target), *args[2:], *forced, "--output-dir", str(tmp_path / "g")])
    assert code == 2 and not (tmp_path / "g").exists()


def test_a_semantic_preset_on_an_instance_dataset_is_one_line(people_dataset, tmp_path, capsys):
    code = train.main(
        ["--preset", "synthetic-unet", "--dataset", f"folder:{people_dataset}", "--output-dir", str(tmp_path / "r")]
    )
    assert code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert "instances" in error and "--task instances" in error, error
    assert not (tmp_path / "r").exists()


# ----------------------------------------------------------------------------------- serving ---


def test_export_serves_one_signature_of_people_at_every_image_size(exported, trained_instance_run, inputs):
    import tensorflow as tf

    metadata = json.loads(next(exported.glob("*/assets.extra/kseg.json")).read_text())
    assert metadata["task"] == "instances" and metadata["max_instances"] == 100
    loaded = tf.saved_model.load(str(next(exported.glob("*/saved_model.pb")).parent))
    assert list(loaded.signatures) == ["serving_default"]
    payloads = [(inputs / name).read_bytes() for name in ("a.png", "c.png")]  # 64x96 and 96x144 in one batch
    result = loaded.signatures["serving_default"](image_bytes=tf.constant(payloads))
    assert set(result) == {"label_bytes", "height", "width", "count", "scores", "boxes", "areas"}
    assert result["scores"].shape == (2, 100) and result["boxes"].shape == (2, 100, 4)
    assert [int(v) for v in result["height"]] == [64, 96] and [int(v) for v in result["width"]] == [96, 144]
    keras_results = inference.load_predictor(trained_instance_run).predict(
        [imageio.read_image(inputs / "a.png"), imageio.read_image(inputs / "c.png")]
    )
    for i, expected in enumerate(keras_results):
        count = int(result["count"][i])
        labels = instance_files.read_label_png(result["label_bytes"][i].numpy())
        assert count == expected.count and labels.max() == count
        assert np.mean(labels != expected.labels) <= 0.002
        np.testing.assert_allclose(result["scores"][i, :count], expected.scores, atol=1e-3)
        assert not np.any(result["scores"][i, count:].numpy())  # padding past the count is zero


@pytest.fixture(scope="module")
def double(exported):
    server = sd.ServingDouble({"people": exported}).start()
    yield server
    server.stop()


@pytest.mark.parametrize("transport", ["rest", "grpc", "in-process"])
def test_client_writes_what_kseg_predict_writes(transport, double, exported, trained_instance_run, inputs, tmp_path):
    expected, served = tmp_path / "predict", tmp_path / "served"
    assert predict.main(["--model", str(trained_instance_run), str(inputs), "--out", str(expected)]) == 0
    where = {
        "rest": ["--server", double.rest_url, "--model", "people"],
        "grpc": ["--grpc", double.grpc_target, "--model", "people"],
        "in-process": ["--saved-model", str(exported)],
    }[transport]
    assert client.main([str(inputs), *where, "--out", str(served), "--reencode"]) == 0
    for stem in "abcd":
        want, want_doc = _people(expected, stem)
        got, got_doc = _people(served, stem)
        assert got_doc["count"] == want_doc["count"] and np.mean(got != want) <= 0.002, stem
        for a, b in zip(got_doc["people"], want_doc["people"]):
            assert abs(a["score"] - b["score"]) <= 1e-3


def test_export_command_lists_the_instance_outputs(trained_instance_run, tmp_path, capsys):
    code = export.main(["--model", str(trained_instance_run), "--export-dir", str(tmp_path), "--name", "people"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "serving_default" in printed and "label_bytes" in printed and "predict_images" not in printed


def test_a_semantic_model_on_an_instance_dataset_is_one_line(trained_synthetic_run, people_dataset, tmp_path, capsys):
    code = evaluate.main(
        [
            "--model",
            str(trained_synthetic_run),
            "--dataset",
            f"folder:{people_dataset}",
            "--split",
            "test",
            "--output-dir",
            str(tmp_path / "e"),
        ]
    )
    assert code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert "semantic" in error and "instances" in error, error
    assert not (tmp_path / "e").exists()


def test_show_draws_each_person_of_an_instance_dataset(people_dataset, tmp_path, capsys):
    from kseg import show

    assert show.main([f"folder:{people_dataset}", "--split", "test", "-n", "4", "--out", str(tmp_path / "s.png")]) == 0
    assert "4 examples" in capsys.readouterr().out
    assert Image.open(tmp_path / "s.png").size[0] > 400
