"""Which weights a run should keep: best-on-validation, the last epoch, or the moving average, over seeds.

Every ``kseg.train`` run writes ``best.keras`` (the epoch with the best validation Dice: 20 images on PH2),
``last.keras`` and ``average.keras`` (an exponential moving average of the weights over epochs). This scores
the three of each run on ``test`` as ``kseg.evaluate`` scores (each image at its original resolution), with a
plain 0.5 threshold and with flip TTA, and on ``validation`` (what "best" was picked on). Runs are given in
groups (seeds of one recipe, e.g. bfloat16 and float32), so one table answers both questions: which
checkpoint, and whether a precision changes quality.

    .venv/bin/python bench/train.py --preset ph2-unet-lite0 --tag ph2-unet-lite0-bf16-amx --seeds 0 1 2 \\
        --no-postprocessing -- --mixed-precision
    .venv/bin/python bench/checkpoints.py --group bfloat16 bench/runs/ph2-unet-lite0-bf16-amx-seed{0,1,2} \\
        --group float32 bench/runs/ph2-unet-lite0-fp32-amx-seed{0,1,2} --output bench/results/checkpoints_ph2.json

Prints one row per run and checkpoint, then the mean and standard deviation over each group's runs, and
writes JSON (machine, versions, command, rows, summary).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

import kseg  # noqa: E402,F401  (sets KERAS_BACKEND before keras is imported)

CHECKPOINTS = ("best", "last", "average")
SCORES = ("test_plain", "test_tta", "validation_plain")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--group",
        nargs="+",
        action="append",
        required=True,
        metavar=("NAME", "RUN"),
        help="a name and the finished kseg.train run directories of one recipe (repeat for each recipe)",
    )
    parser.add_argument("--data-dir", default=None, help="TFDS data dir")
    parser.add_argument("--output", type=Path, default=common.RESULTS_DIR / "checkpoints.json")
    return parser.parse_args(argv)


def check_runs(groups) -> str | None:
    """A one-line error for the first group or run that cannot be scored, else None."""
    for name, *runs in groups:
        if not runs:
            return f"--group {name}: give at least one run directory after the name"
        for run in map(Path, runs):
            missing = [c for c in CHECKPOINTS if not (run / f"{c}.keras").is_file()]
            if missing:
                return f"{run}: no {', '.join(c + '.keras' for c in missing)} (a finished kseg.train run has all three)"
    return None


def main(argv=None) -> int:
    args = parse_args(argv)
    problem = check_runs(args.group)
    if problem:
        print(f"bench/checkpoints.py: {problem}", file=sys.stderr)
        return 2

    from kseg import data
    from kseg.evaluation.cases import MaskMaker, collect_cases, mean_score
    from kseg.prediction import inference
    from kseg.tasks.postprocess import PostProcessing

    rows = []
    loaded = {}
    for name, *runs in args.group:
        for run in map(Path, runs):
            config = json.loads((run / "config.json").read_text())
            dataset = config["dataset"]
            if dataset not in loaded:
                spec = data.dataset_spec(dataset, data_dir=args.data_dir)
                loaded[dataset] = (
                    MaskMaker(spec.num_classes),
                    {
                        split: data.load_examples(dataset, split, data_dir=args.data_dir)
                        for split in ("test", "validation")
                    },
                )
            make_mask, splits = loaded[dataset]
            plain = PostProcessing(threshold=0.5)
            with_tta = PostProcessing(threshold=0.5, tta=True)
            metrics = json.loads((run / "metrics.json").read_text())
            for checkpoint in CHECKPOINTS:
                predictor = inference.load_predictor(run / f"{checkpoint}.keras")
                test = collect_cases(predictor, splits["test"], (False, True))
                validation = collect_cases(predictor, splits["validation"], (False,))
                row = {
                    "group": name,
                    "run": str(run),
                    "seed": config.get("seed"),
                    "checkpoint": checkpoint,
                    "best_epoch": metrics.get("best_epoch"),
                    "test_plain": mean_score(test, plain, make_mask),
                    "test_tta": mean_score(test, with_tta, make_mask),
                    "validation_plain": mean_score(validation, plain, make_mask),
                }
                rows.append(row)
                print(
                    f"{name} {run.name} {checkpoint}: test {row['test_plain']:.4f} (TTA {row['test_tta']:.4f}), "
                    f"validation {row['validation_plain']:.4f}",
                    flush=True,
                )

    summary = []
    for name, *_ in args.group:
        for checkpoint in CHECKPOINTS:
            chosen = [r for r in rows if r["group"] == name and r["checkpoint"] == checkpoint]
            entry = {"group": name, "checkpoint": checkpoint, "runs": len(chosen)}
            for score in SCORES:
                values = [r[score] for r in chosen]
                entry[f"{score}_mean"] = statistics.fmean(values)
                entry[f"{score}_std"] = statistics.pstdev(values) if len(values) > 1 else 0.0
            summary.append(entry)

    print("\nDice, mean ± std over each group's runs (each image at its original size)\n")
    table = [
        {
            "group": e["group"],
            "checkpoint": e["checkpoint"],
            "runs": e["runs"],
            **{score: f"{e[score + '_mean']:.4f} ± {e[score + '_std']:.4f}" for score in SCORES},
        }
        for e in summary
    ]
    common.print_table(table, ["group", "checkpoint", "runs", *SCORES], markdown=True)
    path = common.write_results(args.output, rows, benchmark="checkpoints", extra={"summary": summary})
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
