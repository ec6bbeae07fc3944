"""Input pipelines: a dataset name and split in, batched ``(image, mask)`` tensors ready for ``fit`` out.

Names are ``tfds_ph2/ph2``, ``tfds_ph2/mads``, ``tfds_ph2/synthetic`` (any ``tfds`` name works) or
``folder:PATH`` for a user's own ``PATH/images/*`` + ``PATH/masks/*``. Images become float32 in [0, 1] at
the model size (bilinear, antialiased); masks stay exact labels (nearest): float32 {0, 1} for binary
tasks, int32 class ids for multi-class ones. Decoding and resizing run once and are cached; shuffling,
batching, augmentation and prefetching follow, so the input pipeline keeps up with training.
"""

from __future__ import annotations

import dataclasses
import functools

import tensorflow as tf

from kseg import imageio
from segio import splits
from kseg.augment import Augmentation, augment_batch, get_augmentation
from kseg.defaults import IMAGE_SIZE

FOLDER_PREFIX = "folder:"
SPLITS = ("train", "validation", "test")


class DatasetNotReadyError(RuntimeError):
    """A TFDS dataset that needs a manual download is neither built nor given a manual dir."""


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """What a pipeline needs to know about a dataset before reading it."""

    name: str
    num_classes: int  # model output channels: 1 for binary masks, K for K-class masks
    class_names: tuple
    split_sizes: dict

    @property
    def is_binary(self) -> bool:
        return self.num_classes == 1


def _is_folder(name: str) -> bool:
    return name.startswith(FOLDER_PREFIX)


# --------------------------------------------------------------------------------------------- TFDS ---

def _tfds_builder(name: str, data_dir=None, manual_dir=None):
    """The TFDS builder for ``name``, prepared on first use (synthetic needs nothing, the others a manual dir)."""
    import tensorflow_datasets as tfds

    import tfds_ph2.tfds_ph2_dataset_builder  # noqa: F401  (registers tfds_ph2)

    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except Exception as e:  # TFDS raises several types for unknown names and configs
        raise ValueError(
            f"unknown dataset {name!r}: {e}\nUse tfds_ph2/ph2, tfds_ph2/mads, tfds_ph2/synthetic, another TFDS "
            f"name, or folder:PATH"
        ) from None
    if not builder.is_prepared():
        if builder.MANUAL_DOWNLOAD_INSTRUCTIONS and getattr(builder.builder_config, "name", "") != "synthetic":
            if manual_dir is None:
                raise DatasetNotReadyError(
                    f"{name} is not built in {builder.data_dir_root} and no manual dir was given.\n"
                    f"Pass --manual-dir (or manual_dir=) pointing at the download, or build it with\n"
                    f"  tfds build tfds_ph2 --config {name.split('/')[-1]} --manual_dir PATH\n\n"
                    f"{builder.MANUAL_DOWNLOAD_INSTRUCTIONS}\n\n"
                    f"To try kseg without any download use the synthetic set: --preset synthetic-unet "
                    f"(dataset tfds_ph2/synthetic)."
                )
        config = tfds.download.DownloadConfig(manual_dir=manual_dir)
        builder.download_and_prepare(download_config=config)
    return builder


def _tfds_spec(name: str, data_dir=None, manual_dir=None) -> DatasetSpec:
    builder = _tfds_builder(name, data_dir, manual_dir)
    mask_feature = builder.info.features["segmentation_mask"]
    names = tuple(getattr(mask_feature, "names", None) or ())
    num_labels = len(names) or int(getattr(mask_feature, "num_classes", 0) or 2)
    return DatasetSpec(
        name=name,
        num_classes=1 if num_labels <= 2 else num_labels,
        class_names=names or tuple(f"class_{i}" for i in range(num_labels)),
        split_sizes={s: info.num_examples for s, info in builder.info.splits.items()},
    )


