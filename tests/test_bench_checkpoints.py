"""bench/checkpoints.py scores each run's best, last and averaged weights the way kseg.evaluate scores them."""

import json
import shutil

import pytest

from kseg import evaluate


@pytest.fixture
def bench_checkpoints(load_bench_script):
    return load_bench_script("checkpoints")


def test_each_checkpoint_of_each_run_is_scored_and_summarised(
    bench_checkpoints, trained_synthetic_run, synthetic_data_dir, tmp_path
):
    output = tmp_path / "checkpoints.json"
    code = bench_checkpoints.main(
        ["--group", "float32", str(trained_synthetic_run), "--data-dir", synthetic_data_dir, "--output", str(output)]
    )
    assert code == 0
    written = json.loads(output.read_text())
    rows = {row["checkpoint"]: row for row in written["results"]}
    assert sorted(rows) == ["average", "best", "last"]
    assert {row["group"] for row in rows.values()} == {"float32"}
    assert written["environment"]["cpu_features"]  # which CPU measured it

    # best.keras scored plainly agrees with kseg.evaluate's plain score of the same file.
    evaluation = tmp_path / "evaluation"
    assert (
        evaluate.main(
            [
                "--model",
                str(trained_synthetic_run / "best.keras"),
                "--dataset",
                "tfds_ph2/synthetic",
                "--data-dir",
                synthetic_data_dir,
                "--output-dir",
                str(evaluation),
                "--threshold",
                "0.5",
                "--no-tta",
                "--no-fill-holes",
                "--no-largest-component",
            ]
        )
        == 0
    )
    summary = json.loads((evaluation / "summary.json").read_text())
    assert rows["best"]["test_plain"] == pytest.approx(summary["dice"]["mean"], abs=1e-6)
    assert 0.5 < rows["best"]["test_plain"] <= 1.0  # the shared synthetic run scores about 0.89
    one_group = [entry for entry in written["summary"] if entry["checkpoint"] == "last"]
    assert one_group[0]["runs"] == 1
    assert one_group[0]["test_plain_mean"] == pytest.approx(rows["last"]["test_plain"])


def test_a_run_without_all_three_checkpoints_is_named(bench_checkpoints, trained_synthetic_run, tmp_path, capsys):
    partial = tmp_path / "partial"
    shutil.copytree(trained_synthetic_run, partial)
    (partial / "average.keras").unlink()
    assert bench_checkpoints.main(["--group", "bfloat16", str(partial), "--output", str(tmp_path / "x.json")]) == 2
    error = capsys.readouterr().err
    assert str(partial) in error and "average.keras" in error
    assert not (tmp_path / "x.json").exists()
    assert bench_checkpoints.main(["--group", "bfloat16", "--output", str(tmp_path / "x.json")]) == 2
    assert "at least one run directory" in capsys.readouterr().err
