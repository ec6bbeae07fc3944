"""``coco:FILE.json`` datasets: a COCO instances file, as labelling tools (CVAT, Label Studio) export it, and
the images it names, read as instance label images (0 background, k = the image's k-th person).

Where the images are: each image's ``file_name`` relative to the JSON's folder, else relative to an
``images/`` folder next to the JSON, else relative to an ``images/`` folder next to the JSON's folder (CVAT
puts the JSON in ``annotations/`` beside ``images/``); the first file that exists is read. An absolute
``file_name`` is taken as it is.

What becomes an instance: every annotation of every category, numbered 1..n per image in the file's
order; where two overlap, the later one is drawn over the earlier (tools list annotations bottom to top), so
an id may be missing from the label image. Crowd regions (``iscrowd: 1``: many people in one mask) are not
people one by one: they are left out (their pixels are background) and one log line says how many there
were. An image without annotations is valid: its label image is empty. Masks are decoded by pycocotools
(polygons, compressed and uncompressed RLE), not by hand.

Splits: the file has none, so each image goes to train, validation or test by a stable hash of its id (its
``file_name`` without the extension; 80/10/10), with the salt ``folder:`` datasets use, so an image lands
in the same split whether it is read from a COCO file or from a folder. ``all`` takes every image.

Everything is checked before a pipeline exists, and each problem is one ``CocoFileError`` naming the JSON
file and the culprit: a file that is not JSON or not a COCO instances file, an annotation of an unknown
image, a broken polygon, an RLE of another size than its image, an image that is missing, unreadable or of
another size than the JSON says. A split's images and label images are decoded once and held in memory
(``load_split``): right for the hundreds of images people label by hand, not for COCO itself.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import json
import logging
import math
import numbers
import os

import numpy as np
import tensorflow as tf
from pycocotools import mask as mask_utils

from kseg.core import imageio, settings
from kseg.core.errors import KsegError
from segio import splits

logger = logging.getLogger(__name__)

#: The salt of ``folder:`` datasets' split hash: the same image gets the same split from either source.
SPLIT_SALT = "folder/"
ALL = "all"
#: More people than a uint16 label image can number is no hand-labelled photo.
MAX_INSTANCES = 65535


class CocoFileError(KsegError, ValueError):
    """A COCO file, or an annotation or image it names, cannot be used; the message names the JSON file and
    the culprit."""


@dataclasses.dataclass(frozen=True)
class CocoImage:
    """One entry of the file's ``images``, with its file found and its annotations checked."""

    image_id: str  # file_name without its extension: the example's id, and what its split is hashed from
    coco_id: int
    file_name: str
    path: str  # the file found by the rule of the module docstring
    height: int
    width: int
    segmentations: tuple  # (annotation name, segmentation) of each person, in the file's order
    crowd: int  # iscrowd regions left out

    @property
    def split(self) -> str:
        return splits.split_of_name(self.image_id, salt=SPLIT_SALT)


@dataclasses.dataclass(frozen=True)
class CocoIndex:
    json_path: str
    images: tuple  # CocoImage, sorted by image_id (a fixed order whatever order the tool wrote)

    def split(self, name: str) -> list[CocoImage]:
        return [image for image in self.images if name == ALL or image.split == name]


# ------------------------------------------------------------------------------------ the JSON ---


def read_index(json_path: str) -> CocoIndex:
    """The checked index of ``json_path`` (cached while the file's size and modification time stay the same:
    ``dataset_spec`` and ``load_examples`` both ask for it)."""
    try:
        stat = tf.io.gfile.stat(json_path)
    except tf.errors.NotFoundError:
        raise CocoFileError(f"{json_path}: file not found; expected a COCO instances file (coco:FILE.json)") from None
    except tf.errors.OpError as e:
        raise CocoFileError(f"{json_path}: cannot read file ({settings.clip(e.message)})") from None
    if stat.is_directory:
        raise CocoFileError(
            f"{json_path}: is a folder; expected a COCO instances file (coco:FILE.json); for a folder of "
            f"images/ with masks/ or instances/ use folder:PATH"
        )
    return _read_index(json_path, int(stat.length), int(stat.mtime_nsec))


