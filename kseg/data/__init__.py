"""Input pipelines: a dataset name and split in, batched ``(image, mask)`` tensors ready for ``fit`` out.

Names are ``tfds_ph2/ph2``, ``tfds_ph2/mads``, ``tfds_ph2/synthetic``, ``tfds_ph2/pennfudan`` (any ``tfds``
name works), ``folder:PATH`` for a user's own ``PATH/images/*`` + ``PATH/masks/*`` (class masks) or
``PATH/instances/*`` (instance label images), or ``coco:FILE.json`` for a COCO instances file and its images
(``kseg.data.coco_source``). Splits are ``train``, ``validation``, ``test`` or ``all`` (every image).
Images become float32 in [0, 1] at the model size (bilinear, antialiased); masks stay exact labels
(nearest): float32 {0, 1} for binary tasks, int32 class ids for multi-class ones, int32 person ids for
instance datasets.
Decoding and resizing run once and are cached; shuffling, batching, augmentation and prefetching follow, so
the input pipeline keeps up with training.

A folder dataset's files are decoded once before its pipeline is built (``check_folder_files``; the verdict
is cached per file), so a truncated or unreadable file is an ``ImageReadError`` naming it, raised where the
dataset is loaded, and a split whose masks are all empty is a warning. Binary masks are read by the one rule
of ``segio.images`` (``mask_to_binary``). A file that breaks later, inside the running pipeline, reaches the
caller wrapped in a ``tf.errors`` error: ``reraise_read_errors()`` turns it back into the ``ImageReadError``.
"""

from __future__ import annotations

import atexit
import collections
import concurrent.futures
import contextlib
import dataclasses
import difflib
import functools
import gc
import hashlib
import json
import logging
import os
import pathlib
import re
import sys
import tempfile
import threading
import time

import numpy as np
import tensorflow as tf
from PIL import ImageOps

from kseg.core import imageio, settings
from kseg.core.defaults import IMAGE_SIZE
from kseg.core.errors import KsegError
from kseg.data import coco_source
from kseg.data.augment import Augmentation, augment_batch, augment_keypoints, flip_permutation, get_augmentation
from kseg.data.preprocessing import resize_image, resize_keypoints, scale_to_unit
from segio import splits
from segio.images import LOSSY_FORMATS

logger = logging.getLogger(__name__)

FOLDER_PREFIX = settings.FOLDER_PREFIX  # one spelling for the checkers and the readers
COCO_PREFIX = settings.COCO_PREFIX
SPLITS = ("train", "validation", "test")
ALL = "all"
KSEG_DATASETS = ("tfds_ph2/ph2", "tfds_ph2/mads", "tfds_ph2/synthetic", "tfds_ph2/pennfudan", "tfds_ph2/lspet")
#: The kinds of masks a dataset can hold (``DatasetSpec.kind``).
SEMANTIC, INSTANCES, KEYPOINTS = "semantic", "instances", "keypoints"
#: The TFDS feature that holds each kind's labels (keypoints: ``[J, 2]`` pixels, beside ``visibility`` ``[J]``).
MASK_FEATURES = {SEMANTIC: "segmentation_mask", INSTANCES: "instance_mask", KEYPOINTS: "keypoints"}
#: The sub-folder that holds a folder dataset's masks: its name declares the kind.
MASK_FOLDERS = {SEMANTIC: "masks", INSTANCES: "instances"}
#: The classes of every instance dataset: each person has their own id, and all are one class.
PERSON_CLASSES = ("background", "person")


class DataError(KsegError, ValueError):
    """A dataset name, split, feature, folder or argument that cannot be used; the message names it and what
    was expected. Every error kseg.data raises for a user to act on is one (besides ``ImageReadError``)."""


class DatasetNotReadyError(DataError, RuntimeError):
    """A TFDS dataset that needs a manual download is neither built nor given a usable manual dir."""


class FolderDatasetError(DataError, FileNotFoundError):
    """A ``folder:`` dataset lacks its images/ or masks/ (or instances/) folder, or a file its counterpart."""


class CocoDatasetError(DataError):
    """A ``coco:`` dataset's JSON file, or an annotation or image it names, cannot be used; the message names
    the JSON file and the culprit (``coco_source.CocoFileError``, raised again as a DataError)."""


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """What a pipeline needs to know about a dataset before reading it."""

    name: str
    num_classes: int  # model output channels: 1 for binary masks, K for K-class masks
    class_names: tuple
    split_sizes: dict  # the dataset's own splits; "all" is their sum (see size_of)
    features: tuple = ()  # scalar ClassLabel/Text features that load_examples(extra_features=...) can add
    #: The feature results are reported per value of by default, as the dataset declares it in its TFDS
    #: metadata (``group_by``; PH2: ``clinical_diagnosis``), or None.
    default_group_by: str | None = None
    #: What its masks hold: ``"semantic"`` (a class per pixel) or ``"instances"`` (an id per person, 0
    #: background) or ``"keypoints"`` (one person's joints, ``class_names`` naming them); the task that trains
    #: on it must be of the same kind (``kseg.tasks``).
    kind: str = SEMANTIC

    @property
    def is_binary(self) -> bool:
        return self.num_classes == 1

    @property
    def is_instances(self) -> bool:
        return self.kind == INSTANCES

    @property
    def is_keypoints(self) -> bool:
        return self.kind == KEYPOINTS

    def size_of(self, split: str) -> int:
        """Number of examples in ``split``; ``all`` counts every example, and train, validation or test that the
        dataset lacks count 0. Any other name the dataset has no split of is a DataError."""
        if split == ALL:
            return sum(self.split_sizes.values())
        if "+" in split:  # TFDS split syntax: train+validation+test
            return sum(self.size_of(part.strip()) for part in split.split("+"))
        if split not in self.split_sizes:
            if split in SPLITS:
                return 0
            raise DataError(f"{self.name} has no split {split!r}; it has {', '.join(self.split_sizes)} and {ALL}")
        return self.split_sizes[split]


def kind_text(kind: str) -> str:
    """What a dataset of ``kind`` holds, for messages: "semantic masks", "instances masks", "keypoints"."""
    return kind if kind == KEYPOINTS else f"{kind} masks"


_is_folder = settings.is_folder_dataset
_is_coco = settings.is_coco_dataset


# --------------------------------------------------------------------------------------------- TFDS ---


