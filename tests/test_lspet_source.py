"""LSPET reading: the real 4,000 images (pairing, the fixed split, joints against joints.mat), a TFDS build of the
dummy download (keypoints, flags and the JPEG bytes as stored), and every bad input of a broken copy of the
dummy download, each an error naming the file."""

import logging
import pathlib
import random
import shutil

import numpy as np
import pytest
import scipy.io
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image

from segio import images
from tfds_ph2 import lspet_source as ls
from tfds_ph2 import make_lspet_dummy
from tfds_ph2.common import DatasetError

REPO = pathlib.Path(__file__).resolve().parents[1]
DUMMY = REPO / "tfds_ph2" / "dummy_data" / "lspet"

#: The documented split of the real 4,000 (tfds_ph2/README.md).
REAL_COUNTS = {"train": 3118, "validation": 279, "test": 603}
DUMMY_SPLITS = {
    "train": ["im00001", "im00002", "im00004", "im00005", "im00006", "im00007", "im00009"],
    "validation": ["im00010"],
    "test": ["im00003", "im00008"],
}


@pytest.fixture
def dummy(tmp_path) -> pathlib.Path:
    """A writable copy of the dummy download at ``tmp_path/lspet``."""
    target = tmp_path / "lspet"
    shutil.copytree(DUMMY, target)
    return target


def _mat(path: pathlib.Path) -> np.ndarray:
    return scipy.io.loadmat(path)["joints"]


def _save_joints(path: pathlib.Path, joints, name: str = "joints") -> None:
    scipy.io.savemat(path, {name: joints})


# ------------------------------------------------------------------------------------------ real data ---


def test_real_index_and_split(lspet_dir):
    assert ls.find_root(lspet_dir.parent) == lspet_dir
    cases = ls.read_index(lspet_dir)
    assert [c.image_id for c in cases] == [f"im{n:05d}" for n in range(1, 4001)]
    by_split = ls.cases_by_split(cases)
    assert {s: len(members) for s, members in by_split.items()} == REAL_COUNTS
    assert len(by_split["test"]) >= 500
    assert [c.image_id for c in by_split["validation"][:5]] == ["im00010", "im00015", "im00037", "im00049", "im00101"]
    assert [c.image_id for c in by_split["test"][:5]] == ["im00003", "im00008", "im00047", "im00048", "im00052"]


def test_real_split_depends_only_on_the_name(lspet_dir):
    cases = ls.read_index(lspet_dir)
    expected = {c.image_id: s for s, members in ls.cases_by_split(cases).items() for c in members}
    subset = random.Random(0).sample(cases, 500)  # fewer images, in another order: nobody moves
    assert {c.image_id: s for s, members in ls.cases_by_split(subset).items() for c in members} == {
        c.image_id: expected[c.image_id] for c in subset
    }


def test_real_joints_equal_the_mat_values(lspet_dir):
    joints = _mat(lspet_dir / "joints.mat")
    assert joints.shape == (14, 3, 4000)
    cases = ls.read_index(lspet_dir)
    for column in (0, 1, 999, 2416, 3999):
        case = cases[column]
        assert case.image_id == f"im{column + 1:05d}"
        np.testing.assert_array_equal(case.keypoints, joints[:, :2, column].astype(np.float32))
        np.testing.assert_array_equal(case.visibility, joints[:, 2, column] == 1)
    # im00001 as joints.mat gives it: the right ankle unplaced (x 0, y negative, flag 0), the head top visible.
    first = cases[0]
    np.testing.assert_allclose(first.keypoints[0], [0.0, -26.10911452], rtol=1e-6)
    np.testing.assert_allclose(first.keypoints[1], [26.03094352, 86.41022512], rtol=1e-6)
    np.testing.assert_allclose(first.keypoints[13], [116.56859752, 53.42206246], rtol=1e-6)
    assert first.visibility.tolist() == [False] + [True] * 13
    # Joints outside the image are kept: 6,669 have a negative coordinate, 2,417 images have one.
    keypoints = np.stack([c.keypoints for c in cases])
    assert int((keypoints < 0).any(axis=-1).sum()) == 6669
    assert int((keypoints < 0).any(axis=-1).any(axis=-1).sum()) == 2417


