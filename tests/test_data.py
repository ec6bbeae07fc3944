"""Input pipelines on real and synthetic data: shapes, exact masks, folders, determinism, errors."""

import numpy as np
import pytest
import tensorflow as tf
from conftest import DUMMY_DATA
from PIL import Image

from kseg import data
from kseg.core import imageio


@pytest.fixture(autouse=True)
def _file_check_cache(tmp_path_factory, monkeypatch):
    """Folder datasets cache their file checks in the user's cache dir: keep the tests' out of ~/.cache."""
    monkeypatch.setenv("KSEG_CACHE_DIR", str(tmp_path_factory.mktemp("kseg-cache")))


def test_synthetic_batches(synthetic_data_dir):
    dataset = data.load(
        "tfds_ph2/synthetic",
        "train",
        image_size=(64, 96),
        batch_size=5,
        augmentation="medium",
        shuffle=True,
        seed=0,
        data_dir=synthetic_data_dir,
    )
    images, masks = next(iter(dataset))
    assert images.shape == (5, 64, 96, 3) and images.dtype == tf.float32
    assert masks.shape == (5, 64, 96, 1) and masks.dtype == tf.float32
    assert set(np.unique(masks.numpy())) == {0.0, 1.0}
    assert float(tf.reduce_min(images)) >= 0.0 and float(tf.reduce_max(images)) <= 1.0
    spec = data.dataset_spec("tfds_ph2/synthetic", data_dir=synthetic_data_dir)
    assert spec.num_classes == 1 and spec.split_sizes == {"train": 200, "validation": 50, "test": 50}


def test_seeded_pipeline_repeats_and_epochs_differ(synthetic_data_dir):
    def first_epochs(seed):
        dataset = data.load(
            "tfds_ph2/synthetic",
            "validation",
            image_size=(32, 32),
            batch_size=10,
            augmentation="strong",
            shuffle=True,
            seed=seed,
            data_dir=synthetic_data_dir,
        )
        return [np.concatenate([m.numpy() for _, m in dataset]) for _ in range(2)]

    run_a, run_b = first_epochs(3), first_epochs(3)
    np.testing.assert_array_equal(run_a[0], run_b[0])
    np.testing.assert_array_equal(run_a[1], run_b[1])
    assert not np.array_equal(run_a[0], run_a[1])  # a new shuffle and new augmentation each epoch


def test_unaugmented_masks_match_nearest_resize(synthetic_data_dir):
    example = next(iter(data.load_examples("tfds_ph2/synthetic", "test", data_dir=synthetic_data_dir)))
    _, mask = next(
        iter(data.load("tfds_ph2/synthetic", "test", image_size=(48, 64), batch_size=1, data_dir=synthetic_data_dir))
    )
    expected = tf.image.resize(example["mask"], (48, 64), method="nearest").numpy().astype(np.float32)
    np.testing.assert_array_equal(mask[0].numpy(), expected)


def test_folder_dataset_of_real_bodies(bodies_dir):
    spec = data.dataset_spec(f"folder:{bodies_dir}")
    assert sum(spec.split_sizes.values()) == 290 and spec.split_sizes["train"] > 200
    images, masks = next(iter(data.load(f"folder:{bodies_dir}", "validation", image_size=(64, 64), batch_size=4)))
    assert images.shape == (4, 64, 64, 3) and set(np.unique(masks.numpy())) == {0.0, 1.0}
    # Each real person covers a fair share of its frame.
    assert 0.05 < float(tf.reduce_mean(masks)) < 0.8


def test_folder_with_split_subfolders_and_multiclass(tmp_path):
    for split in ("train", "test"):
        for sub in ("images", "masks"):
            (tmp_path / split / sub).mkdir(parents=True)
        for i in range(3):
            label = np.zeros((20, 30), np.uint8)
            label[2:8, 3:9], label[10:15, 12:20] = 1, 2
            Image.fromarray(np.full((20, 30, 3), 80 * i, np.uint8)).save(tmp_path / split / "images" / f"a{i}.jpg")
            Image.fromarray(label).save(tmp_path / split / "masks" / f"a{i}.png")
    dataset = data.load(f"folder:{tmp_path}", "test", image_size=(20, 30), batch_size=3, num_classes=3)
    _, masks = next(iter(dataset))
    assert masks.dtype == tf.int32 and set(np.unique(masks.numpy())) == {0, 1, 2}
    assert data.dataset_spec(f"folder:{tmp_path}", num_classes=3).split_sizes["train"] == 3


