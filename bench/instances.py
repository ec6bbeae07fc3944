"""Instance segmentation over seeds: test mask and box AP of ``pennfudan-instances`` runs, and the time per
image of the exported ``serving_default``.

Train the seeds first (each is a plain ``kseg.train`` run; 36 epochs, run them in the background):

    .venv/bin/python -m kseg.train --preset pennfudan-instances --seed 0 \
        --output-dir bench/runs/pennfudan-instances-seed0

then summarise them (the first run is also exported and timed through its serving signature on the Penn-Fudan
test images, PNG bytes in, one image per request, as TF Serving would call it in-process):

    .venv/bin/python bench/instances.py bench/runs/pennfudan-instances-seed{0,1,2}

The scores are the runs' own ``metrics.json`` (written by the one evaluator at the end of training: COCO mask
and box AP by pycocotools over all people of the split, at each image's original size). With ``--choose``,
each run also chooses flip TTA on validation (``kseg.evaluate --choose-postprocessing``, stored next to its
model) and is scored on test with that choice. Prints a table and writes JSON (machine, versions, command,
one row per seed, mean and spread, serving times).
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402  (also puts the repository on sys.path and quiets TF's C++ logging)

SCORES = ("mask_ap", "mask_ap50", "mask_ap75", "box_ap", "box_ap50", "people", "found", "missed", "spurious")
COLUMNS = [
    ("seed", "seed"),
    ("mask_ap", "mask AP"),
    ("mask_ap50", "AP50"),
    ("mask_ap75", "AP75"),
    ("box_ap", "box AP"),
    ("found", "found"),
    ("missed", "missed"),
    ("spurious", "spurious"),
    ("validation_mask_ap", "val mask AP"),
    ("chosen_tta", "TTA chosen"),
    ("chosen_mask_ap", "mask AP (choice)"),
    ("chosen_mask_ap50", "AP50 (choice)"),
    ("train_minutes", "train min"),
    ("best_epoch", "best ep"),
]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="finished run directories (one per seed)")
    parser.add_argument("--dataset", default="tfds_ph2/pennfudan", help="dataset of the timing images")
    parser.add_argument("--split", default="test", help="split of the timing images (default: test)")
    parser.add_argument("--data-dir", default=None, help="TFDS data dir")
    parser.add_argument("--warmup", type=int, default=2, help="untimed requests first (default: 2)")
    parser.add_argument("--no-serving", dest="serving", action="store_false", help="skip the serving timing")
    parser.add_argument(
        "--choose",
        action="store_true",
        help="also choose flip TTA on validation (kseg.evaluate --choose-postprocessing, stored in each run) and "
        "score test with the choice",
    )
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    parser.add_argument(
        "--output",
        type=Path,
        default=common.RESULTS_DIR / "instances_pennfudan.json",
        help="JSON results file (default: bench/results/instances_pennfudan.json)",
    )
    return parser.parse_args(argv)


def seed_row(run_dir: Path) -> dict:
    metrics_file, config_file = run_dir / "metrics.json", run_dir / "config.json"
    if not metrics_file.exists():
        sys.exit(f"bench/instances.py: {metrics_file} not found; train the run to its end first (see --help)")
    metrics, config = json.loads(metrics_file.read_text()), json.loads(config_file.read_text())
    if config.get("task") != "instances":
        sys.exit(f"bench/instances.py: {run_dir} is a {config.get('task')} run; expected an instances run")
    return {
        "seed": config["seed"],
        "run_dir": str(run_dir),
        **{key: metrics["test"][key] for key in SCORES},
        "validation_mask_ap": metrics["validation"]["mask_ap"],
        "train_minutes": metrics["train_seconds"] / 60,
        "best_epoch": metrics["best_epoch"],
        "precision": metrics.get("precision"),
        "config": config,
    }


def chosen_scores(run_dir: Path, config: dict) -> dict:
    """``kseg.evaluate --choose-postprocessing`` on test: flip TTA chosen on validation, then test scored."""
    from kseg.evaluation import report

    summary = report.evaluate(
        run_dir,
        config["dataset"],
        "test",
        run_dir / "evaluation-test-chosen",
        choose=True,
        data_dir=config.get("data_dir"),
        manual_dir=config.get("manual_dir"),
        figures_too=False,
    )
    return {
        "chosen_tta": "yes" if summary["postprocessing"]["tta"] else "no",
        "chosen_steps": summary["postprocessing_choice"]["steps"],
        **{f"chosen_{key}": summary[key] for key in ("mask_ap", "mask_ap50", "mask_ap75", "box_ap")},
    }


def aggregate(rows, key) -> dict:
    values = [row[key] for row in rows]
    return {
        "mean": statistics.fmean(values),
        "std": statistics.pstdev(values) if len(values) > 1 else 0.0,
        "min": min(values),
        "max": max(values),
    }


def png_payloads(dataset: str, split: str, data_dir) -> tuple[list[bytes], list[tuple[int, int]]]:
    from PIL import Image

    from kseg import data

    payloads, sizes = [], []
    for example in data.load_examples(dataset, split, data_dir=data_dir).as_numpy_iterator():
        buffer = io.BytesIO()
        Image.fromarray(example["image"]).save(buffer, format="PNG")
        payloads.append(buffer.getvalue())
        sizes.append(example["image"].shape[:2])
    return payloads, sizes


def serving_times(run_dir: Path, payloads: list[bytes], warmup: int) -> dict:
    """Exports ``run_dir`` and times ``serving_default`` one image per request (decode, model, grouping, PNG)."""
    import tensorflow as tf

    from kseg.serving import saved_model_export

    with tempfile.TemporaryDirectory(prefix="kseg-bench-instances-") as tmp:
        target = saved_model_export.export_model(run_dir, Path(tmp), name="people")
        signature = tf.saved_model.load(str(target)).signatures["serving_default"]
        for payload in payloads[:warmup]:
            signature(image_bytes=tf.constant([payload]))
        times = []
        for payload in payloads:
            start = time.perf_counter()
            signature(image_bytes=tf.constant([payload]))
            times.append(time.perf_counter() - start)
    ordered = sorted(times)
    return {
        "images": len(times),
        "ms_per_image": 1000 * statistics.fmean(times),
        "ms_per_image_median": 1000 * statistics.median(times),
        "ms_per_image_p90": 1000 * ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))],
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    rows = [seed_row(run) for run in args.runs]
    if args.choose:
        for run, row in zip(args.runs, rows):
            row.update(chosen_scores(run, row["config"]))
    keys = (*SCORES, "validation_mask_ap", "train_minutes")
    if args.choose:
        keys += ("chosen_mask_ap", "chosen_mask_ap50", "chosen_mask_ap75", "chosen_box_ap")
    summary = {key: aggregate(rows, key) for key in keys}
    serving = None
    if args.serving:
        payloads, sizes = png_payloads(args.dataset, args.split, args.data_dir)
        serving = serving_times(args.runs[0], payloads, args.warmup)
        serving.update(
            {
                "model": str(args.runs[0]),
                "dataset": args.dataset,
                "split": args.split,
                "batch_size": 1,
                "smallest_image": list(min(sizes, key=lambda s: s[0] * s[1])),
                "largest_image": list(max(sizes, key=lambda s: s[0] * s[1])),
            }
        )

    cell = lambda v: f"{v:.3f}" if isinstance(v, float) and abs(v) < 2 else (f"{v:.1f}" if isinstance(v, float) else v)
    table = [{key: cell(value) for key, value in row.items()} for row in rows]
    for name in ("mean", "std"):
        table.append({"seed": name, **{key: cell(values[name]) for key, values in summary.items()}})
    print()
    common.print_table(table, COLUMNS, markdown=args.markdown)
    if serving:
        print(
            f"\nserving_default, 1 image per request, {serving['images']} {args.split} images "
            f"({serving['smallest_image'][1]}x{serving['smallest_image'][0]} to "
            f"{serving['largest_image'][1]}x{serving['largest_image'][0]} PNG): "
            f"{serving['ms_per_image']:.0f} ms/image mean, {serving['ms_per_image_median']:.0f} median, "
            f"{serving['ms_per_image_p90']:.0f} p90"
        )
    path = common.write_results(args.output, rows, extra={"summary_over_seeds": summary, "serving": serving})
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
