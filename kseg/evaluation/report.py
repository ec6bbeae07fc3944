"""What ``python -m kseg.evaluate`` produces: ``cases.csv``, ``summary.json`` and figures for one split, with
the post-processing stored with the model, overridden, or chosen on validation first."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
import pathlib

import numpy as np

from kseg import data, tasks
from kseg.core import files
from kseg.core.errors import UsageError
from kseg.data import folds
from kseg.evaluation import figures, instance_report, keypoint_report
from kseg.evaluation.cases import (
    MaskMaker,
    collect_cases,
    dice_vs_threshold,
    masks_for,
    mean_scores,
    score_cases,
    summarize,
)
from kseg.evaluation.postprocessing_choice import ablation, choose_postprocessing
from kseg.prediction import inference
from kseg.tasks import postprocess, scoring
from kseg.tasks.postprocess import PostProcessing

log = logging.getLogger(__name__)

CURVE_THRESHOLDS = tuple(round(t, 2) for t in np.arange(0.05, 0.96, 0.05))
SUMMARY_COLUMNS = ("mean", "std", "median", "q1", "q3")


def cases_csv(rows, group_by: str | None = None) -> str:
    columns = ["image_id", *scoring.CASE_COLUMNS] + ([group_by] if group_by else [])
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.6f}" if isinstance(v, float) else v) for k, v in row.items()})
    return buffer.getvalue()


def format_table(summary: dict, postprocessing: PostProcessing, group_by: str | None = None) -> str:
    lines = [
        f"post-processing: {postprocessing.describe()}",
        f"{'metric':<16}" + "".join(f"{k:>11}" for k in SUMMARY_COLUMNS),
    ]
    for column in scoring.CASE_COLUMNS:
        s = summary[column]
        lines.append(
            f"{column:<16}"
            + "".join(f"{s[k]:>11.5g}" for k in SUMMARY_COLUMNS)
            + (f"  ({s['undefined']} undefined)" if s.get("undefined") else "")
        )
    if "pooled_dice" in summary:
        lines.append(f"{'pooled dice':<16}{summary['pooled_dice']:>11.4f}")
    for group, values in summary.get(f"dice_by_{group_by}", {}).items():
        lines.append(f"dice | {group:<20}{values['mean']:.4f}  ({values['images']} images)")
    for name, dice in summary.get("ablation", {}).items():
        lines.append(f"ablation | {name:<44} Dice {dice:.4f}")
    for fold in summary.get("folds", []):
        lines.append(f"fold {fold['fold']} alone | Dice {fold['dice']:.4f}  IoU {fold['iou']:.4f}")
    return "\n".join(lines)


def save_choice(
    predictor: inference.Predictor, postprocessing: PostProcessing, record: dict, fallback_dir
) -> pathlib.Path:
    """Store the choice next to the ``.keras`` model, where predict and export find it; if that folder cannot
    be written, keep it in ``fallback_dir`` and say where it went (the search took minutes: never lose it)."""
    path = postprocess.sidecar_path(predictor.path)
    try:
        return postprocess.write(path, postprocessing, **record)
    except OSError as e:
        kept = postprocess.write(pathlib.Path(fallback_dir) / path.name, postprocessing, **record)
        log.warning(
            f"cannot write {path} ({e.strerror or e}); the choice is kept in {kept}: copy it next to "
            f"{predictor.path} to use it with kseg.predict and kseg.export"
        )
        return kept


def check_choice_writable(predictor: inference.Predictor) -> None:
    if pathlib.Path(predictor.path).suffix != ".keras":
        raise UsageError(
            f"{predictor.path}: post-processing is chosen on the .keras model (a run directory or "
            f".keras file) and then exported; exported versions are not changed in place"
        )


def folds_run_of(model_path) -> pathlib.Path | None:
    """The folds run (``kseg.train --folds``) ``model_path`` names, as a directory or its ``best.keras``."""
    path = pathlib.Path(model_path)
    run_dir = path if path.is_dir() else path.parent if path.name == "best.keras" else None
    return run_dir if run_dir is not None and folds.read(run_dir) is not None else None


def fold_scores(run_dir, examples, postprocessing: PostProcessing, make_mask: MaskMaker, batch_size: int = 8):
    """Mean scores of each fold model of a folds run on ``examples``, with the ensemble's post-processing."""
    rows = []
    for fold, path in enumerate(folds.fold_models(run_dir)):
        predictor = inference.load_predictor(path)
        cases = collect_cases(predictor, examples, (postprocessing.tta,), batch_size=batch_size)
        scored = score_cases(cases, masks_for(cases, postprocessing, make_mask), make_mask.num_classes)
        rows.append({"fold": fold, **mean_scores(scored)})
    return rows


