"""Scoring instance predictions: COCO mask and box AP (pycocotools, ``kseg.tasks.coco``), per-image
counts (people found, missed, spurious), ``summary.json``, ``cases.csv`` and a figure where each person has
their own colour. Every image is predicted at the model's size and scored at its original resolution, as
the semantic evaluator does."""

from __future__ import annotations

import csv
import io
import logging
import math
import pathlib

import numpy as np

from kseg import data
from kseg.evaluation import plots, tta_choice
from kseg.tasks.coco import InstancePrediction, coco_scores, image_counts

log = logging.getLogger(__name__)

PICTURED_CASES = 8
CASE_COLUMNS = ("people", "predicted", "found", "missed", "spurious", "matched_iou")
AP_KEYS = ("mask_ap", "mask_ap50", "mask_ap75", "box_ap", "box_ap50", "box_ap75")


def predict_examples(predictor, examples, keep_images: int = 0, progress=None, postprocessing=None):
    """``(image_ids, truths, results, images)`` for every example, in the split's order; ``postprocessing``
    overrides the predictor's stored choice (only its flip TTA applies to instances)."""
    ids, truths, results, images = [], [], [], []
    for example in examples:
        image = example["image"].numpy()
        ids.append(example["image_id"].numpy().decode())
        truths.append(example["mask"].numpy()[..., 0])
        results.append(predictor.predict([image], postprocessing=postprocessing)[0])
        if len(images) < keep_images:
            images.append(image)
        if progress is not None:
            progress(len(ids))
    return ids, truths, results, images


def score(ids, truths, results) -> tuple[dict, list[dict]]:
    """The split's summary (AP figures and count totals) and one row of counts per image."""
    predictions = [InstancePrediction(r.labels, r.scores) for r in results]
    summary = coco_scores(truths, predictions)
    rows = [{"image_id": i, **image_counts(t, p)} for i, t, p in zip(ids, truths, predictions)]
    for column in ("people", "predicted", "found", "missed", "spurious"):
        summary[column] = int(sum(row[column] for row in rows))
    summary["images"] = len(rows)
    summary["images_all_found"] = int(sum(row["missed"] == 0 and row["spurious"] == 0 for row in rows))
    return summary, rows


def cases_csv(rows) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=["image_id", *CASE_COLUMNS], lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.6f}" if isinstance(v, float) and not math.isnan(v) else v) for k, v in row.items()})
    return buffer.getvalue()


def format_table(summary: dict) -> str:
    lines = [f"{'':<6}{'AP':>8}{'AP50':>8}{'AP75':>8}"]
    for prefix in ("mask", "box"):
        lines.append(f"{prefix:<6}" + "".join(f"{summary[f'{prefix}_{k}']:>8.4f}" for k in ("ap", "ap50", "ap75")))
    lines.append(
        f"people {summary['people']}: found {summary['found']}, missed {summary['missed']}, spurious "
        f"{summary['spurious']} (score >= 0.5, mask IoU >= 0.5); {summary['images_all_found']} of "
        f"{summary['images']} images exactly right"
    )
    return "\n".join(lines)


def draw(path, images, ids, truths, results, rows, title) -> None:
    count = len(images)
    plots.instance_grid(
        path,
        images,
        truths[:count],
        [r.labels for r in results[:count]],
        titles=[f"{i}: {row['found']}/{row['people']}" for i, row in zip(ids[:count], rows[:count])],
        title=title,
    )


def score_best_model(config, spec, run_dir: pathlib.Path, predictor) -> dict:
    """Validation and test scores of the run's best model (``predictor``); draws ``predictions.png``."""
    scores = {}
    for split in ("validation", "test"):
        if not spec.split_sizes.get(split):
            continue
        examples = data.load_examples(config.dataset, split, data_dir=config.data_dir, manual_dir=config.manual_dir)
        keep = PICTURED_CASES if split == "validation" else 0
        ids, truths, results, images = predict_examples(predictor, examples, keep_images=keep)
        summary, rows = score(ids, truths, results)
        scores[split] = summary
        if keep:
            draw(run_dir / "predictions.png", images, ids, truths, results, rows, f"{config.dataset} validation")
    scores["scored_at"] = "original resolution, COCO AP over all of the split's people (pycocotools)"
    return scores


def choose_tta(predictor, examples, postprocessing):
    """Flip TTA or not, by validation mask AP (``tta_choice.choose_flip``)."""

    def mask_ap(candidate):
        ids, truths, results, _ = predict_examples(predictor, examples, postprocessing=candidate)
        return score(ids, truths, results)[0]["mask_ap"]

    return tta_choice.choose_flip(postprocessing, mask_ap, "mask AP")


def evaluate(
    predictor,
    dataset,
    split,
    output_dir,
    *,
    data_dir=None,
    manual_dir=None,
    progress=None,
    tta: bool | None = None,
    choose: bool = False,
    save=None,
) -> dict:
    """``kseg.evaluate`` for an instance model: ``summary.json``, ``cases.csv``, ``predictions.png``.
    ``progress(label, total)`` returns a per-image callback (or None), as for the semantic evaluator.
    ``choose``: choose flip TTA on the validation split and store it with the model through
    ``save(predictor, postprocessing, record, output_dir)``; ``tta`` then overrides the choice."""
    output_dir = pathlib.Path(output_dir)
    spec = data.dataset_spec(dataset, data_dir=data_dir, manual_dir=manual_dir)
    postprocessing, record = tta_choice.postprocessing_for(
        predictor,
        dataset,
        data_dir=data_dir,
        manual_dir=manual_dir,
        choose=choose,
        tta=tta,
        output_dir=output_dir,
        save=save,
        choose_tta=choose_tta,
    )
    examples = data.load_examples(dataset, split, data_dir=data_dir, manual_dir=manual_dir)
    track = progress(split, spec.size_of(split)) if progress else None
    ids, truths, results, images = predict_examples(
        predictor, examples, keep_images=PICTURED_CASES, progress=track, postprocessing=postprocessing
    )
    summary, rows = score(ids, truths, results)
    summary = {
        "task": "instances",
        "model": predictor.path,
        "dataset": dataset,
        "split": split,
        "postprocessing": {"tta": postprocessing.tta},
        **summary,
    }
    tta_choice.write_report(output_dir, summary, record, cases_csv(rows))
    if images:
        draw(output_dir / "predictions.png", images, ids, truths, results, rows, f"{dataset} {split}")
    return summary


def mean_over_images(rows, column) -> float:
    values = [row[column] for row in rows if not (isinstance(row[column], float) and np.isnan(row[column]))]
    return float(np.mean(values)) if values else float("nan")