def _unknown_dataset(name: str, error: Exception) -> DataError:
    """A short error for a name TFDS does not know: the closest names (not TFDS's list of hundreds)."""
    import tensorflow_datasets as tfds

    dataset, _, config = name.partition(":")[0].partition("/")
    kseg_names = ", ".join(KSEG_DATASETS)
    hint = (
        f"kseg's datasets: {kseg_names}, or folder:PATH (PATH/images/ + PATH/masks/ or PATH/instances/), "
        f"or coco:FILE.json"
    )
    try:
        known = tfds.builder_cls(dataset)
    except Exception:  # noqa: BLE001  (any failure means the dataset itself is unknown)
        known = None
    if known is not None:  # the dataset exists: the config or version is what is wrong
        configs = [c.name for c in getattr(known, "BUILDER_CONFIGS", [])]
        if config and configs and config.split(":")[0] not in configs:
            close = difflib.get_close_matches(config, configs, n=3, cutoff=0.5)
            maybe = f"; did you mean {', '.join(f'{dataset}/{c}' for c in close)}?" if close else ""
            return DataError(f"dataset {dataset!r} has no config {config!r}{maybe} Its configs: {', '.join(configs)}")
        first_line = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
        return DataError(f"cannot load dataset {name!r}: {first_line}")
    candidates = set(tfds.list_builders(with_community_datasets=False)) | set(KSEG_DATASETS)
    close = difflib.get_close_matches(name, sorted(candidates), n=5, cutoff=0.6)
    if not close and "/" in name:
        close = difflib.get_close_matches(dataset, sorted(candidates), n=5, cutoff=0.6)
    maybe = f"; closest names: {', '.join(close)}" if close else ""
    return DataError(f"unknown dataset {name!r}{maybe}. {hint}; or any name `tfds.list_builders()` lists")


def _check_manual_dir(name: str, builder, manual_dir) -> None:
    """The manual dir must exist and hold something before TFDS is asked to build from it (TFDS's own check
    ends in an AssertionError and a long traceback)."""
    from etils import epath

    from tfds_ph2 import mads_source, ph2_source

    config = getattr(builder.builder_config, "name", "")
    what, instructions = {
        "ph2": (
            "the PH2 download: the folder PH2Dataset/ holding PH2_dataset.txt and 'PH2 Dataset images/' "
            "(or its parent)",
            ph2_source.INSTRUCTIONS,
        ),
        "mads": (
            "the MADS download: a folder with images/ and masks/ (up to three levels down)",
            mads_source.INSTRUCTIONS,
        ),
    }.get(
        config if builder.name == "tfds_ph2" else "",
        ("the files of the manual download", builder.MANUAL_DOWNLOAD_INSTRUCTIONS or ""),
    )
    path = epath.Path(manual_dir)
    problem = None
    if not path.exists():
        problem = "does not exist"
    elif not path.is_dir():
        problem = "is not a folder"
    elif not any(path.iterdir()):
        problem = "is empty"
    if problem:
        raise DatasetNotReadyError(
            f"{name} is not built in {builder.data_dir_root}, and the manual dir {manual_dir} (--manual-dir) "
            f"{problem}: it should hold {what}.\n\n{instructions.strip()}"
        )


def _check_data_dir(data_dir) -> None:
    """A data dir that is a file, or lies inside one, is one clear error here: TFDS would try to create folders
    in it and fail with a NotADirectoryError traceback."""
    if data_dir is None or "://" in str(data_dir):
        return
    path = pathlib.Path(data_dir).expanduser().absolute()
    existing = next(p for p in (path, *path.parents) if p.exists())  # the root always exists
    if not existing.is_dir():
        where = "is a file" if existing == path else f"lies inside the file {existing}"
        raise DataError(
            f"the data dir {data_dir} (--data-dir) {where}: a TFDS data dir is a folder (where `tfds build` and "
            f"kseg keep built datasets, by default ~/tensorflow_datasets); pass a folder, or leave --data-dir out"
        )


def _tfds_builder(name: str, data_dir=None, manual_dir=None):
    """The TFDS builder for ``name``, prepared on first use (synthetic needs nothing, the others a manual dir)."""
    import tensorflow_datasets as tfds

    import tfds_ph2  # noqa: F401  (registers the tfds_ph2 builder)
    from tfds_ph2.common import DatasetError

    _check_data_dir(data_dir)
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except Exception as e:  # TFDS raises several types for unknown names, configs and versions
        raise _unknown_dataset(name, e) from None
    if not builder.is_prepared():
        config_name = getattr(builder.builder_config, "name", "")
        needs_files = bool(builder.MANUAL_DOWNLOAD_INSTRUCTIONS) and config_name != "synthetic"
        if needs_files:
            if manual_dir is None:
                raise DatasetNotReadyError(
                    f"{name} is not built in {builder.data_dir_root} and no manual dir was given.\n"
                    f"Pass --manual-dir (or manual_dir=) pointing at the download, or build it with\n"
                    f"  tfds build tfds_ph2 --config {name.split('/')[-1]} --manual_dir PATH --imports tfds_ph2\n\n"
                    f"{builder.MANUAL_DOWNLOAD_INSTRUCTIONS}\n\n"
                    f"To try kseg without any download use the synthetic set: --preset synthetic-unet "
                    f"(dataset tfds_ph2/synthetic)."
                )
            _check_manual_dir(name, builder, manual_dir)
        config = tfds.download.DownloadConfig(manual_dir=manual_dir if needs_files else None)
        try:
            builder.download_and_prepare(download_config=config)
        except DatasetError as e:
            raise DatasetNotReadyError(f"cannot build {name} from {manual_dir}: {e}") from None
    return builder


def _scalar_features(features) -> dict:
    """``{name: feature}`` of the top-level ClassLabel and Text features (what results can be grouped by)."""
    import tensorflow_datasets as tfds

    kinds = (tfds.features.ClassLabel, tfds.features.Text)
    return {
        name: feature
        for name, feature in features.items()
        if isinstance(feature, kinds) and name != "image_id" and not getattr(feature, "shape", ())
    }


def _mask_kind(name: str, builder) -> str:
    """The kind of masks a TFDS dataset holds, from its features."""
    for kind, feature in MASK_FEATURES.items():
        if feature in builder.info.features:
            return kind
    raise DataError(
        f"{name} has neither a segmentation_mask nor an instance_mask feature (its features: "
        f"{', '.join(builder.info.features)}); kseg trains on datasets with per-pixel class masks (e.g. "
        f"tfds_ph2/ph2) or instance label images (tfds_ph2/pennfudan)"
    )


