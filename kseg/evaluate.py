"""``python -m kseg.evaluate``: score a trained model on a dataset split the way papers do.

Each image is predicted at the model's size and scored against its ground truth at the image's original
resolution. Written to ``--output-dir``:

- ``cases.csv``: one row per image (Dice, IoU, sensitivity, specificity, pixel accuracy, HD95 in pixels,
  predicted and true area; PH2 adds the clinical diagnosis);
- ``summary.json``: mean, std, median, quartiles of each column, Dice over all pixels pooled, mean Dice per
  diagnosis (PH2), the post-processing used, and with ``--ablation`` the Dice of each post-processing step;
- ``grid.png`` (best, median and worst cases with true and predicted contours), ``dice_histogram.png``
  and ``dice_vs_threshold.png``.

``--choose-postprocessing`` first picks TTA, hole filling, largest component and the threshold on the
*validation* split (nnU-Net's rule: a step is kept only if it raises mean validation Dice by at least
``MIN_GAIN``) and stores the choice next to the model, where ``kseg.predict`` and ``kseg.export`` find it.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import pathlib
import sys

import numpy as np
import tensorflow as tf

from kseg import data, imageio, inference, plots, postprocess, scoring
from kseg.postprocess import PostProcessing

#: A post-processing step must raise mean validation Dice by this much to be kept (avoids fitting noise).
MIN_GAIN = 0.001
#: The threshold moves only a little and only for a clear gain: on PH2's 20 validation images a threshold of
#: 0.3 gained 0.003 and then cost 0.007 on test (seed 0), and a new camera or clinic shifts probabilities
#: first. Users can still set any threshold with --threshold.
THRESHOLD_GRID = (0.4, 0.45, 0.5, 0.55, 0.6)
THRESHOLD_MIN_GAIN = 0.005
CURVE_THRESHOLDS = tuple(round(t, 2) for t in np.arange(0.05, 0.96, 0.05))
GRID_CASES_PER_ROW = 4


@dataclasses.dataclass
class Case:
    """One image's ground truth and model-size probabilities (with and/or without TTA)."""

    image_id: str
    true_mask: np.ndarray  # uint8 [h, w] at the original size
    probs: dict  # {tta (bool): float32 [H, W, C] at the model size}
    diagnosis: str | None = None


# ------------------------------------------------------------------------------------------ predicting ---

def collect_cases(predictor: inference.Predictor, examples: tf.data.Dataset, tta_modes, *, batch_size=8,
                  total=None, label="predicting") -> list[Case]:
    """Model-size probabilities of every example for each TTA mode in ``tta_modes``."""
    import keras

    progress = keras.utils.Progbar(total, unit_name="image") if total else None
    cases, chunk = [], []

    def flush():
        batch = inference.to_model_input([ex["image"] for ex in chunk], predictor.image_size)
        probs = {tta: predictor.model_probabilities(batch, tta=tta).numpy() for tta in tta_modes}
        for index, ex in enumerate(chunk):
            diagnosis = ex.get("clinical_diagnosis")
            cases.append(Case(ex["image_id"].decode(), ex["mask"][..., 0],
                              {tta: p[index] for tta, p in probs.items()},
                              diagnosis.decode() if diagnosis is not None else None))
        chunk.clear()
        if progress:
            progress.update(len(cases))

    if progress is None:
        print(f"kseg.evaluate: {label}", file=sys.stderr)
    for example in examples.as_numpy_iterator():
        chunk.append(example)
        if len(chunk) == batch_size:
            flush()
    if chunk:
        flush()
    return cases


class MaskMaker:
    """``final_mask`` compiled once per post-processing choice (eager while-loops are slow)."""

    def __init__(self, num_classes: int):
        self.num_classes = num_classes
        self._functions = {}

    def __call__(self, probs, size, postprocessing: PostProcessing) -> np.ndarray:
        key = dataclasses.replace(postprocessing, tta=False)
        if key not in self._functions:
            self._functions[key] = tf.function(
                lambda p, s: postprocess.final_mask(p, s, key),
                input_signature=[tf.TensorSpec([None, None, self.num_classes], tf.float32),
                                 tf.TensorSpec([2], tf.int32)])
        return self._functions[key](probs, tf.constant(size, tf.int32)).numpy()


