"""Input pipelines: a dataset name and split in, batched ``(image, mask)`` tensors ready for ``fit`` out.

Names are ``tfds_ph2/ph2``, ``tfds_ph2/mads``, ``tfds_ph2/synthetic`` (any ``tfds`` name works) or
``folder:PATH`` for a user's own ``PATH/images/*`` + ``PATH/masks/*``. Splits are ``train``, ``validation``,
``test`` or ``all`` (every image). Images become float32 in [0, 1] at the model size (bilinear, antialiased);
masks stay exact labels (nearest): float32 {0, 1} for binary tasks, int32 class ids for multi-class ones.
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

from kseg.core import imageio, settings
from kseg.core.defaults import IMAGE_SIZE
from kseg.core.errors import KsegError
from kseg.data.augment import Augmentation, augment_batch, get_augmentation
from kseg.data.preprocessing import resize_image, scale_to_unit
from segio import splits

logger = logging.getLogger(__name__)

FOLDER_PREFIX = settings.FOLDER_PREFIX  # one spelling for the checkers and the readers
SPLITS = ("train", "validation", "test")
ALL = "all"
KSEG_DATASETS = ("tfds_ph2/ph2", "tfds_ph2/mads", "tfds_ph2/synthetic", "tfds_ph2/pennfudan")
#: The kinds of masks a dataset can hold (``DatasetSpec.kind``).
SEMANTIC, INSTANCES = "semantic", "instances"
#: The TFDS feature that holds each kind's masks.
MASK_FEATURES = {SEMANTIC: "segmentation_mask", INSTANCES: "instance_mask"}


class DataError(KsegError, ValueError):
    """A dataset name, split, feature, folder or argument that cannot be used; the message names it and what
    was expected. Every error kseg.data raises for a user to act on is one (besides ``ImageReadError``)."""


class DatasetNotReadyError(DataError, RuntimeError):
    """A TFDS dataset that needs a manual download is neither built nor given a usable manual dir."""


class FolderDatasetError(DataError, FileNotFoundError):
    """A ``folder:`` dataset lacks its images/ or masks/ folder, or a file its counterpart."""


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
    #: background); the task that trains on it must be of the same kind (``kseg.tasks``).
    kind: str = SEMANTIC

    @property
    def is_binary(self) -> bool:
        return self.num_classes == 1

    @property
    def is_instances(self) -> bool:
        return self.kind == INSTANCES

    def size_of(self, split: str) -> int:
        """Number of examples in ``split``; ``all`` counts every example, and train, validation or test that the
        dataset lacks count 0. Any other name the dataset has no split of is a DataError."""
        if split == ALL:
            return sum(self.split_sizes.values())
        if split not in self.split_sizes:
            if split in SPLITS:
                return 0
            raise DataError(f"{self.name} has no split {split!r}; it has {', '.join(self.split_sizes)} and {ALL}")
        return self.split_sizes[split]


_is_folder = settings.is_folder_dataset


# --------------------------------------------------------------------------------------------- TFDS ---


def _unknown_dataset(name: str, error: Exception) -> DataError:
    """A short error for a name TFDS does not know: the closest names (not TFDS's list of hundreds)."""
    import tensorflow_datasets as tfds

    dataset, _, config = name.partition(":")[0].partition("/")
    kseg_names = ", ".join(KSEG_DATASETS)
    hint = f"kseg's datasets: {kseg_names}, or folder:PATH (PATH/images/ + PATH/masks/)"
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


def _tfds_spec(name: str, data_dir=None, manual_dir=None) -> DatasetSpec:
    builder = _tfds_builder(name, data_dir, manual_dir)
    kind = _mask_kind(name, builder)
    mask_feature = builder.info.features[MASK_FEATURES[kind]]
    names = tuple(getattr(mask_feature, "names", None) or ())
    num_labels = len(names) or int(getattr(mask_feature, "num_classes", 0) or 2)
    if kind == INSTANCES:  # one class, person; each person its own id
        names, num_labels = ("background", "person"), 2
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
    if split != ALL and split not in builder.info.splits:
        raise DataError(f"{name} has no split {split!r}; it has {', '.join(builder.info.splits)} and {ALL}")
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
        result = {"image": ex["image"], "mask": ex[mask_feature], "image_id": ex["image_id"]}
        for feature in extra_features:  # each under its own name, as a string
            value = ex[feature]
            result[feature] = tf.gather(label_names[feature], value) if feature in label_names else value
        return result

    return dataset.map(select, num_parallel_calls=tf.data.AUTOTUNE)


# ------------------------------------------------------------------------------------------ folders ---


def folder_pairs(path: str, split: str) -> list[tuple[str, str, str]]:
    """``(image_id, image_path, mask_path)`` for ``split`` of a ``PATH/images`` + ``PATH/masks`` folder.

    A folder with ``train/``, ``validation/``, ``test/`` sub-folders (each with images/ and masks/) uses them
    (``all`` takes every sub-folder; an image id that two of them share gets the sub-folder's name as a
    prefix); otherwise each file goes to a split by a stable hash of its name (80/10/10), and ``all`` takes
    every file. Ids are file stems.
    """
    if split not in (*SPLITS, ALL):
        raise DataError(f"folder dataset {path!r}: unknown split {split!r}; use train, validation, test or all")
    split_folders = folder_splits(path)
    if split_folders:
        if split == ALL:
            per_folder = {s: _pairs_in(path, f"{path.rstrip('/')}/{s}") for s in split_folders}
            counts = collections.Counter(stem for pairs in per_folder.values() for stem, _, _ in pairs)
            return [
                (f"{s}_{stem}" if counts[stem] > 1 else stem, image, mask)
                for s, pairs in per_folder.items()
                for stem, image, mask in pairs
            ]
        if split not in split_folders:
            raise DataError(f"folder dataset {path!r} has split folders {split_folders} but no {split!r}")
        return _pairs_in(path, f"{path.rstrip('/')}/{split}")
    pairs = _pairs_in(path, path.rstrip("/"))
    return [p for p in pairs if split == ALL or splits.split_of_name(p[0], salt="folder/") == split]


def _pairs_in(path: str, root: str) -> list[tuple[str, str, str]]:
    for sub in ("images", "masks"):
        if not tf.io.gfile.isdir(f"{root}/{sub}"):
            raise FolderDatasetError(
                f"folder dataset {path!r}: {root}/{sub}/ is missing; expected "
                f"PATH/images/* and PATH/masks/* with matching file names"
            )
    stem = lambda p: p.rsplit("/", 1)[-1].rsplit(".", 1)[0]
    images = {stem(p): p for p in imageio.list_images(f"{root}/images")}
    masks = {stem(p): p for p in imageio.list_images(f"{root}/masks")}
    if not images:
        raise FolderDatasetError(f"folder dataset {path!r}: no images in {root}/images")
    unmatched = sorted(set(images) ^ set(masks))
    if unmatched:
        where = images.get(unmatched[0]) or masks.get(unmatched[0])
        raise FolderDatasetError(
            f"folder dataset {path!r}: {where} has no counterpart with the same name in "
            f"{'masks' if unmatched[0] in images else 'images'}/ ({len(unmatched)} unmatched)"
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


def _read_mask(path: str, multi_class: bool) -> np.ndarray:
    return imageio.read_label_mask(path) if multi_class else imageio.read_binary_mask(path)


def _decode_pair(image_path: str, mask_path: str, multi_class: bool) -> tuple[list, list, int]:
    """Shapes ``[h, w]`` of a fully decoded image and mask, and the mask's foreground pixel count (non-zero
    labels); a read error names its file."""
    image_shape = list(imageio.read_image(image_path).shape[:2])
    mask = _read_mask(mask_path, multi_class)
    return image_shape, list(mask.shape[:2]), int(np.count_nonzero(mask))


#: What a cached verdict was decided by. The "/2" readers apply EXIF orientation and read binary masks by
#: the values they hold (segio.images); verdicts of the older readers ("image", "binary", "labels", which
#: read 16-bit 0/255 masks as empty and kept no foreground count) do not match these kinds and are redone.
_IMAGE_KIND = "image/2"
_MASK_KINDS = {False: "binary/2", True: "labels/2"}


def check_folder_files(path: str, pairs, multi_class: bool = False) -> dict[str, int]:
    """Decode every image and mask of ``pairs`` (``folder_pairs`` rows of the folder dataset ``path``) fully
    once and check each mask against its image (``segio.images.check_mask_fits``); raise an
    ``ImageReadError`` naming the first bad file (and how many more there are). Returns the foreground pixel
    count of each mask by path, so that a split of empty masks can be told before training on it.

    A truncated JPEG only shows when it is decoded to the end, and inside a running tf.data pipeline it would
    surface as a TensorFlow traceback; here it is one message before any pipeline exists. Verdicts are cached
    by path, size and modification time in the user's cache dir (``_cache_dir``), so later runs only stat.
    """
    cache_file = _check_cache_file(path)
    cached = _load_checks(cache_file)
    mask_kind = _MASK_KINDS[bool(multi_class)]
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
            futures = [pool.submit(_decode_pair, image[0], mask[0], multi_class) for image, mask in todo]
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


def _read_pair(image_path, mask_path, multi_class):
    """One folder example for ``tf.numpy_function``: image ``(H, W, 3)``, mask ``(H, W, 1)`` fitted to it."""
    if _calls["closing"]:  # the interpreter is exiting: produce nothing that needs files (see _finish_pipelines)
        return np.zeros((1, 1, 3), np.uint8), np.zeros((1, 1, 1), np.uint8)
    with _calls_lock:
        _calls["active"] += 1
    try:
        image_path, mask_path = image_path.decode(), mask_path.decode()
        image = imageio.read_image(image_path)
        mask = imageio.fit_mask_to_image(_read_mask(mask_path, multi_class), image.shape, image_path, mask_path)
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
    foreground = check_folder_files(path, pairs, multi_class)
    warn_if_masks_empty(f"{FOLDER_PREFIX}{path}", split, foreground.values())
    if not _calls["hooked"]:
        atexit.register(_finish_pipelines)  # registered after TensorFlow's own handlers, so it runs before them
        _calls["hooked"] = True
    stems, image_paths, mask_paths = (list(column) for column in zip(*pairs))

    def read(stem, image_path, mask_path):
        image, mask = tf.numpy_function(
            functools.partial(_read_pair, multi_class=multi_class),
            [image_path, mask_path],
            [tf.uint8, tf.uint8],
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
    num_classes = num_classes or 1
    return DatasetSpec(
        name=name,
        num_classes=num_classes,
        class_names=(
            ("background", "foreground") if num_classes == 1 else tuple(f"class_{i}" for i in range(num_classes))
        ),
        split_sizes={s: len(folder_pairs(path, s)) for s in (folder_splits(path) or SPLITS)},
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
    read from its folder on every run; a TFDS dataset from the data dir's records, which TFDS keeps in its own
    sub-folders (the manual download is read once, when it is built), so only folder datasets are guarded."""
    del data_dir, manual_dir  # named so every caller says which data it reads; see the docstring
    return {f"the dataset folder ({name})": name[len(FOLDER_PREFIX) :]} if _is_folder(name) else {}


def dataset_spec(name: str, *, data_dir=None, manual_dir=None, num_classes: int | None = None) -> DatasetSpec:
    """Classes and split sizes of a dataset (building a TFDS config on first use).

    Folder datasets cannot say how many classes they hold without reading every mask: they are binary
    unless ``num_classes`` says otherwise.
    """
    if _is_folder(name):
        return _folder_spec(name, num_classes)
    return _tfds_spec(name, data_dir, manual_dir)


def load_examples(
    name: str,
    split: str,
    *,
    data_dir=None,
    manual_dir=None,
    num_classes: int | None = None,
    extra_features: tuple[str, ...] = (),
) -> tf.data.Dataset:
    """Examples at their original size: ``{"image": uint8 [H,W,3], "mask": uint8 [H,W,1], "image_id"}``, in a
    fixed order; ``split`` may be ``all``.

    ``extra_features`` adds each named scalar TFDS feature under its own name as a string (a ClassLabel as its
    label name, a Text as its text), e.g. ``("clinical_diagnosis",)`` for PH2; ``DatasetSpec.features`` lists
    them. Evaluation reads these to score predictions at each image's own resolution.
    """
    extra_features = tuple(extra_features)
    if _is_folder(name):
        if extra_features:
            raise DataError(
                f"folder dataset {name[len(FOLDER_PREFIX) :]!r} has no features to group by "
                f"(asked for {', '.join(extra_features)}); only TFDS datasets have them"
            )
        return _folder_examples(name[len(FOLDER_PREFIX) :], split, multi_class=(num_classes or 1) > 1)
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
) -> tf.data.Dataset:
    """Batched ``(image float32 [B,H,W,3] in [0,1], mask [B,H,W,1])`` for training or evaluation.

    Decoded, resized examples are cached (in memory, or in a file when ``cache`` is a path) as uint8, so
    the second epoch reads no file. ``seed`` makes shuffling and augmentation repeat exactly. Instance
    label images come as int32 ids (0 background). ``targets``, a function of ``(images, masks)``
    returning ``(inputs, targets)``, runs last, after augmentation: a task makes its training targets
    there (``kseg.tasks``), from the augmented masks.
    """
    image_size = tuple(int(s) for s in image_size)
    if len(image_size) != 2 or min(image_size) < 1:
        raise DataError(f"image_size must be (height, width) of positive integers, got {image_size!r}")
    if batch_size < 1:
        raise DataError(f"batch_size must be >= 1, got {batch_size}")
    spec = dataset_spec(name, data_dir=data_dir, manual_dir=manual_dir, num_classes=num_classes)
    examples = load_examples(name, split, data_dir=data_dir, manual_dir=manual_dir, num_classes=spec.num_classes)
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

    augmentation = get_augmentation(augmentation) if augmentation is not None else None
    if augmentation is not None and (augmentation.has_geometry or augmentation.has_colour):
        seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
        dataset = tf.data.Dataset.zip((dataset, seeds)).map(
            lambda batch, pair_seed: augment_batch(batch[0], batch[1], pair_seed, augmentation),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
    if targets is not None:
        dataset = dataset.map(targets, num_parallel_calls=tf.data.AUTOTUNE)
    options = tf.data.Options()
    # Unshuffled reads keep the split's order (evaluation relies on it); a seed makes shuffling repeatable.
    options.deterministic = (not shuffle) or seed is not None
    options.experimental_optimization.map_parallelization = True
    dataset = dataset.with_options(options)
    return dataset.prefetch(tf.data.AUTOTUNE)