def evaluate(
    model_path,
    dataset: str,
    split: str,
    output_dir,
    *,
    postprocessing_overrides: dict | None = None,
    choose: bool = False,
    run_ablation: bool = False,
    data_dir=None,
    manual_dir=None,
    num_classes=None,
    batch_size: int = 8,
    group_by: str | None = "auto",
    figures_too: bool = True,
    progress=None,
) -> dict:
    """Score ``model_path`` on ``dataset``'s ``split`` (``all`` for every image) and write the results into
    ``output_dir``; returns the summary. ``group_by``: a feature to report mean Dice per value of, ``"auto"``
    for the one the dataset declares (PH2: the clinical diagnosis), or None. ``progress(label, total)``
    returns a per-case callback (or None)."""
    output_dir = files.check_output_dir(output_dir)
    files.check_outside_inputs(output_dir, data.input_folders(dataset, data_dir, manual_dir))
    predictor = inference.load_predictor(model_path)
    binary_hint = predictor.num_classes if predictor.num_classes > 1 else None
    spec = data.dataset_spec(dataset, data_dir=data_dir, manual_dir=manual_dir, num_classes=num_classes or binary_hint)
    if spec.kind != predictor.task:
        raise UsageError(
            f"{model_path}: a model for {predictor.task} given a dataset of {data.kind_text(spec.kind)} ({dataset}); "
            f"evaluate it on a dataset of its own kind"
        )
    if predictor.task != tasks.SEMANTIC:  # COCO AP (instance_report) or PCK (keypoint_report)
        overrides = dict(postprocessing_overrides or {})
        semantic_only = {"ablation": run_ablation, "group_by": group_by not in (None, "auto")}
        tasks.check_postprocessing_flags(
            predictor.task, [*overrides, *(k for k, v in semantic_only.items() if v)], model_path
        )
        if choose:
            check_choice_writable(predictor)
            if not spec.size_of("validation"):
                raise UsageError(
                    f"--choose-postprocessing needs a validation split; {dataset} has {sorted(spec.split_sizes)}"
                )
        task_report = instance_report if predictor.task == tasks.INSTANCES else keypoint_report
        return task_report.evaluate(
            predictor,
            dataset,
            split,
            output_dir,
            data_dir=data_dir,
            manual_dir=manual_dir,
            progress=progress,
            tta=overrides.get("tta"),
            choose=choose,
            save=save_choice,
        )
    if choose:
        check_choice_writable(predictor)
        if folds_run_of(model_path) is not None:
            raise UsageError(
                f"{model_path}: a folds run's post-processing was chosen out of fold when it finished training, on "
                f"every train+validation image (best.postprocessing.json); choosing again on the validation split "
                f"would choose on images its folds trained on. Override single steps with --threshold, --tta, ..."
            )
    if spec.num_classes != predictor.num_classes:
        raise UsageError(
            f"{model_path}: the model predicts {predictor.num_classes} channel(s) but {dataset} "
            f"has {spec.num_classes} (1 means binary)"
        )
    split_size = spec.size_of(split)
    if choose and not spec.size_of("validation"):
        raise UsageError(f"--choose-postprocessing needs a validation split; {dataset} has {sorted(spec.split_sizes)}")
    if group_by == "auto":
        group_by = spec.default_group_by
    make_mask = MaskMaker(spec.num_classes)
    extra = (group_by,) if group_by else ()
    load = lambda s: data.load_examples(
        dataset, s, data_dir=data_dir, manual_dir=manual_dir, num_classes=spec.num_classes, extra_features=extra
    )
    track = progress or (lambda label, total: None)

    chosen_record = None
    postprocessing = predictor.postprocessing
    if choose:
        validation = collect_cases(
            predictor,
            load("validation"),
            (False, True),
            batch_size=batch_size,
            progress=track("validation", spec.size_of("validation")),
        )
        postprocessing, steps = choose_postprocessing(validation, make_mask)
        chosen_record = {"chosen_on": f"{dataset} validation ({len(validation)} images)", "steps": steps}
        saved = save_choice(predictor, postprocessing, chosen_record, output_dir)
        log.info(f"chose {postprocessing.describe()} on validation; saved to {saved}")
    if postprocessing_overrides:
        postprocessing = dataclasses.replace(postprocessing, **postprocessing_overrides)

    tta_modes = (False, True) if run_ablation and spec.is_binary else (postprocessing.tta,)
    cases = collect_cases(
        predictor, load(split), tta_modes, batch_size=batch_size, group_by=group_by, progress=track(split, split_size)
    )
    if not cases:
        raise UsageError(f"{dataset} split {split!r} is empty")
    masks = masks_for(cases, postprocessing, make_mask)
    rows = score_cases(cases, masks, spec.num_classes, group_by)
    summary = summarize(rows, cases, masks, spec.num_classes, group_by)
    summary.update(
        model=str(predictor.path),
        dataset=dataset,
        split=split,
        postprocessing=postprocessing.to_dict(),
        group_by=group_by,
    )
    if chosen_record:
        summary["postprocessing_choice"] = chosen_record
    if spec.is_binary:
        summary["dice_vs_threshold"] = dice_vs_threshold(cases, postprocessing.tta, CURVE_THRESHOLDS, make_mask)
    if run_ablation and spec.is_binary:
        summary["ablation"] = ablation(cases, postprocessing, make_mask)
    folds_run = folds_run_of(model_path)
    if folds_run is not None:  # the ensemble's members, scored the same way
        summary["folds"] = fold_scores(folds_run, load(split), postprocessing, make_mask, batch_size)

    files.make_output_dir(output_dir)
    files.atomic_write_text(output_dir / "cases.csv", cases_csv(rows, group_by))
    files.atomic_write_text(output_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    if figures_too:
        figures.plot_grid(output_dir / "grid.png", load(split), figures.pick_grid_cases(rows), rows, masks, cases)
        figures.plot_histogram(output_dir / "dice_histogram.png", rows)
        if spec.is_binary:
            figures.plot_threshold_curve(
                output_dir / "dice_vs_threshold.png", summary["dice_vs_threshold"], postprocessing.threshold
            )
    return summary
