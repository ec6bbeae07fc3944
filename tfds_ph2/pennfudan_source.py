"""Reading the Penn-Fudan pedestrian download: locating it, pairing images with instance masks and box files,
checking the two annotations against each other, and the fixed split.

Kept free of TFDS so that it can be tested and reused on its own; the builder only wires it to splits.

Layout (the release's ``PennFudanPed/``)::

    PNGImages/FudanPed00001.png        RGB photo
    PedMasks/FudanPed00001_mask.png    8-bit label image: 0 background, k = pedestrian k (1..n)
    Annotation/FudanPed00001.txt       PASCAL Annotation 1.00 text: one box per mask value

Box files count pixels from (1, 1) (their header says so) and give inclusive corners, so the box of
pedestrian k is ``(Xmin, Ymin) - (Xmax, Ymax)`` with ``Xmin - 1 = the mask's first column of value k`` and
``Xmax - 1 = its last column``. 407 of the 423 real boxes are exactly the mask's extent; 12 are 1 pixel off,
2 are 2, 1 is 3 and 1 is 6 (each a box edge outside the mask's extent).
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np
from etils import epath

from segio import images
from segio.splits import stable_fraction
from tfds_ph2.common import DatasetError, require_dir, subdirs

IMAGES_FOLDER = "PNGImages"
MASKS_FOLDER = "PedMasks"
ANNOTATIONS_FOLDER = "Annotation"
FOLDERS = (IMAGES_FOLDER, MASKS_FOLDER, ANNOTATIONS_FOLDER)
MASK_SUFFIX = "_mask.png"

#: Class names of the ``source`` feature, by the file name prefix.
SOURCES = ("fudan", "penn")
_PREFIXES = {"FudanPed": "fudan", "PennPed": "penn"}
_NAME = re.compile(r"^(?P<prefix>FudanPed|PennPed)\d+$")

SPLITS = ("train", "validation", "test")
#: The common protocol (torchvision's tutorial, the reference scores in the data README): 50 of the 170
#: images for test, 120 to train on; here those 120 are 100 train + 20 validation.
TEST_SHARE = 50 / 170
VALIDATION_SHARE = 20 / 170
#: The fewest images a copy needs so that every split gets one.
MIN_IMAGES = 3

#: How far (pixels) a box edge may lie from the mask's extent of its value. The real boxes are off by at most
#: 6 pixels (PennPed00027 object 1: Xmax 218, the mask's last column is 212); 7 is just above that.
BOX_TOLERANCE = 7

INSTRUCTIONS = """\
Penn-Fudan must be downloaded by hand (research use; cite Wang, Shi, Song, Shen, ACCV 2007):
  1. Download PennFudanPed.zip from https://www.cis.upenn.edu/~jshi/ped_html/
     (https://www.cis.upenn.edu/~jshi/ped_html/PennFudanPed.zip).
  2. Unzip it (`unzip PennFudanPed.zip`); you get a folder `PennFudanPed/` holding `PNGImages/`,
     `PedMasks/` and `Annotation/` (its readme.txt and added-object-list.txt are not read).
  3. Build: `tfds build tfds_ph2 --config pennfudan --manual_dir /path/to/PennFudanPed --imports tfds_ph2`
     (the PennFudanPed folder itself, or a folder up to two levels above it, e.g. where the zip was unzipped)."""

_BOX = re.compile(
    r"^Bounding box for object (?P<k>\d+) \"[^\"]*\" \(Xmin, Ymin\) - \(Xmax, Ymax\) : "
    r"\(\s*(?P<x0>-?\d+)\s*,\s*(?P<y0>-?\d+)\s*\) - \(\s*(?P<x1>-?\d+)\s*,\s*(?P<y1>-?\d+)\s*\)\s*$"
)
_SIZE = re.compile(r"^Image size \(X x Y x C\) : (?P<w>\d+) x (?P<h>\d+) x (?P<c>\d+)\s*$")
_FILENAME = re.compile(r"^Image filename : \"(?P<name>[^\"]*)\"\s*$")
_COUNT = re.compile(r"^Objects with ground truth : (?P<n>\d+)\b")
_PIXEL_MASK = re.compile(r"^Pixel mask for object (?P<k>\d+) \"[^\"]*\" : \"(?P<name>[^\"]*)\"\s*$")
#: Pillow modes read as integer label images (palette masks by index).


@dataclasses.dataclass(frozen=True)
class Case:
    """One image of the download: its name (``FudanPed00001``) and source (``fudan`` or ``penn``)."""

    image_id: str
    source: str


@dataclasses.dataclass(frozen=True)
class Annotation:
    """A parsed box file: the image size it states and the boxes ``(Xmin, Ymin, Xmax, Ymax)`` (1-based,
    inclusive) of objects 1..n, in object order."""

    width: int
    height: int
    boxes: tuple


def case_files(root, image_id: str) -> tuple[epath.Path, epath.Path, epath.Path]:
    """``(image, mask, box file)`` of one case."""
    root = epath.Path(root)
    return (
        root / IMAGES_FOLDER / f"{image_id}.png",
        root / MASKS_FOLDER / f"{image_id}{MASK_SUFFIX}",
        root / ANNOTATIONS_FOLDER / f"{image_id}.txt",
    )


# --------------------------------------------------------------------------------------- locating ---


def _has_folders(folder: epath.Path) -> list[str]:
    return [name for name in FOLDERS if (folder / name).is_dir()]


def find_root(manual_dir) -> epath.Path:
    """The folder holding ``PNGImages/``, ``PedMasks/`` and ``Annotation/``: ``manual_dir`` itself or a folder up
    to two levels below it (``PennFudanPed/`` after unzipping, or that inside a folder of its own). The
    shallowest wins; two at the same depth, or a folder with only some of the three, are errors."""
    manual_dir = epath.Path(manual_dir)
    require_dir(manual_dir, "The manual download folder", INSTRUCTIONS)
    level = [manual_dir]
    partial = []
    for depth in range(3):
        found = [folder for folder in level if len(_has_folders(folder)) == len(FOLDERS)]
        if len(found) > 1:
            raise DatasetError(
                f"Several Penn-Fudan folders found in {manual_dir}, pass one of them as --manual_dir: "
                f"{[str(f) for f in found]}"
            )
        if found:
            return found[0]
        partial += [folder for folder in level if _has_folders(folder)]
        if depth < 2:
            level = [child for folder in level for child in subdirs(folder)]
    if partial:
        folder = partial[0]
        missing = [name for name in FOLDERS if name not in _has_folders(folder)]
        raise DatasetError(
            f"{folder} holds {', '.join(n + '/' for n in _has_folders(folder))} but not "
            f"{', '.join(n + '/' for n in missing)}: the Penn-Fudan release has all of "
            f"{', '.join(n + '/' for n in FOLDERS)}.\n\n{INSTRUCTIONS}"
        )
    archives = sorted(p.name for p in manual_dir.iterdir() if p.name.lower().endswith((".zip", ".tar", ".gz", ".7z")))
    hint = f" Found the archive(s) {archives}: extract them first." if archives else ""
    raise DatasetError(
        f"No folder with {', '.join(n + '/' for n in FOLDERS)} found in {manual_dir} or up to two levels below "
        f"it.{hint}\n\n{INSTRUCTIONS}"
    )


# ------------------------------------------------------------------------------------------- index ---


def _files(folder: epath.Path, suffix: str, what: str) -> dict[str, epath.Path]:
    """The files of ``folder`` by name without ``suffix``; hidden files are skipped, anything else is an error."""
    if not folder.is_dir():
        raise DatasetError(f"{folder} is missing: expected one {what} per image in it")
    files = {}
    for path in sorted(folder.iterdir(), key=lambda p: p.name):
        if path.name.startswith("."):
            continue
        if path.is_dir() or not path.name.endswith(suffix):
            raise DatasetError(
                f"{path}: unexpected {'folder' if path.is_dir() else 'file'}; expected only {what}s "
                f"named <image name>{suffix} in {folder}"
            )
        files[path.name[: -len(suffix)]] = path
    return files


def source_of(image_id: str, path=None) -> str:
    """``fudan`` or ``penn`` from the name (``FudanPed00001``, ``PennPed00096``); other names are an error."""
    match = _NAME.match(image_id)
    if not match:
        raise DatasetError(
            f"{path or image_id}: unexpected name {image_id!r}; expected FudanPed<number> or PennPed<number> "
            f"(the name says which source the image comes from)"
        )
    return _PREFIXES[match.group("prefix")]


def read_index(root) -> list[Case]:
    """Every image of the download, sorted by name. An image without its mask or box file, a mask or box file
    without its image, or a name that is not ``FudanPed<n>``/``PennPed<n>`` is an error naming the file."""
    root = epath.Path(root)
    found = {
        IMAGES_FOLDER: _files(root / IMAGES_FOLDER, ".png", "PNG image"),
        MASKS_FOLDER: _files(root / MASKS_FOLDER, MASK_SUFFIX, "mask"),
        ANNOTATIONS_FOLDER: _files(root / ANNOTATIONS_FOLDER, ".txt", "box file"),
    }
    image_files = found[IMAGES_FOLDER]
    if not image_files:
        raise DatasetError(f"{root / IMAGES_FOLDER} holds no images.\n\n{INSTRUCTIONS}")
    for folder, what in ((MASKS_FOLDER, "mask"), (ANNOTATIONS_FOLDER, "box file")):
        missing = sorted(set(image_files) - set(found[folder]))
        if missing:
            expected = case_files(root, missing[0])[1 if folder == MASKS_FOLDER else 2]
            raise DatasetError(
                f"{image_files[missing[0]]} has no {what}: expected {expected} "
                f"({len(missing)} image(s) without a {what}: {missing[:10]})"
            )
        orphans = sorted(set(found[folder]) - set(image_files))
        if orphans:
            raise DatasetError(
                f"{found[folder][orphans[0]]} has no image: expected {case_files(root, orphans[0])[0]} "
                f"({len(orphans)} {what}(s) without an image: {orphans[:10]})"
            )
    return [Case(image_id, source_of(image_id, path)) for image_id, path in sorted(image_files.items())]


# ------------------------------------------------------------------------------------------ splits ---


def _round(x: float) -> int:
    return int(x + 0.5)


def _apportion(total: int, sizes: dict[str, int]) -> dict[str, int]:
    """``total`` divided among groups in proportion to ``sizes`` (largest remainder; ties to the larger group,
    then the first name), never more than a group has."""
    available = sum(sizes.values())
    if not available:
        return dict.fromkeys(sizes, 0)
    quotas = {name: total * size / available for name, size in sizes.items()}
    counts = {name: int(quota) for name, quota in quotas.items()}
    order = sorted(sizes, key=lambda name: (-(quotas[name] - counts[name]), -sizes[name], name))
    for name in order[: total - sum(counts.values())]:
        counts[name] += 1
    return counts


def split_sizes(sizes: dict[str, int]) -> dict[str, dict[str, int]]:
    """``{split: {source: count}}`` for a copy with ``sizes[source]`` images of each source.

    ``n`` images in all: test gets ``max(1, round(n * 50/170))``, validation ``max(1, round(n * 20/170))``, train
    the rest (50/20/100 on the full 170; every split gets one from 3 images up). Test is shared among the sources
    in proportion to their sizes (largest remainder), then validation in proportion to what each source has left.
    """
    n = sum(sizes.values())
    n_test = min(n, max(1, _round(n * TEST_SHARE)))
    n_validation = min(n - n_test, max(1, _round(n * VALIDATION_SHARE)))
    test = _apportion(n_test, sizes)
    left = {source: sizes[source] - test[source] for source in sizes}
    validation = _apportion(n_validation, left)
    train = {source: left[source] - validation[source] for source in sizes}
    return {"train": train, "validation": validation, "test": test}


def split_of(cases) -> dict[str, str]:
    """The split of each case, ``{image_id: split}``, stratified by source and independent of file order.

    Within each source, images are ordered by the SHA-256 of ``pennfudan/<name>``; the first ones (as many as
    ``split_sizes`` gives that source) go to test, the next to validation, the rest to train. The same set of
    images always gives the same split, in whatever order they are listed.
    """
    cases = list(cases)
    by_source = {source: sorted(c.image_id for c in cases if c.source == source) for source in SOURCES}
    sizes = split_sizes({source: len(ids) for source, ids in by_source.items()})
    splits = {}
    for source, ids in by_source.items():
        ranked = sorted(ids, key=lambda i: (stable_fraction(f"pennfudan/{i}"), i))
        n_test, n_validation = sizes["test"][source], sizes["validation"][source]
        for rank, image_id in enumerate(ranked):
            splits[image_id] = "test" if rank < n_test else "validation" if rank < n_test + n_validation else "train"
    return splits


def cases_by_split(cases, root=None) -> dict[str, list[Case]]:
    """``{split: [Case, ...]}`` in name order; a copy of fewer than ``MIN_IMAGES`` images (a split would be
    empty) is an error here rather than TFDS's "No examples were yielded"."""
    cases = sorted(cases, key=lambda c: c.image_id)
    if len(cases) < MIN_IMAGES:
        raise DatasetError(
            f"{root or 'The Penn-Fudan copy'}: {len(cases)} image(s) are too few to give each of train, validation "
            f"and test one; at least {MIN_IMAGES} are needed"
        )
    splits = split_of(cases)
    return {split: [c for c in cases if splits[c.image_id] == split] for split in SPLITS}


# ------------------------------------------------------------------------------------- annotations ---


def parse_annotation(path, image_id: str | None = None) -> Annotation:
    """The image size and boxes of a PASCAL Annotation 1.00 box file. The object numbers must run 1..n in order
    and n must be the "Objects with ground truth" count; a missing size or count line, or a "Bounding box"
    line in another format, is an error naming the file and line. With ``image_id``, the file names its
    "Image filename" and "Pixel mask" lines give (whatever folder precedes them) must be that image's."""
    path = epath.Path(path)
    try:
        text = path.read_bytes().decode("utf-8", errors="replace")
    except OSError as e:
        raise DatasetError(f"{path}: cannot read the box file ({e})") from e
    size = count = None
    boxes = []
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        where = f"{path}, line {number}"
        if line.startswith("Bounding box"):
            match = _BOX.match(line)
            if not match:
                raise DatasetError(
                    f'{where}: expected \'Bounding box for object <k> "<label>" (Xmin, Ymin) - (Xmax, Ymax) : '
                    f"(<x>, <y>) - (<x>, <y>)', got {line!r}"
                )
            k = int(match.group("k"))
            if k != len(boxes) + 1:
                raise DatasetError(f"{where}: box of object {k} where object {len(boxes) + 1} was expected")
            boxes.append(tuple(int(match.group(g)) for g in ("x0", "y0", "x1", "y1")))
        elif line.startswith("Image size"):
            match = _SIZE.match(line)
            if not match:
                raise DatasetError(f"{where}: expected 'Image size (X x Y x C) : <w> x <h> x <c>', got {line!r}")
            size = int(match.group("w")), int(match.group("h"))
        elif line.startswith("Objects with ground truth"):
            match = _COUNT.match(line)
            if not match:
                raise DatasetError(f"{where}: expected 'Objects with ground truth : <n> {{ ... }}', got {line!r}")
            count = int(match.group("n"))
        elif image_id is not None:
            _check_name(line, where, image_id)
    if size is None:
        raise DatasetError(f"{path}: no 'Image size (X x Y x C) : <w> x <h> x <c>' line; not a PASCAL box file?")
    if count is None:
        raise DatasetError(f"{path}: no 'Objects with ground truth : <n> {{ ... }}' line; not a PASCAL box file?")
    if count != len(boxes):
        raise DatasetError(f"{path}: says 'Objects with ground truth : {count}' but has {len(boxes)} bounding box(es)")
    return Annotation(width=size[0], height=size[1], boxes=tuple(boxes))


def _check_name(line: str, where: str, image_id: str) -> None:
    for pattern, expected in ((_FILENAME, f"{image_id}.png"), (_PIXEL_MASK, f"{image_id}{MASK_SUFFIX}")):
        match = pattern.match(line)
        if match and match.group("name").replace("\\", "/").rsplit("/", 1)[-1] != expected:
            raise DatasetError(
                f"{where}: names {match.group('name')!r}, expected a file named {expected} "
                f"(is this the box file of another image?)"
            )


# ------------------------------------------------------------------------------------------- masks ---


def read_instance_mask(path) -> np.ndarray:
    """The instance label image at ``path`` as ``uint8`` ``(H, W)`` (0 background, k = object k), read by
    segio's one label-mask reader (``segio.images.read_label_mask``: the integers it holds, upright). A colour
    mask, values above 255 or an unreadable file are a ``DatasetError`` naming it."""
    try:
        return images.read_label_mask(path)
    except images.ImageReadError as e:
        raise DatasetError(f"{e} (an instance mask holds object numbers: 0 background, k = pedestrian k)") from e


def _read_image(path) -> np.ndarray:
    try:
        return images.read_image(path)
    except images.ImageReadError as e:
        raise DatasetError(str(e)) from e


def instance_extents(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(values, extents)``: the non-zero values of ``mask`` in increasing order and, for each, its extent
    ``(Xmin, Ymin, Xmax, Ymax)`` in the box files' convention (1-based, inclusive)."""
    values = np.flatnonzero(np.bincount(mask.ravel(), minlength=1))
    values = values[values > 0]
    extents = []
    for k in values:
        pixels = mask == k
        rows, cols = np.flatnonzero(pixels.any(axis=1)), np.flatnonzero(pixels.any(axis=0))
        extents.append((cols[0] + 1, rows[0] + 1, cols[-1] + 1, rows[-1] + 1))
    return values, np.array(extents, dtype=np.int64).reshape(-1, 4)


def check_consistent(annotation: Annotation, mask: np.ndarray, image_shape, files) -> None:
    """A box file, its mask and its image must agree: sizes, the mask's values 1..n with n the number of boxes,
    every box inside the image and within ``BOX_TOLERANCE`` pixels of the mask's extent of its value."""
    image_path, mask_path, box_path = files
    height, width = image_shape[:2]
    if mask.shape[:2] != (height, width):
        raise DatasetError(
            f"{mask_path} is {mask.shape[1]}x{mask.shape[0]} but its image {image_path} is {width}x{height}: "
            f"expected the same size (an instance mask is not resized)"
        )
    if (annotation.width, annotation.height) != (width, height):
        raise DatasetError(
            f"{box_path}: says 'Image size (X x Y x C) : {annotation.width} x {annotation.height}' but "
            f"{image_path} is {width}x{height}"
        )
    values, extents = instance_extents(mask)
    expected = np.arange(1, len(values) + 1)
    if not np.array_equal(values, expected):
        missing = sorted(set(range(1, int(values[-1]) + 1)) - set(values.tolist()))
        raise DatasetError(
            f"{mask_path}: object numbers {values.tolist()} skip {missing}; expected 1..n without gaps "
            f"(value k = pedestrian k of {box_path.name})"
        )
    if len(values) != len(annotation.boxes):
        raise DatasetError(
            f"{box_path}: lists {len(annotation.boxes)} object(s) but its mask {mask_path} holds {len(values)} "
            f"(values {values.tolist()}); expected one box per mask value"
        )
    for k, (box, extent) in enumerate(zip(annotation.boxes, extents.tolist()), start=1):
        x0, y0, x1, y1 = box
        if not (1 <= x0 <= x1 <= width and 1 <= y0 <= y1 <= height):
            raise DatasetError(
                f"{box_path}: box of object {k} {_corners(box)} is not inside the {width}x{height} image "
                f"(corners count from (1, 1) to ({width}, {height}))"
            )
        off = max(abs(b - e) for b, e in zip(box, extent))
        if off > BOX_TOLERANCE:
            raise DatasetError(
                f"{box_path}: box of object {k} {_corners(box)} does not match value {k} of its mask {mask_path}, "
                f"which spans {_corners(extent)}: an edge is {off} pixels off, expected at most {BOX_TOLERANCE}"
            )


def _corners(box) -> str:
    x0, y0, x1, y1 = (int(v) for v in box)
    return f"({x0}, {y0}) - ({x1}, {y1})"


def load_example(root, case: Case) -> dict:
    """Decode and cross-check one case into the builder's features.

    ``objects``: one entry per pedestrian k = 1..n, ``bbox`` the box file's box normalized as
    ``tfds.features.BBox`` (ymin, xmin, ymax, xmax in [0, 1], pixel edges: ``(Ymin - 1) / H``, ``(Xmin - 1) / W``,
    ``Ymax / H``, ``Xmax / W``), ``area`` the number of mask pixels of value k (as COCO's area), ``id`` = k.
    """
    files = case_files(root, case.image_id)
    image_path, mask_path, box_path = files
    for path, what in zip(files, ("image", "mask", "box file")):
        if not path.exists():
            raise DatasetError(f"{path}: {what} of {case.image_id} is missing")
    annotation = parse_annotation(box_path, case.image_id)
    image = _read_image(image_path)
    mask = read_instance_mask(mask_path)
    check_consistent(annotation, mask, image.shape, files)
    height, width = image.shape[:2]
    boxes = np.array(annotation.boxes, dtype=np.float64).reshape(-1, 4)
    bbox = np.stack(
        [(boxes[:, 1] - 1) / height, (boxes[:, 0] - 1) / width, boxes[:, 3] / height, boxes[:, 2] / width], axis=-1
    ).astype(np.float32)
    ids = np.arange(1, len(boxes) + 1, dtype=np.int64)
    area = np.bincount(mask.ravel(), minlength=len(ids) + 1)[1:].astype(np.int64)
    return {
        "image": image,
        "instance_mask": mask[..., None],
        "objects": {"bbox": bbox, "area": area, "id": ids},
        "source": case.source,
        "image_id": case.image_id,
    }


def read_cases(manual_dir) -> tuple[epath.Path, dict[str, list[Case]]]:
    """Locate and index the download once; returns ``(root, {split: [Case, ...]})``."""
    root = find_root(manual_dir)
    return root, cases_by_split(read_index(root), root)