def masks_for(cases, postprocessing: PostProcessing, make_mask: MaskMaker) -> list[np.ndarray]:
    return [make_mask(case.probs[postprocessing.tta], case.true_mask.shape, postprocessing) for case in cases]


def mean_dice(cases, postprocessing, make_mask, num_classes=1) -> float:
    masks = masks_for(cases, postprocessing, make_mask)
    scorer = scoring.binary_scores if num_classes == 1 else (
        lambda p, t: scoring.multiclass_scores(p, t, num_classes))
    return float(np.mean([scorer(m, c.true_mask)["dice"] for m, c in zip(masks, cases)]))


# ------------------------------------------------------------------------------- choosing post-processing ---

def choose_postprocessing(cases, num_classes: int, start: PostProcessing = PostProcessing(),
                          make_mask: MaskMaker | None = None) -> tuple[PostProcessing, list[dict]]:
    """Greedy nnU-Net-style choice on validation cases: TTA, then hole filling, then the largest component,
    each kept only if it raises mean Dice by ``MIN_GAIN``; then a threshold from ``THRESHOLD_GRID`` if it
    gains ``THRESHOLD_MIN_GAIN``. Returns the choice and the steps tried (with their Dice) for the record."""
    make_mask = make_mask or MaskMaker(num_classes)
    current = dataclasses.replace(start, tta=False, fill_holes=False, largest_component=False)
    best = mean_dice(cases, current, make_mask, num_classes)
    steps = [{"step": "start", "postprocessing": current.to_dict(), "dice": best, "kept": True}]
    flags = ("tta",) if num_classes > 1 else ("tta", "fill_holes", "largest_component")
    for flag in flags:
        if True not in cases[0].probs and flag == "tta":
            continue
        candidate = dataclasses.replace(current, **{flag: True})
        dice = mean_dice(cases, candidate, make_mask, num_classes)
        kept = dice >= best + MIN_GAIN
        steps.append({"step": flag, "postprocessing": candidate.to_dict(), "dice": dice, "kept": kept})
        if kept:
            current, best = candidate, dice
    if num_classes == 1:
        tried = {t: mean_dice(cases, dataclasses.replace(current, threshold=t), make_mask) for t in THRESHOLD_GRID}
        threshold = max(tried, key=tried.get)
        kept = tried[threshold] >= best + THRESHOLD_MIN_GAIN
        steps.append({"step": "threshold", "tried": {str(t): d for t, d in tried.items()},
                      "best_threshold": threshold, "dice": tried[threshold], "kept": kept})
        if kept:
            current, best = dataclasses.replace(current, threshold=threshold), tried[threshold]
    return current, steps


# ------------------------------------------------------------------------------------------- scoring ---

def score_cases(cases, masks, num_classes: int) -> list[dict]:
    rows = []
    for case, mask in zip(cases, masks):
        row = {"image_id": case.image_id, **scoring.case_scores(mask, case.true_mask, num_classes)}
        if case.diagnosis is not None:
            row["clinical_diagnosis"] = case.diagnosis
        rows.append(row)
    return rows


def summarize(rows, cases, masks, num_classes: int) -> dict:
    summary = {column: scoring.summarize(r[column] for r in rows) for column in scoring.CASE_COLUMNS}
    if num_classes == 1:
        pooled = np.sum([scoring.confusion(m, c.true_mask) for m, c in zip(masks, cases)], axis=0)
        summary["pooled_dice"] = scoring.scores_from_confusion(*pooled)["dice"]
    diagnoses = sorted({r["clinical_diagnosis"] for r in rows if "clinical_diagnosis" in r})
    if diagnoses:
        summary["dice_by_diagnosis"] = {
            d: {"mean": float(np.mean([r["dice"] for r in rows if r.get("clinical_diagnosis") == d])),
                "images": sum(r.get("clinical_diagnosis") == d for r in rows)} for d in diagnoses}
    summary["images"] = len(rows)
    return summary


