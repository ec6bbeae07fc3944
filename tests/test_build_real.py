"""Integration: build ``ph2`` with the ``tfds`` CLI exactly as a user types it, and ``mads`` through the API,
from the real files in ``../shared/data``."""

import collections
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds

import tfds_ph2.tfds_ph2_dataset_builder  # noqa: F401

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ph2_built(ph2_dir, tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("tfds_cli")
    tfds_cli = pathlib.Path(sys.executable).parent / "tfds"
    result = subprocess.run(
        [
            str(tfds_cli),
            "build",
            "tfds_ph2",
            "--config",
            "ph2",
            "--manual_dir",
            str(ph2_dir),
            "--data_dir",
            str(data_dir),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return tfds.builder("tfds_ph2/ph2", data_dir=str(data_dir))


def test_cli_build_ph2_splits(ph2_built):
    assert {name: split.num_examples for name, split in ph2_built.info.splits.items()} == {
        "train": 140,
        "validation": 20,
        "test": 40,
    }


def test_ph2_examples(ph2_built):
    features = ph2_built.info.features
    diagnoses = collections.Counter()
    sizes = set()
    ids = set()
    for split in ("train", "validation", "test"):
        for example in tfds.as_numpy(ph2_built.as_dataset(split=split)):
            image, mask = example["image"], example["segmentation_mask"]
            assert mask.shape == image.shape[:2] + (1,)
            assert set(np.unique(mask)) == {0, 1}, example["image_id"]
            diagnoses[features["clinical_diagnosis"].int2str(example["clinical_diagnosis"])] += 1
            sizes.add(image.shape)
            ids.add(example["image_id"])
    assert diagnoses == {"common_nevus": 80, "atypical_nevus": 80, "melanoma": 40}
    assert len(ids) == 200
    assert len(sizes) > 2  # half-size and full-size cases, sizes differ by case
    assert features["segmentation_mask"].names == ["background", "lesion"]


def test_ph2_declares_its_group_by_feature(ph2_built):
    """Evaluation reports mean Dice per clinical diagnosis because the dataset says so (TFDS metadata), not
    because generic code knows PH2; the examples carry the diagnosis's name when asked."""
    from kseg import data

    data_dir = str(pathlib.Path(ph2_built.data_dir).parents[2])  # ROOT/tfds_ph2/ph2/1.0.0
    spec = data.dataset_spec("tfds_ph2/ph2", data_dir=data_dir)
    assert spec.default_group_by == "clinical_diagnosis" and "clinical_diagnosis" in spec.features
    example = next(
        iter(
            data.load_examples(
                "tfds_ph2/ph2", "test", data_dir=data_dir, extra_features=("clinical_diagnosis",)
            ).as_numpy_iterator()
        )
    )
    assert example["clinical_diagnosis"].decode() in {"common_nevus", "atypical_nevus", "melanoma"}


def test_ph2_folds_cover_train_and_validation_by_diagnosis_and_never_test(ph2_built):
    from kseg import data
    from kseg.data import folds

    data_dir = str(pathlib.Path(ph2_built.data_dir).parents[2])  # ROOT/tfds_ph2/ph2/1.0.0
    plan = folds.make_plan("tfds_ph2/ph2", 5, data_dir=data_dir)
    ids = lambda split: {
        e["image_id"].decode() for e in data.load_examples("tfds_ph2/ph2", split, data_dir=data_dir).as_numpy_iterator()
    }
    assert set(plan.image_ids) == ids("train") | ids("validation") and len(plan.image_ids) == 160
    assert not set(plan.image_ids) & ids("test")
    assert [len(f) for f in plan.folds] == [32] * 5 and plan.stratified_by == "clinical_diagnosis"
    for k in range(5):
        assert plan.trained_on(k) | plan.held_out(k) == set(plan.image_ids)
        assert not plan.trained_on(k) & plan.held_out(k)
    fold_ids = data.load_examples("tfds_ph2/ph2", folds.OVER, data_dir=data_dir, image_ids=plan.held_out(2))
    assert {e["image_id"].decode() for e in fold_ids.as_numpy_iterator()} == plan.held_out(2)


def test_build_mads_from_bodies(bodies_dir, tmp_path):
    builder = tfds.builder("tfds_ph2/mads", data_dir=str(tmp_path))
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(bodies_dir)))
    splits = {name: split.num_examples for name, split in builder.info.splits.items()}
    assert sum(splits.values()) == 290
    assert splits["train"] > splits["validation"] > 0 and splits["test"] > 0
    for example in tfds.as_numpy(builder.as_dataset(split="validation").take(5)):
        assert example["segmentation_mask"].shape == example["image"].shape[:2] + (1,)
        assert set(np.unique(example["segmentation_mask"])) <= {0, 1}
