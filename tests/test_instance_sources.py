"""A user's own instance data: ``folder:PATH`` with ``instances/`` (8- and 16-bit label images) and
``coco:FILE.json`` (polygons, compressed and uncompressed RLE, decoded by pycocotools), built from real
Penn-Fudan images and masks copied into a temporary folder. Ids come through exactly, and every bad input is
one line naming the file, with nothing written."""

import json
import logging
import pathlib
import re
import shutil

import numpy as np
import pytest
import tensorflow as tf
from conftest import _real_data_dir, _require
from PIL import Image
from pycocotools import mask as mask_utils

from kseg import data, show, train
from kseg.core import imageio, settings
from kseg.data import coco_source
from segio import splits

#: Real images: two people, one person, six people, and one used without annotations.
TWO, ONE, SIX, NOBODY = "FudanPed00001", "FudanPed00002", "PennPed00010", "FudanPed00003"


@pytest.fixture(scope="module")
def pennfudan() -> dict:
    """``{stem: (image path, instance ids (H, W) uint8)}`` of the real files (read-only)."""
    root = _require(_real_data_dir() / "PennFudanPed")
    return {
        stem: (root / "PNGImages" / f"{stem}.png", np.asarray(Image.open(root / "PedMasks" / f"{stem}_mask.png")))
        for stem in (TWO, ONE, SIX, NOBODY)
    }


@pytest.fixture(autouse=True)
def cache_dir(tmp_path_factory, monkeypatch):
    """Folder-dataset verdicts go to a fresh cache per test."""
    path = tmp_path_factory.mktemp("kseg-cache")
    monkeypatch.setenv("KSEG_CACHE_DIR", str(path))
    return path


@pytest.fixture
def logged():
    """The records the ``kseg.data`` loggers emit while the test runs (caught on the loggers themselves)."""
    handler = logging.Handler(logging.INFO)
    handler.records = []
    handler.emit = handler.records.append
    logger = logging.getLogger("kseg.data")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield handler.records
    logger.removeHandler(handler)
    logger.setLevel(level)


