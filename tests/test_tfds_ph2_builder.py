"""TFDS's own builder test harness on the committed dummy data, one test case per config; and the errors a
user of ``tfds build`` sees."""

import os
import pathlib
import subprocess
import sys

import pytest
import tensorflow_datasets as tfds

from tfds_ph2 import tfds_ph2_dataset_builder
from tfds_ph2.common import DatasetError


class Ph2BuilderTest(tfds.testing.DatasetBuilderTestCase):
    DATASET_CLASS = tfds_ph2_dataset_builder.Builder
    BUILDER_CONFIG_NAMES_TO_TEST = ["ph2"]
    SPLITS = {"train": 9, "validation": 3, "test": 3}
    SKIP_CHECKSUMS = True


class MadsBuilderTest(tfds.testing.DatasetBuilderTestCase):
    DATASET_CLASS = tfds_ph2_dataset_builder.Builder
    BUILDER_CONFIG_NAMES_TO_TEST = ["mads"]
    SPLITS = {"train": 3, "validation": 4, "test": 2}
    SKIP_CHECKSUMS = True


class SyntheticBuilderTest(tfds.testing.DatasetBuilderTestCase):
    DATASET_CLASS = tfds_ph2_dataset_builder.Builder
    BUILDER_CONFIG_NAMES_TO_TEST = ["synthetic"]
    SPLITS = {"train": 200, "validation": 50, "test": 50}
    SKIP_CHECKSUMS = True


# ------------------------------------------------------------ errors a user sees from a build ---

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_empty_manual_dir_is_the_builders_own_error(tmp_path):
    """TFDS's own check is an AssertionError that prints every config's instructions."""
    empty = tmp_path / "empty"
    empty.mkdir()
    builder = tfds.builder("tfds_ph2/ph2", data_dir=str(tmp_path / "data"))
    with pytest.raises(DatasetError, match=rf"^The manual download folder {empty} is empty\.\n\nPH2 must be"):
        builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(empty)))


def test_tfds_build_from_another_folder_ends_with_one_error_line(dummy_ph2, tmp_path):
    """``tfds build tfds_ph2 --imports tfds_ph2`` from outside the repository: the traceback, then one line."""
    mask = dummy_ph2 / "PH2 Dataset images" / "IMD100" / "IMD100_lesion" / "IMD100_lesion.bmp"
    mask.unlink()
    command = [
        str(pathlib.Path(sys.executable).with_name("tfds")),
        "build",
        "tfds_ph2",
        "--imports",
        "tfds_ph2",
        "--config",
        "ph2",
        "--manual_dir",
        str(dummy_ph2),
        "--data_dir",
        str(tmp_path / "data"),
    ]
    env = dict(
        os.environ,
        TF_CPP_MIN_LOG_LEVEL="2",
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    )
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    assert result.returncode == 1, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last == f"tfds_ph2: error: {mask}: lesion mask of IMD100 is missing", result.stderr[-3000:]


def test_data_dir_naming_a_file_is_one_clear_error(tmp_path):
    from kseg import data

    not_a_folder = tmp_path / "tensorflow_datasets"
    not_a_folder.write_text("a file where a TFDS data dir should be")
    for data_dir in (not_a_folder, not_a_folder / "inside"):
        with pytest.raises(data.DataError, match=rf"^the data dir {data_dir} \(--data-dir\) (is a file|lies inside)"):
            data.dataset_spec("tfds_ph2/synthetic", data_dir=str(data_dir))


class PennFudanBuilderTest(tfds.testing.DatasetBuilderTestCase):
    """The Penn-Fudan config on the dummy copy (``tfds_ph2/make_pennfudan_dummy.py``): 6 images, split 3/1/2."""

    DATASET_CLASS = tfds_ph2_dataset_builder.Builder
    BUILDER_CONFIG_NAMES_TO_TEST = ["pennfudan"]
    SPLITS = {"train": 3, "validation": 1, "test": 2}
    SKIP_CHECKSUMS = True
