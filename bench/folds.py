"""A cross-validation run, taken apart: each fold alone and the folds together, with each checkpoint choice.

Train the folds first (``kseg.train`` does all of it; run it in the background):

    .venv/bin/python -m kseg.train --preset ph2-unet-lite0 --folds 5 --output-dir bench/runs/ph2-lite0-folds5

then score it:

    .venv/bin/python bench/folds.py bench/runs/ph2-lite0-folds5
    .venv/bin/python bench/folds.py bench/runs/mads-lite0-folds5 --score iou   # people are compared by IoU

Every fold run keeps three models: ``best.keras`` (the epoch with the best Dice on its held-out fold),
``last.keras`` (the last epoch) and ``average.keras`` (a moving average of the weights over epochs). Each is
scored on ``test`` at each image's original resolution, as ``kseg.evaluate`` scores, with a plain 0.5
threshold (what a checkpoint gives before any post-processing) and with the post-processing the run chose
out of fold; the ensembles average the folds' probabilities (as the run's ``best.keras`` does in its graph).
The choice made out of fold (every train+validation image) is also set beside the one a single run makes on
the 20 validation images alone (here from the same out-of-fold predictions of those 20, so only the number
of images differs). Prints a table and writes JSON
(machine, versions, command, one row per fold and checkpoint choice, and the ensembles).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

import kseg  # noqa: E402,F401  (sets KERAS_BACKEND before keras is imported)

CHOICES = ("best", "last", "average")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="a finished kseg.train --folds run directory")
    parser.add_argument("--data-dir", default=None, help="TFDS data dir")
    parser.add_argument(
        "--score", choices=("dice", "iou"), default="dice", help="the per-image score averaged over test (people: iou)"
    )
    parser.add_argument("--output", type=Path, default=None, help="JSON file (default: bench/results/folds_NAME.json)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    import json

    import numpy as np

    from kseg import data
    from kseg.data import folds
    from kseg.evaluation.cases import MaskMaker, PredictedCase, collect_cases, mean_score
    from kseg.evaluation.postprocessing_choice import choose_postprocessing
    from kseg.prediction import inference
    from kseg.tasks import postprocess
    from kseg.tasks.postprocess import PostProcessing
    from kseg.training import folds as folds_run

    plan = folds.read(args.run)
    if plan is None or not (args.run / "metrics.json").exists():
        print(f"bench/folds.py: {args.run} is not a finished folds run (kseg.train --folds)", file=sys.stderr)
        return 2
    config = json.loads((args.run / "config.json").read_text())
    dataset = config["dataset"]
    chosen = postprocess.for_model(args.run / "best.keras")
    plain = PostProcessing(threshold=config.get("threshold", 0.5))
    spec = data.dataset_spec(dataset, data_dir=args.data_dir)
    make_mask = MaskMaker(spec.num_classes)

    def score(cases, postprocessing):
        return mean_score(cases, postprocessing, make_mask, args.score)

    test = data.load_examples(dataset, "test", data_dir=args.data_dir)

    rows, per_choice = [], {}
    for fold in range(plan.count):
        fold_dir = folds.fold_dir(args.run, fold)
        fold_metrics = json.loads((fold_dir / "metrics.json").read_text())
        row = {"model": f"fold {fold}", "best_epoch": fold_metrics.get("best_epoch")}
        for choice in CHOICES:
            cases = collect_cases(inference.load_predictor(fold_dir / f"{choice}.keras"), test, (False, True))
            per_choice.setdefault(choice, []).append(cases)
            row[f"{choice}_plain"] = score(cases, plain)
            row[f"{choice}_chosen"] = score(cases, chosen)
        rows.append(row)
        print(f"fold {fold}: " + ", ".join(f"{k} {v:.4f}" for k, v in row.items() if isinstance(v, float)), flush=True)
    scored = [key for key in rows[0] if key.endswith(("_plain", "_chosen"))]
    fold_rows = list(rows)
    for stat, fn in (("mean", statistics.mean), ("std", statistics.stdev)):
        rows.append({"model": f"folds {stat}", **{key: fn([r[key] for r in fold_rows]) for key in scored}})

    ensemble = {"model": f"ensemble of {plan.count}"}
    for choice, members in per_choice.items():
        averaged = [
            PredictedCase(
                c.image_id, c.true_mask, {t: np.mean([m[i].probs[t] for m in members], 0) for t in (False, True)}
            )
            for i, c in enumerate(members[0])
        ]
        ensemble[f"{choice}_plain"] = score(averaged, plain)
        ensemble[f"{choice}_chosen"] = score(averaged, chosen)
        if choice == "best":
            best_members = averaged
    rows.append(ensemble)

    # The same ensemble with the post-processing chosen as a single run chooses it: on the validation split's
    # images alone (20 on PH2), each by the fold model that held it out (the ensemble itself trained on them).
    out_of_fold = folds_run.load_out_of_fold(args.run / folds_run.OUT_OF_FOLD_FILE)
    validation_cases = []
    for ex in data.load_examples(dataset, "validation", data_dir=args.data_dir).as_numpy_iterator():
        image_id = ex["image_id"].decode()
        validation_cases.append(PredictedCase(image_id, ex["mask"][..., 0], out_of_fold[image_id]))
    on_validation, _ = choose_postprocessing(validation_cases, make_mask)
    choice_rows = {
        "out_of_fold": {"postprocessing": chosen.describe(), f"test_{args.score}": score(best_members, chosen)},
        "validation_only": {
            "postprocessing": on_validation.describe(),
            f"test_{args.score}": score(best_members, on_validation),
        },
    }

    label = {"dice": "Dice", "iou": "IoU"}[args.score]
    columns = ["model", "best_epoch"] + [f"{c}_{p}" for c in CHOICES for p in ("plain", "chosen")]
    print(
        f"\n{args.run}: test {label} (mean over {spec.size_of('test')} images, original resolution); plain = "
        f"threshold {plain.threshold:g}, chosen = {chosen.describe()} (chosen out of fold)\n"
    )
    table = [{k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in r.items()} for r in rows]
    common.print_table(table, columns, markdown=True)
    for name, values in choice_rows.items():
        print(
            f"post-processing chosen on {name}: {values['postprocessing']} -> ensemble test {label} "
            f"{values[f'test_{args.score}']:.4f}"
        )
    run_metrics = json.loads((args.run / "metrics.json").read_text())
    output = args.output or common.RESULTS_DIR / f"folds_{Path(config.get('preset') or 'run')}.json"
    path = common.write_results(
        output,
        rows,
        benchmark="folds",
        extra={
            "run": str(args.run),
            "config": config,
            "score": args.score,
            "postprocessing_choice": choice_rows,
            "train_minutes": round(run_metrics["train_seconds"] / 60, 1),
            "out_of_fold_dice": run_metrics["out_of_fold"]["dice"],
        },
    )
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