def _tree(root) -> list:
    """Every file under ``root`` with its size and modification time: equal before and after means untouched."""
    return sorted((str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*"))


def instance_folder(root, pennfudan, ids=None, stems=(TWO, ONE, SIX), sub="instances"):
    """``root/images/STEM.png`` copied from the real data, ``root/<sub>/STEM.png`` its label image (``ids``:
    ``{stem: array}`` to store other ids)."""
    for folder in ("images", sub):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for stem in stems:
        shutil.copy(pennfudan[stem][0], root / "images" / f"{stem}.png")
        Image.fromarray((ids or {}).get(stem, pennfudan[stem][1])).save(root / sub / f"{stem}.png")
    return root


def _masks(name, split="all") -> dict:
    return {ex["image_id"].numpy().decode(): ex["mask"].numpy()[..., 0] for ex in data.load_examples(name, split)}


# ------------------------------------------------------------------------------------------ folders ---


def test_instance_folder_is_an_instance_dataset_with_exact_ids(tmp_path, pennfudan):
    root = instance_folder(tmp_path / "people", pennfudan)
    spec = data.dataset_spec(f"folder:{root}")
    assert (spec.kind, spec.num_classes, spec.class_names) == ("instances", 1, ("background", "person"))
    of_each = [splits.split_of_name(stem, salt="folder/") for stem in (TWO, ONE, SIX)]
    assert spec.split_sizes == {split: of_each.count(split) for split in data.SPLITS}
    masks = _masks(f"folder:{root}")
    assert sorted(masks) == sorted((TWO, ONE, SIX))
    for stem, mask in masks.items():
        assert mask.dtype == np.int32
        np.testing.assert_array_equal(mask, pennfudan[stem][1])
    counts = data.check_folder_files(str(root), data.folder_pairs(str(root), "all"))  # the check's cached count
    assert {pathlib.Path(path).stem: count for path, count in counts.items()} == {TWO: 2, ONE: 1, SIX: 6}  # people


def test_sixteen_bit_ids_come_through_and_nearest_resizing_keeps_them(tmp_path, pennfudan):
    source = pennfudan[SIX][1]
    wide = np.where(source > 0, 1000 + source.astype(np.uint16) * 300, 0).astype(np.uint16)  # 1300 .. 2800
    root = tmp_path / "split"
    for split, stem in (("train", SIX), ("validation", ONE), ("test", TWO)):
        instance_folder(root / split, pennfudan, ids={SIX: wide}, stems=(stem,))
    assert Image.open(root / "train" / "instances" / f"{SIX}.png").mode == "I;16"
    assert data.dataset_spec(f"folder:{root}").split_sizes == {"train": 1, "validation": 1, "test": 1}
    np.testing.assert_array_equal(_masks(f"folder:{root}", "train")[SIX], wide)
    _, masks = next(iter(data.load(f"folder:{root}", "train", image_size=(96, 128), batch_size=1)))
    assert masks.dtype == tf.int32
    nearest = tf.image.resize(wide[None, ..., None].astype(np.int32), (96, 128), method="nearest")
    np.testing.assert_array_equal(masks.numpy(), nearest.numpy())
    assert set(np.unique(masks)) == set(np.unique(wide))  # every id, and no value between two of them


def test_image_without_people_is_valid_and_a_split_of_none_is_a_warning(tmp_path, pennfudan, logged):
    empty = {stem: np.zeros_like(pennfudan[stem][1]) for stem in (TWO, ONE)}
    root = instance_folder(tmp_path / "nobody", pennfudan, ids=empty, stems=(TWO, ONE))
    masks = _masks(f"folder:{root}")
    assert all(not mask.any() for mask in masks.values()) and len(masks) == 2
    warnings = [r.getMessage() for r in logged if r.levelno == logging.WARNING]
    assert warnings == [
        f"folder:{root} split all: all 2 masks are empty (no foreground pixel); check that the masks are the ones "
        f"meant, e.g. with python -m kseg.show folder:{root} --split all"
    ]


def _rgb(ids):
    return np.stack([ids * 40, ids * 80, ids * 120], axis=-1).astype(np.uint8)


@pytest.mark.parametrize(
    ("suffix", "make", "expected"),
    [
        (
            ".png",
            lambda ids: Image.fromarray(_rgb(ids)),
            r"a colour image \(mode RGB\); an instance label image holds one id per pixel \(0 background, k = "
            r"person k\): save it as a single-channel 8- or 16-bit PNG",
        ),
        (
            ".png",
            lambda ids: Image.fromarray(((ids > 0) * 255).astype(np.uint8)),
            r"holds only 0 and 255, a binary mask; an instance label image numbers each person 1, 2, \.\.\. "
            r"\(binary masks go in masks/, not instances/\)",
        ),
        (
            ".jpg",
            lambda ids: Image.fromarray(ids),
            r"a JPEG file; an instance label image must be lossless \(PNG\)",
        ),
    ],
    ids=["colour", "binary", "lossy"],
)
def test_a_label_image_that_is_not_one_is_named_and_nothing_is_written(tmp_path, pennfudan, suffix, make, expected):
    root = instance_folder(tmp_path / "people", pennfudan, stems=(TWO, ONE))
    (root / "instances" / f"{ONE}.png").unlink()
    bad = root / "instances" / f"{ONE}{suffix}"
    make(pennfudan[ONE][1]).save(bad)
    before = _tree(root)
    with pytest.raises(imageio.ImageReadError, match=rf"^{re.escape(str(bad))}: {expected}"):
        data.load_examples(f"folder:{root}", "all")
    assert _tree(root) == before


def test_instance_label_images_in_masks_are_refused_with_where_they_belong(tmp_path, pennfudan, capsys):
    root = instance_folder(tmp_path / "people", pennfudan, stems=(TWO,), sub="masks")
    out = tmp_path / "grid.png"
    assert show.main([f"folder:{root}", "--split", "all", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"kseg.show: error: {root}/masks/{TWO}.png: not a binary mask")
    hint = f"if they are instance label images (one id per person), put them in {root}/instances/"
    assert err.strip().endswith(hint)
    assert not out.exists()


def test_masks_and_instances_in_one_folder_is_one_line_asking_to_keep_one(tmp_path, pennfudan):
    root = instance_folder(tmp_path / "both", pennfudan, stems=(ONE,))
    (root / "masks").mkdir()
    both = rf"^folder dataset '{root}' has both {root}/masks/ and {root}/instances/: keep one"
    with pytest.raises(data.DataError, match=both):
        data.dataset_spec(f"folder:{root}")
    (root / "masks").rmdir()
    with pytest.raises(data.DataError, match=r"instance label images \(instances/\): one class, person"):
        data.dataset_spec(f"folder:{root}", num_classes=3)


# --------------------------------------------------------------------------------------- COCO files ---


def _uncompressed(binary: np.ndarray) -> list:
    """Run lengths of ``binary`` in COCO's column order, background first (the uncompressed RLE)."""
    flat = binary.ravel(order="F").astype(np.int8)
    edges = np.flatnonzero(np.diff(flat)) + 1
    runs = np.diff(np.concatenate([[0], edges, [flat.size]])).tolist()
    return [0, *runs] if flat[0] else runs


def _compressed(binary: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(binary.astype(np.uint8)))
    return {"size": rle["size"], "counts": rle["counts"].decode()}


def _rectangle(x0, y0, x1, y1) -> list:
    """The polygon of pixels ``[y0:y1, x0:x1]``: corners on pixel edges rasterise exactly."""
    return [x0, y0, x1, y0, x1, y1, x0, y1]


@pytest.fixture
def coco(tmp_path, pennfudan):
    """``(json path, content, expected label images)``: the JSON beside ``images/``. TWO: compressed RLE, a
    rectangle drawn over person 1 and a crowd region; SIX: uncompressed RLE; ONE: two rectangles as one
    person; NOBODY: no annotation."""
    root = tmp_path / "labelled"
    (root / "images").mkdir(parents=True)
    images, annotations, expected = [], [], {}

    def annotate(image_id, segmentation, crowd=0):
        number = len(annotations) + 1
        annotations.append({"id": number, "image_id": image_id, "category_id": 1, "iscrowd": crowd})
        annotations[-1]["segmentation"] = segmentation

    for image_id, stem in enumerate((TWO, SIX, ONE, NOBODY), start=1):
        shutil.copy(pennfudan[stem][0], root / "images" / f"{stem}.png")
        ids = pennfudan[stem][1]
        images.append({"id": image_id, "file_name": f"{stem}.png", "height": ids.shape[0], "width": ids.shape[1]})
        expected[stem] = np.zeros(ids.shape, np.int32)
    for k in (1, 2):
        annotate(1, _compressed(pennfudan[TWO][1] == k))
    annotate(1, [_rectangle(10, 20, 60, 80)])
    annotate(1, {"size": list(pennfudan[TWO][1].shape), "counts": _uncompressed(pennfudan[TWO][1] == 1)}, crowd=1)
    expected[TWO][:] = pennfudan[TWO][1]
    expected[TWO][20:80, 10:60] = 3  # the later annotation is drawn over the earlier
    for k in range(1, 7):
        annotate(2, {"size": list(pennfudan[SIX][1].shape), "counts": _uncompressed(pennfudan[SIX][1] == k)})
    expected[SIX][:] = pennfudan[SIX][1]
    annotate(3, [_rectangle(5, 5, 25, 15), _rectangle(100, 200, 130, 260)])
    expected[ONE][5:15, 5:25] = expected[ONE][200:260, 100:130] = 1
    content = {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "person"}]}
    path = root / "instances.json"
    path.write_text(json.dumps(content))
    return path, content, expected


def test_coco_file_decodes_polygons_and_both_rles_exactly(coco, logged):
    path, _, expected = coco
    spec = data.dataset_spec(f"coco:{path}")
    assert (spec.kind, spec.num_classes, spec.class_names) == ("instances", 1, ("background", "person"))
    assert sum(spec.split_sizes.values()) == 4 and set(spec.split_sizes) == set(data.SPLITS)
    masks = _masks(f"coco:{path}")
    assert sorted(masks) == sorted(expected)
    for stem, mask in masks.items():
        assert mask.dtype == np.int32
        np.testing.assert_array_equal(mask, expected[stem], err_msg=stem)
    assert not masks[NOBODY].any()  # an image with nobody in it is valid: an empty label image
    crowd = [r.getMessage() for r in logged if "crowd" in r.getMessage()]
    assert crowd == [
        f"{path} split all: 1 crowd region(s) (iscrowd 1) left out: they are background in the label images"
    ]
    assert data.input_folders(f"coco:{path}") == {f"the COCO file's folder (coco:{path})": str(path.parent)}


def test_coco_images_are_found_beside_the_json_or_in_cvat_layout_and_split_like_folders(coco, tmp_path):
    path, content, expected = coco
    cvat = path.parent / "annotations" / "instances_default.json"  # CVAT: annotations/ beside images/
    cvat.parent.mkdir()
    cvat.write_text(json.dumps(content))
    flat = tmp_path / "flat"  # the files beside the JSON, one in a sub-folder named by its file_name
    shutil.copytree(path.parent / "images", flat)
    (flat / "more").mkdir()
    shutil.move(flat / f"{ONE}.png", flat / "more" / f"{ONE}.png")
    content["images"][2]["file_name"] = f"more/{ONE}.png"
    (flat / "coco.json").write_text(json.dumps(content))
    for json_path in (cvat, flat / "coco.json"):
        masks = _masks(f"coco:{json_path}")
        assert len(masks) == 4
        np.testing.assert_array_equal(masks[TWO], expected[TWO])
    assert f"more/{ONE}" in _masks(f"coco:{flat / 'coco.json'}")
    index = coco_source.read_index(str(path))
    for split in data.SPLITS:  # the same split as the same file in a folder: dataset
        assert [i.image_id for i in index.split(split)] == sorted(
            s for s in expected if splits.split_of_name(s, salt="folder/") == split
        )


def _short_rle(content, expected):
    """An RLE of TWO's size whose runs cover one column fewer."""
    height, width = expected[TWO].shape
    short = mask_utils.encode(np.asfortranarray(np.zeros((height, width - 1), np.uint8)))
    content["annotations"][0]["segmentation"] = {"size": [height, width], "counts": short["counts"].decode()}


def _set(where: str, value):
    def change(content, expected):
        item, key = where.split(".")
        kind, index = item.split("/")
        content[kind][int(index)][key] = value

    return change


def _in_two(where: str) -> str:
    return rf"annotation {where[0]} \(annotations\[{int(where[0]) - 1}\]\) of image '{TWO}\.png': {where[2:]}"


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            lambda content, _: content.pop("annotations"),
            "not a COCO instances file: expected a JSON object with 'images' and 'annotations' lists",
        ),
        (
            _set("annotations/0.image_id", 99),
            r"annotation 1 \(annotations\[0\]\) refers to image_id 99, which no entry of 'images' has",
        ),
        (
            _set("annotations/2.segmentation", [[10, 20, 60, 20, 60, 80, 10]]),
            _in_two("3 polygon 1 has 7 coordinates; expected x, y numbers of at least 3 points"),
        ),
        (
            _set("annotations/2.segmentation", [[10, 20, 60, 20]]),
            _in_two(r"3 polygon 1 has 4 coordinates; expected x, y numbers of at least 3 points \(an even count"),
        ),
        (
            _set("annotations/2.segmentation", [[10, 20, "x", 20, 60, 80]]),
            _in_two("3 polygon 1 holds 'x'; expected x, y numbers"),
        ),
        (
            _set("annotations/0.segmentation", {"size": [10, 10], "counts": "PP1"}),
            _in_two(r"1 its RLE is 10x10 \(size \[10, 10\]\) but the image is 559x536; expected the image's size"),
        ),
        (_short_rle, _in_two("1 its RLE does not describe 559x536 pixels")),
        (
            _set("annotations/4.segmentation", {"size": [495, 750], "counts": [5, 5]}),
            r"annotation 5 \(annotations\[4\]\) of image 'PennPed00010\.png': its uncompressed RLE counts are not "
            r"run lengths adding up to 495x750",
        ),
        (
            _set("images/3.width", 600),
            rf"image \S+/{NOBODY}\.png is 479x445 but the JSON gives width 600, height 445 \(id 4\)",
        ),
        (
            _set("images/1.file_name", "gone.png"),
            r"image 'gone\.png' \(id 2\) not found in \S+/, \S+/images/ or \S+/images/; expected each file_name",
        ),
    ],
    ids=[
        "no-annotations",
        "unknown-image",
        "odd-polygon",
        "two-points",
        "not-a-number",
        "rle-size",
        "short-rle",
        "uncompressed-sum",
        "image-size",
        "image-missing",
    ],
)
def test_a_broken_coco_file_is_one_error_naming_it_and_the_culprit(coco, change, expected):
    path, content, masks = coco
    change(content, masks)
    path.write_text(json.dumps(content))
    before = _tree(path.parent)
    with pytest.raises(data.DataError, match=rf"^{re.escape(str(path))}: {expected}") as caught:
        data.load_examples(f"coco:{path}", "all")
    assert "\n" not in str(caught.value)
    assert _tree(path.parent) == before