def _tfds_examples(name, split, data_dir, manual_dir) -> tf.data.Dataset:
    import tensorflow_datasets as tfds

    builder = _tfds_builder(name, data_dir, manual_dir)
    if split not in builder.info.splits:
        raise ValueError(f"{name} has no split {split!r}; it has {sorted(builder.info.splits)}")
    # kseg caches after resizing; TFDS's own auto-cache would hold a second, full-size copy.
    read_config = tfds.ReadConfig(try_autocache=False)
    dataset = builder.as_dataset(split=split, shuffle_files=False, read_config=read_config)
    features = builder.info.features
    diagnoses = None
    if "clinical_diagnosis" in features:  # PH2: kept so that evaluation can report Dice per diagnosis
        diagnoses = tf.constant(features["clinical_diagnosis"].names)

    def select(ex):
        result = {"image": ex["image"], "mask": ex["segmentation_mask"], "image_id": ex["image_id"]}
        if diagnoses is not None:
            result["clinical_diagnosis"] = tf.gather(diagnoses, ex["clinical_diagnosis"])
        return result

    return dataset.map(select, num_parallel_calls=tf.data.AUTOTUNE)


# ------------------------------------------------------------------------------------------ folders ---

def folder_pairs(path: str, split: str) -> list[tuple[str, str, str]]:
    """``(stem, image_path, mask_path)`` for ``split`` of a ``PATH/images`` + ``PATH/masks`` folder.

    A folder with ``train/``, ``validation/``, ``test/`` sub-folders (each with images/ and masks/) uses them;
    otherwise each file goes to a split by a stable hash of its name (80/10/10), and ``all`` takes every file.
    """
    root = path.rstrip("/")
    split_folders = folder_splits(path)
    if split_folders:
        if split not in split_folders:
            raise ValueError(f"folder dataset {path!r} has split folders {split_folders} but no {split!r}")
        root = f"{root}/{split}"
        split = "all"
    for sub in ("images", "masks"):
        if not tf.io.gfile.isdir(f"{root}/{sub}"):
            raise FileNotFoundError(f"folder dataset {path!r}: {root}/{sub}/ is missing; expected "
                                    f"PATH/images/* and PATH/masks/* with matching file names")
    if split not in (*SPLITS, "all"):
        raise ValueError(f"folder dataset {path!r}: unknown split {split!r}; use train, validation, test or all")
    stem = lambda p: p.rsplit("/", 1)[-1].rsplit(".", 1)[0]
    images = {stem(p): p for p in imageio.list_images(f"{root}/images")}
    masks = {stem(p): p for p in imageio.list_images(f"{root}/masks")}
    if not images:
        raise FileNotFoundError(f"folder dataset {path!r}: no images in {root}/images")
    unmatched = sorted(set(images) ^ set(masks))
    if unmatched:
        where = images.get(unmatched[0]) or masks.get(unmatched[0])
        raise FileNotFoundError(f"folder dataset {path!r}: {where} has no counterpart with the same name in "
                                f"{'masks' if unmatched[0] in images else 'images'}/ ({len(unmatched)} unmatched)")
    return [(s, images[s], masks[s]) for s in sorted(images)
            if split == "all" or splits.split_of_name(s, salt="folder/") == split]


def folder_splits(path: str) -> list[str]:
    """The split sub-folders (``train/``, ``validation/``, ``test/`` with ``images/`` inside) a folder has."""
    return [s for s in SPLITS if tf.io.gfile.isdir(f"{path.rstrip('/')}/{s}/images")]


def _read_pair(image_path, mask_path, multi_class):
    image = imageio.read_image(image_path.decode())
    path = mask_path.decode()
    mask = imageio.read_label_mask(path) if multi_class else imageio.read_binary_mask(path)
    if mask.shape != image.shape[:2]:
        mask = imageio.resize_mask_nearest(mask, *image.shape[:2])
    return image, mask[..., None]


def _folder_examples(path: str, split: str, multi_class: bool) -> tf.data.Dataset:
    pairs = folder_pairs(path, split)
    if not pairs:
        raise ValueError(f"folder dataset {path!r}: split {split!r} is empty")
    stems, image_paths, mask_paths = (list(column) for column in zip(*pairs))

    def read(stem, image_path, mask_path):
        image, mask = tf.numpy_function(functools.partial(_read_pair, multi_class=multi_class),
                                        [image_path, mask_path], [tf.uint8, tf.uint8], stateful=False)
        image.set_shape([None, None, 3])
        mask.set_shape([None, None, 1])
        return {"image": image, "mask": mask, "image_id": stem}

    return tf.data.Dataset.from_tensor_slices((stems, image_paths, mask_paths)).map(
        read, num_parallel_calls=tf.data.AUTOTUNE)


