"""Benchmark the training recipes: quality over seeds, training time and throughput.

For a preset (plus any flag overrides) and each seed it runs ``python -m kseg.train`` into
``bench/runs/<tag>-seed<S>`` (a finished run is reused, an interrupted one resumes), then, unless
``--no-postprocessing``, ``python -m kseg.evaluate --choose-postprocessing --ablation`` on the test split
(TTA and post-processing chosen on validation, never on test). It prints one row per seed and the mean,
standard deviation, minimum and maximum over seeds, and writes ``bench/results/train_<tag>.json``.

    .venv/bin/python bench/train.py --preset ph2-unet --seeds 0 1 2
    .venv/bin/python bench/train.py --preset ph2-unet --tag ph2-unet-fp32 --seeds 0 -- --no-mixed-precision
    .venv/bin/python bench/train.py --preset mads-unet --seeds 0 -- --dataset folder:../shared/data/bodies

A seed without a run directory whose row is already in ``bench/results/train_<tag>.json`` (same recipe: the
config ``kseg.train`` resolves now for the preset and overrides, so a changed preset is trained again) is
taken from there unless ``--rerun``. Everything after ``--`` goes to ``kseg.train`` unchanged.
``--manual-dir`` defaults to ``$KSEG_DATA_DIR`` or ``../shared/data`` so that PH2 and MADS build on first use.
Scores are means over images at each image's original resolution (``kseg.train``'s ``metrics.json`` and
``kseg.evaluate``'s ``summary.json``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

RUNS_DIR = common.REPO_ROOT / "bench" / "runs"


def run_command(command, log_path: Path) -> float:
    """Run ``command`` with output to ``log_path`` (and a short tail on failure); returns wall seconds."""
    started = time.perf_counter()
    with open(log_path, "a") as log:
        log.write(f"\n$ {' '.join(command)}\n")
        log.flush()
        result = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, cwd=common.REPO_ROOT)
    if result.returncode != 0:
        tail = log_path.read_text()[-3000:]
        raise SystemExit(f"bench/train.py: command failed ({result.returncode}): {' '.join(command)}\n{tail}")
    return time.perf_counter() - started


#: Config fields that say where a run reads and writes and which seed it is, not what it trains.
NOT_RECIPE_FIELDS = ("seed", "output_dir", "manual_dir", "data_dir")


def recipe_of(config: dict) -> dict:
    return {k: v for k, v in config.items() if k not in NOT_RECIPE_FIELDS}


def current_recipe(preset: str, extra: list[str]) -> dict:
    """What ``kseg.train --preset <preset> <extra>`` would train today, in the JSON form the rows record."""
    from kseg.train import config_from_args

    config, _ = config_from_args(["--preset", preset, *extra])
    return recipe_of(config.to_dict())


def recorded_row(args, seed: int, extra: list[str]) -> dict | None:
    """The seed's row in this tag's results JSON when it was measured with the recipe the preset resolves to now.

    Run directories are not kept in git (hundreds of MB); the JSON is the record. A seed whose directory is
    gone is taken from there, so seeds trained in different sessions end up in one summary."""
    path = common.RESULTS_DIR / f"train_{args.tag}.json"
    if args.rerun or not path.exists():
        return None
    recorded = json.loads(path.read_text())
    recipe = current_recipe(args.preset, extra)
    for row in recorded["results"]:
        if row["seed"] == seed and recipe_of(row.get("config", {})) == recipe:
            print(f"seed {seed}: taken from {path.relative_to(common.REPO_ROOT)} (no run directory; --rerun trains it)")
            return row
    return None


def manual_dir_flag(args, dataset: str) -> list[str]:
    """``--manual-dir`` for TFDS datasets (they build from it on first use); a ``folder:`` dataset takes none."""
    return [] if dataset.startswith("folder:") else ["--manual-dir", str(args.manual_dir)]


def train_seed(args, seed: int, extra: list[str]) -> dict:
    run_dir = RUNS_DIR / f"{args.tag}-seed{seed}"
    if not run_dir.exists() and (row := recorded_row(args, seed, extra)) is not None:
        return row
    run_dir.mkdir(parents=True, exist_ok=True)
    log = run_dir / "bench.log"
    timing_file = run_dir / "bench_timing.json"
    if not (run_dir / "metrics.json").exists():
        command = [
            sys.executable,
            "-m",
            "kseg.train",
            "--preset",
            args.preset,
            "--seed",
            str(seed),
            "--output-dir",
            str(run_dir),
            *manual_dir_flag(args, current_recipe(args.preset, extra)["dataset"]),
            *extra,
        ]
        print(f"training seed {seed}: {' '.join(command)}", flush=True)
        wall = run_command(command, log)
        timing_file.write_text(json.dumps({"wall_seconds": wall}) + "\n")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    config = json.loads((run_dir / "config.json").read_text())
    row = {
        "seed": seed,
        "run_dir": str(run_dir.relative_to(common.REPO_ROOT)),
        "test_dice": metrics["test"]["dice"],
        "test_median_dice": metrics["test"]["median_dice"],
        "test_iou": metrics["test"]["iou"],
        "validation_dice": metrics["validation"]["dice"],
        "train_minutes": metrics["train_seconds"] / 60,
        "images_per_second": metrics["images_per_second"],
        "best_epoch": metrics["best_epoch"],
        "config": config,
    }
    if timing_file.exists():
        row["wall_minutes"] = json.loads(timing_file.read_text())["wall_seconds"] / 60
    if args.postprocessing:
        evaluation_dir = run_dir / "evaluation-test"
        if not (evaluation_dir / "summary.json").exists():
            command = [
                sys.executable,
                "-m",
                "kseg.evaluate",
                "--model",
                str(run_dir),
                "--dataset",
                config["dataset"],
                "--split",
                "test",
                "--output-dir",
                str(evaluation_dir),
                "--choose-postprocessing",
                "--ablation",
                *manual_dir_flag(args, config["dataset"]),
            ]
            print(f"evaluating seed {seed}: {' '.join(command)}", flush=True)
            run_command(command, log)
        summary = json.loads((evaluation_dir / "summary.json").read_text())
        row.update(
            {
                "postprocessing": summary["postprocessing"],
                "pp_test_dice": summary["dice"]["mean"],
                "pp_test_median_dice": summary["dice"]["median"],
                "pp_test_iou": summary["iou"]["mean"],
                "pp_test_hd95": summary["hd95"]["mean"],
                "ablation": summary.get("ablation"),
            }
        )
    return row


def aggregate(rows, key) -> dict | None:
    values = [r[key] for r in rows if r.get(key) is not None]
    if not values:
        return None
    return {
        "mean": statistics.fmean(values),
        "std": statistics.pstdev(values) if len(values) > 1 else 0.0,
        "min": min(values),
        "max": max(values),
    }


def ablation_over_seeds(rows) -> dict:
    """Mean test Dice of each post-processing variant over seeds, and its change from the plain mask.
    Variant names that carry a seed's own choice ("chosen (...)", "threshold T") are merged."""
    merged: dict[str, list] = {}
    for row in rows:
        for step, dice in (row.get("ablation") or {}).items():
            key = (
                "chosen on validation"
                if step.startswith("chosen")
                else ("chosen threshold alone" if step.startswith("threshold") else step)
            )
            merged.setdefault(key, []).append(dice)
    plain = statistics.fmean(merged["plain (threshold 0.5)"]) if "plain (threshold 0.5)" in merged else None
    return {
        key: {"mean": statistics.fmean(v), "change": statistics.fmean(v) - plain if plain else 0.0, "seeds": len(v)}
        for key, v in merged.items()
    }


