"""Penn-Fudan reading: the real 170 images (counts, the fixed split, boxes against masks) and every bad input of
a broken copy of the dummy download, each an error naming the file."""

import collections
import pathlib
import random
import re
import shutil

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from tfds_ph2 import pennfudan_source as pf
from tfds_ph2.common import DatasetError

REPO = pathlib.Path(__file__).resolve().parents[1]
DUMMY = REPO / "tfds_ph2" / "dummy_data" / "PennFudanPed"

#: The documented split of the real release (tfds_ph2/README.md).
_fudan = lambda *numbers: [f"FudanPed{n:05d}" for n in numbers]
_penn = lambda *numbers: [f"PennPed{n:05d}" for n in numbers]
REAL_VALIDATION = _fudan(13, 15, 22, 31, 34, 53, 56, 69, 73) + _penn(8, 12, 13, 16, 17, 36, 57, 58, 62, 79, 85)
REAL_TEST = _fudan(3, 4, 10, 17, 19, 24, 30, 32, 37, 44, 46, 47, 48, 49, 50, 51, 52, 55, 61, 63, 64, 70) + _penn(
    1, 6, 14, 18, 19, 20, 23, 26, 27, 29, 31, 35, 38, 39, 40, 47, 51, 52, 59, 61, 65, 68, 74, 82, 86, 87, 95, 96
)
REAL_COUNTS = {
    "train": {"fudan": 43, "penn": 57},
    "validation": {"fudan": 9, "penn": 11},
    "test": {"fudan": 22, "penn": 28},
}


@pytest.fixture
def dummy(tmp_path) -> pathlib.Path:
    """A writable copy of the dummy download at ``tmp_path/PennFudanPed``."""
    target = tmp_path / "PennFudanPed"
    shutil.copytree(DUMMY, target)
    return target


def _check_example(example: dict, case: pf.Case) -> int:
    """Shapes, dtypes and boxes against the mask; returns the number of people."""
    image, mask, objects = example["image"], example["instance_mask"], example["objects"]
    height, width = image.shape[:2]
    assert image.dtype == np.uint8 and image.shape == (height, width, 3)
    assert mask.dtype == np.uint8 and mask.shape == (height, width, 1)
    n = len(objects["id"])
    assert objects["bbox"].shape == (n, 4) and objects["bbox"].dtype == np.float32
    np.testing.assert_array_equal(objects["id"], np.arange(1, n + 1))
    assert int(mask.max()) == n
    assert np.all((objects["bbox"] >= 0) & (objects["bbox"] <= 1))
    assert np.all(objects["bbox"][:, :2] < objects["bbox"][:, 2:])
    assert int(objects["area"].sum()) == int(np.count_nonzero(mask))
    # In pixel edges the box lies within BOX_TOLERANCE of the mask's extent of its value.
    scale = np.array([height, width, height, width])
    for k, box in zip(objects["id"], objects["bbox"] * scale):
        rows, cols = np.flatnonzero((mask[..., 0] == k).any(1)), np.flatnonzero((mask[..., 0] == k).any(0))
        extent = np.array([rows[0], cols[0], rows[-1] + 1, cols[-1] + 1])
        assert np.abs(box - extent).max() <= pf.BOX_TOLERANCE + 1e-3, (case, k, box, extent)
    assert example["source"] == case.source and example["image_id"] == case.image_id
    return n


# ------------------------------------------------------------------------------------------ real data ---


def test_real_index_people_and_split(pennfudan_dir):
    assert pf.find_root(pennfudan_dir.parent) == pennfudan_dir
    cases = pf.read_index(pennfudan_dir)
    assert len(cases) == 170
    assert collections.Counter(c.source for c in cases) == {"fudan": 74, "penn": 96}
    people = collections.Counter()
    for case in cases:
        people[case.source] += len(pf.parse_annotation(pf.case_files(pennfudan_dir, case.image_id)[2]).boxes)
    assert people == {"fudan": 160, "penn": 263}  # 423 in all
    by_split = pf.cases_by_split(cases)
    counts = {s: dict(collections.Counter(c.source for c in members)) for s, members in by_split.items()}
    assert counts == REAL_COUNTS
    assert [c.image_id for c in by_split["validation"]] == REAL_VALIDATION
    assert [c.image_id for c in by_split["test"]] == REAL_TEST


