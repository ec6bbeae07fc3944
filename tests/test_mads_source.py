"""MADS reading: pairing, the doubly nested archive, smaller masks, recording-level splits, bad input."""

import collections

import numpy as np
import pytest
from PIL import Image

from tfds_ph2 import mads_source
from tfds_ph2.common import DatasetError

NESTED = "segmentation_full_body_mads_dataset_1192_img"


def _root(dummy_mads):
    return dummy_mads / NESTED / NESTED


def test_finds_doubly_nested_folder(dummy_mads):
    assert mads_source.find_root(dummy_mads) == _root(dummy_mads)


def test_real_bodies_pairs_and_masks(bodies_dir):
    pairs = mads_source.pair_files(mads_source.find_root(bodies_dir))
    assert len(pairs) == 290
    resized = 0
    for stem in ("person_0001", "person_0002", "person_0150", sorted(pairs)[-1]):
        image_path, mask_path = pairs[stem]
        example = mads_source.load_example(stem, image_path, mask_path)
        assert example["segmentation_mask"].shape == example["image"].shape[:2] + (1,)
        assert set(np.unique(example["segmentation_mask"])) == {0, 1}
        resized += Image.open(mask_path).size != Image.open(image_path).size
    assert resized >= 1  # the real set stores most masks smaller than their image


def test_real_bodies_split_is_about_80_10_10(bodies_dir):
    pairs = mads_source.pair_files(mads_source.find_root(bodies_dir))
    counts = collections.Counter(mads_source.split_of(stem) for stem in pairs)
    assert sum(counts.values()) == 290
    assert 0.72 < counts["train"] / 290 < 0.88
    assert counts["validation"] >= 15 and counts["test"] >= 15


def test_frames_of_one_recording_share_a_split():
    stems = [f"HipHop_HipHop{r}_C{c}_{f:05d}" for r in range(1, 30) for c in range(4) for f in (0, 5, 180)]
    by_recording = collections.defaultdict(set)
    for stem in stems:
        by_recording[mads_source.recording_of(stem)].add(mads_source.split_of(stem))
    assert len(by_recording) == 29
    assert all(len(s) == 1 for s in by_recording.values())
    assert {s for v in by_recording.values() for s in v} == {"train", "validation", "test"}
    assert mads_source.recording_of("HipHop_HipHop1_C0_00180") == "HipHop_HipHop1"
    assert mads_source.recording_of("person_0001") == "person_0001"


def test_smaller_mask_with_same_aspect_is_resized_nearest(dummy_mads):
    root = _root(dummy_mads)
    stem = "HipHop_HipHop1_C0_00185"  # stored at half size by make_dummy_data.py
    image_path, mask_path = root / "images" / f"{stem}.jpg", root / "masks" / f"{stem}.png"
    assert Image.open(mask_path).size == (16, 12)
    example = mads_source.load_example(stem, image_path, mask_path)
    small = (np.asarray(Image.open(mask_path).convert("L")) > 127).astype(np.uint8)
    assert example["segmentation_mask"].shape == (24, 32, 1)
    np.testing.assert_array_equal(example["segmentation_mask"][::2, ::2, 0], small)


def test_mask_of_other_aspect_is_an_error_naming_both(dummy_mads):
    root = _root(dummy_mads)
    stem = "Jazz_Jazz3_C0_00010"
    Image.new("L", (20, 20)).save(root / "masks" / f"{stem}.png")
    with pytest.raises(DatasetError, match=rf"masks/{stem}\.png is 20x20 but its image .*images/{stem}\.png is 32x24"):
        mads_source.load_example(stem, root / "images" / f"{stem}.png", root / "masks" / f"{stem}.png")


def test_image_without_mask(dummy_mads):
    (_root(dummy_mads) / "masks" / "Kata_Kata2_C0_00400.png").unlink()
    with pytest.raises(DatasetError, match=r"images/Kata_Kata2_C0_00400\.png has no mask"):
        mads_source.pair_files(_root(dummy_mads))


def test_mask_without_image(dummy_mads):
    (_root(dummy_mads) / "images" / "Kata_Kata2_C0_00400.png").unlink()
    with pytest.raises(DatasetError, match=r"masks/Kata_Kata2_C0_00400\.png has no image"):
        mads_source.pair_files(_root(dummy_mads))


def test_index_row_naming_a_missing_file(dummy_mads):
    index = dummy_mads / NESTED / "df.csv"
    index.write_text(index.read_text() + "99,images/ghost.png,masks/ghost.png,collages/ghost.jpg\n")
    with pytest.raises(DatasetError, match=r"df.csv, line 11: images entry 'images/ghost.png'"):
        mads_source.pair_files(_root(dummy_mads))


def test_unexpected_file_is_named(dummy_mads):
    (_root(dummy_mads) / "images" / "notes.txt").write_text("hi")
    with pytest.raises(DatasetError, match=r"images/notes\.txt: unexpected file"):
        mads_source.pair_files(_root(dummy_mads))


def test_no_images_and_masks_folders(tmp_path):
    (tmp_path / "something").mkdir()
    (tmp_path / "something" / "file.txt").write_text("x")
    with pytest.raises(DatasetError, match="No folder with both images/ and masks/"):
        mads_source.find_root(tmp_path)


def test_truncated_frame_is_named(dummy_mads):
    root = _root(dummy_mads)
    path = root / "images" / "person_0002.png"
    path.write_bytes(path.read_bytes()[:60])
    with pytest.raises(ValueError, match=r"person_0002\.png: cannot decode image"):
        mads_source.load_example("person_0002", path, root / "masks" / "person_0002.png")


def test_split_left_empty_is_named_instead_of_tfds_no_examples(dummy_mads):
    root = _root(dummy_mads)
    pairs = mads_source.pair_files(root)
    without_test = {stem: files for stem, files in pairs.items() if mads_source.split_of(stem) != "test"}
    with pytest.raises(DatasetError, match=r"no frame falls into the test split: the 7 frames come from \d+ recording"):
        mads_source.pairs_by_split(root, without_test)