def test_folder_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="images/ is missing"):
        data.load(f"folder:{tmp_path}", "train")
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "images" / "a.png")
    with pytest.raises(FileNotFoundError, match=r"images/a.png has no counterpart"):
        data.load(f"folder:{tmp_path}", "train")


def test_unreadable_folder_image_names_the_file_before_the_pipeline_exists(tmp_path):
    for sub in ("images", "masks"):
        (tmp_path / sub).mkdir()
    Image.new("L", (4, 4)).save(tmp_path / "masks" / "bad.png")
    (tmp_path / "images" / "bad.png").write_bytes(b"not a png")
    with pytest.raises(imageio.ImageReadError, match=r"images/bad.png: not a recognised image format"):
        data.load(f"folder:{tmp_path}", "all", image_size=(4, 4), batch_size=1)


def test_tfds_builds_on_first_use_from_manual_dir(tmp_path):
    spec = data.dataset_spec("tfds_ph2/ph2", data_dir=str(tmp_path), manual_dir=str(DUMMY_DATA))
    assert spec.split_sizes == {"train": 9, "validation": 3, "test": 3}
    assert spec.class_names == ("background", "lesion")


def test_unbuilt_manual_dataset_explains_what_to_do(tmp_path):
    with pytest.raises(data.DatasetNotReadyError, match=r"(?s)not built.*--manual-dir.*PH2Dataset.rar.*synthetic"):
        data.load("tfds_ph2/ph2", "train", data_dir=str(tmp_path))


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="image_size"):
        data.load("tfds_ph2/synthetic", "train", image_size=(0, 3))
    with pytest.raises(ValueError, match="unknown dataset 'nope/nothing'"):
        data.load("nope/nothing", "train", data_dir=str(tmp_path))


@pytest.fixture(scope="module")
def dummy_ph2_data_dir(tmp_path_factory) -> str:
    """A TFDS data dir with ``tfds_ph2/ph2`` built from the dummy download (15 cases)."""
    data_dir = str(tmp_path_factory.mktemp("tfds-ph2"))
    data.dataset_spec("tfds_ph2/ph2", data_dir=data_dir, manual_dir=str(DUMMY_DATA))
    return data_dir


@pytest.mark.parametrize("problem", ["does not exist", "is empty", "is not a folder"])
def test_unusable_manual_dir_is_named_before_tfds_sees_it(tmp_path, problem):
    manual_dir = {
        "does not exist": tmp_path / "nonexistent",
        "is empty": tmp_path,
        "is not a folder": tmp_path / "PH2Dataset.rar",
    }[problem]
    if problem == "is not a folder":
        manual_dir.write_bytes(b"Rar!")
    with pytest.raises(
        data.DatasetNotReadyError,
        match=(
            rf"(?s)^tfds_ph2/ph2 is not built in .*, and the manual dir {manual_dir} \(--manual-dir\) {problem}: "
            rf"it should hold the PH2 download: the folder PH2Dataset/ holding PH2_dataset.txt .*PH2Dataset.rar"
        ),
    ):
        data.load("tfds_ph2/ph2", "train", data_dir=str(tmp_path / "tfds"), manual_dir=str(manual_dir))


def test_bad_download_is_a_dataset_not_ready_error(tmp_path):
    (tmp_path / "download" / "notes").mkdir(parents=True)
    with pytest.raises(
        data.DatasetNotReadyError,
        match=r"cannot build tfds_ph2/mads from .*download: No folder with "
        r"both images/ and masks/",
    ):
        data.dataset_spec("tfds_ph2/mads", data_dir=str(tmp_path / "tfds"), manual_dir=str(tmp_path / "download"))


def test_unknown_names_list_only_the_closest(tmp_path):
    with pytest.raises(ValueError) as error:
        data.dataset_spec("mnistt", data_dir=str(tmp_path))
    message = str(error.value)
    assert message.startswith("unknown dataset 'mnistt'; closest names: mnist")
    assert (
        "tfds_ph2/ph2, tfds_ph2/mads, tfds_ph2/synthetic, tfds_ph2/pennfudan, tfds_ph2/lspet, or folder:PATH" in message
    )
    assert len(message.splitlines()) == 1 and len(message) < 400 and "abstract_reasoning" not in message
    with pytest.raises(
        ValueError,
        match=r"dataset 'tfds_ph2' has no config 'phh2'; did you mean tfds_ph2/ph2\? "
        r"Its configs: ph2, mads, pennfudan, lspet, synthetic",
    ):
        data.dataset_spec("tfds_ph2/phh2", data_dir=str(tmp_path))
    with pytest.raises(ValueError, match=r"unknown dataset 'tfds_ph/ph2'; closest names: tfds_ph2/ph2"):
        data.dataset_spec("tfds_ph/ph2", data_dir=str(tmp_path))