def _folder_spec(name: str, num_classes: int | None) -> DatasetSpec:
    path = name[len(FOLDER_PREFIX):]
    num_classes = num_classes or 1
    return DatasetSpec(
        name=name,
        num_classes=num_classes,
        class_names=("background", "foreground") if num_classes == 1 else tuple(f"class_{i}" for i in range(num_classes)),
        split_sizes={s: len(folder_pairs(path, s)) for s in (folder_splits(path) or SPLITS)},
    )


# ----------------------------------------------------------------------------------------- public API ---

def dataset_spec(name: str, *, data_dir=None, manual_dir=None, num_classes: int | None = None) -> DatasetSpec:
    """Classes and split sizes of a dataset (building a TFDS config on first use).

    Folder datasets cannot say how many classes they hold without reading every mask: they are binary
    unless ``num_classes`` says otherwise.
    """
    if _is_folder(name):
        return _folder_spec(name, num_classes)
    return _tfds_spec(name, data_dir, manual_dir)


def load_examples(name: str, split: str, *, data_dir=None, manual_dir=None, num_classes: int | None = None
                  ) -> tf.data.Dataset:
    """Examples at their original size: ``{"image": uint8 [H,W,3], "mask": uint8 [H,W,1], "image_id"}``
    (PH2 adds ``clinical_diagnosis``, its name as a string).

    Evaluation reads these to score predictions at each image's own resolution.
    """
    if _is_folder(name):
        return _folder_examples(name[len(FOLDER_PREFIX):], split, multi_class=(num_classes or 1) > 1)
    return _tfds_examples(name, split, data_dir, manual_dir)


def resize_image(image, image_size=IMAGE_SIZE):
    """uint8 image at ``image_size`` (bilinear, antialiased); the one resize used by training and inference."""
    image = tf.image.resize(image, image_size, method="bilinear", antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)


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
) -> tf.data.Dataset:
    """Batched ``(image float32 [B,H,W,3] in [0,1], mask [B,H,W,1])`` for training or evaluation.

    Decoded, resized examples are cached (in memory, or in a file when ``cache`` is a path) as uint8, so
    the second epoch reads no file. ``seed`` makes shuffling and augmentation repeat exactly.
    """
    image_size = tuple(int(s) for s in image_size)
    if len(image_size) != 2 or min(image_size) < 1:
        raise ValueError(f"image_size must be (height, width) of positive integers, got {image_size!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    spec = dataset_spec(name, data_dir=data_dir, manual_dir=manual_dir, num_classes=num_classes)
    examples = load_examples(name, split, data_dir=data_dir, manual_dir=manual_dir, num_classes=spec.num_classes)
    mask_dtype = tf.float32 if spec.is_binary else tf.int32

    dataset = examples.map(lambda ex: resize_example(ex["image"], ex["mask"], image_size),
                           num_parallel_calls=tf.data.AUTOTUNE)
    if cache:
        dataset = dataset.cache(cache if isinstance(cache, str) else "")
    if shuffle:
        size = spec.split_sizes.get(split) or 1024
        dataset = dataset.shuffle(min(size, 4096), seed=seed, reshuffle_each_iteration=True)
    if repeat:
        dataset = dataset.repeat()
    dataset = dataset.batch(batch_size, drop_remainder=drop_remainder, num_parallel_calls=tf.data.AUTOTUNE)
    to_model = lambda image, mask: (tf.cast(image, tf.float32) / 255.0, tf.cast(mask, mask_dtype))
    dataset = dataset.map(to_model, num_parallel_calls=tf.data.AUTOTUNE)

    augmentation = get_augmentation(augmentation) if augmentation is not None else None
    if augmentation is not None and (augmentation.has_geometry or augmentation.has_colour):
        seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
        dataset = tf.data.Dataset.zip((dataset, seeds)).map(
            lambda batch, pair_seed: augment_batch(batch[0], batch[1], pair_seed, augmentation),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
    options = tf.data.Options()
    # Unshuffled reads keep the split's order (evaluation relies on it); a seed makes shuffling repeatable.
    options.deterministic = (not shuffle) or seed is not None
    options.experimental_optimization.map_parallelization = True
    dataset = dataset.with_options(options)
    return dataset.prefetch(tf.data.AUTOTUNE)

