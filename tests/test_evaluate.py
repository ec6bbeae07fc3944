"""``kseg.evaluate``: end to end on the synthetic set and on real PH2 cases, and the post-processing choice."""

import csv
import json
import shutil

import numpy as np
import pytest

from kseg import evaluate
from kseg.core import imageio
from kseg.evaluation.cases import MaskMaker, PredictedCase, mean_dice, mean_score, summarize
from kseg.evaluation.postprocessing_choice import choose_postprocessing
from kseg.tasks import scoring
from kseg.tasks.postprocess import PostProcessing


def _rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_synthetic_test_split_end_to_end(trained_synthetic_run, synthetic_data_dir, tmp_path, capsys):
    out = tmp_path / "eval"
    code = evaluate.main(
        [
            "--model",
            str(trained_synthetic_run),
            "--dataset",
            "tfds_ph2/synthetic",
            "--split",
            "test",
            "--output-dir",
            str(out),
            "--data-dir",
            synthetic_data_dir,
        ]
    )
    assert code == 0
    for name in ("cases.csv", "summary.json", "grid.png", "dice_histogram.png", "dice_vs_threshold.png"):
        assert (out / name).stat().st_size > 0, name
    rows = _rows(out / "cases.csv")
    summary = json.loads((out / "summary.json").read_text())
    assert len(rows) == 50 == summary["images"]
    assert list(rows[0]) == ["image_id", *scoring.CASE_COLUMNS]
    dice = np.array([float(r["dice"]) for r in rows])
    assert summary["dice"]["mean"] == pytest.approx(dice.mean(), abs=1e-5)
    assert summary["dice"]["median"] == pytest.approx(np.median(dice), abs=1e-5)
    assert summary["dice"]["mean"] > 0.8  # the shared model learned the task (train reports about 0.89)
    # The same images scored by kseg.train at the end of training: same pipeline, same numbers.
    metrics = json.loads((trained_synthetic_run / "metrics.json").read_text())
    assert summary["dice"]["mean"] == pytest.approx(metrics["test"]["dice"], abs=1e-4)
    assert 0 < summary["pooled_dice"] < 1 and set(summary["dice_vs_threshold"]) >= {"0.5", "0.3", "0.7"}
    assert summary["dice_vs_threshold"]["0.5"] == pytest.approx(summary["dice"]["mean"], abs=1e-4)
    assert summary["postprocessing"] == PostProcessing().to_dict()
    assert "pixel_accuracy" in capsys.readouterr().out  # the table