def test_real_examples_keep_the_jpeg_bytes(lspet_dir):
    cases = ls.read_index(lspet_dir)
    for case in (cases[0], cases[1234], cases[-1]):
        example = ls.load_example(lspet_dir, case)
        path = lspet_dir / "images" / f"{case.image_id}.jpg"
        assert example["image"] == path.read_bytes()
        assert example["image_id"] == case.image_id
        assert example["keypoints"].dtype == np.float32 and example["keypoints"].shape == (14, 2)
        assert example["visibility"].dtype == np.bool_ and example["visibility"].shape == (14,)


# ---------------------------------------------------------------------------------------- dummy build ---


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """``tfds_ph2/lspet`` built once from the committed dummy download (importing ``tfds_ph2`` registered it)."""
    data_dir = tmp_path_factory.mktemp("tfds")
    builder = tfds.builder("tfds_ph2/lspet", data_dir=str(data_dir))
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(DUMMY)))
    return builder


def test_dummy_build_splits_and_features(built):
    info = built.info
    assert {name: split.num_examples for name, split in info.splits.items()} == {
        s: len(ids) for s, ids in DUMMY_SPLITS.items()
    }
    assert info.supervised_keys == ("image", "keypoints")
    assert info.homepage == "http://sam.johnson.io/research/lspet.html"
    features = info.features
    assert features["image"].shape == (None, None, 3) and features["image"].encoding_format == "jpeg"
    assert features["keypoints"].shape == (14, 2) and features["keypoints"].dtype == np.float32
    assert features["visibility"].shape == (14,) and features["visibility"].dtype == np.bool_
    assert isinstance(features["image_id"], tfds.features.Text)
    names = ", ".join(ls.JOINT_NAMES)
    assert names in features["keypoints"].doc.desc and names in features["visibility"].doc.desc
    assert "lspet" in built.MANUAL_DOWNLOAD_INSTRUCTIONS and "--config lspet" in built.MANUAL_DOWNLOAD_INSTRUCTIONS


def test_dummy_build_stores_the_mat_values_and_the_jpeg_bytes(built):
    joints = _mat(DUMMY / "joints.mat")
    for split, ids in DUMMY_SPLITS.items():
        raw = built.as_dataset(split=split, decoders={"image": tfds.decode.SkipDecoding()})
        decoded = built.as_dataset(split=split)
        seen = []
        for stored, example in zip(tfds.as_numpy(raw), tfds.as_numpy(decoded)):
            image_id = stored["image_id"].decode()
            column = int(image_id[2:]) - 1
            seen.append(image_id)
            path = DUMMY / "images" / f"{image_id}.jpg"
            assert stored["image"] == path.read_bytes()  # the file's bytes, not re-encoded
            pixels = images.read_image(path)
            accurate = tf.io.decode_jpeg(stored["image"], channels=3, dct_method="INTEGER_ACCURATE").numpy()
            np.testing.assert_array_equal(accurate, pixels)
            assert example["image"].shape == pixels.shape  # TFDS's own decoding: same grid, a fast IDCT
            assert np.abs(example["image"].astype(int) - pixels).max() <= 8
            np.testing.assert_array_equal(example["keypoints"], joints[:, :2, column].astype(np.float32))
            np.testing.assert_array_equal(example["visibility"], joints[:, 2, column] == 1)
        assert sorted(seen) == ids


def test_dummy_as_supervised(built):
    image, keypoints = next(iter(built.as_dataset(split="validation", as_supervised=True)))
    assert image.dtype == tf.uint8 and image.shape[-1] == 3
    np.testing.assert_array_equal(keypoints.numpy(), _mat(DUMMY / "joints.mat")[:, :2, 9].astype(np.float32))


def test_examples_without_a_mask_are_not_counted_as_empty_masks(tmp_path, caplog):
    builder = tfds.builder("tfds_ph2/lspet", data_dir=str(tmp_path))
    root, by_split = ls.read_cases(DUMMY)
    keyed = ((c.image_id, ls.load_example(root, c)) for c in by_split["test"])
    with caplog.at_level(logging.INFO, logger="tfds_ph2"):
        assert [key for key, _ in builder._generate_examples(keyed, "test")] == DUMMY_SPLITS["test"]
    assert "mask" not in caplog.text


