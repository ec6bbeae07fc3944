"""How far averaging several trained models goes: a ceiling check for a training recipe.

Averages the probabilities of several runs (e.g. the seeds of ``bench/train.py``) on a split with
``kseg.models.average_model`` (the averaged model a ``kseg.train --folds`` run keeps), with and without
test-time augmentation, and scores every post-processing variant at each image's original
resolution, as ``kseg.evaluate`` does. Averaging independent seeds removes the seed-to-seed part of the
error; what remains is what the recipe itself cannot get right. The thresholds here are swept on the split
being scored, so the best row is an optimistic ceiling, not a result to report as a model's score; for an
ensemble to report, train folds (``kseg.train --folds 5``) and score them with ``bench/folds.py``.

    .venv/bin/python bench/ensemble.py bench/runs/ph2-unet-bf16-seed{0,1,2}

Prints a table and writes JSON (machine, versions, command, one row per variant).
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

import kseg  # noqa: E402,F401  (sets KERAS_BACKEND before keras is imported)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="run directories or .keras files")
    parser.add_argument("--dataset", default="tfds_ph2/ph2", help="TFDS name or folder:PATH (default: tfds_ph2/ph2)")
    parser.add_argument("--split", default="test", help="split to score (default: test)")
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.5, 0.6], help="(default: 0.5 0.6)")
    parser.add_argument("--data-dir", default=None, help="TFDS data dir")
    parser.add_argument("--output", type=Path, default=common.RESULTS_DIR / "ensemble.json", help="JSON results file")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    import numpy as np

    from kseg import data
    from kseg.evaluation.cases import MaskMaker, collect_cases, mean_dice
    from kseg.models import average_model
    from kseg.prediction import inference
    from kseg.tasks.postprocess import PostProcessing

    examples = data.load_examples(args.dataset, args.split, data_dir=args.data_dir)
    paths = [Path(run) / "best.keras" if Path(run).is_dir() else Path(run) for run in args.runs]
    models = [inference.load_keras_model(path) for path in paths]
    per_model = [
        collect_cases(inference.predictor_for_model(m, path), examples, (False, True)) for m, path in zip(models, paths)
    ]
    ensemble = collect_cases(inference.predictor_for_model(average_model(models)), examples, (False, True))
    make_mask = MaskMaker(num_classes=1)
    rows = []
    for tta, largest, threshold in itertools.product((False, True), (False, True), args.thresholds):
        postprocessing = PostProcessing(threshold=threshold, tta=tta, fill_holes=True, largest_component=largest)
        singles = [mean_dice(cases, postprocessing, make_mask) for cases in per_model]
        rows.append(
            {
                "tta": tta,
                "fill_holes": True,
                "largest_component": largest,
                "threshold": threshold,
                "single_model_mean_dice": float(np.mean(singles)),
                "ensemble_dice": mean_dice(ensemble, postprocessing, make_mask),
            }
        )

    print(f"\n{len(args.runs)} models on {args.dataset} {args.split}; mean Dice over images, original resolution\n")
    yes_no = lambda flag: "yes" if flag else "no"
    table = [
        {
            "tta": yes_no(r["tta"]),
            "largest": yes_no(r["largest_component"]),
            "threshold": r["threshold"],
            "single": f"{r['single_model_mean_dice']:.4f}",
            "ensemble": f"{r['ensemble_dice']:.4f}",
        }
        for r in rows
    ]
    common.print_table(
        table,
        [("tta", "TTA"), ("largest", "largest component"), "threshold", ("single", "single models (mean)"), "ensemble"],
        markdown=True,
    )
    path = common.write_results(
        args.output,
        rows,
        benchmark="ensemble",
        extra={
            "runs": [str(run) for run in args.runs],
            "dataset": args.dataset,
            "split": args.split,
            "note": "Holes are always filled. Thresholds are swept on the scored split: the best row is a ceiling.",
        },
    )
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