def test_real_split_does_not_depend_on_order(pennfudan_dir):
    cases = pf.read_index(pennfudan_dir)
    expected = pf.split_of(cases)
    shuffled = list(cases)
    random.Random(0).shuffle(shuffled)
    assert pf.split_of(shuffled) == expected
    assert pf.split_of(reversed(cases)) == expected
    assert {c.image_id: s for s, members in pf.cases_by_split(shuffled).items() for c in members} == expected


def test_real_examples_subset(pennfudan_dir):
    """A quick look at a few real cases, among them the box farthest from its mask (PennPed00027, object 1)."""
    names = ["FudanPed00001", "FudanPed00074", "PennPed00010", "PennPed00027", "PennPed00090", "PennPed00096"]
    for name in names:
        case = pf.Case(name, pf.source_of(name))
        assert _check_example(pf.load_example(pennfudan_dir, case), case) >= 1
    example = pf.load_example(pennfudan_dir, pf.Case("FudanPed00001", "fudan"))
    assert example["image"].shape == (536, 559, 3)
    # Box file: (160, 182) - (302, 431) and (420, 171) - (535, 486), counted from (1, 1).
    np.testing.assert_allclose(
        example["objects"]["bbox"],
        [[181 / 536, 159 / 559, 431 / 536, 302 / 559], [170 / 536, 419 / 559, 486 / 536, 535 / 559]],
        rtol=1e-6,
    )


@pytest.mark.slow
def test_real_all_examples(pennfudan_dir):
    """All 170 real cases decode and pass every check; the worst box is 6 pixels off its mask, 407 are exact."""
    root, by_split = pf.read_cases(pennfudan_dir)
    people = collections.Counter()
    offsets = []
    for split, cases in by_split.items():
        for case in cases:
            example = pf.load_example(root, case)
            people[split] += _check_example(example, case)
            height, width = example["image"].shape[:2]
            boxes = example["objects"]["bbox"] * np.array([height, width, height, width])
            _, extents = pf.instance_extents(example["instance_mask"][..., 0])
            extents = np.stack(
                [extents[:, 1] - 1, extents[:, 0] - 1, extents[:, 3], extents[:, 2]], axis=-1
            )  # pixel edges
            offsets += np.abs(np.round(boxes) - extents).max(axis=1).tolist()
    assert people == {"train": 256, "validation": 43, "test": 124}
    assert len(offsets) == 423
    assert collections.Counter(offsets) == {0: 407, 1: 12, 2: 2, 3: 1, 6: 1}
    assert max(offsets) < pf.BOX_TOLERANCE


# ---------------------------------------------------------------------------------------- dummy copy ---


def test_dummy_reads_and_splits(dummy):
    root, by_split = pf.read_cases(dummy.parent)
    assert root == dummy
    assert {s: [c.image_id for c in cs] for s, cs in by_split.items()} == {
        "train": ["FudanPed00001", "PennPed00002", "PennPed00004"],
        "validation": ["PennPed00003"],
        "test": ["FudanPed00002", "PennPed00001"],
    }
    people = {c.image_id: _check_example(pf.load_example(root, c), c) for cs in by_split.values() for c in cs}
    assert people == {
        "FudanPed00001": 2,
        "FudanPed00002": 1,
        "PennPed00001": 3,
        "PennPed00002": 1,
        "PennPed00003": 2,
        "PennPed00004": 0,
    }


def test_image_without_people_is_an_example_with_no_objects(dummy):
    example = pf.load_example(dummy, pf.Case("PennPed00004", "penn"))
    assert not example["instance_mask"].any()
    assert example["objects"]["bbox"].shape == (0, 4) and example["objects"]["bbox"].dtype == np.float32
    assert example["objects"]["area"].shape == (0,) and example["objects"]["id"].shape == (0,)


def test_find_root_levels(dummy, tmp_path):
    assert pf.find_root(dummy) == dummy
    assert pf.find_root(tmp_path) == dummy
    deeper = tmp_path / "a" / "b"
    shutil.copytree(dummy, deeper / "PennFudanPed")
    shutil.rmtree(dummy)
    assert pf.find_root(tmp_path / "a") == deeper / "PennFudanPed"  # two levels below
    with pytest.raises(DatasetError, match=r"No folder with PNGImages/, PedMasks/, Annotation/ found"):
        pf.find_root(tmp_path)  # three levels below


