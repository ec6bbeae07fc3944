"""The end of a run: the best model scored on validation and test by the one evaluator (at each image's
original resolution, means over images), ``metrics.json``, the curves and a validation picture."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import pathlib

from kseg import data, tasks
from kseg.core import files
from kseg.evaluation import plots
from kseg.evaluation.cases import MaskMaker, collect_cases, masks_for, mean_scores, score_cases
from kseg.prediction import inference
from kseg.tasks.postprocess import PostProcessing
from kseg.training import history
from kseg.training.checkpoints import RunState
from kseg.training.config import TrainConfig

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"
PICTURED_CASES = 8


def read_metrics(run_dir) -> dict | None:
    path = pathlib.Path(run_dir) / METRICS_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def score_best_model(config: TrainConfig, spec: data.DatasetSpec, run_dir: pathlib.Path) -> dict:
    """Validation and test scores of ``best.keras``, scored as its task scores; draws ``predictions.png``."""
    scorer = {tasks.SEMANTIC: _score_semantic, tasks.INSTANCES: _score_instances, tasks.KEYPOINTS: _score_keypoints}
    return scorer[config.task](config, spec, run_dir)


def _score_keypoints(config: TrainConfig, spec: data.DatasetSpec, run_dir: pathlib.Path) -> dict:
    from kseg.evaluation import keypoint_report

    model = inference.load_keras_model(run_dir / "best.keras")
    return keypoint_report.score_best_model(config, spec, run_dir, tasks.get(config.task).predictor(model))


def _score_instances(config: TrainConfig, spec: data.DatasetSpec, run_dir: pathlib.Path) -> dict:
    from kseg.evaluation import instance_report

    model = inference.load_keras_model(run_dir / "best.keras")
    return instance_report.score_best_model(config, spec, run_dir, tasks.get(config.task).predictor(model))


def _score_semantic(config: TrainConfig, spec: data.DatasetSpec, run_dir: pathlib.Path) -> dict:
    """Semantic scores with a plain threshold."""
    predictor = inference.load_predictor(run_dir / "best.keras")
    predictor = dataclasses.replace(predictor, postprocessing=PostProcessing(threshold=config.threshold))
    from kseg.training.setup import split_selection

    make_mask = MaskMaker(spec.num_classes)
    scores = {}
    selection = {**split_selection(config), "test": ("test", None)}  # a fold's validation is its own fold
    for split in ("validation", "test"):
        name, image_ids = selection[split]
        if not (spec.split_sizes.get(split) if image_ids is None else image_ids):
            continue
        examples = data.load_examples(
            config.dataset,
            name,
            data_dir=config.data_dir,
            manual_dir=config.manual_dir,
            num_classes=spec.num_classes,
            image_ids=image_ids,
        )
        keep = PICTURED_CASES if split == "validation" and spec.is_binary else 0
        cases = collect_cases(predictor, examples, keep_images=keep)
        masks = masks_for(cases, predictor.postprocessing, make_mask)
        rows = score_cases(cases, masks, spec.num_classes)
        scores[split] = mean_scores(rows)
        if keep:
            plots.contour_grid(
                run_dir / "predictions.png",
                [c.image for c in cases[:keep]],
                true_masks=[c.true_mask for c in cases[:keep]],
                pred_masks=masks[:keep],
                titles=[f"{r['image_id']}: Dice {r['dice']:.3f}" for r in rows[:keep]],
                title=f"{config.dataset} validation: truth (green) vs prediction (red)",
            )
    return scores


def finish_run(
    config: TrainConfig, spec: data.DatasetSpec, run_dir: pathlib.Path, state: RunState, precision: str | None = None
) -> dict:
    """Write ``metrics.json`` (scores plus the training figures kept in the run state) and the curves."""
    metrics = score_best_model(config, spec, run_dir)
    images_per_second = state.images_per_second
    metrics.update(
        {
            "train_seconds": round(state.train_seconds, 2),
            "images_per_second": round(images_per_second, 2) if images_per_second else None,
            "best_epoch": state.best_epoch + 1,
            "kept": config.keep,
            "epochs": config.epochs,
            "scored_at": metrics.pop("scored_at", "original resolution, mean over images"),
            "precision": precision,
        }
    )
    files.atomic_write_text(run_dir / METRICS_FILE, json.dumps(metrics, indent=2) + "\n")
    if (run_dir / history.FILE_NAME).exists():
        score = tasks.get(config.task).monitor.removeprefix("val_")
        plots.training_curves(run_dir / history.FILE_NAME, run_dir / "curves.png", score=score)
    log.info(summary_line(config, run_dir, metrics, state))
    return metrics


#: How the summary line names the weights a run keeps when they are not its best validation epoch.
KEPT_WEIGHTS = {"last": "kept the last epoch ({epochs})", "average": "kept the weight average over epochs"}


def summary_line(config: TrainConfig, run_dir, metrics: dict, state: RunState) -> str:
    parts = [
        f"{config.preset or config.model_preset} on {config.dataset} done in {state.train_seconds / 60:.1f} "
        f"min of training"
    ]
    task = tasks.get(config.task)
    if config.keep != "best":
        parts.append(KEPT_WEIGHTS[config.keep].format(epochs=config.epochs))
    if state.best_epoch >= 0 and math.isfinite(state.best_dice):
        best = "best epoch" if config.keep == "best" else "best on validation: epoch"
        parts.append(f"{best} {state.best_epoch + 1} ({task.monitor_label} {state.best_dice:.4f} at model size)")
    elif state.best_epoch >= 0:
        parts.append(f"last epoch {state.best_epoch + 1} kept (no validation split)")
    parts.extend(task.summary_parts(metrics))
    if metrics.get("images_per_second"):
        parts.append(f"{metrics['images_per_second']:.1f} img/s")
    parts.append(f"run dir {run_dir}")
    return " | ".join(parts)
