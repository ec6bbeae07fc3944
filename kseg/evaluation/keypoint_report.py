"""Scoring keypoint predictions: PCK (the share of joints within a fraction of the torso of the truth),
per joint and mean, at 0.2 and 0.1 of the torso; ``summary.json``, ``cases.csv`` and a figure of true and
predicted skeletons. Every image is predicted at the model's size and scored at its original resolution.

The protocol is LSP's: the torso is the distance from the left shoulder to the right hip of the truth, and
only joints marked visible are scored. LSPET leaves many joints unplaced, so where either end of that
diagonal is missing the other one (right shoulder to left hip) stands in; an image with neither cannot be
scored and is counted (``images_unscored``) and named in a warning.

A model's joints are matched to the dataset's by name, so a model with other joints (COCO's 18 for the
pretrained OpenPose) is scored on the ones both have, and the summary lists those it lacks. A multi-person
model may return several people: the one scored is the person nearest the annotated one (smallest mean
distance over the joints both have), the usual single-person protocol for multi-person models; an image with
no person found scores every joint a miss.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import pathlib

import numpy as np

from kseg import data
from kseg.evaluation import plots, tta_choice
from kseg.tasks import keypoint_ops

log = logging.getLogger(__name__)

PICTURED_CASES = 8
FRACTIONS = {"pck": 0.2, "pck_0.1": 0.1}
CASE_COLUMNS = ("visible", "torso", "pck", "pck_0.1", "people")


def matched_joints(result, joint_names) -> np.ndarray:
    """The predicted person's joints in the dataset's order: ``[P, J, 3]``, NaN where the model has no such
    joint or found nobody (P >= 1)."""
    people = max(result.count, 1)
    points = np.full((people, len(joint_names), 3), np.nan, np.float32)
    model_names = list(result.joint_names)
    for j, name in enumerate(joint_names):
        if name in model_names and result.count:
            points[:, j] = result.keypoints[:, model_names.index(name)]
    return points


def nearest_person(candidates: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Of ``candidates`` [P, J, 3], the person nearest ``truth`` [J, 3] over the visible joints both have."""
    if len(candidates) == 1:
        return candidates[0]
    visible = truth[:, 2] > 0
    distance = np.linalg.norm(candidates[:, :, :2] - truth[None, :, :2], axis=-1)  # [P, J]
    usable = visible[None] & np.isfinite(distance) & (candidates[:, :, 2] > 0)
    mean = np.where(
        usable.any(axis=1), np.nansum(np.where(usable, distance, 0), axis=1) / np.maximum(usable.sum(1), 1), np.inf
    )
    return candidates[int(np.argmin(mean))]


def predict_examples(predictor, examples, joint_names, keep_images: int = 0, progress=None, postprocessing=None):
    """``(image_ids, truths [N, J, 3], predicted [N, J, 3], images)`` in the split's order; ``predicted`` is NaN
    for joints the model does not have (``predictor.joint_names``) and where it found nobody."""
    ids, truths, predicted, images = [], [], [], []
    for example in examples:
        image = example["image"].numpy()
        truth = example["keypoints"].numpy()
        result = predictor.predict([image], postprocessing=postprocessing)[0]
        ids.append(example["image_id"].numpy().decode())
        truths.append(truth)
        predicted.append(nearest_person(matched_joints(result, joint_names), truth))
        if len(images) < keep_images:
            images.append(image)
        if progress is not None:
            progress(len(ids))
    return ids, np.stack(truths), np.stack(predicted), images


def score(ids, truths, predicted, joint_names, model_joints=None) -> tuple[dict, list[dict]]:
    """The split's summary (mean PCK, per joint) and one row per image. ``model_joints``: the joints the model
    predicts (default: all); the others are left out of the means and listed. Images whose torso has no
    length cannot be scored: they are counted and named, not dropped silently."""
    torso = keypoint_ops.torso_sizes(truths, joint_names)
    scorable = torso > 0
    if not scorable.all():
        unscored = [i for i, ok in zip(ids, scorable) if not ok]
        log.warning(
            f"{len(unscored)} images have no torso (neither shoulder-to-opposite-hip diagonal is visible) and are "
            f"not scored: {', '.join(unscored[:5])}"
        )
    visible = (truths[..., 2] > 0) & scorable[:, None]
    has_joint = np.array([model_joints is None or name in model_joints for name in joint_names])
    hits = {key: keypoint_ops.pck_hits(predicted, truths, torso, f) for key, f in FRACTIONS.items()}
    scored = visible & has_joint[None]
    summary = {key: float(h[scored].mean()) if scored.any() else float("nan") for key, h in hits.items()}
    summary["per_joint"] = {
        name: {
            "visible": int(visible[:, j].sum()),
            **{
                key: (float(h[visible[:, j], j].mean()) if visible[:, j].any() and has_joint[j] else None)
                for key, h in hits.items()
            },
        }
        for j, name in enumerate(joint_names)
    }
    summary["joints_missing"] = [name for j, name in enumerate(joint_names) if not has_joint[j]]
    summary["images"] = len(ids)
    summary["images_unscored"] = int((~scorable).sum())
    rows = []
    for i, image_id in enumerate(ids):
        row = {"image_id": image_id, "visible": int(scored[i].sum()), "torso": float(torso[i]), "people": 1}
        for key, h in hits.items():
            row[key] = float(h[i][scored[i]].mean()) if scored[i].any() else float("nan")
        rows.append(row)
    return summary, rows


