"""``folder:`` datasets: one mask-size rule, every file checked once before its pipeline exists (and the check
cached), ``all`` splits, and processes that end, with the bad file named, when a file breaks."""

import os
import pathlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

from kseg import data
from kseg.core import imageio

REPO = pathlib.Path(__file__).resolve().parents[1]
#: Generous: a command that ends takes seconds here; one that hangs never ends.
PROCESS_TIMEOUT = 120


@pytest.fixture(autouse=True)
def cache_dir(tmp_path_factory, monkeypatch) -> pathlib.Path:
    """The file-check cache goes to the user's cache dir: a fresh one per test, out of ~/.cache."""
    path = tmp_path_factory.mktemp("kseg-cache")
    monkeypatch.setenv("KSEG_CACHE_DIR", str(path))
    return path


def _mask(height, width):
    mask = np.zeros((height, width), np.uint8)
    mask[height // 4 : height // 2, width // 4 : width // 2] = 255
    return mask


def make_folder(root: pathlib.Path, count=8, size=(24, 32), suffix=".jpg") -> pathlib.Path:
    """``root/images/imNN.jpg`` (random texture) and ``root/masks/imNN.png``, ``size`` as (height, width)."""
    rng = np.random.default_rng(0)
    for sub in ("images", "masks"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for i in range(count):
        Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(root / "images" / f"im{i:02d}{suffix}")
        Image.fromarray(_mask(*size)).save(root / "masks" / f"im{i:02d}.png")
    return root


def truncate(path: pathlib.Path) -> None:
    data_bytes = path.read_bytes()
    path.write_bytes(data_bytes[: len(data_bytes) // 2])


def _env(cache: pathlib.Path) -> dict:
    return dict(
        os.environ,
        KSEG_CACHE_DIR=str(cache),
        TF_CPP_MIN_LOG_LEVEL="2",
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    )


# ------------------------------------------------------------------------------------ mask sizes ---


def test_mask_of_another_aspect_ratio_is_an_error_naming_both_files(tmp_path):
    root = make_folder(tmp_path / "ds", count=3)
    Image.fromarray(_mask(20, 20)).save(root / "masks" / "im01.png")  # its image is 32x24: formerly stretched
    with pytest.raises(
        imageio.MaskSizeError,
        match=(
            rf"^{root}/masks/im01\.png is 20x20 but its image {root}/images/im01\.jpg is 32x24: expected the same "
            rf"size, or the same aspect ratio within one pixel"
        ),
    ):
        data.load_examples(f"folder:{root}", "all")


def test_mask_at_another_scale_is_resized_nearest(tmp_path):
    root = make_folder(tmp_path / "ds", count=2)
    small = _mask(12, 16) // 255
    small[0, 0] = 1
    Image.fromarray(small * 255).save(root / "masks" / "im00.png")
    examples = {ex["image_id"].decode(): ex for ex in data.load_examples(f"folder:{root}", "all").as_numpy_iterator()}
    mask = examples["im00"]["mask"][..., 0]
    assert mask.shape == (24, 32)
    np.testing.assert_array_equal(mask, np.kron(small, np.ones((2, 2), np.uint8)))


def test_fit_mask_rule_within_one_pixel():
    assert imageio.mask_fits_image((24, 32), (24, 32))
    assert imageio.mask_fits_image((12, 16), (24, 32)) and imageio.mask_fits_image((48, 64), (24, 32))
    assert imageio.mask_fits_image((361, 692), (627, 1200))  # a real MADS pair: both sides rounded
    assert not imageio.mask_fits_image((20, 20), (24, 32))
    assert imageio.mask_fits_image((100, 150), (200, 296))  # 148 wide at half scale: within one pixel
    assert not imageio.mask_fits_image((100, 150), (200, 306))  # 153 wide at half scale: 3 pixels off


# ------------------------------------------------------------------------------- checked once ---


def test_truncated_jpeg_is_named_when_the_dataset_is_loaded(tmp_path):
    root = make_folder(tmp_path / "ds")
    truncate(root / "images" / "im03.jpg")
    truncate(root / "masks" / "im05.png")
    with pytest.raises(
        imageio.ImageReadError,
        match=(
            rf"^{root}/images/im03\.jpg: cannot decode image .*truncated.* \(1 more bad file\(s\) in folder dataset"
        ),
    ):
        data.load(f"folder:{root}", "all", image_size=(16, 16))


def test_check_is_cached_by_path_size_and_time_outside_the_dataset(tmp_path, cache_dir, monkeypatch):
    root = make_folder(tmp_path / "ds", count=6)
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    decoded = []
    read_image = imageio.read_image
    monkeypatch.setattr(
        data,
        "_decode_pair",
        lambda image, mask, multi_class: (
            decoded.append(image) or [list(read_image(image).shape[:2]), list(imageio.read_binary_mask(mask).shape), 1]
        ),
    )
    pairs = data.folder_pairs(str(root), "all")
    data.check_folder_files(str(root), pairs)
    assert len(decoded) == 6
    data.check_folder_files(str(root), pairs)
    assert len(decoded) == 6  # second run: only stats
    Image.fromarray(np.zeros((24, 32, 3), np.uint8)).save(root / "images" / "im02.jpg")
    os.utime(root / "images" / "im02.jpg", ns=(1, 1))
    data.check_folder_files(str(root), pairs)
    assert decoded[6:] == [str(root / "images" / "im02.jpg")]
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before  # nothing written next to the data
    assert len(list(cache_dir.rglob("*.json"))) == 1
    truncate(root / "images" / "im04.jpg")  # a cached good verdict does not hide a file broken since
    with pytest.raises(imageio.ImageReadError, match=r"im04\.jpg: cannot decode image"):
        data.check_folder_files(str(root), pairs)


def test_unwritable_cache_only_costs_a_recheck(tmp_path, monkeypatch):
    root = make_folder(tmp_path / "ds", count=2)
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    monkeypatch.setenv("KSEG_CACHE_DIR", str(blocker))
    assert len(list(data.load_examples(f"folder:{root}", "all"))) == 2


# --------------------------------------------------------------------------------------- splits ---


def test_split_all_takes_every_file(tmp_path):
    root = make_folder(tmp_path / "flat", count=12)
    spec = data.dataset_spec(f"folder:{root}")
    assert spec.size_of("all") == 12 == sum(spec.size_of(s) for s in ("train", "validation", "test"))
    ids = [ex["image_id"].decode() for ex in data.load_examples(f"folder:{root}", "all").as_numpy_iterator()]
    assert ids == [f"im{i:02d}" for i in range(12)]
    with pytest.raises(data.DataError, match=r"no split 'val'; it has train, validation, test and all"):
        spec.size_of("val")


def test_split_all_of_split_folders(tmp_path):
    make_folder(tmp_path / "ds" / "train", count=3)
    make_folder(tmp_path / "ds" / "test", count=2)
    (tmp_path / "ds" / "test" / "images" / "im00.jpg").rename(tmp_path / "ds" / "test" / "images" / "other.jpg")
    (tmp_path / "ds" / "test" / "masks" / "im00.png").rename(tmp_path / "ds" / "test" / "masks" / "other.png")
    name = f"folder:{tmp_path / 'ds'}"
    spec = data.dataset_spec(name)
    assert spec.split_sizes == {"train": 3, "test": 2} and spec.size_of("all") == 5
    assert spec.size_of("validation") == 0  # a standard split the dataset lacks
    ids = sorted(ex["image_id"].decode() for ex in data.load_examples(name, "all").as_numpy_iterator())
    assert ids == ["im00", "im02", "other", "test_im01", "train_im01"]  # a shared stem gets its folder
    images, _ = next(iter(data.load(name, "all", image_size=(8, 8), batch_size=5)))
    assert images.shape == (5, 8, 8, 3)


def test_folder_datasets_have_no_features_to_group_by(tmp_path):
    root = make_folder(tmp_path / "ds", count=2)
    assert data.dataset_spec(f"folder:{root}").features == ()
    with pytest.raises(data.DataError, match=r"has no features to group by \(asked for clinical_diagnosis\)"):
        data.load_examples(f"folder:{root}", "all", extra_features=("clinical_diagnosis",))


# ------------------------------------------------------------------- errors inside the pipeline ---


def test_file_broken_after_the_check_comes_back_as_the_read_error(tmp_path):
    root = make_folder(tmp_path / "ds", count=6)
    dataset = data.load(f"folder:{root}", "all", image_size=(16, 16), batch_size=2)
    truncate(root / "images" / "im04.jpg")
    with (
        pytest.raises(imageio.ImageReadError, match=rf"^{root}/images/im04\.jpg: cannot decode image"),
        data.reraise_read_errors(),
    ):
        for _ in dataset:
            pass


def test_other_errors_pass_through_reraise():
    with pytest.raises(KeyError), data.reraise_read_errors():
        raise KeyError("x")


#: Loads a folder dataset, breaks a file after the check, and leaves the pipeline mid-flight at exit:
#: "raise" lets tf.data's error escape uncaught (what kseg.train did), "reraise" goes through
#: reraise_read_errors, "keep" exits normally with an iterator still running. Reads are slowed down so that
#: some are always running when the process ends: before the fix this hung (or aborted) every time.
PIPELINE_SCRIPT = textwrap.dedent("""
    import pathlib, sys, time
    from kseg import data
    from kseg.core import imageio
    root, mode = pathlib.Path(sys.argv[1]), sys.argv[2]
    dataset = data.load(f"folder:{root}", "all", image_size=(16, 16), batch_size=2, shuffle=True, seed=0)
    read_image = imageio.read_image
    def slow_read(path):
        time.sleep(0.05)
        return read_image(path)
    imageio.read_image = slow_read
    if mode == "keep":
        iterator = iter(dataset)
        next(iterator)
        print("left an iterator running", flush=True)
        sys.exit(0)
    victim = root / "images" / "im05.jpg"
    victim.write_bytes(victim.read_bytes()[:300])
    if mode == "reraise":
        with data.reraise_read_errors():
            for batch in dataset:
                pass
    else:
        for batch in dataset:
            pass
""")


@pytest.mark.parametrize("mode", ["raise", "reraise", "keep"])
def test_process_ends_whatever_the_pipeline_is_doing(tmp_path, cache_dir, mode):
    root = make_folder(tmp_path / "ds", count=40)
    result = subprocess.run(
        [sys.executable, "-c", PIPELINE_SCRIPT, str(root), mode],
        capture_output=True,
        text=True,
        timeout=PROCESS_TIMEOUT,
        env=_env(cache_dir),
        cwd=tmp_path,
    )
    assert "terminate called" not in result.stderr
    if mode == "keep":
        assert result.returncode == 0, result.stderr[-2000:]
        assert "left an iterator running" in result.stdout
        return
    assert result.returncode == 1, result.stderr[-2000:]
    assert f"{root}/images/im05.jpg: cannot decode image" in result.stderr
    if mode == "reraise":
        last = result.stderr.strip().splitlines()[-1]
        assert last.startswith(f"segio.images.ImageReadError: {root}/images/im05.jpg: cannot decode image"), last


def test_train_on_a_folder_with_a_truncated_jpeg_exits_with_one_line(tmp_path, cache_dir):
    root = make_folder(tmp_path / "ds", count=20, size=(64, 64))
    truncate(root / "images" / "im03.jpg")
    command = [
        sys.executable,
        "-m",
        "kseg.train",
        "--dataset",
        f"folder:{root}",
        "--preset",
        "synthetic-unet",
        "--image-size",
        "64",
        "--epochs",
        "1",
        "--output-dir",
        str(tmp_path / "run"),
    ]
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=PROCESS_TIMEOUT, env=_env(cache_dir), cwd=tmp_path
    )
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if "im03" in line or line.startswith("kseg.train:")]
    assert len(errors) == 1, result.stderr[-3000:]
    assert errors[0].startswith(
        f"kseg.train: error: {root}/images/im03.jpg: cannot decode image (image file is truncated"
    ), errors[0]
