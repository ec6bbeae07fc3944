"""bench/curves.py sets finished runs side by side: the settings that differ, the curve, the test score."""

import json

import pytest

from kseg.training import config as config_lib


@pytest.fixture
def curves(load_bench_script):
    return load_bench_script("curves")


def _finished_run(path, *, batch_size, curve, test_pck, train_seconds=600.0, task="keypoints"):
    """A run directory as kseg.train leaves it: config.json, history.csv, metrics.json."""
    path.mkdir()
    overrides = {"preset": "lspet-keypoints", "output_dir": str(path), "batch_size": batch_size, "epochs": len(curve)}
    config = config_lib.resolve(overrides=overrides).to_dict()
    config["task"] = task
    (path / "config.json").write_text(json.dumps(config))
    lines = ["epoch,loss,val_loss,val_pck"] + [f"{i},{8 - i},{8 - i},{value}" for i, value in enumerate(curve)]
    (path / "history.csv").write_text("\n".join(lines) + "\n")
    metrics = {"test": {"pck": test_pck}, "train_seconds": train_seconds, "best_epoch": len(curve)}
    (path / "metrics.json").write_text(json.dumps(metrics))
    return path


def test_runs_show_only_the_settings_that_differ_and_their_curves(curves, tmp_path):
    base = _finished_run(tmp_path / "base", batch_size=16, curve=[0.1, 0.2, 0.25], test_pck=0.24)
    small = _finished_run(tmp_path / "b8", batch_size=8, curve=[0.12, 0.22, 0.3], test_pck=0.29, train_seconds=660)
    rows, monitor = curves.rows_for([base, small])
    assert monitor == "val_pck"
    assert [row["settings"] for row in rows] == ["batch_size=16", "batch_size=8"]  # not output_dir
    assert rows[1]["curve"] == [0.12, 0.22, 0.3] and rows[1]["best_validation"] == 0.3
    assert rows[1]["test_pck"] == 0.29 and rows[1]["train_min"] == 11.0


def test_the_table_and_json_are_written(curves, tmp_path, capsys):
    base = _finished_run(tmp_path / "base", batch_size=16, curve=[0.1, 0.2], test_pck=0.24)
    small = _finished_run(tmp_path / "b8", batch_size=8, curve=[0.125, 0.25], test_pck=0.29)
    output = tmp_path / "out" / "curves.json"
    assert curves.main([str(base), str(small), "--output", str(output)]) == 0
    assert "0.125" in capsys.readouterr().out
    written = json.loads(output.read_text())
    assert written["monitor"] == "val_pck" and len(written["results"]) == 2 and "environment" in written


def test_a_folder_that_is_not_a_finished_run_is_named(curves, tmp_path, capsys):
    base = _finished_run(tmp_path / "base", batch_size=16, curve=[0.1], test_pck=0.2)
    (base / "metrics.json").unlink()  # still training
    assert curves.main([str(base), "--output", str(tmp_path / "c.json")]) == 2
    error = capsys.readouterr().err
    assert str(base / "metrics.json") in error and "finished kseg.train run" in error
    assert not (tmp_path / "c.json").exists()


def test_runs_of_different_tasks_are_refused(curves, tmp_path):
    keypoints = _finished_run(tmp_path / "k", batch_size=16, curve=[0.1], test_pck=0.2)
    semantic = _finished_run(tmp_path / "s", batch_size=16, curve=[0.1], test_pck=0.2, task="semantic")
    with pytest.raises(curves.RunError, match="different tasks"):
        curves.rows_for([keypoints, semantic])