def test_choose_postprocessing_is_stored_and_used(trained_synthetic_run, synthetic_data_dir, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(trained_synthetic_run, run_dir)
    out = tmp_path / "eval"
    code = evaluate.main(
        [
            "--model",
            str(run_dir),
            "--dataset",
            "tfds_ph2/synthetic",
            "--split",
            "test",
            "--output-dir",
            str(out),
            "--data-dir",
            synthetic_data_dir,
            "--choose-postprocessing",
            "--ablation",
        ]
    )
    assert code == 0
    stored = json.loads((run_dir / "best.postprocessing.json").read_text())
    assert stored["chosen_on"].startswith("tfds_ph2/synthetic validation (50 images)")
    steps = {s["step"]: s for s in stored["steps"]}
    assert set(steps) == {"start", "tta", "fill_holes", "largest_component", "threshold"}
    summary = json.loads((out / "summary.json").read_text())
    chosen = PostProcessing.from_dict(stored)
    assert summary["postprocessing"] == chosen.to_dict()
    ablation = summary["ablation"]
    assert ablation["plain (threshold 0.5)"] == pytest.approx(
        json.loads((trained_synthetic_run / "metrics.json").read_text())["test"]["dice"], abs=1e-4
    )
    assert ablation[f"chosen ({chosen.describe()})"] == pytest.approx(summary["dice"]["mean"], abs=1e-6)
    # Later evaluations of this model use the stored choice unless a flag overrides it.
    again = tmp_path / "again"
    assert (
        evaluate.main(
            [
                "--model",
                str(run_dir / "best.keras"),
                "--dataset",
                "tfds_ph2/synthetic",
                "--split",
                "validation",
                "--output-dir",
                str(again),
                "--data-dir",
                synthetic_data_dir,
                "--no-tta",
                "--threshold",
                "0.4",
            ]
        )
        == 0
    )
    used = json.loads((again / "summary.json").read_text())["postprocessing"]
    assert used == {**chosen.to_dict(), "tta": False, "threshold": 0.4}


def _case(true, probs, image_id="c"):
    return PredictedCase(image_id, true.astype(np.uint8), {False: probs[..., None].astype(np.float32)})


def test_choice_keeps_only_steps_that_help():
    yy, xx = np.mgrid[:24, :24]
    lesion = (yy - 12) ** 2 + (xx - 12) ** 2 <= 36
    speck = (yy - 2) ** 2 + (xx - 21) ** 2 <= 2
    # The model is unsure near the border (0.42 inside the lesion rim) and fires on a speck of hair.
    probs = np.where(lesion, 0.9, 0.05) + np.where(speck, 0.85, 0)
    rim = lesion & ((yy - 12) ** 2 + (xx - 12) ** 2 >= 16)
    probs = np.where(rim, 0.42, probs)
    cases = [_case(lesion, probs, str(i)) for i in range(3)]
    chosen, steps = choose_postprocessing(cases, MaskMaker(1))
    assert chosen.largest_component and not chosen.fill_holes and not chosen.tta
    assert chosen.threshold <= 0.4
    assert [s["step"] for s in steps] == ["start", "fill_holes", "largest_component", "threshold"]  # no TTA probs
    assert mean_dice(cases, chosen, MaskMaker(1)) == pytest.approx(1.0)


def test_mean_score_averages_the_named_score_over_images():
    truth = np.zeros((10, 10), bool)
    truth[:, :4] = True  # 40 pixels
    half = np.where(np.arange(10)[None, :] < 2, 0.9, 0.1) * np.ones((10, 1))  # finds 20 of them, nothing else
    cases = [_case(truth, np.where(truth, 0.9, 0.1), "whole"), _case(truth, half, "half")]
    plain = PostProcessing()
    assert mean_score(cases, plain, MaskMaker(1), "iou") == pytest.approx((1 + 0.5) / 2)
    assert (
        mean_score(cases, plain, MaskMaker(1))
        == mean_dice(cases, plain, MaskMaker(1))
        == pytest.approx((1 + 2 / 3) / 2)
    )
    with pytest.raises(ValueError, match="score 'jaccard' is not one of dice, iou"):
        mean_score(cases, plain, MaskMaker(1), "jaccard")


def test_real_ph2_cases_scored_at_original_size(ph2_dir, trained_synthetic_run, tmp_path):
    """Five real cases (1-bit BMP masks, IMD002's 24-bit top-down mask, different sizes) as a folder dataset."""
    folder = tmp_path / "ph2-five"
    ids = ["IMD002", "IMD003", "IMD004", "IMD006", "IMD008"]
    for sub in ("images", "masks"):
        (folder / "test" / sub).mkdir(parents=True)
    for image_id in ids:
        case = ph2_dir / "PH2 Dataset images" / image_id
        shutil.copy(case / f"{image_id}_Dermoscopic_Image" / f"{image_id}.bmp", folder / "test" / "images")
        shutil.copy(
            case / f"{image_id}_lesion" / f"{image_id}_lesion.bmp", folder / "test" / "masks" / f"{image_id}.bmp"
        )
    out = tmp_path / "eval"
    assert (
        evaluate.main(
            [
                "--model",
                str(trained_synthetic_run),
                "--dataset",
                f"folder:{folder}",
                "--split",
                "test",
                "--output-dir",
                str(out),
                "--tta",
            ]
        )
        == 0
    )
    rows = {r["image_id"]: r for r in _rows(out / "cases.csv")}
    assert sorted(rows) == ids
    for image_id in ids:
        true = imageio.read_binary_mask(folder / "test" / "masks" / f"{image_id}.bmp")
        assert int(rows[image_id]["true_area"]) == int(true.sum())  # scored at the original resolution
        assert 0 <= float(rows[image_id]["dice"]) <= 1 and float(rows[image_id]["specificity"]) > 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["postprocessing"]["tta"] is True and summary["images"] == 5


def test_summary_reports_dice_per_group():
    rows = [
        {
            "image_id": str(i),
            "dice": d,
            "clinical_diagnosis": g,
            **{c: 0.5 for c in scoring.CASE_COLUMNS if c != "dice"},
        }
        for i, (d, g) in enumerate([(0.9, "melanoma"), (0.7, "melanoma"), (0.95, "common_nevus")])
    ]
    cases = [_case(np.ones((2, 2)), np.ones((2, 2)), r["image_id"]) for r in rows]
    summary = summarize(rows, cases, [np.ones((2, 2), np.uint8)] * 3, 1, group_by="clinical_diagnosis")
    assert summary["dice_by_clinical_diagnosis"] == {
        "common_nevus": {"mean": 0.95, "images": 1},
        "melanoma": {"mean": pytest.approx(0.8), "images": 2},
    }


def test_errors_name_the_problem(tmp_path, synthetic_data_dir, trained_synthetic_run, capsys):
    assert evaluate.main(["--model", str(tmp_path / "nope.keras"), "--output-dir", str(tmp_path)]) == 2
    assert "nope.keras: no such file" in capsys.readouterr().err
    (tmp_path / "model.h5").write_bytes(b"x")
    assert evaluate.main(["--model", str(tmp_path / "model.h5"), "--output-dir", str(tmp_path)]) == 2
    assert "expected a .keras file" in capsys.readouterr().err
    assert (
        evaluate.main(
            [
                "--model",
                str(trained_synthetic_run),
                "--dataset",
                "tfds_ph2/synthetic",
                "--split",
                "dev",
                "--data-dir",
                synthetic_data_dir,
                "--output-dir",
                str(tmp_path),
            ]
        )
        == 2
    )
    assert "has no split 'dev'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:  # the flag's own check (kseg.core.settings), before anything loads
        evaluate.main(["--model", str(trained_synthetic_run), "--output-dir", str(tmp_path), "--threshold", "2"])
    assert exit_info.value.code == 2
    assert "argument --threshold: expected a number in (0, 1), got '2'" in capsys.readouterr().err


def test_split_all_scores_every_image(trained_synthetic_run, synthetic_data_dir, tmp_path):
    """An external labelled set has no splits of its own: ``--split all`` scores every image."""
    out = tmp_path / "eval"
    code = evaluate.main(
        [
            "--model",
            str(trained_synthetic_run),
            "--dataset",
            "tfds_ph2/synthetic",
            "--split",
            "all",
            "--output-dir",
            str(out),
            "--data-dir",
            synthetic_data_dir,
        ]
    )
    assert code == 0
    rows = _rows(out / "cases.csv")
    assert len(rows) == 300 and len({r["image_id"] for r in rows}) == 300  # 200 + 50 + 50, each once
    assert json.loads((out / "summary.json").read_text())["split"] == "all"
