"""A keypoint model through every command, on the dummy LSPET build: train, evaluate (PCK, cases.csv, the
figure), predict (skeleton and COCO keypoint results), export, and the client through the export, whose
joints must equal kseg.predict's; and the errors a user meets on the way."""

import json
import shutil

import numpy as np

from tfds_ph2.lspet_source import JOINT_NAMES

LSPET = "tfds_ph2/lspet"


def test_training_scores_the_best_model_with_pck(keypoint_run):
    metrics = json.loads((keypoint_run / "metrics.json").read_text())
    for split in ("validation", "test"):
        assert 0.0 <= metrics[split]["pck"] <= 1.0
        assert set(metrics[split]["per_joint"]) == set(JOINT_NAMES)
    assert "torso" in metrics["scored_at"]
    assert (keypoint_run / "predictions.png").stat().st_size > 0
    assert "val_pck" in (keypoint_run / "history.csv").read_text().splitlines()[0]


def test_evaluate_writes_pck_per_joint_and_a_row_per_image(keypoint_run, lspet_data_dir, tmp_path, capsys):
    from kseg import evaluate

    out = tmp_path / "eval"
    code = evaluate.main(
        ["--model", str(keypoint_run), "--dataset", LSPET, "--split", "train+validation+test"]
        + ["--data-dir", lspet_data_dir, "--output-dir", str(out)]
    )
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["task"] == "keypoints" and summary["images"] == 10
    rows = (out / "cases.csv").read_text().splitlines()
    assert rows[0] == "image_id,visible,torso,pck,pck_0.1,people" and len(rows) == 11
    assert (out / "predictions.png").exists()
    printed = capsys.readouterr().out
    assert "PCK@0.2" in printed and "left_knee" in printed


def test_choosing_flip_tta_on_validation_is_stored_with_the_model(keypoint_run, lspet_data_dir, tmp_path):
    from kseg import evaluate
    from kseg.prediction import inference

    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(keypoint_run / "best.keras", run / "best.keras")
    args = ["--model", str(run), "--dataset", LSPET, "--split", "test", "--data-dir", lspet_data_dir]
    assert evaluate.main([*args, "--choose-postprocessing", "--output-dir", str(tmp_path / "e")]) == 0
    stored = json.loads((run / "best.postprocessing.json").read_text())
    scores = stored["steps"]
    assert stored["tta"] == (scores["flip TTA (PCK@0.2)"] >= scores["no TTA (PCK@0.2)"] + 0.005)
    assert "validation" in stored["chosen_on"]
    summary = json.loads((tmp_path / "e" / "summary.json").read_text())
    assert summary["postprocessing"] == {"tta": stored["tta"]} and "postprocessing_choice" in summary
    assert inference.load_predictor(run).postprocessing.tta == stored["tta"]


def test_predict_export_and_client_give_the_same_joints(keypoint_run, tmp_path):
    from kseg import client, export, predict

    images = tmp_path / "images"
    images.mkdir()
    from PIL import Image

    rng = np.random.default_rng(3)
    for name, size in (("a.png", (70, 50)), ("b.png", (48, 90))):  # lossless, so both paths decode alike
        Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(images / name)
    assert predict.main(["--model", str(keypoint_run), "--out", str(tmp_path / "pred"), str(images)]) == 0
    assert export.main(["--model", str(keypoint_run), "--export-dir", str(tmp_path / "exp"), "--name", "kp"]) == 0
    metadata = json.loads((tmp_path / "exp" / "kp" / "1" / "assets.extra" / "kseg.json").read_text())
    assert metadata["task"] == "keypoints" and metadata["joint_names"] == list(JOINT_NAMES)
    code = client.main(["--saved-model", str(tmp_path / "exp" / "kp"), str(images), "--out", str(tmp_path / "cli")])
    assert code == 0
    for stem, (height, width) in (("a", (70, 50)), ("b", (48, 90))):
        predicted = json.loads((tmp_path / "pred" / f"{stem}_keypoints.json").read_text())
        served = json.loads((tmp_path / "cli" / f"{stem}_keypoints.json").read_text())
        assert predicted["joint_names"] == served["joint_names"] == list(JOINT_NAMES)
        assert (predicted["height"], predicted["width"]) == (height, width)
        ours = np.array(predicted["results"][0]["keypoints"]).reshape(14, 3)
        theirs = np.array(served["results"][0]["keypoints"]).reshape(14, 3)
        np.testing.assert_allclose(ours, theirs, atol=0.05)
        assert (ours[:, 0] >= -0.5).all() and (ours[:, 0] <= width - 0.5).all()
        assert (tmp_path / "cli" / f"{stem}_skeleton.png").exists()


def test_a_keypoint_model_on_a_mask_dataset_is_one_line(keypoint_run, tmp_path, capsys, synthetic_data_dir):
    from kseg import evaluate

    code = evaluate.main(
        ["--model", str(keypoint_run), "--dataset", "tfds_ph2/synthetic", "--data-dir", synthetic_data_dir]
        + ["--output-dir", str(tmp_path / "e")]
    )
    assert code != 0
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert "a model for keypoints given a dataset of semantic masks" in error


def test_training_keypoints_on_a_mask_dataset_is_one_line(tmp_path, capsys, synthetic_data_dir):
    from kseg import train

    code = train.main(
        ["--preset", "lspet-keypoints", "--dataset", "tfds_ph2/synthetic", "--data-dir", synthetic_data_dir]
        + ["--output-dir", str(tmp_path / "r")]
    )
    assert code != 0
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert "holds semantic masks but the task is 'keypoints'" in error
    assert not (tmp_path / "r").exists()


def test_an_unknown_split_in_a_sum_is_named(keypoint_run, lspet_data_dir, tmp_path, capsys):
    from kseg import evaluate

    code = evaluate.main(
        ["--model", str(keypoint_run), "--dataset", LSPET, "--split", "train+tset", "--data-dir", lspet_data_dir]
        + ["--output-dir", str(tmp_path / "e")]
    )
    assert code != 0
    assert "has no split 'tset'" in capsys.readouterr().err


def test_instances_with_a_semantic_model_is_refused(trained_synthetic_run, tmp_path, capsys):
    from kseg import predict

    image = tmp_path / "x.png"
    from PIL import Image

    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(image)
    code = predict.main(
        ["--model", str(trained_synthetic_run), "--instances", str(trained_synthetic_run), "--out", str(tmp_path / "o")]
        + [str(image)]
    )
    assert code != 0
    assert "--instances: goes with a keypoint model" in capsys.readouterr().err


def test_an_unknown_pretrained_model_is_named(tmp_path, capsys):
    from kseg import predict

    code = predict.main(["--model", "pretrained:openpose-fat", "--out", str(tmp_path / "o"), str(tmp_path)])
    assert code != 0
    assert "pretrained:openpose-mobilenet-thin" in capsys.readouterr().err


def test_show_draws_the_joints_of_a_keypoint_dataset(lspet_data_dir, tmp_path):
    from PIL import Image

    from kseg import show

    out = tmp_path / "lspet.png"
    assert show.main([LSPET, "--split", "train", "-n", "3", "--data-dir", lspet_data_dir, "--out", str(out)]) == 0
    with Image.open(out) as picture:
        pixels = np.asarray(picture.convert("RGB"))
    assert (np.abs(pixels.astype(int) - [230, 30, 30]).sum(-1) < 60).sum() > 50  # red bones were drawn
