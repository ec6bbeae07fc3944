"""Reading the Leeds Sports Pose Extended (LSPET) download: locating it, reading ``joints.mat``, pairing its
columns with the images, checking the values, and the fixed split.

Kept free of TFDS so that it can be tested and reused on its own; the builder only wires it to splits.

Layout (the release's ``lspet_dataset.zip``, unzipped into a folder of its own)::

    images/im00001.jpg ... im10000.jpg    Flickr photos (JPEG), the person about 150 pixels tall
    joints.mat                             MATLAB matrix ``joints`` of shape (14, 3, N)
    README.txt                             not read

``joints(:, :, n)`` (MATLAB's 1-based ``n``) belongs to ``images/im<n, 5 digits>.jpg``: row ``j`` is joint ``j``
of ``JOINT_NAMES``, the columns are x, y (pixels of the image as stored) and a visibility flag (1 visible, 0
occluded). Joints may lie outside the image (negative or beyond its size): they are kept as given. The labels
come from Amazon Mechanical Turk and are noisy (CVPR 2011 paper); nothing here tries to correct them.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import re

import numpy as np
import scipy.io
from etils import epath

from segio import images
from segio.splits import split_for_fraction, stable_fraction
from tfds_ph2.common import DatasetError, require_dir, subdirs

logger = logging.getLogger("tfds_ph2")

IMAGES_FOLDER = "images"
JOINTS_FILE = "joints.mat"
JOINTS_VARIABLE = "joints"

#: The 14 LSP joints, in the order of the rows of ``joints.mat`` (the release's README.txt).
JOINT_NAMES = (
    "right_ankle",
    "right_knee",
    "right_hip",
    "left_hip",
    "left_knee",
    "left_ankle",
    "right_wrist",
    "right_elbow",
    "right_shoulder",
    "left_shoulder",
    "left_elbow",
    "left_wrist",
    "neck",
    "head_top",
)
#: Rows of one image's slice ``joints(:, :, n)``: x, y, visibility flag.
VALUES = ("x", "y", "visibility")
_NAME = re.compile(r"^im(?P<number>\d{5})\.jpg$")

SPLITS = ("train", "validation", "test")
#: A file's split is a stable hash of ``lspet:<stem>`` (``stable_fraction``) against these intervals, in this
#: order: [0, 0.15) test, [0.15, 0.225) validation, the rest train. On the 4,000 images of the real copy this
#: gives 603 test, 279 validation and 3,118 train (the full 10,000: 1,464 / 733 / 7,803).
SPLIT_SHARES = {"test": 0.15, "validation": 0.075, "train": 0.775}
SPLIT_SALT = "lspet:"

INSTRUCTIONS = """\
LSPET must be downloaded by hand (research use; cite Johnson and Everingham, CVPR 2011):
  1. Download lspet_dataset.zip from http://sam.johnson.io/research/lspet.html
     (http://sam.johnson.io/research/lspet_dataset.zip).
  2. Unzip it into a folder of its own (`mkdir lspet && unzip lspet_dataset.zip -d lspet`: the archive holds
     `images/`, `joints.mat` and `README.txt` with no folder around them).
  3. Build: `tfds build tfds_ph2 --config lspet --manual_dir /path/to/lspet --imports tfds_ph2`
     (the folder holding `joints.mat` and `images/`, or a folder up to two levels above it)."""


@dataclasses.dataclass(frozen=True, eq=False)
class Case:
    """One image and its annotation: ``keypoints`` ``(14, 2)`` float32 (x, y in pixels, ``JOINT_NAMES``
    order) and ``visibility`` ``(14,)`` bool, as ``joints.mat`` gives them."""

    image_id: str
    keypoints: np.ndarray
    visibility: np.ndarray


def image_name(column: int) -> str:
    """The file name of 0-based column ``column`` of ``joints``: ``im{column + 1:05d}.jpg``."""
    return f"im{column + 1:05d}.jpg"


def image_path(root, image_id: str) -> epath.Path:
    return epath.Path(root) / IMAGES_FOLDER / f"{image_id}.jpg"


# --------------------------------------------------------------------------------------- locating ---


def _is_root(folder: epath.Path) -> bool:
    return (folder / JOINTS_FILE).is_file() and (folder / IMAGES_FOLDER).is_dir()


def find_root(manual_dir) -> epath.Path:
    """The folder holding ``joints.mat`` and ``images/``: ``manual_dir`` itself or a folder up to two levels
    below it. The shallowest wins; two at the same depth are an error. A ``joints.mat`` without ``images/``
    beside it is reported only when no complete folder exists (an ``images/`` alone is every image set's)."""
    manual_dir = epath.Path(manual_dir)
    require_dir(manual_dir, "The manual download folder", INSTRUCTIONS)
    level = [manual_dir]
    partial = []
    for depth in range(3):
        found = [folder for folder in level if _is_root(folder)]
        if len(found) > 1:
            raise DatasetError(
                f"Several LSPET folders found in {manual_dir}, pass one of them as --manual_dir: "
                f"{[str(f) for f in found]}"
            )
        if found:
            return found[0]
        partial += [folder for folder in level if (folder / JOINTS_FILE).exists()]
        if depth < 2:
            level = [child for folder in level for child in subdirs(folder)]
    if partial:
        raise DatasetError(
            f"{partial[0] / JOINTS_FILE} has no {IMAGES_FOLDER}/ folder beside it: the LSPET release holds "
            f"{IMAGES_FOLDER}/im00001.jpg... next to {JOINTS_FILE}.\n\n{INSTRUCTIONS}"
        )
    archives = sorted(p.name for p in manual_dir.iterdir() if p.name.lower().endswith((".zip", ".tar", ".gz", ".7z")))
    hint = f" Found the archive(s) {archives}: extract them first." if archives else ""
    raise DatasetError(
        f"No folder with {JOINTS_FILE} and {IMAGES_FOLDER}/ found in {manual_dir} or up to two levels below "
        f"it.{hint}\n\n{INSTRUCTIONS}"
    )


# ---------------------------------------------------------------------------------------- joints ---


def read_joints(path) -> np.ndarray:
    """The ``joints`` matrix of ``path`` as float64 ``(14, 3, N)``.

    A file scipy cannot read (not a .mat, or MATLAB's HDF5-based -v7.3), no variable ``joints``, a
    non-numeric one or another shape (the transposed (3, 14, N) of the original LSP included: its rows would
    be read as the wrong joints) is an error naming the file. A (14, 3) matrix is one image: MATLAB drops a
    trailing dimension of size 1 when it saves.
    """
    path = epath.Path(path)
    try:
        variables = scipy.io.loadmat(io.BytesIO(path.read_bytes()))
    except Exception as e:  # noqa: BLE001  (scipy raises many kinds for a bad file; each is the same error here)
        raise DatasetError(
            f"{path}: cannot read it as a MATLAB .mat file ({type(e).__name__}: {e}); expected the release's "
            f"{JOINTS_FILE} (MATLAB 5 format; a -v7.3 file must be saved again with -v7)"
        ) from e
    if JOINTS_VARIABLE not in variables:
        found = sorted(k for k in variables if not k.startswith("__"))
        raise DatasetError(
            f"{path}: no variable {JOINTS_VARIABLE!r} (found {found}); expected a {JOINTS_VARIABLE} matrix of "
            f"shape (14, 3, N)"
        )
    joints = variables[JOINTS_VARIABLE]
    if not isinstance(joints, np.ndarray) or joints.dtype.kind not in "biuf":
        kind = joints.dtype if isinstance(joints, np.ndarray) else type(joints).__name__
        raise DatasetError(f"{path}: {JOINTS_VARIABLE!r} is not a numeric matrix ({kind}); expected (14, 3, N)")
    if joints.shape == (len(JOINT_NAMES), len(VALUES)):
        joints = joints[..., None]
    if joints.ndim != 3 or joints.shape[:2] != (len(JOINT_NAMES), len(VALUES)) or not joints.shape[2]:
        raise DatasetError(
            f"{path}: {JOINTS_VARIABLE!r} has shape {joints.shape}; expected (14, 3, N) with N >= 1: "
            f"14 joints x (x, y, visibility) x N images"
        )
    return joints.astype(np.float64)


def check_joints(joints: np.ndarray, path) -> None:
    """Every x and y finite (as float32, the stored type) and every visibility flag 0 or 1; the first bad
    value, in image then joint order, is an error naming the file, the image and the joint."""
    coordinates = np.transpose(joints[:, :2, :], (2, 0, 1))  # (N, 14, 2)
    with np.errstate(over="ignore"):
        bad = np.argwhere(~np.isfinite(coordinates.astype(np.float32)))
    if len(bad):
        column, joint, axis = bad[0]
        raise DatasetError(
            f"{path}: {VALUES[axis]} of joint {JOINT_NAMES[joint]} of {image_name(column)} is "
            f"{coordinates[column, joint, axis]!r} ({JOINTS_VARIABLE}({joint + 1}, {axis + 1}, {column + 1}) in "
            f"MATLAB's numbering); expected a finite pixel coordinate ({len(bad)} such value(s))"
        )
    flags = joints[:, 2, :].T  # (N, 14)
    bad = np.argwhere((flags != 0) & (flags != 1))
    if len(bad):
        column, joint = bad[0]
        raise DatasetError(
            f"{path}: visibility flag of joint {JOINT_NAMES[joint]} of {image_name(column)} is "
            f"{flags[column, joint]!r} ({JOINTS_VARIABLE}({joint + 1}, 3, {column + 1}) in MATLAB's numbering); "
            f"expected 1 (visible) or 0 (occluded) ({len(bad)} such value(s))"
        )


# ------------------------------------------------------------------------------------------ index ---


def _image_files(folder: epath.Path) -> dict[int, epath.Path]:
    """The images of ``folder`` by 0-based column; hidden files are skipped, any other name is an error (the
    name is what ties an image to its column)."""
    if not folder.is_dir():
        raise DatasetError(f"{folder} is missing: expected the images im00001.jpg... in it")
    files = {}
    for path in sorted(folder.iterdir(), key=lambda p: p.name):
        if path.name.startswith("."):
            continue
        match = _NAME.match(path.name)
        if path.is_dir() or not match:
            raise DatasetError(
                f"{path}: unexpected {'folder' if path.is_dir() else 'file'}; expected only images named "
                f"im<5 digits>.jpg in {folder} (im00001.jpg is column 1 of {JOINTS_FILE})"
            )
        files[int(match.group("number")) - 1] = path
    return files


def pair_columns(root, n_columns: int) -> list[str]:
    """The image ids (``im00001``...) of columns ``0..n_columns - 1``, after checking that every image has a
    column and every column an image; the first offender of either kind is an error naming its file."""
    root = epath.Path(root)
    files = _image_files(root / IMAGES_FOLDER)
    extra = sorted(column for column in files if not 0 <= column < n_columns)
    if extra:
        raise DatasetError(
            f"{files[extra[0]]} has no column in {root / JOINTS_FILE}: it holds joints for {n_columns} image(s), "
            f"im00001.jpg to {image_name(n_columns - 1)} ({len(extra)} image(s) without joints); remove the "
            f"image or use the joints.mat that came with it"
        )
    missing = [column for column in range(n_columns) if column not in files]
    if missing:
        raise DatasetError(
            f"{root / IMAGES_FOLDER / image_name(missing[0])} is missing: column {missing[0] + 1} of "
            f"{root / JOINTS_FILE} has no image ({len(missing)} of {n_columns} column(s) without an image)"
        )
    return [image_name(column)[: -len(".jpg")] for column in range(n_columns)]


def read_index(root) -> list[Case]:
    """Every image with its joints, in column order, all checked (``read_joints``, ``check_joints``,
    ``pair_columns``) before any image is decoded, so that a bad annotation stops a build at once."""
    root = epath.Path(root)
    mat = root / JOINTS_FILE
    joints = read_joints(mat)
    check_joints(joints, mat)
    ids = pair_columns(root, joints.shape[2])
    keypoints = np.transpose(joints[:, :2, :], (2, 0, 1)).astype(np.float32)
    visibility = joints[:, 2, :].T == 1
    return [Case(image_id, keypoints[n], visibility[n]) for n, image_id in enumerate(ids)]


# ------------------------------------------------------------------------------------------ splits ---


def split_of(image_id: str) -> str:
    """``test`` / ``validation`` / ``train`` from the stable hash of ``lspet:<image_id>`` (``SPLIT_SHARES``):
    depends only on the name, so a copy with more or fewer images never moves one."""
    return split_for_fraction(stable_fraction(f"{SPLIT_SALT}{image_id}"), SPLIT_SHARES)


def cases_by_split(cases, root=None) -> dict[str, list[Case]]:
    """``{split: [Case, ...]}`` in name order; a split left empty (a copy of very few images) is an error here
    rather than TFDS's "No examples were yielded"."""
    cases = sorted(cases, key=lambda c: c.image_id)
    by_split = {split: [c for c in cases if split_of(c.image_id) == split] for split in SPLITS}
    for split, members in by_split.items():
        if not members:
            raise DatasetError(
                f"{root or 'The LSPET copy'}: none of its {len(cases)} image(s) falls into the {split} split "
                f"(about {SPLIT_SHARES[split]:.1%} of the images go there, chosen by name); use more images"
            )
    return by_split


# ------------------------------------------------------------------------------------------ images ---


def read_jpeg(path) -> bytes:
    """The file's bytes, checked to decode (segio's reader, so a bad file is named) as a JPEG.

    The bytes are stored unchanged (no re-encoding loss); so the file must be a JPEG, whatever its name
    says. An EXIF orientation is not applied (TensorFlow's decoder ignores it, and the joints were drawn on
    the pixels as stored): a warning names such a file, since viewers show it turned.
    """
    path = epath.Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DatasetError(f"{path}: cannot read the image ({e})") from e
    if not data:
        raise DatasetError(f"{path}: file is empty, expected a JPEG image")
    try:
        image = images.decode_pil(data, source=str(path))
    except images.ImageReadError as e:
        raise DatasetError(str(e)) from e
    if image.format != "JPEG":
        raise DatasetError(f"{path}: a {image.format} image; expected a JPEG (its bytes are stored unchanged)")
    if images.exif_rotates(image):
        logger.warning("%s: has an EXIF orientation; its joints are in the pixels as stored (not turned)", path)
    return data


def load_example(root, case: Case) -> dict:
    """One example of the builder's features: the image's own JPEG bytes, its joints and its name."""
    return {
        "image": read_jpeg(image_path(root, case.image_id)),
        "keypoints": case.keypoints,
        "visibility": case.visibility,
        "image_id": case.image_id,
    }


def read_cases(manual_dir) -> tuple[epath.Path, dict[str, list[Case]]]:
    """Locate, read and check the download once; returns ``(root, {split: [Case, ...]})``."""
    root = find_root(manual_dir)
    return root, cases_by_split(read_index(root), root)
