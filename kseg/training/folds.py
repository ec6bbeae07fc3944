"""Cross-validation runs (nnU-Net's recipe): K models over train+validation, the post-processing chosen on
all out-of-fold predictions, and the K models as one averaged model.

``kseg.train --folds K --output-dir RUN`` writes::

    RUN/config.json            the run's config (fold: null)
    RUN/folds.json             which images each fold holds out (kseg.data.folds)
    RUN/fold-k/                fold k: a complete run directory, trained on the other folds and validated
                               (best epoch, curves, metrics.json) on its own fold
    RUN/out_of_fold.npz        every train+validation image's probabilities (with and without flip TTA)
                               from the fold model that never trained on it
    RUN/best.keras             the ensemble: the mean of the folds' probabilities, in one graph
    RUN/best.postprocessing.json  TTA, hole filling, largest component and threshold chosen on the
                               out-of-fold predictions (all of train+validation, not 20 validation images)
    RUN/metrics.json           test scores of the ensemble and of each fold, and the out-of-fold scores

``--fold k`` trains fold k alone, so folds can train in separate processes or machines sharing RUN; each
fold resumes like any run, and whichever process finds every fold finished writes the ensemble. ``test``
is never part of a fold, and nothing is chosen on it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import pathlib
import time

import numpy as np

from kseg import data
from kseg.core import files
from kseg.core.errors import UsageError
from kseg.data import folds as fold_plans
from kseg.training import setup
from kseg.training.config import ConfigError, TrainConfig

log = logging.getLogger(__name__)

OUT_OF_FOLD_FILE = "out_of_fold.npz"
METRICS_FILE = "metrics.json"
#: Fields that may differ between the processes training one folds run: where things are and how they run,
#: and which fold each trains.
SHARED_IGNORES = {"strategy", "data_dir", "manual_dir", "output_dir", "jit_compile", "preset", "fold"}


def fold_config(config: TrainConfig, fold: int) -> TrainConfig:
    """Fold ``fold``'s own run: its run directory inside the folds run, its own seed (``seed + fold``:
    differently initialised members make a better ensemble)."""
    run_dir = pathlib.Path(config.output_dir)
    return dataclasses.replace(
        config, fold=fold, seed=config.seed + fold, output_dir=str(fold_plans.fold_dir(run_dir, fold))
    )


def _check_same_run(run_dir: pathlib.Path, config: TrainConfig) -> None:
    details = setup.config_changes(run_dir / "config.json", config, SHARED_IGNORES)
    if details:
        raise ConfigError(
            f"{run_dir} holds a folds run with another config ({details}); train its folds with the same "
            f"settings or choose a new --output-dir"
        )


def _plan(run_dir: pathlib.Path, config: TrainConfig) -> fold_plans.FoldPlan:
    plan = fold_plans.read(run_dir)
    if plan is None:
        plan = fold_plans.make_plan(
            config.dataset, config.folds, data_dir=config.data_dir, manual_dir=config.manual_dir
        )
        fold_plans.write(run_dir, plan)
        sizes = ", ".join(str(len(fold)) for fold in plan.folds)
        strata = f", stratified by {plan.stratified_by}" if plan.stratified_by else ""
        log.info(f"{plan.count} folds of {config.dataset} {plan.over} ({sizes} images{strata}) in {run_dir}")
    elif plan.count != config.folds or plan.dataset != config.dataset:
        raise ConfigError(
            f"{run_dir / fold_plans.FOLDS_FILE} holds {plan.count} folds of {plan.dataset}, not {config.folds} of "
            f"{config.dataset}; choose a new --output-dir"
        )
    return plan


def fold_finished(run_dir, fold: int) -> bool:
    return (fold_plans.fold_dir(run_dir, fold) / METRICS_FILE).exists()


def run(config: TrainConfig, train_one) -> dict:
    """Train the folds ``config`` asks for (all, or ``config.fold``) with ``train_one(fold_config)``; once
    every fold has finished, write the ensemble and its scores. Returns ``metrics.json``'s contents (or,
    while folds remain, which ones)."""
    run_dir = pathlib.Path(config.output_dir)
    files.check_output_dir(run_dir)
    files.check_outside_inputs(run_dir, data.input_folders(config.dataset, config.data_dir, config.manual_dir))
    with files.folder_lock(run_dir, "a kseg.train folds run (its set-up)"):
        _check_same_run(run_dir, config)
        files.make_output_dir(run_dir)
        plan = _plan(run_dir, config)
        record = dataclasses.replace(config, fold=None).to_dict()
        files.atomic_write_text(run_dir / "config.json", json.dumps(record, indent=2) + "\n")
    for fold in [config.fold] if config.fold is not None else range(plan.count):
        log.info(
            f"fold {fold} of {plan.count}: training on {len(plan.trained_on(fold))} images, validating on "
            f"{len(plan.held_out(fold))}"
        )
        train_one(fold_config(config, fold))
    missing = [k for k in range(plan.count) if not fold_finished(run_dir, k)]
    if missing:
        log.info(
            f"{run_dir}: fold(s) {', '.join(map(str, missing))} still to train (kseg.train ... --fold K, same "
            f"config); the ensemble is written once every fold has finished"
        )
        return {"folds_missing": missing}
    finished = run_dir / METRICS_FILE
    if finished.exists():
        log.info(f"{run_dir} is a finished folds run; its metrics.json is kept as it is")
        return json.loads(finished.read_text())
    with files.folder_lock(run_dir, "a kseg.train folds run (writing the ensemble)"):
        return finish(config, plan, run_dir)


# --------------------------------------------------------------------------------- the ensemble ---


def out_of_fold_cases(config: TrainConfig, plan: fold_plans.FoldPlan, run_dir: pathlib.Path):
    """Every train+validation image predicted (with and without flip TTA) by the fold model that held it out."""
    from kseg.evaluation.cases import collect_cases
    from kseg.prediction import inference

    cases = []
    for fold in range(plan.count):
        predictor = inference.load_predictor(fold_plans.fold_dir(run_dir, fold) / "best.keras")
        examples = data.load_examples(
            config.dataset,
            plan.over,
            data_dir=config.data_dir,
            manual_dir=config.manual_dir,
            num_classes=config.num_classes,
            image_ids=plan.held_out(fold),
        )
        held_out = collect_cases(predictor, examples, (False, True))
        if {c.image_id for c in held_out} != plan.held_out(fold):
            raise UsageError(
                f"{run_dir / fold_plans.FOLDS_FILE}: fold {fold} names images that {config.dataset} {plan.over} "
                f"does not hold; the dataset changed since the folds were made: choose a new --output-dir"
            )
        cases.extend(held_out)
    return cases


def save_out_of_fold(path: pathlib.Path, cases, plan: fold_plans.FoldPlan) -> None:
    """The out-of-fold probabilities (float16, at the model's size), their image ids and folds."""
    fold_of = plan.fold_of()
    tmp = path.with_name(path.stem + ".tmp.npz")
    np.savez_compressed(
        tmp,
        image_ids=np.array([c.image_id for c in cases]),
        folds=np.array([fold_of[c.image_id] for c in cases], np.int32),
        probabilities=np.stack([c.probs[False] for c in cases]).astype(np.float16),
        probabilities_tta=np.stack([c.probs[True] for c in cases]).astype(np.float16),
    )
    tmp.replace(path)


def load_out_of_fold(path: pathlib.Path) -> dict[str, dict[bool, np.ndarray]]:
    """What ``save_out_of_fold`` wrote: each image id's float32 probabilities, keyed by flip TTA off/on."""
    saved = np.load(path)
    return {
        str(image_id): {False: plain.astype(np.float32), True: tta.astype(np.float32)}
        for image_id, plain, tta in zip(saved["image_ids"], saved["probabilities"], saved["probabilities_tta"])
    }


def _test_scores(predictor, config: TrainConfig, postprocessing, make_mask) -> dict | None:
    from kseg.evaluation.cases import collect_cases, masks_for, mean_scores, score_cases

    examples = data.load_examples(
        config.dataset, "test", data_dir=config.data_dir, manual_dir=config.manual_dir, num_classes=config.num_classes
    )
    cases = collect_cases(predictor, examples, (postprocessing.tta,))
    if not cases:
        return None
    return mean_scores(score_cases(cases, masks_for(cases, postprocessing, make_mask), make_mask.num_classes))


def finish(config: TrainConfig, plan: fold_plans.FoldPlan, run_dir: pathlib.Path) -> dict:
    """Out-of-fold predictions and the post-processing chosen on them, the ensemble model, and its scores."""
    from kseg.evaluation.cases import MaskMaker, mean_dice
    from kseg.evaluation.postprocessing_choice import choose_postprocessing
    from kseg.models import average_model
    from kseg.prediction import inference
    from kseg.tasks import postprocess
    from kseg.tasks.postprocess import PostProcessing
    from kseg.training import checkpoints

    started = time.monotonic()
    spec = data.dataset_spec(
        config.dataset, data_dir=config.data_dir, manual_dir=config.manual_dir, num_classes=config.num_classes
    )
    make_mask = MaskMaker(spec.num_classes)
    log.info(f"every fold finished: predicting {config.dataset} {plan.over} out of fold, with and without TTA")
    cases = out_of_fold_cases(config, plan, run_dir)
    save_out_of_fold(run_dir / OUT_OF_FOLD_FILE, cases, plan)
    chosen, steps = choose_postprocessing(cases, make_mask, PostProcessing(threshold=config.threshold))
    chosen_on = (
        f"out-of-fold predictions of {len(cases)} images ({config.dataset} {plan.over}, each by the one of "
        f"{plan.count} fold models that did not train on it)"
    )
    log.info(f"chose {chosen.describe()} on {chosen_on}")

    fold_paths = fold_plans.fold_models(run_dir)
    ensemble = average_model([inference.load_keras_model(p) for p in fold_paths])
    checkpoints.save_model_atomically(ensemble, run_dir / "best.keras")
    postprocess.write(postprocess.sidecar_path(run_dir / "best.keras"), chosen, chosen_on=chosen_on, steps=steps)

    log.info(f"scoring the {plan.count} folds and their ensemble on {config.dataset} test")
    fold_of = plan.fold_of()
    per_fold = []
    for fold, path in enumerate(fold_paths):
        fold_metrics = json.loads((path.parent / METRICS_FILE).read_text())
        held_out = [c for c in cases if fold_of[c.image_id] == fold]
        per_fold.append(
            {
                "fold": fold,
                "test": _test_scores(inference.load_predictor(path), config, chosen, make_mask),
                "out_of_fold_dice": mean_dice(held_out, chosen, make_mask),
                "best_epoch": fold_metrics.get("best_epoch"),
                "train_seconds": fold_metrics.get("train_seconds"),
            }
        )
    ensemble_predictor = inference.load_predictor(run_dir / "best.keras")
    plain = PostProcessing(threshold=config.threshold)
    metrics = {
        "test": _test_scores(ensemble_predictor, config, chosen, make_mask),
        "test_plain_threshold": _test_scores(ensemble_predictor, config, plain, make_mask),
        "out_of_fold": {"dice": mean_dice(cases, chosen, make_mask), "images": len(cases)},
        "postprocessing": chosen.to_dict(),
        "folds": per_fold,
        "train_seconds": round(sum(f["train_seconds"] or 0 for f in per_fold), 2),
        "finish_seconds": round(time.monotonic() - started, 2),  # out of fold, the choice, ensemble, scores
        "epochs": config.epochs,
        "scored_at": "original resolution, mean over images",
    }
    files.atomic_write_text(run_dir / METRICS_FILE, json.dumps(metrics, indent=2) + "\n")
    log.info(summary_line(config, run_dir, metrics))
    return metrics


def summary_line(config: TrainConfig, run_dir, metrics: dict) -> str:
    parts = [f"{config.folds}-fold {config.preset or config.model_preset} on {config.dataset}"]
    parts.append(f"{metrics['train_seconds'] / 60:.1f} min of training in all")
    parts.append(f"out-of-fold Dice {metrics['out_of_fold']['dice']:.4f} ({metrics['out_of_fold']['images']} images)")
    if metrics.get("test"):
        singles = [f["test"]["dice"] for f in metrics["folds"] if f.get("test")]
        parts.append(f"test Dice: ensemble {metrics['test']['dice']:.4f}, folds {np.mean(singles):.4f} on average")
    parts.append(f"run dir {run_dir}")
    return " | ".join(parts)