def test_find_root_errors(tmp_path):
    (tmp_path / "PennFudanPed.zip").write_bytes(b"PK")
    with pytest.raises(DatasetError, match=r"Found the archive\(s\) \['PennFudanPed.zip'\]: extract them first"):
        pf.find_root(tmp_path)
    (tmp_path / "PennFudanPed" / "PNGImages").mkdir(parents=True)
    (tmp_path / "PennFudanPed" / "PedMasks").mkdir()
    with pytest.raises(DatasetError, match=r"PennFudanPed holds PNGImages/, PedMasks/ but not Annotation/"):
        pf.find_root(tmp_path)
    with pytest.raises(DatasetError, match=r"does not exist"):
        pf.find_root(tmp_path / "nowhere")


def test_split_sizes_rule():
    assert pf.split_sizes({"fudan": 74, "penn": 96}) == REAL_COUNTS
    for n in range(pf.MIN_IMAGES, 60):
        for fudan in range(n + 1):
            sizes = pf.split_sizes({"fudan": fudan, "penn": n - fudan})
            totals = {s: sum(v.values()) for s, v in sizes.items()}
            assert all(totals.values()), (n, fudan, sizes)  # never an empty split from 3 images up
            assert sum(totals.values()) == n
            assert all(count >= 0 for v in sizes.values() for count in v.values())
            assert totals["test"] == max(1, int(n * 50 / 170 + 0.5))


def test_too_few_images(dummy):
    for name in ("FudanPed00002", "PennPed00001", "PennPed00002", "PennPed00003"):
        for path in pf.case_files(dummy, name):
            path.unlink()
    with pytest.raises(DatasetError, match=r"PennFudanPed: 2 image\(s\) are too few .* at least 3 are needed"):
        pf.read_cases(dummy)


def _break(path: pathlib.Path, old: str, new: str) -> None:
    text = path.read_text()
    assert re.search(old, text), old
    path.write_text(re.sub(old, new, text, count=1))


def test_image_without_mask(dummy):
    (dummy / "PedMasks" / "PennPed00002_mask.png").unlink()
    with pytest.raises(
        DatasetError, match=r"PNGImages/PennPed00002\.png has no mask: expected .*PedMasks/PennPed00002_mask\.png"
    ):
        pf.read_index(dummy)


def test_mask_without_image(dummy):
    (dummy / "PNGImages" / "PennPed00002.png").unlink()
    (dummy / "Annotation" / "PennPed00002.txt").unlink()
    with pytest.raises(
        DatasetError, match=r"PedMasks/PennPed00002_mask\.png has no image: expected .*PNGImages/PennPed00002\.png"
    ):
        pf.read_index(dummy)


def test_missing_box_file(dummy):
    (dummy / "Annotation" / "FudanPed00001.txt").unlink()
    with pytest.raises(
        DatasetError, match=r"PNGImages/FudanPed00001\.png has no box file: expected .*Annotation/FudanPed00001\.txt"
    ):
        pf.read_index(dummy)


def test_box_file_without_image(dummy):
    shutil.copy(dummy / "Annotation" / "FudanPed00001.txt", dummy / "Annotation" / "FudanPed00009.txt")
    with pytest.raises(DatasetError, match=r"Annotation/FudanPed00009\.txt has no image"):
        pf.read_index(dummy)


def test_unexpected_name_and_file(dummy):
    for path, new in zip(pf.case_files(dummy, "PennPed00002"), ("Street1.png", "Street1_mask.png", "Street1.txt")):
        path.rename(path.with_name(new))
    with pytest.raises(DatasetError, match=r"PNGImages/Street1\.png: unexpected name 'Street1'; expected FudanPed"):
        pf.read_index(dummy)
    (dummy / "PNGImages" / "Street1.png").rename(dummy / "PNGImages" / "Street1.jpg")
    with pytest.raises(DatasetError, match=r"PNGImages/Street1\.jpg: unexpected file; expected only PNG images"):
        pf.read_index(dummy)


