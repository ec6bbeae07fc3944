"""Shared fixtures: where the real data lives, small built TFDS datasets reused across tests, bench scripts."""

import importlib.util
import os
import pathlib
import shutil

import pytest

from kseg.core.defaults import DATA_DIR_ENV

REPO = pathlib.Path(__file__).resolve().parents[1]
DUMMY_DATA = REPO / "tfds_ph2" / "dummy_data"


@pytest.fixture(scope="session", autouse=True)
def _private_cache_dir(tmp_path_factory):
    """Folder-dataset checks cache their verdicts; tests keep theirs out of the user's ~/.cache."""
    os.environ["KSEG_CACHE_DIR"] = str(tmp_path_factory.mktemp("kseg-cache"))


def _real_data_dir() -> pathlib.Path:
    return pathlib.Path(os.environ.get(DATA_DIR_ENV, REPO.parent / "shared" / "data"))


def _require(path: pathlib.Path) -> pathlib.Path:
    if not path.exists():
        message = f"real data not found at {path} (set {DATA_DIR_ENV} to the folder holding {path.name}/)"
        if os.environ.get("CI"):
            pytest.fail(message)  # CI has the data: a missing folder is a broken set-up, not a reason to skip
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def ph2_dir() -> pathlib.Path:
    """The real ``PH2Dataset`` folder (200 cases, read-only)."""
    return _require(_real_data_dir() / "PH2Dataset")


@pytest.fixture(scope="session")
def bodies_dir() -> pathlib.Path:
    """The real MADS-layout ``bodies`` folder (290 pairs, read-only)."""
    return _require(_real_data_dir() / "bodies")


@pytest.fixture(scope="session")
def pennfudan_dir() -> pathlib.Path:
    """The real ``PennFudanPed`` folder (170 images, read-only)."""
    return _require(_real_data_dir() / "PennFudanPed")


@pytest.fixture(scope="session")
def lspet_dir() -> pathlib.Path:
    """The real ``lspet`` folder (4,000 images, read-only)."""
    return _require(_real_data_dir() / "lspet")


@pytest.fixture
def dummy_ph2(tmp_path) -> pathlib.Path:
    """A writable copy of the dummy PH2 download, for tests that break it."""
    target = tmp_path / "PH2Dataset"
    shutil.copytree(DUMMY_DATA / "PH2Dataset", target)
    return target


@pytest.fixture
def dummy_mads(tmp_path) -> pathlib.Path:
    """A writable copy of the dummy MADS download (the doubly nested Kaggle layout)."""
    target = tmp_path / "mads"
    shutil.copytree(
        DUMMY_DATA / "segmentation_full_body_mads_dataset_1192_img",
        target / "segmentation_full_body_mads_dataset_1192_img",
    )
    return target


@pytest.fixture(scope="session")
def synthetic_data_dir(tmp_path_factory) -> str:
    """A TFDS data dir with ``tfds_ph2/synthetic`` built once per test session."""
    import tensorflow_datasets as tfds

    import tfds_ph2.tfds_ph2_dataset_builder  # noqa: F401

    data_dir = str(tmp_path_factory.mktemp("tfds"))
    tfds.builder("tfds_ph2/synthetic", data_dir=data_dir).download_and_prepare()
    return data_dir


@pytest.fixture(scope="session")
def trained_synthetic_run(tmp_path_factory, synthetic_data_dir) -> pathlib.Path:
    """A run directory of ``synthetic-unet`` at 64x64 trained for 8 epochs (about 0.89 test Dice), made once
    and shared by the training, evaluation and prediction tests. Read-only for tests: copy before changing."""
    from kseg import train

    run_dir = tmp_path_factory.mktemp("synthetic-run") / "run"
    code = train.main(
        [
            "--preset",
            "synthetic-unet",
            "--image-size",
            "64",
            "--epochs",
            "8",
            "--seed",
            "0",
            "--data-dir",
            synthetic_data_dir,
            "--output-dir",
            str(run_dir),
        ]
    )
    assert code == 0, "training the shared synthetic model failed"
    return run_dir


@pytest.fixture(scope="session")
def people_dataset(tmp_path_factory) -> pathlib.Path:
    """A ``folder:`` instance dataset of drawn people (``tests/people_scenes.py``). Read-only for tests."""
    import people_scenes

    return people_scenes.write_dataset(tmp_path_factory.mktemp("people") / "scenes")


@pytest.fixture(scope="session")
def trained_instance_run(tmp_path_factory, people_dataset) -> pathlib.Path:
    """A run directory of ``pennfudan-instances`` on a ``unet-small`` at 64x96, trained for 12 epochs on the
    drawn people (test mask AP 1.0), made once for the instance tests. Read-only for tests."""
    from kseg import train

    run_dir = tmp_path_factory.mktemp("instance-run") / "run"
    code = train.main(
        [
            "--preset",
            "pennfudan-instances",
            "--dataset",
            f"folder:{people_dataset}",
            "--model",
            "unet-small",
            "--image-size",
            "64x96",
            "--epochs",
            "12",
            "--learning-rate",
            "3e-3",
            "--freeze-encoder-epochs",
            "0",
            "--encoder-lr-multiplier",
            "1",
            "--augmentation",
            "none",
            "--seed",
            "0",
            "--output-dir",
            str(run_dir),
        ]
    )
    assert code == 0, "training the shared instance model failed"
    return run_dir


@pytest.fixture
def load_bench_script(monkeypatch):
    """``load_bench_script("loop")`` -> ``bench/loop.py`` as a module (bench scripts import their sibling
    ``common``, so ``bench/`` is on the path while the test runs)."""
    bench_dir = REPO / "bench"
    monkeypatch.syspath_prepend(str(bench_dir))

    def load(name: str):
        spec = importlib.util.spec_from_file_location(f"bench_{name}_under_test", bench_dir / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load


@pytest.fixture(scope="session")
def lspet_data_dir(tmp_path_factory) -> str:
    """A TFDS data dir with ``tfds_ph2/lspet`` built once from the committed dummy download (10 drawn
    people: 7 train, 1 validation, 2 test)."""
    import tensorflow_datasets as tfds

    import tfds_ph2.tfds_ph2_dataset_builder  # noqa: F401

    data_dir = str(tmp_path_factory.mktemp("tfds-lspet"))
    manual_dir = str(DUMMY_DATA / "lspet")
    config = tfds.download.DownloadConfig(manual_dir=manual_dir)
    tfds.builder("tfds_ph2/lspet", data_dir=data_dir).download_and_prepare(download_config=config)
    return data_dir


@pytest.fixture(scope="session")
def keypoint_run(tmp_path_factory, lspet_data_dir) -> pathlib.Path:
    """``lspet-keypoints`` on a ``unet-small`` at 64x64 trained for 2 epochs on the 7 dummy images. Read-only
    for tests: copy before changing."""
    from kseg import train

    run_dir = tmp_path_factory.mktemp("keypoint-run") / "run"
    args = ["--preset", "lspet-keypoints", "--model", "unet-small", "--image-size", "64", "--epochs", "2"]
    args += ["--batch-size", "4", "--freeze-encoder-epochs", "0", "--encoder-lr-multiplier", "1"]
    args += ["--no-mixed-precision", "--data-dir", lspet_data_dir, "--output-dir", str(run_dir)]
    assert train.main(args) == 0
    return run_dir