def main() -> int:
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="ph2-unet")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--tag", default=None, help="run and result name (default: the preset)")
    parser.add_argument("--manual-dir", default=str(common.real_data_dir()))
    parser.add_argument(
        "--no-postprocessing",
        dest="postprocessing",
        action="store_false",
        help="skip choosing TTA/post-processing and the test evaluation with it",
    )
    parser.add_argument(
        "--rerun",
        action="store_true",
        help="train seeds whose run directory is gone even if the results JSON has them",
    )
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args(argv)
    args.tag = args.tag or args.preset

    rows = [train_seed(args, seed, extra) for seed in args.seeds]
    keys = [
        "test_dice",
        "test_median_dice",
        "test_iou",
        "validation_dice",
        "train_minutes",
        "images_per_second",
        "pp_test_dice",
        "pp_test_median_dice",
        "pp_test_iou",
        "pp_test_hd95",
    ]
    summary = {key: aggregate(rows, key) for key in keys}
    columns = [
        ("seed", "seed"),
        ("test_dice", "test Dice"),
        ("test_median_dice", "median"),
        ("test_iou", "IoU"),
        ("pp_test_dice", "Dice +TTA/pp"),
        ("pp_test_iou", "IoU +TTA/pp"),
        ("pp_test_hd95", "HD95 px"),
        ("train_minutes", "train min"),
        ("images_per_second", "img/s"),
        ("best_epoch", "best ep"),
    ]
    cell = lambda v: f"{v:.4f}" if isinstance(v, float) and abs(v) < 2 else (f"{v:.1f}" if isinstance(v, float) else v)
    table_rows = [{k: cell(v) for k, v in r.items()} for r in rows]
    for name in ("mean", "std"):
        table_rows.append({"seed": name, **{k: cell(v[name]) for k, v in summary.items() if v}})
    common.print_table(table_rows, columns, markdown=args.markdown)
    for row in rows:
        for step, dice in (row.get("ablation") or {}).items():
            print(f"seed {row['seed']} test Dice | {step:<44} {dice:.4f}")
    ablation = ablation_over_seeds(rows)
    for step, values in ablation.items():
        print(f"mean over seeds, test Dice | {step:<36} {values['mean']:.4f} (change {values['change']:+.4f})")
    path = common.write_results(
        common.RESULTS_DIR / f"train_{args.tag}.json",
        rows,
        extra={
            "summary_over_seeds": summary,
            "ablation_over_seeds": ablation,
            "preset": args.preset,
            "train_overrides": extra,
        },
        benchmark="train",
    )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