def dice_vs_threshold(cases, use_tta: bool) -> dict:
    """Mean Dice at each threshold in ``CURVE_THRESHOLDS`` (threshold only, no component clean-up)."""
    totals = np.zeros(len(CURVE_THRESHOLDS))
    for case in cases:
        probs = tf.image.resize(case.probs[use_tta], case.true_mask.shape, method="bilinear").numpy()[..., 0]
        true = case.true_mask.astype(bool)
        for index, threshold in enumerate(CURVE_THRESHOLDS):
            totals[index] += scoring.binary_scores(probs >= threshold, true)["dice"]
    return {str(t): float(v) for t, v in zip(CURVE_THRESHOLDS, totals / max(len(cases), 1))}


def ablation(cases, chosen: PostProcessing, make_mask: MaskMaker) -> dict:
    """Mean Dice with no post-processing, with each step alone, and with the chosen combination."""
    plain = dataclasses.replace(chosen, tta=False, fill_holes=False, largest_component=False, threshold=0.5)
    variants = {"plain (threshold 0.5)": plain,
                "tta": dataclasses.replace(plain, tta=True),
                "fill_holes": dataclasses.replace(plain, fill_holes=True),
                "largest_component": dataclasses.replace(plain, largest_component=True),
                f"threshold {chosen.threshold:g}": dataclasses.replace(plain, threshold=chosen.threshold),
                "all of tta, fill_holes, largest_component": dataclasses.replace(
                    plain, tta=True, fill_holes=True, largest_component=True),
                f"chosen ({chosen.describe()})": chosen}
    return {name: mean_dice(cases, pp, make_mask) for name, pp in variants.items()}


# ------------------------------------------------------------------------------------------- writing ---

def write_csv(path, rows) -> None:
    columns = ["image_id", *scoring.CASE_COLUMNS] + (["clinical_diagnosis"] if rows and "clinical_diagnosis" in rows[0] else [])
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (f"{v:.6f}" if isinstance(v, float) else v) for k, v in row.items()})


