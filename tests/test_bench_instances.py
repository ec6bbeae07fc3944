"""bench/instances.py summarises instance runs: their test AP, the choice of flip TTA and serving time."""

import json
import shutil


def test_a_run_is_summarised_with_its_choice_and_serving_time(load_bench_script, trained_instance_run, tmp_path):
    bench = load_bench_script("instances")
    run = tmp_path / "run"
    run.mkdir()
    for name in ("best.keras", "config.json", "metrics.json"):
        shutil.copy(trained_instance_run / name, run / name)
    dataset = json.loads((run / "config.json").read_text())["dataset"]
    out = tmp_path / "instances.json"
    assert bench.main([str(run), "--choose", "--dataset", dataset, "--output", str(out)]) == 0
    document = json.loads(out.read_text())
    (row,) = document["results"]
    metrics = json.loads((run / "metrics.json").read_text())
    assert row["mask_ap"] == metrics["test"]["mask_ap"] and row["seed"] == 0
    assert row["chosen_tta"] in ("yes", "no") and (run / "best.postprocessing.json").exists()
    assert 0 <= row["chosen_mask_ap"] <= 1 and document["summary_over_seeds"]["mask_ap"]["std"] == 0
    assert document["serving"]["images"] == 8 and document["serving"]["ms_per_image"] > 0
    assert document["environment"]["processor"]