def _joint_names(name: str, builder) -> tuple:
    """A keypoint dataset's joint names, in the order of its ``keypoints`` rows (TFDS metadata ``joint_names``)."""
    names = tuple((builder.info.metadata or {}).get("joint_names") or ())
    count = builder.info.features[MASK_FEATURES[KEYPOINTS]].shape[0]
    if len(names) != count:
        raise DataError(
            f"{name}: its metadata names {len(names)} joints (joint_names) but its keypoints hold {count}; a "
            f"keypoint dataset declares the name of each joint, in order, e.g. left_knee, right_knee"
        )
    return names


def _tfds_spec(name: str, data_dir=None, manual_dir=None) -> DatasetSpec:
    builder = _tfds_builder(name, data_dir, manual_dir)
    kind = _mask_kind(name, builder)
    mask_feature = builder.info.features[MASK_FEATURES[kind]]
    names = tuple(getattr(mask_feature, "names", None) or ())
    num_labels = len(names) or int(getattr(mask_feature, "num_classes", 0) or 2)
    if kind == INSTANCES:  # one class, person; each person its own id
        names, num_labels = ("background", "person"), 2
    if kind == KEYPOINTS:  # a channel per joint
        names = _joint_names(name, builder)
        return DatasetSpec(
            name=name,
            kind=kind,
            num_classes=len(names),
            class_names=names,
            split_sizes={s: info.num_examples for s, info in builder.info.splits.items()},
        )
    return DatasetSpec(
        name=name,
        kind=kind,
        num_classes=1 if num_labels <= 2 else num_labels,
        class_names=names or tuple(f"class_{i}" for i in range(num_labels)),
        split_sizes={s: info.num_examples for s, info in builder.info.splits.items()},
        features=tuple(sorted(_scalar_features(builder.info.features))),
        default_group_by=(builder.info.metadata or {}).get("group_by"),
    )


def _tfds_examples(name, split, data_dir, manual_dir, extra_features=()) -> tf.data.Dataset:
    import tensorflow_datasets as tfds

    builder = _tfds_builder(name, data_dir, manual_dir)
    mask_feature = MASK_FEATURES[_mask_kind(name, builder)]
    unknown_splits = [p.strip() for p in split.split("+") if p.strip() not in builder.info.splits]
    if split != ALL and unknown_splits:
        raise DataError(
            f"{name} has no split {unknown_splits[0]!r}; it has {', '.join(builder.info.splits)} and {ALL} "
            f"(and sums such as train+validation+test)"
        )
    scalar = _scalar_features(builder.info.features)
    unknown = [f for f in extra_features if f not in scalar]
    if unknown:
        raise DataError(
            f"{name} has no feature {unknown[0]!r} to group by; its scalar features are: "
            f"{', '.join(sorted(scalar)) or 'none'}"
        )
    # kseg caches after resizing; TFDS's own auto-cache would hold a second, full-size copy.
    read_config = tfds.ReadConfig(try_autocache=False)
    dataset = builder.as_dataset(split=split, shuffle_files=False, read_config=read_config)
    label_names = {
        f: tf.constant(scalar[f].names) for f in extra_features if isinstance(scalar[f], tfds.features.ClassLabel)
    }

    def select(ex):
        if mask_feature == MASK_FEATURES[KEYPOINTS]:  # (x, y, visible) per joint
            visible = tf.cast(ex["visibility"], tf.float32)[:, None]
            label = {"keypoints": tf.concat([tf.cast(ex[mask_feature], tf.float32), visible], axis=-1)}
        else:
            label = {"mask": ex[mask_feature]}
        result = {"image": ex["image"], **label, "image_id": ex["image_id"]}
        for feature in extra_features:  # each under its own name, as a string
            value = ex[feature]
            result[feature] = tf.gather(label_names[feature], value) if feature in label_names else value
        return result

    return dataset.map(select, num_parallel_calls=tf.data.AUTOTUNE)


# ------------------------------------------------------------------------------------------ folders ---


def folder_kind(path: str) -> str:
    """What a folder dataset's masks hold, declared by their folder's name: ``masks/`` class masks
    (``SEMANTIC``), ``instances/`` instance label images (``INSTANCES``: 0 background, k = person k), in
    ``PATH`` or in each of its split folders. Both in one dataset is a DataError: which to train on would be a
    guess. Neither is taken as semantic (``_pairs_in`` then names the missing masks/)."""
    roots = [f"{path.rstrip('/')}/{s}" for s in folder_splits(path)] or [path.rstrip("/")]
    found = {
        kind: f"{root}/{sub}/"
        for root in reversed(roots)  # reversed: the first root's folder is the one named
        for kind, sub in MASK_FOLDERS.items()
        if tf.io.gfile.isdir(f"{root}/{sub}")
    }
    if len(found) > 1:
        raise FolderDatasetError(
            f"folder dataset {path!r} has both {found[SEMANTIC]} and {found[INSTANCES]}: keep one, masks/ for class "
            f"masks or instances/ for instance label images (one id per person)"
        )
    return next(iter(found), SEMANTIC)


def folder_pairs(path: str, split: str) -> list[tuple[str, str, str]]:
    """``(image_id, image_path, mask_path)`` for ``split`` of a ``PATH/images`` + ``PATH/masks`` (or
    ``PATH/instances``, ``folder_kind``) folder.

    A folder with ``train/``, ``validation/``, ``test/`` sub-folders (each with images/ and masks/) uses them
    (``all`` takes every sub-folder; an image id that two of them share gets the sub-folder's name as a
    prefix); otherwise each file goes to a split by a stable hash of its name (80/10/10), and ``all`` takes
    every file. Ids are file stems.
    """
    if split not in (*SPLITS, ALL):
        raise DataError(f"folder dataset {path!r}: unknown split {split!r}; use train, validation, test or all")
    split_folders = folder_splits(path)
    masks = MASK_FOLDERS[folder_kind(path)]
    if split_folders:
        if split == ALL:
            per_folder = {s: _pairs_in(path, f"{path.rstrip('/')}/{s}", masks) for s in split_folders}
            counts = collections.Counter(stem for pairs in per_folder.values() for stem, _, _ in pairs)
            return [
                (f"{s}_{stem}" if counts[stem] > 1 else stem, image, mask)
                for s, pairs in per_folder.items()
                for stem, image, mask in pairs
            ]
        if split not in split_folders:
            raise DataError(f"folder dataset {path!r} has split folders {split_folders} but no {split!r}")
        return _pairs_in(path, f"{path.rstrip('/')}/{split}", masks)
    pairs = _pairs_in(path, path.rstrip("/"), masks)
    return [p for p in pairs if split == ALL or splits.split_of_name(p[0], salt="folder/") == split]