def pick_grid_cases(rows, per_group: int = GRID_CASES_PER_ROW) -> list[tuple[str, str]]:
    """``(label, image_id)`` of the best, median and worst cases by Dice (fewer for tiny splits)."""
    order = sorted(range(len(rows)), key=lambda i: (-rows[i]["dice"], rows[i]["image_id"]))
    n = len(order)
    count = min(per_group, max(1, n // 3))
    middle = max(0, n // 2 - count // 2)
    groups = (("best", order[:count]), ("median", order[middle:middle + count]), ("worst", order[n - count:]))
    picked, seen = [], set()
    for label, indices in groups:
        for i in indices:
            if i not in seen:
                seen.add(i)
                picked.append((label, rows[i]["image_id"]))
    return picked


def plot_grid(path, examples, picked, rows, masks, cases) -> None:
    by_id = {c.image_id: (m, r, c.true_mask) for c, m, r in zip(cases, masks, rows)}
    wanted = {image_id: label for label, image_id in picked}
    images = {}
    for example in examples.as_numpy_iterator():
        image_id = example["image_id"].decode()
        if image_id in wanted:
            images[image_id] = example["image"]
            if len(images) == len(wanted):
                break
    ids = [image_id for _, image_id in picked]
    plots.contour_grid(
        path, [images[i] for i in ids],
        true_masks=[by_id[i][2] for i in ids],
        pred_masks=[by_id[i][0] for i in ids],
        titles=[f"{wanted[i]}: {i}  Dice {by_id[i][1]['dice']:.3f}" for i in ids],
        columns=GRID_CASES_PER_ROW,
        title="green: ground truth, red: prediction",
    )


def plot_histogram(path, rows) -> None:
    fig, ax = plots.plt.subplots(figsize=(5, 3.4))
    ax.hist([r["dice"] for r in rows], bins=np.linspace(0, 1, 41), color="#2979ff")
    ax.set_xlabel("Dice per image")
    ax.set_ylabel("images")
    ax.set_title(f"Dice over {len(rows)} images (mean {np.mean([r['dice'] for r in rows]):.3f})")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plots.plt.close(fig)


def plot_threshold_curve(path, curve: dict, chosen: float) -> None:
    fig, ax = plots.plt.subplots(figsize=(5, 3.4))
    ax.plot([float(t) for t in curve], list(curve.values()), marker="o", ms=3)
    ax.axvline(chosen, color="#ff1744", ls="--", label=f"threshold used ({chosen:g})")
    ax.set_xlabel("probability threshold")
    ax.set_ylabel("mean Dice")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plots.plt.close(fig)


def print_table(summary: dict, postprocessing: PostProcessing, file=None) -> None:
    file = file or sys.stdout
    print(f"\npost-processing: {postprocessing.describe()}", file=file)
    print(f"{'metric':<16}" + "".join(f"{k:>11}" for k in ("mean", "std", "median", "q1", "q3")), file=file)
    for column in scoring.CASE_COLUMNS:
        s = summary[column]
        print(f"{column:<16}" + "".join(f"{s[k]:>11.5g}" for k in ("mean", "std", "median", "q1", "q3"))
              + (f"  ({s['undefined']} undefined)" if s.get("undefined") else ""), file=file)
    if "pooled_dice" in summary:
        print(f"{'pooled dice':<16}{summary['pooled_dice']:>11.4f}", file=file)
    for diagnosis, values in summary.get("dice_by_diagnosis", {}).items():
        print(f"dice | {diagnosis:<20}{values['mean']:.4f}  ({values['images']} images)", file=file)
    for name, dice in summary.get("ablation", {}).items():
        print(f"ablation | {name:<44} Dice {dice:.4f}", file=file)


# --------------------------------------------------------------------------------------------- main ---

def evaluate(model_path, dataset: str, split: str, output_dir, *, postprocessing_overrides: dict | None = None,
             choose: bool = False, run_ablation: bool = False, data_dir=None, manual_dir=None,
             num_classes=None, batch_size: int = 8, figures: bool = True) -> dict:
    """Everything ``python -m kseg.evaluate`` does; returns the summary."""
    predictor = inference.load_predictor(model_path)
    output_dir = pathlib.Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    spec = data.dataset_spec(dataset, data_dir=data_dir, manual_dir=manual_dir,
                             num_classes=num_classes or (predictor.num_classes if predictor.num_classes > 1 else None))
    if spec.num_classes != predictor.num_classes:
        raise ValueError(f"{model_path}: the model predicts {predictor.num_classes} channel(s) but {dataset} "
                         f"has {spec.num_classes} (1 means binary)")
    if split not in spec.split_sizes:
        raise ValueError(f"{dataset} has no split {split!r}; it has {sorted(spec.split_sizes)}")
    make_mask = MaskMaker(spec.num_classes)
    load = lambda s: data.load_examples(dataset, s, data_dir=data_dir, manual_dir=manual_dir,
                                        num_classes=spec.num_classes)

    chosen_record = None
    postprocessing = predictor.postprocessing
    if choose:
        if "validation" not in spec.split_sizes:
            raise ValueError(f"--choose-postprocessing needs a validation split; {dataset} has {sorted(spec.split_sizes)}")
        validation = collect_cases(predictor, load("validation"), (False, True), batch_size=batch_size,
                                   total=spec.split_sizes["validation"], label="validation")
        postprocessing, steps = choose_postprocessing(validation, spec.num_classes, make_mask=make_mask)
        chosen_record = {"chosen_on": f"{dataset} validation ({len(validation)} images)", "steps": steps}
        saved = save_choice(predictor, postprocessing, chosen_record)
        print(f"kseg.evaluate: chose {postprocessing.describe()} on validation; saved to {saved}", file=sys.stderr)
    if postprocessing_overrides:
        postprocessing = dataclasses.replace(postprocessing, **postprocessing_overrides)

    tta_modes = (False, True) if run_ablation and spec.is_binary else (postprocessing.tta,)
    cases = collect_cases(predictor, load(split), tta_modes, batch_size=batch_size,
                          total=spec.split_sizes.get(split), label=split)
    if not cases:
        raise ValueError(f"{dataset} split {split!r} is empty")
    masks = masks_for(cases, postprocessing, make_mask)
    rows = score_cases(cases, masks, spec.num_classes)
    summary = summarize(rows, cases, masks, spec.num_classes)
    summary.update(model=str(predictor.path), dataset=dataset, split=split, postprocessing=postprocessing.to_dict())
    if chosen_record:
        summary["postprocessing_choice"] = chosen_record
    if spec.is_binary:
        summary["dice_vs_threshold"] = dice_vs_threshold(cases, postprocessing.tta)
    if run_ablation and spec.is_binary:
        summary["ablation"] = ablation(cases, postprocessing, make_mask)

    write_csv(output_dir / "cases.csv", rows)
    (output_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    if figures:
        plot_grid(output_dir / "grid.png", load(split), pick_grid_cases(rows), rows, masks, cases)
        plot_histogram(output_dir / "dice_histogram.png", rows)
        if spec.is_binary:
            plot_threshold_curve(output_dir / "dice_vs_threshold.png", summary["dice_vs_threshold"],
                                 postprocessing.threshold)
    print_table(summary, postprocessing)
    return summary


def save_choice(predictor: inference.Predictor, postprocessing: PostProcessing, record: dict) -> pathlib.Path:
    """Store the choice next to a ``.keras`` model; exported SavedModels are immutable versions."""
    path = pathlib.Path(predictor.path)
    if path.suffix != ".keras":
        raise ValueError(f"{path}: post-processing is chosen on the .keras model (a run directory or .keras "
                         f"file) and then exported; exported versions are not changed in place")
    return postprocess.write(postprocess.sidecar_path(path), postprocessing, **record)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m kseg.evaluate",
        description="Score a model on a dataset split at each image's original resolution; write cases.csv, "
                    "summary.json and figures.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model", required=True, help="a .keras file, a run directory or an exported SavedModel")
    parser.add_argument("--dataset", default="tfds_ph2/ph2", help="TFDS name (tfds_ph2/ph2, ...) or folder:PATH")
    parser.add_argument("--split", default="test", help="split to score")
    parser.add_argument("--output-dir", required=True, help="where cases.csv, summary.json and figures go")
    parser.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                        help="average over flips (and 90-degree rotations for square models); default: stored choice")
    parser.add_argument("--threshold", type=float, default=None, help="probability threshold; default: stored choice")
    parser.add_argument("--fill-holes", action=argparse.BooleanOptionalAction, default=None,
                        help="fill enclosed background; default: stored choice")
    parser.add_argument("--largest-component", action=argparse.BooleanOptionalAction, default=None,
                        help="keep only the largest connected region; default: stored choice")
    parser.add_argument("--choose-postprocessing", action="store_true",
                        help="choose TTA, hole filling, largest component and threshold on the validation split "
                             "and store the choice next to the model (used by predict and export)")
    parser.add_argument("--ablation", action="store_true",
                        help="also report the Dice of each post-processing step alone")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--data-dir", default=None, help="TFDS data dir")
    parser.add_argument("--manual-dir", default=None, help="manual download folder (builds the TFDS config)")
    parser.add_argument("--num-classes", type=int, default=None, help="folder datasets: number of classes")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    overrides = {name: getattr(args, name) for name in ("tta", "threshold", "fill_holes", "largest_component")
                 if getattr(args, name) is not None}
    if args.batch_size < 1:
        print("kseg.evaluate: --batch-size must be >= 1", file=sys.stderr)
        return 2
    try:
        evaluate(args.model, args.dataset, args.split, args.output_dir, postprocessing_overrides=overrides,
                 choose=args.choose_postprocessing, run_ablation=args.ablation, data_dir=args.data_dir,
                 manual_dir=args.manual_dir, num_classes=args.num_classes, batch_size=args.batch_size)
    except (inference.ModelLoadError, postprocess.PostProcessingError, data.DatasetNotReadyError,
            imageio.ImageReadError, FileNotFoundError, ValueError) as e:
        print(f"kseg.evaluate: error: {e}", file=sys.stderr)
        return 2
    print(f"kseg.evaluate: wrote {args.output_dir}/summary.json, cases.csv and figures", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
