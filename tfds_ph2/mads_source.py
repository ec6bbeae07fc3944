"""Reading the Kaggle "Segmentation Full Body MADS" download: pairing frames with masks and splitting
by recording so that near-identical frames never land in two splits."""

from __future__ import annotations

import csv
import io
import re

import numpy as np
from etils import epath

from segio import images
from segio.splits import split_of_name
from tfds_ph2.common import DatasetError, fit_mask, require_dir, subdirs

SPLIT_SHARES = {"train": 0.8, "validation": 0.1, "test": 0.1}
SUFFIXES = (".png", ".jpg", ".jpeg")
_FRAME_NAME = re.compile(r"^(?P<recording>.+)_C(?P<camera>\d+)_(?P<frame>\d+)$")

INSTRUCTIONS = """\
MADS must be downloaded by hand from Kaggle:
  1. Download https://www.kaggle.com/datasets/tapakah68/segmentation-full-body-mads-dataset
     (`kaggle datasets download tapakah68/segmentation-full-body-mads-dataset`) and unzip it.
  2. Build: `tfds build tfds_ph2 --config mads --manual_dir /path/to/unzipped/folder --imports tfds_ph2`
     The builder finds `images/` and `masks/` anywhere up to three levels below that folder (the archive
     nests `segmentation_full_body_mads_dataset_1192_img/` twice); `collages/` is not used."""


def find_root(manual_dir) -> epath.Path:
    """The shallowest folder below ``manual_dir`` that holds both ``images/`` and ``masks/``."""
    manual_dir = epath.Path(manual_dir)
    require_dir(manual_dir, "The manual download folder", INSTRUCTIONS)
    level = [manual_dir]
    for _ in range(4):
        found = [d for d in level if (d / "images").is_dir() and (d / "masks").is_dir()]
        if len(found) > 1:
            raise DatasetError(f"Several MADS folders found, pass one of them as --manual_dir: {found}")
        if found:
            return found[0]
        level = [child for folder in level for child in subdirs(folder)]
    raise DatasetError(f"No folder with both images/ and masks/ found in {manual_dir}.\n\n{INSTRUCTIONS}")


def _by_stem(folder: epath.Path) -> dict[str, epath.Path]:
    files: dict[str, epath.Path] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith("."):
            continue
        if path.suffix.lower() not in SUFFIXES:
            raise DatasetError(f"{path}: unexpected file; expected only {'/'.join(SUFFIXES)} images in {folder}")
        if path.stem in files:
            raise DatasetError(f"{path} and {files[path.stem]} have the same name: cannot tell which to use")
        files[path.stem] = path
    return files


def pair_files(root: epath.Path) -> dict[str, tuple[epath.Path, epath.Path]]:
    """Image and mask of each frame by file stem; an image without mask (or a mask without image) is an
    error, and so is a ``df.csv`` row naming a file that is not there."""
    images, masks = _by_stem(root / "images"), _by_stem(root / "masks")
    if not images:
        raise DatasetError(f"{root / 'images'} holds no images")
    missing_masks = sorted(set(images) - set(masks))
    if missing_masks:
        raise DatasetError(
            f"{images[missing_masks[0]]} has no mask in {root / 'masks'} "
            f"({len(missing_masks)} image(s) without a mask: {missing_masks[:10]})"
        )
    missing_images = sorted(set(masks) - set(images))
    if missing_images:
        raise DatasetError(
            f"{masks[missing_images[0]]} has no image in {root / 'images'} "
            f"({len(missing_images)} mask(s) without an image: {missing_images[:10]})"
        )
    _check_index(root, images, masks)
    return {stem: (images[stem], masks[stem]) for stem in sorted(images)}


def _check_index(root: epath.Path, images: dict, masks: dict) -> None:
    """``df.csv`` (optional) lists the pairs; a row naming a file that is not there is an error."""
    for folder in (root, root.parent):
        index = folder / "df.csv"
        if index.exists():
            break
    else:
        return
    rows = csv.DictReader(io.StringIO(index.read_text()))
    for number, row in enumerate(rows, start=2):
        for column, known in (("images", images), ("masks", masks)):
            name = (row.get(column) or "").strip()
            if name and epath.Path(name).stem not in known:
                raise DatasetError(f"{index}, line {number}: {column} entry {name!r} is not in {root / column}")


def recording_of(stem: str) -> str:
    """The recording a frame belongs to (``HipHop_HipHop1_C0_00180`` -> ``HipHop_HipHop1``); names that do not
    follow the MADS pattern are their own group."""
    match = _FRAME_NAME.match(stem)
    return match.group("recording") if match else stem


def split_of(stem: str) -> str:
    """``train``/``validation``/``test`` (about 80/10/10) from a stable hash of the recording, so every frame
    and camera of one recording share a split whatever other files are present."""
    return split_of_name(recording_of(stem), SPLIT_SHARES, salt="mads/")


def pairs_by_split(root: epath.Path, pairs: dict) -> dict[str, list]:
    """``{split: [(stem, (image, mask)), ...]}``; a split left empty (too few recordings) is an error here
    rather than TFDS's "No examples were yielded"."""
    by_split = {s: [(stem, files) for stem, files in pairs.items() if split_of(stem) == s] for s in SPLIT_SHARES}
    for split, members in by_split.items():
        if not members:
            recordings = len({recording_of(stem) for stem in pairs})
            raise DatasetError(
                f"{root}: no frame falls into the {split} split: the {len(pairs)} frames come from {recordings} "
                f"recording(s), and all frames of a recording share a split (about "
                f"{'/'.join(f'{v:.0%}' for v in SPLIT_SHARES.values())} of the recordings go to "
                f"{'/'.join(SPLIT_SHARES)}); add more recordings"
            )
    return by_split


def load_example(stem: str, image_path: epath.Path, mask_path: epath.Path) -> dict:
    """Decode one frame; most real masks are stored smaller than their frame and are resized (nearest) by the
    one rule of ``segio.images.fit_mask_to_image``."""
    image = images.read_image(image_path)
    mask = fit_mask(images.read_binary_mask(mask_path), image.shape, image_path, mask_path)
    return {"image": image, "segmentation_mask": mask[..., None].astype(np.uint8), "image_id": stem}