def test_split_all_of_a_tfds_dataset(dummy_ph2_data_dir):
    spec = data.dataset_spec("tfds_ph2/ph2", data_dir=dummy_ph2_data_dir)
    assert spec.size_of("all") == 15 and spec.size_of("validation") == 3
    ids = [
        ex["image_id"]
        for ex in data.load_examples("tfds_ph2/ph2", "all", data_dir=dummy_ph2_data_dir).as_numpy_iterator()
    ]
    assert sorted(ids) == [f"IMD{i}".encode() for i in range(100, 115)]
    images, _ = next(
        iter(data.load("tfds_ph2/ph2", "all", image_size=(16, 16), batch_size=15, data_dir=dummy_ph2_data_dir))
    )
    assert images.shape[0] == 15
    with pytest.raises(ValueError, match=r"tfds_ph2/ph2 has no split 'val'; it has train, validation, test and all"):
        data.load_examples("tfds_ph2/ph2", "val", data_dir=dummy_ph2_data_dir)


def test_extra_features_by_name(dummy_ph2_data_dir, synthetic_data_dir):
    spec = data.dataset_spec("tfds_ph2/ph2", data_dir=dummy_ph2_data_dir)
    assert spec.features == (
        "asymmetry",
        "blue_whitish_veil",
        "clinical_diagnosis",
        "dots_globules",
        "histological_diagnosis",
        "pigment_network",
        "regression_areas",
        "streaks",
    )
    assert spec.default_group_by == "clinical_diagnosis"
    plain = next(iter(data.load_examples("tfds_ph2/ph2", "test", data_dir=dummy_ph2_data_dir)))
    assert set(plain) == {"image", "mask", "image_id"}  # nothing extra unless asked
    examples = list(
        data.load_examples(
            "tfds_ph2/ph2",
            "all",
            data_dir=dummy_ph2_data_dir,
            extra_features=("clinical_diagnosis", "histological_diagnosis", "streaks"),
        ).as_numpy_iterator()
    )
    assert {ex["clinical_diagnosis"] for ex in examples} <= {b"common_nevus", b"atypical_nevus", b"melanoma"}
    assert len({ex["clinical_diagnosis"] for ex in examples}) > 1
    assert all(isinstance(ex["histological_diagnosis"], bytes) for ex in examples)
    assert {ex["streaks"] for ex in examples} <= {b"absent", b"atypical", b"present", b"typical"}
    with pytest.raises(
        ValueError,
        match=r"tfds_ph2/ph2 has no feature 'diagnosis' to group by; its scalar features "
        r"are: asymmetry, .*clinical_diagnosis",
    ):
        data.load_examples("tfds_ph2/ph2", "all", data_dir=dummy_ph2_data_dir, extra_features=("diagnosis",))
    synthetic = data.dataset_spec("tfds_ph2/synthetic", data_dir=synthetic_data_dir)
    assert synthetic.features == () and synthetic.default_group_by is None
    with pytest.raises(ValueError, match=r"has no feature 'clinical_diagnosis' to group by; .* are: none"):
        data.load_examples(
            "tfds_ph2/synthetic", "test", data_dir=synthetic_data_dir, extra_features=("clinical_diagnosis",)
        )


def test_copy_paste_on_an_instance_folder_and_refused_for_masks(people_dataset, synthetic_data_dir):
    """On instance label images every pasted person gets an id of its own (more people per image than the
    folder holds); on a semantic dataset the augmentation is refused with the dataset's name."""
    import dataclasses

    from kseg.data.augment import AUGMENTATIONS

    always = dataclasses.replace(AUGMENTATIONS["people-paste"], copy_paste=1.0)
    plain = data.load(f"folder:{people_dataset}", "train", image_size=(64, 96), batch_size=4)
    pasted = data.load(
        f"folder:{people_dataset}", "train", image_size=(64, 96), batch_size=4, augmentation=always, seed=1
    )
    people = lambda dataset: sum(len(np.unique(m)) - 1 for _, labels in dataset for m in labels.numpy())
    assert people(pasted) > people(plain)
    with pytest.raises(data.DataError, match=r"tfds_ph2/synthetic: copy-paste .* semantic masks"):
        data.load("tfds_ph2/synthetic", "train", augmentation=always, data_dir=synthetic_data_dir)