@functools.lru_cache(maxsize=8)
def _read_index(json_path: str, size: int, mtime: int) -> CocoIndex:
    del size, mtime  # the cache key: a changed file is read again
    content = _load_json(json_path)
    entries = _image_entries(json_path, content["images"])
    people, crowds = _annotations_by_image(json_path, content["annotations"], entries)
    images = [
        CocoImage(
            image_id=image_id,
            coco_id=coco_id,
            file_name=entry["file_name"],
            path=_find_image(json_path, entry["file_name"], coco_id),
            height=entry["height"],
            width=entry["width"],
            segmentations=tuple(people[coco_id]),
            crowd=crowds[coco_id],
        )
        for coco_id, (image_id, entry) in entries.items()
    ]
    return CocoIndex(json_path=json_path, images=tuple(sorted(images, key=lambda image: image.image_id)))


def _load_json(json_path: str) -> dict:
    try:
        with tf.io.gfile.GFile(json_path, "rb") as f:
            content = json.loads(f.read())
    except tf.errors.OpError as e:
        raise CocoFileError(f"{json_path}: cannot read file ({settings.clip(e.message)})") from None
    except (ValueError, RecursionError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise CocoFileError(
            f"{json_path}: not a JSON file ({settings.clip(e, 120)}); expected a COCO instances file, the JSON a "
            f"labelling tool (CVAT, Label Studio) exports"
        ) from None
    lists = isinstance(content, dict) and all(isinstance(content.get(k), list) for k in ("images", "annotations"))
    if not lists:
        found = f"keys {', '.join(map(repr, list(content)[:8]))}" if isinstance(content, dict) else "no object"
        raise CocoFileError(
            f"{json_path}: not a COCO instances file: expected a JSON object with 'images' and 'annotations' "
            f"lists, found {found or 'an empty object'}"
        )
    return content


def _is_integer(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _image_entries(json_path: str, images: list) -> dict[int, tuple[str, dict]]:
    """``{coco id: (image_id, entry)}`` of well-formed ``images`` entries: one id and one name per image."""
    entries, names = {}, {}
    for i, entry in enumerate(images):
        fields_ok = (
            isinstance(entry, dict)
            and _is_integer(entry.get("id"))
            and isinstance(entry.get("file_name"), str)
            and entry["file_name"].strip()
            and all(_is_integer(entry.get(k)) and entry[k] > 0 for k in ("width", "height"))
        )
        if not fields_ok:
            raise CocoFileError(
                f"{json_path}: images[{i}]: expected 'id' (an integer), 'file_name' (text), 'width' and 'height' "
                f"(positive integers), got {settings.bounded(entry)}"
            )
        coco_id, file_name = int(entry["id"]), entry["file_name"]
        if coco_id in entries:
            raise CocoFileError(f"{json_path}: images[{i}] has the id {coco_id} of an earlier image; expected ids once")
        image_id = os.path.splitext(file_name.replace("\\", "/").lstrip("/"))[0]
        if image_id in names:
            raise CocoFileError(
                f"{json_path}: images {names[image_id]!r} and {file_name!r} have the same name without extension, "
                f"which is their example's id; expected one image per name"
            )
        names[image_id] = file_name
        entries[coco_id] = (image_id, entry)
    return entries


def _annotations_by_image(json_path: str, annotations: list, entries: dict) -> tuple[dict, dict]:
    """``({coco id: [(name, segmentation), ...]}, {coco id: crowd count})``, every segmentation checked."""
    people = {coco_id: [] for coco_id in entries}
    crowds = dict.fromkeys(entries, 0)
    for i, annotation in enumerate(annotations):
        name = f"annotations[{i}]"
        if isinstance(annotation, dict) and _is_integer(annotation.get("id")):
            name = f"annotation {annotation['id']} ({name})"
        if not isinstance(annotation, dict) or "image_id" not in annotation:
            raise CocoFileError(f"{json_path}: {name}: expected an object with 'image_id' and 'segmentation'")
        image_ref = annotation["image_id"]
        if not _is_integer(image_ref) or int(image_ref) not in entries:
            raise CocoFileError(
                f"{json_path}: {name} refers to image_id {settings.bounded(image_ref)}, which no entry of 'images' "
                f"has; expected the id of one of its {len(entries)} images"
            )
        image_id, entry = entries[int(image_ref)]
        where = f"{json_path}: {name} of image {entry['file_name']!r}"
        _check_segmentation(where, annotation.get("segmentation"), entry["height"], entry["width"])
        if annotation.get("iscrowd") in (1, True):
            crowds[int(image_ref)] += 1
        else:
            people[int(image_ref)].append((name, annotation["segmentation"]))
        if len(people[int(image_ref)]) > MAX_INSTANCES:
            raise CocoFileError(f"{where}: more than {MAX_INSTANCES} annotations on one image")
    return people, crowds


def _check_segmentation(where: str, segmentation, height: int, width: int) -> None:
    """Polygons ``[[x1, y1, x2, y2, ...], ...]`` or an RLE ``{"size": [h, w], "counts": ...}`` of the image's
    size; pycocotools decodes whatever passes (a broken polygon would crash it or draw garbage)."""
    if isinstance(segmentation, list):
        if not segmentation:
            raise CocoFileError(f"{where}: has no polygon (a box only?); expected polygons or an RLE mask")
        for k, polygon in enumerate(segmentation, start=1):
            _check_polygon(f"{where}: polygon {k}", polygon)
    elif isinstance(segmentation, dict):
        _check_rle(where, segmentation, height, width)
    else:
        raise CocoFileError(
            f"{where}: segmentation is {settings.shown(segmentation)}; expected polygons [[x1, y1, x2, y2, ...]] or "
            f"an RLE mask {{'size': [height, width], 'counts': ...}}"
        )


def _check_polygon(where: str, polygon) -> None:
    expected = "expected x, y numbers of at least 3 points"
    if not isinstance(polygon, list):
        raise CocoFileError(f"{where} is {settings.shown(polygon)}; {expected} in a list")
    bad = [v for v in polygon if not _is_finite_number(v)]
    if bad:
        raise CocoFileError(f"{where} holds {settings.shown(bad[0])}; {expected}")
    if len(polygon) % 2 or len(polygon) < 6:
        raise CocoFileError(f"{where} has {len(polygon)} coordinates; {expected} (an even count, at least 6)")


def _is_finite_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _check_rle(where: str, rle: dict, height: int, width: int) -> None:
    size, counts = rle.get("size"), rle.get("counts")
    if not (isinstance(size, list) and len(size) == 2 and all(_is_integer(s) for s in size)):
        raise CocoFileError(f"{where}: an RLE mask needs 'size' [height, width]; got {settings.bounded(size)}")
    if list(size) != [height, width]:
        raise CocoFileError(
            f"{where}: its RLE is {size[1]}x{size[0]} (size [{size[0]}, {size[1]}]) but the image is {width}x{height}; "
            f"expected the image's size"
        )
    if isinstance(counts, list):
        if not all(_is_integer(c) and c >= 0 for c in counts) or sum(counts) != height * width:
            raise CocoFileError(
                f"{where}: its uncompressed RLE counts are not run lengths adding up to {height}x{width} = "
                f"{height * width} pixels"
            )
    elif not (isinstance(counts, str) and counts.isascii()):
        raise CocoFileError(
            f"{where}: RLE 'counts' is {settings.shown(counts)}; expected a list of run lengths or the compressed "
            f"text pycocotools writes"
        )


def image_folders(json_path: str) -> list[str]:
    """Where the images of ``json_path`` are looked for, in order (the rule of the module docstring)."""
    folder = os.path.dirname(json_path) or "."
    parent = os.path.dirname(folder.rstrip("/")) if "://" in folder else os.path.dirname(os.path.abspath(folder))
    return [folder, os.path.join(folder, "images"), os.path.join(parent, "images")]


def _find_image(json_path: str, file_name: str, coco_id: int) -> str:
    folders = image_folders(json_path)
    candidates = [os.path.join(folder, file_name.replace("\\", "/")) for folder in folders]
    found = next((c for c in candidates if tf.io.gfile.exists(c) and not tf.io.gfile.isdir(c)), None)
    if found is None:
        raise CocoFileError(
            f"{json_path}: image {file_name!r} (id {coco_id}) not found in {folders[0]}/, {folders[1]}/ or "
            f"{folders[2]}/; expected each file_name relative to the JSON's folder or an images/ folder next to it"
        )
    return found


# ------------------------------------------------------------------------------------ decoding ---


def _binary_mask(where: str, segmentation, height: int, width: int) -> np.ndarray:
    """One annotation's ``(height, width)`` 0/1 mask, decoded by pycocotools (checked by ``_check_segmentation``).

    A compressed RLE whose runs cover fewer pixels than its size decodes to garbage, and one that covers more
    is refused by ``decode``: pycocotools re-encodes what it decoded, and only a well-formed RLE comes back
    the same (pycocotools writes the one canonical encoding)."""
    if isinstance(segmentation, list):
        rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    elif isinstance(segmentation["counts"], list):
        rle = mask_utils.frPyObjects(segmentation, height, width)
    else:
        rle = {"size": [height, width], "counts": segmentation["counts"].encode("ascii")}
    try:
        binary = mask_utils.decode(rle)
    except ValueError:
        binary = None
    if binary is None or mask_utils.encode(np.asfortranarray(binary))["counts"] != rle["counts"]:
        raise CocoFileError(
            f"{where}: its RLE does not describe {width}x{height} pixels (its runs do not add up to "
            f"{height * width}); expected the RLE pycocotools.mask.encode writes for the image"
        )
    return binary


def decode_labels(json_path: str, image: CocoImage) -> np.ndarray:
    """The instance label image of ``image``: ``uint16`` ``(height, width)``, 0 background, person k = k."""
    labels = np.zeros((image.height, image.width), np.uint16)
    for k, (name, segmentation) in enumerate(image.segmentations, start=1):
        where = f"{json_path}: {name} of image {image.file_name!r}"
        labels[_binary_mask(where, segmentation, image.height, image.width) > 0] = k
    return labels


def _read_example(json_path: str, image: CocoImage) -> tuple[str, np.ndarray, np.ndarray]:
    try:
        pixels = imageio.read_image(image.path)
    except imageio.ImageReadError as e:
        raise CocoFileError(f"{json_path}: image {image.file_name!r} (id {image.coco_id}): {e}") from None
    height, width = pixels.shape[:2]
    if (height, width) != (image.height, image.width):
        raise CocoFileError(
            f"{json_path}: image {image.path} is {width}x{height} but the JSON gives width {image.width}, height "
            f"{image.height} (id {image.coco_id}); expected the size its annotations were drawn on"
        )
    return image.image_id, pixels, decode_labels(json_path, image)


def load_split(json_path: str, split: str) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """``(image_id, image uint8 (H, W, 3), labels uint16 (H, W))`` of every image of ``split`` (``all``: every
    image), each image decoded fully and checked against the JSON, in a fixed order. All in memory: a COCO
    file of hand-labelled images is small; the first problem is a ``CocoFileError``."""
    chosen = read_index(json_path).split(split)
    workers = max(1, min(8, os.cpu_count() or 1, len(chosen)))
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:  # Pillow and pycocotools release the GIL
        examples = list(pool.map(functools.partial(_read_example, json_path), chosen))
    crowd = sum(image.crowd for image in chosen)
    if crowd:
        logger.info(
            "%s split %s: %d crowd region(s) (iscrowd 1) left out: they are background in the label images",
            json_path,
            split,
            crowd,
        )
    return examples