def _pairs_in(path: str, root: str, masks_folder: str = "masks") -> list[tuple[str, str, str]]:
    for sub in ("images", masks_folder):
        if not tf.io.gfile.isdir(f"{root}/{sub}"):
            raise FolderDatasetError(
                f"folder dataset {path!r}: {root}/{sub}/ is missing; expected PATH/images/* and PATH/masks/* "
                f"(class masks) or PATH/instances/* (instance label images) with matching file names"
            )
    stem = lambda p: p.rsplit("/", 1)[-1].rsplit(".", 1)[0]
    images = {stem(p): p for p in imageio.list_images(f"{root}/images")}
    masks = {stem(p): p for p in imageio.list_images(f"{root}/{masks_folder}")}
    if not images:
        raise FolderDatasetError(f"folder dataset {path!r}: no images in {root}/images")
    unmatched = sorted(set(images) ^ set(masks))
    if unmatched:
        where = images.get(unmatched[0]) or masks.get(unmatched[0])
        raise FolderDatasetError(
            f"folder dataset {path!r}: {where} has no counterpart with the same name in "
            f"{masks_folder if unmatched[0] in images else 'images'}/ ({len(unmatched)} unmatched)"
        )
    return [(s, images[s], masks[s]) for s in sorted(images)]


def folder_splits(path: str) -> list[str]:
    """The split sub-folders (``train/``, ``validation/``, ``test/`` with ``images/`` inside) a folder has."""
    return [s for s in SPLITS if tf.io.gfile.isdir(f"{path.rstrip('/')}/{s}/images")]


# --- checking a folder's files once, before any pipeline reads them ---