def cases_csv(rows) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=["image_id", *CASE_COLUMNS], lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.6f}" if isinstance(v, float) and not math.isnan(v) else v) for k, v in row.items()})
    return buffer.getvalue()


def format_table(summary: dict) -> str:
    lines = [f"{'joint':<16}{'visible':>8}{'PCK@0.2':>9}{'PCK@0.1':>9}"]
    show = lambda v: f"{v:>9.4f}" if v is not None else f"{'-':>9}"
    for name, row in summary["per_joint"].items():
        lines.append(f"{name:<16}{row['visible']:>8}{show(row['pck'])}{show(row['pck_0.1'])}")
    lines.append(f"{'mean':<16}{'':>8}{show(summary['pck'])}{show(summary['pck_0.1'])}")
    if summary.get("joints_missing"):
        lines.append(f"(the model has no {', '.join(summary['joints_missing'])}: not in the mean)")
    return "\n".join(lines)


def draw(path, images, ids, truths, predicted, rows, joint_names, title) -> None:
    count = len(images)
    plots.skeleton_grid(
        path,
        images,
        truths[:count],
        predicted[:count],
        joint_names,
        titles=[f"{i}: PCK {row['pck']:.2f}" for i, row in zip(ids[:count], rows[:count])],
        title=f"{title} (truth green, prediction red)",
    )


def score_best_model(config, spec, run_dir: pathlib.Path, predictor) -> dict:
    """Validation and test scores of the run's best model (``predictor``); draws ``predictions.png``."""
    scores = {}
    for split in ("validation", "test"):
        if not spec.split_sizes.get(split):
            continue
        examples = data.load_examples(config.dataset, split, data_dir=config.data_dir, manual_dir=config.manual_dir)
        keep = PICTURED_CASES if split == "validation" else 0
        ids, truths, predicted, images = predict_examples(predictor, examples, spec.class_names, keep_images=keep)
        summary, rows = score(ids, truths, predicted, spec.class_names, predictor.joint_names)
        scores[split] = summary
        if keep:
            draw(
                run_dir / "predictions.png",
                images,
                ids,
                truths,
                predicted,
                rows,
                spec.class_names,
                f"{config.dataset} validation",
            )
    scores["scored_at"] = "original resolution, PCK over visible joints (torso: left shoulder to right hip)"
    return scores


def choose_tta(predictor, examples, joint_names, postprocessing):
    """Flip TTA or not, by validation PCK@0.2 (``tta_choice.choose_flip``)."""

    def pck(candidate):
        ids, truths, predicted, _ = predict_examples(predictor, examples, joint_names, postprocessing=candidate)
        return score(ids, truths, predicted, joint_names, predictor.joint_names)[0]["pck"]

    return tta_choice.choose_flip(postprocessing, pck, "PCK@0.2")


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
    """``kseg.evaluate`` for a keypoint model: ``summary.json``, ``cases.csv``, ``predictions.png``; the
    arguments are those of ``instance_report.evaluate``."""
    output_dir = pathlib.Path(output_dir)
    spec = data.dataset_spec(dataset, data_dir=data_dir, manual_dir=manual_dir)
    names = spec.class_names
    postprocessing, record = tta_choice.postprocessing_for(
        predictor,
        dataset,
        data_dir=data_dir,
        manual_dir=manual_dir,
        choose=choose,
        tta=tta,
        output_dir=output_dir,
        save=save,
        choose_tta=lambda p, examples, pp: choose_tta(p, examples, names, pp),
    )
    examples = data.load_examples(dataset, split, data_dir=data_dir, manual_dir=manual_dir)
    track = progress(split, spec.size_of(split)) if progress else None
    ids, truths, predicted, images = predict_examples(
        predictor, examples, names, keep_images=PICTURED_CASES, progress=track, postprocessing=postprocessing
    )
    summary, rows = score(ids, truths, predicted, names, predictor.joint_names)
    summary = {
        "task": "keypoints",
        "model": predictor.path,
        "dataset": dataset,
        "split": split,
        "postprocessing": {"tta": postprocessing.tta},
        "protocol": "PCK over visible joints; torso = |left_shoulder - right_hip| of the truth (else "
        "|right_shoulder - left_hip|; images with neither are not scored); joints matched by name; the "
        "predicted person nearest the annotated one is scored",
        **summary,
    }
    tta_choice.write_report(output_dir, summary, record, cases_csv(rows))
    if images:
        draw(output_dir / "predictions.png", images, ids, truths, predicted, rows, names, f"{dataset} {split}")
    return summary