def test_box_count_disagrees_with_mask(dummy):
    box_file = dummy / "Annotation" / "FudanPed00001.txt"
    text = box_file.read_text()
    box_file.write_text(
        text[: text.index("# Details for pedestrian 2")].replace("ground truth : 2", "ground truth : 1")
    )
    with pytest.raises(
        DatasetError,
        match=r"Annotation/FudanPed00001\.txt: lists 1 object\(s\) but its mask .*FudanPed00001_mask\.png holds 2",
    ):
        pf.load_example(dummy, pf.Case("FudanPed00001", "fudan"))


def test_box_count_disagrees_with_its_own_count_line(dummy):
    _break(dummy / "Annotation" / "FudanPed00001.txt", r"ground truth : 2", "ground truth : 3")
    with pytest.raises(DatasetError, match=r"FudanPed00001\.txt: says 'Objects with ground truth : 3' but has 2"):
        pf.load_example(dummy, pf.Case("FudanPed00001", "fudan"))


def _shift_xmax(dummy, name: str, by: int) -> None:
    box_file = dummy / "Annotation" / f"{name}.txt"
    match = re.search(r"\(Xmin, Ymin\) - \(Xmax, Ymax\) : \((\d+), (\d+)\) - \((\d+), (\d+)\)", box_file.read_text())
    x0, y0, x1, y1 = (int(v) for v in match.groups())
    _break(box_file, re.escape(match.group(0)), match.group(0).replace(f"- ({x1}, {y1})", f"- ({x1 + by}, {y1})"))


def test_box_within_tolerance_is_accepted(dummy):
    _shift_xmax(dummy, "FudanPed00001", pf.BOX_TOLERANCE)
    pf.load_example(dummy, pf.Case("FudanPed00001", "fudan"))


def test_box_that_misses_its_mask(dummy):
    _shift_xmax(dummy, "FudanPed00001", pf.BOX_TOLERANCE + 1)
    with pytest.raises(
        DatasetError,
        match=r"FudanPed00001\.txt: box of object 1 .* does not match value 1 of its mask .*FudanPed00001_mask\.png, "
        r"which spans .*: an edge is 8 pixels off, expected at most 7",
    ):
        pf.load_example(dummy, pf.Case("FudanPed00001", "fudan"))


def test_box_outside_the_image(dummy):
    _break(dummy / "Annotation" / "PennPed00002.txt", r"\((\d+), (\d+)\) - ", "(0, \\2) - ")
    with pytest.raises(
        DatasetError, match=r"PennPed00002\.txt: box of object 1 \(0, .* is not inside the 112x96 image"
    ):
        pf.load_example(dummy, pf.Case("PennPed00002", "penn"))


def test_mask_values_that_skip_a_number(dummy):
    path = dummy / "PedMasks" / "PennPed00001_mask.png"
    mask = np.asarray(Image.open(path)).copy()
    mask[mask == 3] = 4
    Image.fromarray(mask).save(path)
    with pytest.raises(DatasetError, match=r"PedMasks/PennPed00001_mask\.png: object numbers \[1, 2, 4\] skip \[3\]"):
        pf.load_example(dummy, pf.Case("PennPed00001", "penn"))


def test_mask_of_another_size(dummy):
    path = dummy / "PedMasks" / "PennPed00002_mask.png"
    Image.open(path).resize((56, 48), Image.NEAREST).save(path)
    with pytest.raises(
        DatasetError, match=r"PedMasks/PennPed00002_mask\.png is 56x48 but its image .*PennPed00002\.png is 112x96"
    ):
        pf.load_example(dummy, pf.Case("PennPed00002", "penn"))


def test_colour_mask(dummy):
    path = dummy / "PedMasks" / "PennPed00002_mask.png"
    Image.open(path).convert("RGB").save(path)
    with pytest.raises(
        DatasetError, match=r"PennPed00002_mask\.png: multi-class masks must be single-channel images .* got mode RGB"
    ):
        pf.load_example(dummy, pf.Case("PennPed00002", "penn"))


def test_image_size_line_disagrees(dummy):
    _break(dummy / "Annotation" / "PennPed00002.txt", r"112 x 96 x 3", "113 x 96 x 3")
    with pytest.raises(
        DatasetError,
        match=r"PennPed00002\.txt: says 'Image size \(X x Y x C\) : 113 x 96' but .*PennPed00002\.png is 112x96",
    ):
        pf.load_example(dummy, pf.Case("PennPed00002", "penn"))