def _cache_dir() -> pathlib.Path:
    """``$KSEG_CACHE_DIR``, else ``$XDG_CACHE_HOME/kseg``, else ``~/.cache/kseg``; never the dataset folder
    (it may be read-only or shared)."""
    if os.environ.get("KSEG_CACHE_DIR"):
        return pathlib.Path(os.environ["KSEG_CACHE_DIR"])
    return pathlib.Path(os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache") / "kseg"


def _check_cache_file(folder: str) -> pathlib.Path:
    where = folder if "://" in folder else os.path.abspath(folder)
    return _cache_dir() / "checked-files" / f"{hashlib.sha256(where.encode()).hexdigest()[:24]}.json"


def _load_checks(cache_file: pathlib.Path) -> dict:
    try:
        entries = json.loads(cache_file.read_text()).get("files", {})
        return entries if isinstance(entries, dict) else {}
    except (OSError, ValueError, AttributeError):
        return {}


def _save_checks(cache_file: pathlib.Path, folder: str, entries: dict) -> None:
    """Write the verdicts atomically; a cache that cannot be written only costs the next run a re-check."""
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        merged = {**_load_checks(cache_file), **entries}
        with tempfile.NamedTemporaryFile("w", dir=cache_file.parent, suffix=".tmp", delete=False) as f:
            json.dump({"folder": folder, "files": merged}, f)
        os.replace(f.name, cache_file)
    except OSError as e:
        logger.debug("cannot write the file-check cache %s: %s", cache_file, e)


def _cached(entries: dict, key: list, length: int) -> list | None:
    """The cached ``[kind, size, mtime, [h, w], ...]`` (``length`` items) of ``key`` (``[path, kind, size,
    mtime]``) if it still holds."""
    entry = entries.get(key[0])
    if isinstance(entry, list) and len(entry) == length and entry[:3] == key[1:] and isinstance(entry[3], list):
        return entry
    return None


def _stat(path: str) -> list:
    try:
        stat = tf.io.gfile.stat(path)
    except tf.errors.NotFoundError:
        raise imageio.ImageReadError(f"{path}: file not found") from None
    except tf.errors.OpError as e:
        raise imageio.ImageReadError(f"{path}: cannot read file ({e.message})") from None
    return [int(stat.length), int(stat.mtime_nsec)]


#: How a folder dataset's masks are read: binary (the binary mask rule), class ids (``--num-classes``) or
#: instance ids (an ``instances/`` folder).
BINARY, LABELS = "binary", "labels"


def _reading(kind: str, multi_class) -> str:
    return INSTANCES if kind == INSTANCES else LABELS if multi_class else BINARY


def _read_mask(path: str, reading: str) -> np.ndarray:
    if reading == INSTANCES:
        return read_instance_mask(path)
    if reading == LABELS:
        return imageio.read_label_mask(path)
    try:
        return imageio.read_binary_mask(path)
    except imageio.MaskValuesError as e:
        if not _holds_ids(path):
            raise
        instances = f"{path.rsplit('/', 2)[0]}/instances/"
        raise type(e)(f"{e}; if they are instance label images (one id per person), put them in {instances}") from None


def _holds_ids(path: str) -> bool:
    """Whether a mask the binary rule refused could hold ids: a lossless single-channel integer image."""
    try:
        image = imageio.open_image(path)
    except imageio.ImageReadError:
        return False
    return image.format not in LOSSY_FORMATS and image.mode in _ID_MODES


#: Single-channel integer modes an id image is read from (palette images by index).
_ID_MODES = ("1", "L", "P", "I", "I;16", "I;16L", "I;16B", "I;16N")
_COLOUR_MODES = ("RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "LAB", "HSV", "LA", "La", "PA", "RGBa")


def read_instance_mask(path: str) -> np.ndarray:
    """The instance label image at ``path`` as ``int32`` ``(H, W)``: 0 background, k = person k, read exactly
    (8- or 16-bit single-channel, palette by index), upright.

    Refused, naming the file: a colour image (an instance label image holds one id per pixel, not a colour
    per person), a lossy file (JPEG changes the ids along every edge), float or negative values, and a mask
    holding only 0 and the type's maximum (255, 65535): a binary mask, which belongs in masks/.
    """
    image = imageio.open_image(path)
    if image.format in LOSSY_FORMATS:
        raise imageio.ImageReadError(
            f"{path}: a {image.format} file; an instance label image must be lossless (PNG): lossy compression "
            f"changes the ids along every edge"
        )
    if image.mode not in _ID_MODES:
        what = f"a colour image (mode {image.mode})" if image.mode in _COLOUR_MODES else f"of mode {image.mode}"
        raise imageio.ImageReadError(
            f"{path}: {what}; an instance label image holds one id per pixel (0 background, k = person k): "
            f"save it as a single-channel 8- or 16-bit PNG"
        )
    if imageio.exif_rotates(image):
        image = ImageOps.exif_transpose(image)
    ids = np.asarray(image)
    ids = ids.astype(np.uint8) if ids.dtype == bool else ids
    if ids.size and (ids.min() < 0 or ids.max() > np.iinfo(np.uint16).max):
        raise imageio.ImageReadError(
            f"{path}: ids from {ids.min()} to {ids.max()}; expected 0 (background) to 65535 in an instance label image"
        )
    people = _ids_in(ids)
    top = 255 if ids.dtype == np.uint8 else 65535
    if people.tolist() == [top]:
        raise imageio.ImageReadError(
            f"{path}: holds only 0 and {top}, a binary mask; an instance label image numbers each person 1, 2, ... "
            f"(binary masks go in masks/, not instances/)"
        )
    return ids.astype(np.int32)


def _ids_in(ids: np.ndarray) -> np.ndarray:
    """The person ids (non-zero values) of an instance label image, in increasing order."""
    if ids.dtype.kind == "u" and ids.dtype.itemsize <= 2:
        values = np.flatnonzero(np.bincount(ids.ravel(), minlength=1))
    else:
        values = np.unique(ids)
    return values[values > 0]


def _count(mask: np.ndarray, reading: str) -> int:
    """What ``check_folder_files`` keeps per mask: foreground pixels, or people in an instance label image."""
    return int(_ids_in(mask).size) if reading == INSTANCES else int(np.count_nonzero(mask))


def _decode_pair(image_path: str, mask_path: str, reading: str) -> tuple[list, list, int]:
    """Shapes ``[h, w]`` of a fully decoded image and mask, and the mask's foreground pixel count (non-zero
    labels; for instances the number of people); a read error names its file."""
    image_shape = list(imageio.read_image(image_path).shape[:2])
    mask = _read_mask(mask_path, reading)
    return image_shape, list(mask.shape[:2]), _count(mask, reading)


#: What a cached verdict was decided by. The "/2" readers apply EXIF orientation and read binary masks by
#: the values they hold (segio.images); verdicts of the older readers ("image", "binary", "labels", which
#: read 16-bit 0/255 masks as empty and kept no foreground count) do not match these kinds and are redone.
_IMAGE_KIND = "image/2"
_MASK_KINDS = {BINARY: "binary/2", LABELS: "labels/2", INSTANCES: "instances/1"}


def check_folder_files(path: str, pairs, multi_class: bool = False) -> dict[str, int]:
    """Decode every image and mask of ``pairs`` (``folder_pairs`` rows of the folder dataset ``path``) fully
    once and check each mask against its image (``segio.images.check_mask_fits``); raise an
    ``ImageReadError`` naming the first bad file (and how many more there are). Returns the foreground pixel
    count of each mask by path (of an instance label image: its number of people), so that a split of empty
    masks can be told before training on it. Masks are read as ``folder_kind(path)`` and ``multi_class`` say.

    A truncated JPEG only shows when it is decoded to the end, and inside a running tf.data pipeline it would
    surface as a TensorFlow traceback; here it is one message before any pipeline exists. Verdicts are cached
    by path, size and modification time in the user's cache dir (``_cache_dir``), so later runs only stat.
    """
    cache_file = _check_cache_file(path)
    cached = _load_checks(cache_file)
    reading = _reading(folder_kind(path), multi_class)
    mask_kind = _MASK_KINDS[reading]
    fresh, todo, errors, foreground = {}, [], [], {}
    for _, image_path, mask_path in pairs:
        try:
            image_key = [image_path, _IMAGE_KIND, *_stat(image_path)]
            mask_key = [mask_path, mask_kind, *_stat(mask_path)]
        except imageio.ImageReadError as e:
            errors.append(e)
            continue
        image_entry, mask_entry = _cached(cached, image_key, 4), _cached(cached, mask_key, 5)
        if image_entry and mask_entry:
            try:
                imageio.check_mask_fits(mask_entry[3], image_entry[3], image_path, mask_path)
                foreground[mask_path] = int(mask_entry[4])
            except imageio.ImageReadError as e:
                errors.append(e)
        else:
            todo.append((image_key, mask_key))
    if todo:
        logger.info(
            "checking %d image/mask pair(s) of folder dataset %s: each file is decoded once, the verdict cached in %s",
            len(todo),
            path,
            cache_file.parent,
        )
        workers = max(1, min(8, os.cpu_count() or 1, len(todo)))
        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
            futures = [pool.submit(_decode_pair, image[0], mask[0], reading) for image, mask in todo]
            for (image_key, mask_key), future in zip(todo, futures):
                try:
                    image_shape, mask_shape, mask_foreground = future.result()
                    imageio.check_mask_fits(mask_shape, image_shape, image_key[0], mask_key[0])
                except imageio.ImageReadError as e:
                    errors.append(e)
                    continue
                fresh[image_key[0]] = [*image_key[1:], image_shape]
                fresh[mask_key[0]] = [*mask_key[1:], mask_shape, mask_foreground]
                foreground[mask_key[0]] = mask_foreground
        _save_checks(cache_file, path, fresh)
    if errors:
        more = f" ({len(errors) - 1} more bad file(s) in folder dataset {path})" if len(errors) > 1 else ""
        raise type(errors[0])(f"{errors[0]}{more}") from None
    return foreground


def warn_if_masks_empty(dataset: str, split: str, foreground_counts) -> None:
    """Log a warning (logger ``kseg.data``) when every mask of a split is empty: a model trained on it learns
    to predict nothing, and nothing else would say why (masks that a reader took for empty once looked so)."""
    counts = list(foreground_counts)
    if counts and not any(counts):
        logger.warning(
            "%s split %s: all %d masks are empty (no foreground pixel); check that the masks are the ones meant, "
            "e.g. with python -m kseg.show %s --split %s",
            dataset,
            split,
            len(counts),
            dataset,
            split,
        )


# --- reading inside the pipeline, and what happens when that fails ---

_PIPELINE_ERRORS: collections.deque = collections.deque(maxlen=64)  # (type, message) raised by _read_pair
_calls_lock = threading.Lock()
_calls = {"active": 0, "last": 0.0, "closing": False, "hooked": False}


#: The dtype of a folder example's mask, by how it is read: ids of more than 255 people stay exact.
_MASK_DTYPES = {BINARY: np.uint8, LABELS: np.uint8, INSTANCES: np.int32}


def _read_pair(image_path, mask_path, reading):
    """One folder example for ``tf.numpy_function``: image ``(H, W, 3)``, mask ``(H, W, 1)`` fitted to it."""
    if _calls["closing"]:  # the interpreter is exiting: produce nothing that needs files (see _finish_pipelines)
        return np.zeros((1, 1, 3), np.uint8), np.zeros((1, 1, 1), _MASK_DTYPES[reading])
    with _calls_lock:
        _calls["active"] += 1
    try:
        image_path, mask_path = image_path.decode(), mask_path.decode()
        image = imageio.read_image(image_path)
        mask = imageio.fit_mask_to_image(_read_mask(mask_path, reading), image.shape, image_path, mask_path)
        return image, mask[..., None]
    except imageio.ImageReadError as e:
        _PIPELINE_ERRORS.append((type(e), str(e)))
        raise
    finally:
        with _calls_lock:
            _calls["active"] -= 1
            _calls["last"] = time.monotonic()


def _finish_pipelines() -> None:
    """At interpreter exit, let folder pipelines wind down while Python can still run their reads.

    The hang this prevents: a tf.data iterator still alive at exit (typically held by the traceback of an
    error that stopped ``fit``: Python keeps it in ``sys.last_traceback``) is destroyed only while the
    interpreter finalizes. Its parallel-map threads are then inside, or about to start, a ``numpy_function``
    call; a thread that asks for the GIL during finalization is terminated by Python, so the iterator's
    destructor waits forever for a call that never returns (0% CPU), or the C++ runtime aborts
    ("terminate called without an active exception", exit 134). So: first make every further read return at
    once, then drop the error's traceback and collect garbage so the iterators go now, then wait until no read
    is running.
    """
    _calls["closing"] = True
    for name in ("last_exc", "last_type", "last_value", "last_traceback"):
        if getattr(sys, name, None) is not None:
            setattr(sys, name, None)
    gc.collect()
    deadline = time.monotonic() + 10.0
    while time.monotonic() < deadline:
        with _calls_lock:
            idle = _calls["active"] == 0 and time.monotonic() - _calls["last"] > 0.1
        if idle:
            return
        time.sleep(0.01)


def _folder_examples(path: str, split: str, multi_class: bool) -> tf.data.Dataset:
    pairs = folder_pairs(path, split)
    if not pairs:
        raise DataError(f"folder dataset {path!r}: split {split!r} is empty")
    reading = _reading(folder_kind(path), multi_class)
    foreground = check_folder_files(path, pairs, multi_class)
    warn_if_masks_empty(f"{FOLDER_PREFIX}{path}", split, foreground.values())
    if not _calls["hooked"]:
        atexit.register(_finish_pipelines)  # registered after TensorFlow's own handlers, so it runs before them
        _calls["hooked"] = True
    stems, image_paths, mask_paths = (list(column) for column in zip(*pairs))

    def read(stem, image_path, mask_path):
        image, mask = tf.numpy_function(
            functools.partial(_read_pair, reading=reading),
            [image_path, mask_path],
            [tf.uint8, tf.as_dtype(_MASK_DTYPES[reading])],
            stateful=False,
        )
        image.set_shape([None, None, 3])
        mask.set_shape([None, None, 1])
        return {"image": image, "mask": mask, "image_id": stem}

    return tf.data.Dataset.from_tensor_slices((stems, image_paths, mask_paths)).map(
        read, num_parallel_calls=tf.data.AUTOTUNE
    )


def _folder_spec(name: str, num_classes: int | None) -> DatasetSpec:
    path = name[len(FOLDER_PREFIX) :]
    split_sizes = {s: len(folder_pairs(path, s)) for s in (folder_splits(path) or SPLITS)}
    if folder_kind(path) == INSTANCES:
        _check_one_class(f"folder dataset {path!r} holds instance label images (instances/)", num_classes)
        return DatasetSpec(
            name=name, kind=INSTANCES, num_classes=1, class_names=PERSON_CLASSES, split_sizes=split_sizes
        )
    num_classes = num_classes or 1
    return DatasetSpec(
        name=name,
        num_classes=num_classes,
        class_names=(
            ("background", "foreground") if num_classes == 1 else tuple(f"class_{i}" for i in range(num_classes))
        ),
        split_sizes=split_sizes,
    )


def _check_one_class(what: str, num_classes: int | None) -> None:
    if num_classes not in (None, 1):
        raise DataError(
            f"{what}: one class, person, each person with their own id; a class count does not apply "
            f"(got num_classes={num_classes})"
        )


# --------------------------------------------------------------------------------------- COCO files ---


@contextlib.contextmanager
def _coco_errors():
    """``coco_source`` cannot import this package (it is imported by it): its errors become DataErrors here."""
    try:
        yield
    except coco_source.CocoFileError as e:
        raise CocoDatasetError(str(e)) from None


def _coco_spec(name: str, num_classes: int | None) -> DatasetSpec:
    path = name[len(COCO_PREFIX) :]
    _check_one_class(f"COCO file {path} holds instances", num_classes)
    with _coco_errors():
        index = coco_source.read_index(path)
    return DatasetSpec(
        name=name,
        kind=INSTANCES,
        num_classes=1,
        class_names=PERSON_CLASSES,
        split_sizes={s: len(index.split(s)) for s in SPLITS},
    )


def _coco_examples(path: str, split: str) -> tf.data.Dataset:
    if split not in (*SPLITS, ALL):
        raise DataError(f"COCO file {path}: unknown split {split!r}; use train, validation, test or all")
    with _coco_errors():
        examples = coco_source.load_split(path, split)
    if not examples:
        raise DataError(f"COCO file {path}: split {split!r} has no image")
    warn_if_masks_empty(f"{COCO_PREFIX}{path}", split, (_ids_in(labels).size for _, _, labels in examples))
    ids, images, masks = zip(*examples)
    return _in_memory_examples(list(ids), list(images), list(masks))


def _in_memory_examples(ids: list, images: list, masks: list) -> tf.data.Dataset:
    """Examples held in NumPy as a tf.data source: images of different sizes go in as ragged tensors (rows of
    pixels of their own width), so no Python runs inside the pipeline; masks come out as int32."""
    heights = np.array([m.shape[0] for m in masks], np.int64)
    row_widths = np.repeat([m.shape[1] for m in masks], heights)

    def ragged(arrays: list, channels: int) -> tf.RaggedTensor:
        flat = np.concatenate([a.reshape(-1, channels) for a in arrays])
        return tf.RaggedTensor.from_nested_row_lengths(flat, [heights, row_widths], validate=False)

    dataset = tf.data.Dataset.from_tensor_slices((ids, ragged(images, 3), ragged(masks, 1)))
    return dataset.map(
        lambda image_id, image, mask: {
            "image": image.to_tensor(),
            "mask": tf.cast(mask.to_tensor(), tf.int32),
            "image_id": image_id,
        },
        num_parallel_calls=tf.data.AUTOTUNE,
    )


def read_error_from(error: BaseException) -> imageio.ImageReadError | None:
    """The ``ImageReadError`` (naming the file) behind ``error``: itself, or the one a folder pipeline raised
    that reached the caller wrapped in a ``tf.errors.OpError`` (InvalidArgumentError, UnknownError) by tf.data;
    None when ``error`` is something else."""
    if isinstance(error, imageio.ImageReadError):
        return error
    if not isinstance(error, tf.errors.OpError):
        return None
    text = error.message or ""
    for kind, message in reversed(_PIPELINE_ERRORS):
        if message in text:
            return kind(message)
    match = re.search(r"\b(?:ImageReadError|MaskSizeError): (.+)", text)
    return imageio.ImageReadError(match.group(1).strip()) if match else None


@contextlib.contextmanager
def reraise_read_errors():
    """``with data.reraise_read_errors(): model.fit(...)``: a file that fails inside a running pipeline
    comes out as the ``ImageReadError`` naming it (a ValueError), not as tf.data's InvalidArgumentError with
    a traceback; other errors pass unchanged."""
    try:
        yield
    except tf.errors.OpError as e:
        error = read_error_from(e)
        if error is None:
            raise
        raise error from None


# ----------------------------------------------------------------------------------------- public API ---


def input_folders(name: str, data_dir=None, manual_dir=None) -> dict:
    """The folders whose files are the dataset ``name``, by what they are (for messages): an output folder
    must never be one of them or lie inside one (``kseg.core.files.check_outside_inputs``). A ``folder:`` dataset is
    read from its folder on every run, a ``coco:`` dataset from its JSON's folder (and an ``images/`` folder
    beside that folder, where CVAT puts the images); a TFDS dataset from the data dir's records, which TFDS keeps
    in its own sub-folders (the manual download is read once, when it is built), so those are not guarded."""
    del data_dir, manual_dir  # named so every caller says which data it reads; see the docstring
    if _is_folder(name):
        return {f"the dataset folder ({name})": name[len(FOLDER_PREFIX) :]}
    if _is_coco(name):
        folder, _, beside = coco_source.image_folders(name[len(COCO_PREFIX) :])
        found = {f"the COCO file's folder ({name})": folder}
        return found | ({f"the images folder beside it ({name})": beside} if tf.io.gfile.isdir(beside) else {})
    return {}


def dataset_spec(name: str, *, data_dir=None, manual_dir=None, num_classes: int | None = None) -> DatasetSpec:
    """Classes and split sizes of a dataset (building a TFDS config on first use).

    Folder datasets of class masks cannot say how many classes they hold without reading every mask: they are
    binary unless ``num_classes`` says otherwise. Instance datasets (a folder with instances/, a COCO file)
    have one class, person.
    """
    if _is_folder(name):
        return _folder_spec(name, num_classes)
    if _is_coco(name):
        return _coco_spec(name, num_classes)
    return _tfds_spec(name, data_dir, manual_dir)


def load_examples(
    name: str,
    split: str,
    *,
    data_dir=None,
    manual_dir=None,
    num_classes: int | None = None,
    extra_features: tuple[str, ...] = (),
    image_ids=None,
) -> tf.data.Dataset:
    """Examples at their original size: ``{"image": uint8 [H,W,3], "mask": uint8 [H,W,1], "image_id"}``, in a
    fixed order; ``split`` may be ``all``. An instance label image (0 background, k = person k) from a folder
    or a COCO file is int32, so ids above 255 stay exact.

    ``extra_features`` adds each named scalar TFDS feature under its own name as a string (a ClassLabel as its
    label name, a Text as its text), e.g. ``("clinical_diagnosis",)`` for PH2; ``DatasetSpec.features`` lists
    them. Evaluation reads these to score predictions at each image's own resolution.

    ``image_ids``: keep only the examples with these ids (a cross-validation fold), in the split's order.
    """
    examples = _all_examples(name, split, data_dir, manual_dir, num_classes, tuple(extra_features))
    return examples if image_ids is None else only_ids(examples, image_ids)


def only_ids(examples: tf.data.Dataset, image_ids) -> tf.data.Dataset:
    """The examples whose ``image_id`` is one of ``image_ids`` (a cross-validation fold's part of a split)."""
    if not image_ids:
        return examples.take(0)
    wanted = tf.constant(sorted(str(i) for i in image_ids), tf.string)
    return examples.filter(lambda ex: tf.reduce_any(tf.equal(ex["image_id"], wanted)))


def _all_examples(name, split, data_dir, manual_dir, num_classes, extra_features) -> tf.data.Dataset:
    folder, coco = name[len(FOLDER_PREFIX) :], name[len(COCO_PREFIX) :]
    if (_is_folder(name) or _is_coco(name)) and extra_features:
        what = f"folder dataset {folder!r}" if _is_folder(name) else f"COCO file {coco}"
        raise DataError(
            f"{what} has no features to group by (asked for {', '.join(extra_features)}); only TFDS datasets have them"
        )
    if (_is_folder(name) or _is_coco(name)) and "+" in split:  # TFDS reads its own sums (train+validation)
        parts = [_all_examples(name, part.strip(), data_dir, manual_dir, num_classes, ()) for part in split.split("+")]
        return functools.reduce(lambda a, b: a.concatenate(b), parts)
    if _is_folder(name):
        return _folder_examples(folder, split, multi_class=(num_classes or 1) > 1)
    if _is_coco(name):
        return _coco_examples(coco, split)
    return _tfds_examples(name, split, data_dir, manual_dir, extra_features)


def resize_example(image, mask, image_size=IMAGE_SIZE):
    """Image resized by ``resize_image``, mask to the same size with nearest neighbour (labels stay exact)."""
    return resize_image(image, image_size), tf.image.resize(mask, image_size, method="nearest")


def load(
    name: str,
    split: str,
    *,
    image_size=IMAGE_SIZE,
    batch_size: int = 8,
    augmentation: Augmentation | str | None = None,
    shuffle: bool = False,
    repeat: bool = False,
    seed: int | None = None,
    drop_remainder: bool = False,
    cache: bool | str = True,
    data_dir=None,
    manual_dir=None,
    num_classes: int | None = None,
    targets=None,
    image_ids=None,
) -> tf.data.Dataset:
    """Batched ``(image float32 [B,H,W,3] in [0,1], mask [B,H,W,1])`` for training or evaluation.

    Decoded, resized examples are cached (in memory, or in a file when ``cache`` is a path) as uint8, so
    the second epoch reads no file. ``seed`` makes shuffling and augmentation repeat exactly. Instance
    label images come as int32 ids (0 background). ``targets``, a function of ``(images, masks)``
    returning ``(inputs, targets)``, runs last, after augmentation: a task makes its training targets
    there (``kseg.tasks``), from the augmented masks. ``image_ids``: only these examples of the split (a
    cross-validation fold, ``kseg.training.folds``).
    """
    image_size = tuple(int(s) for s in image_size)
    if len(image_size) != 2 or min(image_size) < 1:
        raise DataError(f"image_size must be (height, width) of positive integers, got {image_size!r}")
    if batch_size < 1:
        raise DataError(f"batch_size must be >= 1, got {batch_size}")
    spec = dataset_spec(name, data_dir=data_dir, manual_dir=manual_dir, num_classes=num_classes)
    augmentation = get_augmentation(augmentation) if augmentation is not None else None
    if augmentation is not None and augmentation.copy_paste and not spec.is_instances:
        raise DataError(
            f"{name}: copy-paste augmentation pastes people from instance label images, and this dataset has "
            f"{kind_text(spec.kind)}; choose an augmentation without copy_paste"
        )
    examples = load_examples(
        name, split, data_dir=data_dir, manual_dir=manual_dir, num_classes=spec.num_classes, image_ids=image_ids
    )
    if image_ids is not None:  # the shuffle buffer is sized from the split
        spec = dataclasses.replace(spec, split_sizes={**spec.split_sizes, split: len(image_ids)})
    if spec.is_keypoints:
        return _keypoint_batches(
            spec,
            split,
            examples,
            image_size,
            batch_size,
            augmentation,
            shuffle,
            repeat,
            seed,
            drop_remainder,
            cache,
            targets,
        )
    mask_dtype = tf.float32 if spec.is_binary and not spec.is_instances else tf.int32

    dataset = examples.map(
        lambda ex: resize_example(ex["image"], ex["mask"], image_size), num_parallel_calls=tf.data.AUTOTUNE
    )
    if cache:
        dataset = dataset.cache(cache if isinstance(cache, str) else "")
    if shuffle:
        size = spec.size_of(split) or 1024
        dataset = dataset.shuffle(min(size, 4096), seed=seed, reshuffle_each_iteration=True)
    if repeat:
        dataset = dataset.repeat()
    dataset = dataset.batch(batch_size, drop_remainder=drop_remainder, num_parallel_calls=tf.data.AUTOTUNE)
    to_model = lambda image, mask: (scale_to_unit(image), tf.cast(mask, mask_dtype))
    dataset = dataset.map(to_model, num_parallel_calls=tf.data.AUTOTUNE)

    if augmentation is not None and (augmentation.has_geometry or augmentation.has_colour or augmentation.copy_paste):
        seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
        dataset = tf.data.Dataset.zip((dataset, seeds)).map(
            lambda batch, pair_seed: augment_batch(batch[0], batch[1], pair_seed, augmentation),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
    return _finish(dataset, targets, shuffle, seed)


def _finish(dataset: tf.data.Dataset, targets, shuffle: bool, seed) -> tf.data.Dataset:
    if targets is not None:
        dataset = dataset.map(targets, num_parallel_calls=tf.data.AUTOTUNE)
    options = tf.data.Options()
    # Unshuffled reads keep the split's order (evaluation relies on it); a seed makes shuffling repeatable.
    options.deterministic = (not shuffle) or seed is not None
    options.experimental_optimization.map_parallelization = True
    dataset = dataset.with_options(options)
    return dataset.prefetch(tf.data.AUTOTUNE)


def _keypoint_batches(
    spec, split, examples, image_size, batch_size, augmentation, shuffle, repeat, seed, drop_remainder, cache, targets
) -> tf.data.Dataset:
    """``load`` for keypoint datasets: ``(image float32 [B,H,W,3], keypoints float32 [B,J,3])`` with (x, y,
    visible) in pixels of the model-size image; geometric augmentation moves the points with the pixels
    and swaps left and right joints where it mirrors (``augment_keypoints``)."""

    def resize(ex):
        size = tf.shape(ex["image"])[:2]
        return resize_image(ex["image"], image_size), resize_keypoints(ex["keypoints"], size, image_size)

    dataset = examples.map(resize, num_parallel_calls=tf.data.AUTOTUNE)
    if cache:
        dataset = dataset.cache(cache if isinstance(cache, str) else "")
    if shuffle:
        dataset = dataset.shuffle(min(spec.size_of(split) or 1024, 4096), seed=seed, reshuffle_each_iteration=True)
    if repeat:
        dataset = dataset.repeat()
    dataset = dataset.batch(batch_size, drop_remainder=drop_remainder, num_parallel_calls=tf.data.AUTOTUNE)
    dataset = dataset.map(lambda image, points: (scale_to_unit(image), points), num_parallel_calls=tf.data.AUTOTUNE)
    if augmentation is not None and (augmentation.has_geometry or augmentation.has_colour):
        permutation = flip_permutation(spec.class_names)
        seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
        dataset = tf.data.Dataset.zip((dataset, seeds)).map(
            lambda batch, pair_seed: augment_keypoints(batch[0], batch[1], pair_seed, augmentation, permutation),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
    return _finish(dataset, targets, shuffle, seed)