def test_unreadable_coco_files_and_images_are_one_line_from_the_command(coco, tmp_path, capsys):
    path, _, _ = coco
    out = tmp_path / "grid.png"
    data_bytes = (path.parent / "images" / f"{ONE}.png").read_bytes()
    (path.parent / "images" / f"{ONE}.png").write_bytes(data_bytes[: len(data_bytes) // 2])
    path.with_name("broken.json").write_text("{not json")
    for json_path, expected in (
        (path.with_name("broken.json"), "not a JSON file (Expecting property name"),
        (path, f"image '{ONE}.png' (id 3): {path.parent}/images/{ONE}.png: cannot decode image"),
    ):
        before = _tree(path.parent)
        assert show.main([f"coco:{json_path}", "--split", "all", "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
        assert err.startswith(f"kseg.show: error: {json_path}: {expected}"), err
        assert not out.exists() and _tree(path.parent) == before


# ----------------------------------------------------------------------------------------- settings ---


def test_coco_names_are_datasets_that_take_no_class_count_nor_manual_dir(tmp_path, capsys):
    assert settings.dataset_name("coco:labels.json") == "coco:labels.json"
    expected = r"expected a TFDS name like tfds_ph2/ph2, folder:PATH or coco:FILE\.json, got 'coco:'"
    with pytest.raises(settings.Invalid, match=expected):
        settings.dataset_name("coco:")
    name = "'coco:/nowhere.json'"
    argv = ["--dataset", name[1:-1], "--data-dir", str(tmp_path / "tfds"), "--output-dir", str(tmp_path / "run")]
    for extra, expected in (
        (
            ["--num-classes", "3"],
            f"num_classes (--num-classes): applies to folder: datasets only; {name} is a COCO file of instances, "
            f"whose one class is person (got 3)",
        ),
        (
            ["--manual-dir", "/downloads"],
            f"manual_dir (--manual-dir): applies to TFDS datasets only (a build reads its download there); {name} "
            f"is a COCO file, read as it is (got '/downloads')",
        ),
    ):
        assert train.main([*argv, *extra]) == 2
        err = capsys.readouterr().err
        assert err.strip() == f"kseg.train: error: {expected}", err
    assert not (tmp_path / "run").exists()