def test_the_committed_dummy_is_what_the_script_writes(tmp_path):
    joints = make_lspet_dummy.write_lspet(tmp_path / "lspet")
    assert (tmp_path / "lspet" / "joints.mat").read_bytes() == (DUMMY / "joints.mat").read_bytes()
    np.testing.assert_array_equal(_mat(DUMMY / "joints.mat"), joints)
    assert sorted(p.name for p in (tmp_path / "lspet" / "images").iterdir()) == sorted(
        p.name for p in (DUMMY / "images").iterdir()
    )
    outside = (joints[:, 0] < 0) | (joints[:, 1] < 0)
    assert outside.any() and not joints[:, 2][outside].any()  # joints off the picture, flagged 0


# -------------------------------------------------------------------------------------- locating ---


def test_find_root_levels(dummy, tmp_path):
    assert ls.find_root(dummy) == dummy
    assert ls.find_root(tmp_path) == dummy
    deeper = tmp_path / "a" / "b"
    shutil.copytree(dummy, deeper / "lspet")
    shutil.rmtree(dummy)
    assert ls.find_root(tmp_path / "a") == deeper / "lspet"  # two levels below
    with pytest.raises(DatasetError, match=r"No folder with joints\.mat and images/ found"):
        ls.find_root(tmp_path)  # three levels below


def test_find_root_errors(tmp_path):
    (tmp_path / "lspet_dataset.zip").write_bytes(b"PK")
    with pytest.raises(DatasetError, match=r"Found the archive\(s\) \['lspet_dataset.zip'\]: extract them first"):
        ls.find_root(tmp_path)
    (tmp_path / "lspet").mkdir()
    shutil.copy(DUMMY / "joints.mat", tmp_path / "lspet" / "joints.mat")
    with pytest.raises(DatasetError, match=r"lspet/joints\.mat has no images/ folder beside it"):
        ls.find_root(tmp_path)
    with pytest.raises(DatasetError, match=r"does not exist"):
        ls.find_root(tmp_path / "nowhere")


# -------------------------------------------------------------------------------------- bad inputs ---


def test_transposed_joints(dummy):
    _save_joints(dummy / "joints.mat", np.transpose(_mat(dummy / "joints.mat"), (1, 0, 2)))
    with pytest.raises(
        DatasetError, match=r"lspet/joints\.mat: 'joints' has shape \(3, 14, 10\); expected \(14, 3, N\)"
    ):
        ls.read_cases(dummy)


@pytest.mark.parametrize("shape", [(14, 2, 10), (13, 3, 10), (14, 3, 10, 1), (14,)])
def test_joints_of_another_shape(dummy, shape):
    _save_joints(dummy / "joints.mat", np.zeros(shape))
    with pytest.raises(DatasetError, match=r"lspet/joints\.mat: 'joints' has shape .*; expected \(14, 3, N\)"):
        ls.read_index(dummy)


def test_missing_joints_variable(dummy):
    _save_joints(dummy / "joints.mat", _mat(dummy / "joints.mat"), name="points")
    with pytest.raises(DatasetError, match=r"lspet/joints\.mat: no variable 'joints' \(found \['points'\]\)"):
        ls.read_index(dummy)


def test_joints_mat_that_is_not_a_mat_file(dummy):
    (dummy / "joints.mat").write_bytes(b"not a MATLAB file at all" * 10)
    with pytest.raises(DatasetError, match=r"lspet/joints\.mat: cannot read it as a MATLAB \.mat file"):
        ls.read_index(dummy)


def test_a_single_image_matrix_is_one_column(dummy):
    """MATLAB saves a 14x3x1 matrix as 14x3; it is still one image's joints."""
    _save_joints(dummy / "joints.mat", _mat(dummy / "joints.mat")[:, :, 0])
    assert ls.read_joints(dummy / "joints.mat").shape == (14, 3, 1)


