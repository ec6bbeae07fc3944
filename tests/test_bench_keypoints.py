"""bench/keypoints.py summarises keypoint runs: test PCK per joint, the common-joint means, serving time."""

import json
import shutil


def test_a_run_is_summarised_with_its_pck_and_serving_time(load_bench_script, keypoint_run, lspet_data_dir, tmp_path):
    bench = load_bench_script("keypoints")
    run = tmp_path / "run"
    run.mkdir()
    for name in ("best.keras", "config.json", "metrics.json"):
        shutil.copy(keypoint_run / name, run / name)
    out = tmp_path / "keypoints.json"
    args = [str(run), "--pretrained", "--data-dir", lspet_data_dir, "--timing-images", "2", "--warmup", "1"]
    assert bench.main([*args, "--output", str(out)]) == 0
    document = json.loads(out.read_text())
    (row,) = document["results"]
    summary = json.loads((run / "evaluation-test" / "summary.json").read_text())
    assert row["pck"] == summary["pck"] and row["seed"] == 0
    assert len(document["common_joints"]) == 14 and row["pck_common"] == row["pck"]
    assert set(row["per_joint"]) == set(document["common_joints"])
    assert document["summary_over_seeds"]["pck"]["std"] == 0
    (timing,) = document["serving"].values()
    assert timing["images"] == 2 and timing["ms_median"] > 0
    assert document["environment"]["processor"]