def test_box_file_of_another_image(dummy):
    _break(dummy / "Annotation" / "PennPed00002.txt", r"PNGImages/PennPed00002", "PNGImages/PennPed00003")
    with pytest.raises(
        DatasetError,
        match=r"PennPed00002\.txt, line 2: names .*PennPed00003\.png', expected a file named PennPed00002\.png",
    ):
        pf.load_example(dummy, pf.Case("PennPed00002", "penn"))


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        (r"Image size \(X x Y x C\) : .*\n", "", r"no 'Image size \(X x Y x C\)"),
        (r"Objects with ground truth : .*\n", "", r"no 'Objects with ground truth"),
        (
            r"\(Xmin, Ymin\) - \(Xmax, Ymax\) : \(",
            "(Xmin, Ymin) - (Xmax, Ymax) : [",
            r"line 11: expected 'Bounding box",
        ),
        (r"Bounding box for object 1", "Bounding box for object 2", r"line 11: box of object 2 where object 1"),
    ],
)
def test_malformed_box_file(dummy, old, new, message):
    _break(dummy / "Annotation" / "PennPed00002.txt", old, new)
    with pytest.raises(DatasetError, match=r"Annotation/PennPed00002\.txt.*" + message):
        pf.load_example(dummy, pf.Case("PennPed00002", "penn"))


@pytest.mark.parametrize("folder", ["PNGImages", "PedMasks"])
def test_truncated_file(dummy, folder):
    path = dummy / folder / ("PennPed00002.png" if folder == "PNGImages" else "PennPed00002_mask.png")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(DatasetError, match=rf"{folder}/{path.name}: cannot decode image"):
        pf.load_example(dummy, pf.Case("PennPed00002", "penn"))


def test_empty_image_file(dummy):
    (dummy / "PNGImages" / "PennPed00002.png").write_bytes(b"")
    with pytest.raises(DatasetError, match=r"PNGImages/PennPed00002\.png: file is empty"):
        pf.load_example(dummy, pf.Case("PennPed00002", "penn"))


def test_the_built_config_is_an_instance_dataset_with_exact_ids(tmp_path):
    """kseg.data reads the instance label images as they were built: int32 ids, 0 background, nearest resize."""
    from kseg import data

    dummy = pathlib.Path(__file__).resolve().parents[1] / "tfds_ph2" / "dummy_data" / "PennFudanPed"
    spec = data.dataset_spec("tfds_ph2/pennfudan", data_dir=str(tmp_path), manual_dir=str(dummy))
    assert spec.kind == "instances" and spec.is_instances and spec.num_classes == 1
    assert spec.split_sizes == {"train": 3, "validation": 1, "test": 2}
    (example,) = data.load_examples("tfds_ph2/pennfudan", "validation", data_dir=str(tmp_path)).take(1)
    ids = set(np.unique(example["mask"].numpy()).tolist())
    ((images, labels),) = data.load("tfds_ph2/pennfudan", "validation", image_size=(64, 96), data_dir=str(tmp_path))
    assert labels.dtype == tf.int32 and images.shape == (1, 64, 96, 3)
    assert set(np.unique(labels.numpy()).tolist()) <= ids and len(ids) > 1


def test_a_semantic_run_on_the_instance_config_is_refused_in_one_line(tmp_path):
    from kseg.core.errors import UsageError
    from kseg.training import config as config_lib
    from kseg.training import run

    dummy = pathlib.Path(__file__).resolve().parents[1] / "tfds_ph2" / "dummy_data" / "PennFudanPed"
    config = config_lib.resolve(
        overrides=dict(
            preset="synthetic-unet",
            dataset="tfds_ph2/pennfudan",
            data_dir=str(tmp_path / "tfds"),
            manual_dir=str(dummy),
            output_dir=str(tmp_path / "run"),
        )
    )
    with pytest.raises(UsageError, match=r"tfds_ph2/pennfudan holds instances masks but the task is 'semantic'"):
        run(config)
    assert not (tmp_path / "run" / "config.json").exists()