def test_image_without_a_column(dummy):
    shutil.copy(dummy / "images" / "im00001.jpg", dummy / "images" / "im00011.jpg")
    shutil.copy(dummy / "images" / "im00001.jpg", dummy / "images" / "im00012.jpg")
    with pytest.raises(
        DatasetError,
        match=r"lspet/images/im00011\.jpg has no column in .*lspet/joints\.mat: it holds joints for 10 image\(s\), "
        r"im00001\.jpg to im00010\.jpg \(2 image\(s\) without joints\)",
    ):
        ls.read_index(dummy)


def test_column_without_an_image(dummy):
    (dummy / "images" / "im00004.jpg").unlink()
    with pytest.raises(
        DatasetError,
        match=r"lspet/images/im00004\.jpg is missing: column 4 of .*lspet/joints\.mat has no image "
        r"\(1 of 10 column\(s\) without an image\)",
    ):
        ls.read_index(dummy)


def test_unexpected_file_in_images(dummy):
    shutil.copy(dummy / "images" / "im00001.jpg", dummy / "images" / "photo.jpg")
    (dummy / "images" / ".DS_Store").write_bytes(b"hidden files are skipped")
    with pytest.raises(DatasetError, match=r"images/photo\.jpg: unexpected file; expected only images named"):
        ls.read_index(dummy)


@pytest.mark.parametrize("value", [np.nan, np.inf, 1e300])
def test_non_finite_coordinate(dummy, value):
    joints = _mat(dummy / "joints.mat")
    joints[5, 1, 6] = value  # y of the left ankle of im00007
    _save_joints(dummy / "joints.mat", joints)
    with pytest.raises(
        DatasetError,
        match=r"lspet/joints\.mat: y of joint left_ankle of im00007\.jpg is .* \(joints\(6, 2, 7\) in MATLAB's "
        r"numbering\); expected a finite pixel coordinate",
    ):
        ls.read_index(dummy)


@pytest.mark.parametrize("value", [2.0, 0.5, -1.0, np.nan])
def test_visibility_flag_not_0_or_1(dummy, value):
    joints = _mat(dummy / "joints.mat")
    joints[12, 2, 2] = value  # neck of im00003
    _save_joints(dummy / "joints.mat", joints)
    with pytest.raises(
        DatasetError,
        match=r"lspet/joints\.mat: visibility flag of joint neck of im00003\.jpg is .* \(joints\(13, 3, 3\) in "
        r"MATLAB's numbering\); expected 1 \(visible\) or 0 \(occluded\)",
    ):
        ls.read_index(dummy)


def test_truncated_image(dummy):
    path = dummy / "images" / "im00003.jpg"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    root, by_split = ls.read_cases(dummy)  # the index does not decode images
    with pytest.raises(DatasetError, match=r"lspet/images/im00003\.jpg: cannot decode image"):
        ls.load_example(root, by_split["test"][0])


def test_empty_image(dummy):
    (dummy / "images" / "im00003.jpg").write_bytes(b"")
    with pytest.raises(DatasetError, match=r"lspet/images/im00003\.jpg: file is empty, expected a JPEG image"):
        ls.load_example(dummy, ls.read_index(dummy)[2])


def test_png_named_jpg(dummy):
    path = dummy / "images" / "im00003.jpg"
    Image.fromarray(images.read_image(path)).save(path, format="PNG")
    with pytest.raises(DatasetError, match=r"lspet/images/im00003\.jpg: a PNG image; expected a JPEG"):
        ls.load_example(dummy, ls.read_index(dummy)[2])


def test_a_split_left_empty(dummy):
    """im00010 is the dummy's only validation image: without it (and its column) validation is empty."""
    (dummy / "images" / "im00010.jpg").unlink()
    _save_joints(dummy / "joints.mat", _mat(dummy / "joints.mat")[:, :, :9])
    with pytest.raises(DatasetError, match=r"lspet: none of its 9 image\(s\) falls into the validation split"):
        ls.read_cases(dummy)


def test_a_bad_image_stops_the_tfds_build_naming_it(dummy, tmp_path):
    (dummy / "images" / "im00008.jpg").write_bytes(b"")
    builder = tfds.builder("tfds_ph2/lspet", data_dir=str(tmp_path / "data"))
    with pytest.raises(DatasetError, match=r"lspet/images/im00008\.jpg: file is empty"):
        builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(dummy)))
