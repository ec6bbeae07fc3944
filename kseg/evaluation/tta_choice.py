"""What the instance and keypoint evaluators share around their scores: flip TTA chosen on validation and
stored with the model, a ``--tta`` that overrides it, and the report files written at the end."""

from __future__ import annotations

import dataclasses
import json
import logging
import pathlib

from kseg import data, tasks
from kseg.core import files

log = logging.getLogger(__name__)

#: Flip TTA is kept only for at least this gain on validation (nnU-Net's rule: a step that does not clearly
#: help costs time for nothing).
MIN_TTA_GAIN = 0.005


def choose_flip(postprocessing, score_of, metric: str):
    """``(postprocessing, record)`` with flip TTA on or off, whichever ``score_of(postprocessing)`` (a
    validation score, higher is better, named ``metric`` in the record) prefers by ``MIN_TTA_GAIN``."""
    scores = {tta: score_of(dataclasses.replace(postprocessing, tta=tta)) for tta in (False, True)}
    keep = scores[True] >= scores[False] + MIN_TTA_GAIN
    steps = {f"no TTA ({metric})": round(scores[False], 4), f"flip TTA ({metric})": round(scores[True], 4)}
    return dataclasses.replace(postprocessing, tta=keep), {"steps": steps}


def postprocessing_for(predictor, dataset, *, data_dir, manual_dir, choose, tta, output_dir, save, choose_tta):
    """``(postprocessing, record)``: the predictor's stored choice; with ``choose``, flip TTA chosen on the
    validation split by ``choose_tta(predictor, examples, postprocessing)`` and stored through ``save``
    (``record`` says on what and with which scores); ``tta`` (``--tta``/``--no-tta``) overrides either."""
    postprocessing, record = predictor.postprocessing, None
    if choose:
        spec = data.dataset_spec(dataset, data_dir=data_dir, manual_dir=manual_dir)
        validation = data.load_examples(dataset, "validation", data_dir=data_dir, manual_dir=manual_dir)
        postprocessing, record = choose_tta(predictor, validation, postprocessing)
        record = {"chosen_on": f"{dataset} validation ({spec.size_of('validation')} images)", **record}
        saved = save(predictor, postprocessing, record, output_dir)
        log.info(f"chose {tasks.get(predictor.task).describe(postprocessing)} on validation; saved to {saved}")
    if tta is not None:
        postprocessing = dataclasses.replace(postprocessing, tta=tta)
    return postprocessing, record


def write_report(output_dir, summary: dict, record, cases_csv: str) -> None:
    """``summary.json`` (with the TTA choice's record, if one was made) and ``cases.csv``."""
    output_dir = pathlib.Path(output_dir)
    if record:
        summary["postprocessing_choice"] = record
    files.make_output_dir(output_dir)
    files.atomic_write_text(output_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    files.atomic_write_text(output_dir / "cases.csv", cases_csv)
