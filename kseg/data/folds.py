"""Cross-validation folds over a dataset's train+validation examples (nnU-Net's recipe), fixed and written down.

A folds run (``kseg.train --folds K``) trains K models, each on all but one fold and validated on the fold it
did not see; ``test`` is never part of a fold. The folds are stratified by the feature the dataset declares
for grouping results (PH2: the clinical diagnosis), as its own split is: within each group the images are
put in a fixed pseudo-random order (the SHA-256 of the image id, whatever order the files come in) and dealt
to the folds in turn, the deal running on from group to group, so fold sizes differ by at most one and each
fold holds each diagnosis in proportion. The assignment is written to ``folds.json`` in the run directory the
first time and read from there afterwards: every process that trains a fold uses the same folds.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pathlib

from kseg.core import files
from kseg.core.errors import UsageError

FOLDS_FILE = "folds.json"
#: The examples the folds divide: everything but the test split.
OVER = "train+validation"


@dataclasses.dataclass(frozen=True)
class FoldPlan:
    """Which image ids each fold holds out; fold ``i`` trains on the others."""

    dataset: str
    folds: tuple  # of tuples of image ids (sorted)
    over: str = OVER
    stratified_by: str | None = None

    @property
    def count(self) -> int:
        return len(self.folds)

    @property
    def image_ids(self) -> list[str]:
        return sorted(i for fold in self.folds for i in fold)

    def held_out(self, fold: int) -> frozenset:
        return frozenset(self.folds[fold])

    def trained_on(self, fold: int) -> frozenset:
        return frozenset(i for k, ids in enumerate(self.folds) if k != fold for i in ids)

    def fold_of(self) -> dict[str, int]:
        return {image_id: k for k, ids in enumerate(self.folds) for image_id in ids}

    def to_dict(self) -> dict:
        return {
            "dataset": self.dataset,
            "over": self.over,
            "stratified_by": self.stratified_by,
            "images": len(self.image_ids),
            "folds": [list(fold) for fold in self.folds],
        }


def _order_key(image_id: str) -> str:
    return hashlib.sha256(image_id.encode()).hexdigest()


def assign(image_ids, groups, count: int) -> tuple:
    """``count`` folds of ``image_ids``, stratified by ``groups`` (one value per id, or None for no strata)."""
    image_ids = [str(i) for i in image_ids]
    if len(set(image_ids)) != len(image_ids):
        duplicates = sorted({i for i in image_ids if image_ids.count(i) > 1})
        raise UsageError(f"image ids must be unique to make folds; repeated: {', '.join(duplicates[:3])}")
    if len(image_ids) < count:
        raise UsageError(f"{count} folds need at least {count} images; there are {len(image_ids)}")
    groups = list(groups) if groups is not None else [""] * len(image_ids)
    order = sorted(zip(groups, image_ids), key=lambda pair: (str(pair[0]), _order_key(pair[1])))
    folds = [[] for _ in range(count)]
    for n, (_, image_id) in enumerate(order):
        folds[n % count].append(image_id)
    return tuple(tuple(sorted(fold)) for fold in folds)


def make_plan(dataset: str, count: int, *, data_dir=None, manual_dir=None) -> FoldPlan:
    """Folds of ``dataset``'s train+validation, stratified by its declared group feature if it has one."""
    from kseg import data

    spec = data.dataset_spec(dataset, data_dir=data_dir, manual_dir=manual_dir)
    stratify = spec.default_group_by
    examples = data.load_examples(
        dataset, OVER, data_dir=data_dir, manual_dir=manual_dir, extra_features=(stratify,) if stratify else ()
    )
    select = (lambda ex: {"image_id": ex["image_id"], stratify: ex[stratify]}) if stratify else None
    examples = examples.map(select) if select else examples.map(lambda ex: {"image_id": ex["image_id"]})
    ids, groups = [], []
    for example in examples.as_numpy_iterator():
        ids.append(example["image_id"].decode())
        groups.append(example[stratify].decode() if stratify else None)
    return FoldPlan(dataset, assign(ids, groups if stratify else None, count), stratified_by=stratify)


def read(run_dir) -> FoldPlan | None:
    """The folds a run directory holds (None if it is not a folds run)."""
    path = pathlib.Path(run_dir) / FOLDS_FILE
    if not path.exists():
        return None
    try:
        values = json.loads(path.read_text())
        return FoldPlan(
            values["dataset"],
            tuple(tuple(fold) for fold in values["folds"]),
            values.get("over", OVER),
            values.get("stratified_by"),
        )
    except (ValueError, KeyError, TypeError) as e:
        raise UsageError(f"{path}: not a kseg folds file ({e}); choose a new --output-dir") from None


def write(run_dir, plan: FoldPlan) -> pathlib.Path:
    path = pathlib.Path(run_dir) / FOLDS_FILE
    files.atomic_write_text(path, json.dumps(plan.to_dict(), indent=2) + "\n")
    return path


def fold_dir(run_dir, fold: int) -> pathlib.Path:
    """Where fold ``fold`` of a folds run trains: a complete run directory of its own."""
    return pathlib.Path(run_dir) / f"fold-{fold}"


def fold_models(run_dir) -> list[pathlib.Path]:
    """Each fold's model (``fold-i/best.keras``) of a folds run, in fold order; [] if it is not one."""
    plan = read(run_dir)
    return [fold_dir(run_dir, k) / "best.keras" for k in range(plan.count)] if plan else []
