"""Exporting a trained model as a SavedModel that TensorFlow Serving can load, post-processing included
(the library behind ``python -m kseg.export``).

The version folder holds ``saved_model.pb`` and ``variables/`` (what TF Serving polls for), plus
``assets.extra/postprocessing.json`` (the model's stored threshold, TTA and clean-up, read back by
``kseg.prediction.inference``) and ``assets.extra/kseg.json`` (image size, classes, source model, versions). The model
name defaults to ``kseg``, the name in ``export/models.config``, so a newly trained model becomes the next
version of the served one. Versions count up from 1 unless ``--version`` is given; an existing version is
never overwritten. The SavedModel is
written to a hidden, non-numeric sibling folder and renamed into place, so a polling server never sees half
a model.

Two signatures, both core TensorFlow ops only (no ``py_function``, NumPy or Pillow), so the SavedModel runs
in ``tensorflow_model_server``:

``serving_default``
    ``image_bytes``: ``tf.string [N]``, encoded PNG, JPEG, BMP (8/24/32-bit), GIF (first frame) or WebP
    images of any sizes, mixed in one batch. Outputs (all ``[N]``): ``mask_bytes`` (an 8-bit grayscale PNG
    at each image's original size: 0/255 for binary models, class ids for multi-class ones, as written by
    ``kseg.predict``), ``height`` and ``width`` (int32, the original size) and ``foreground_fraction``
    (float32, the share of non-background pixels). Each image is decoded and resized exactly as
    ``kseg.prediction.inference`` does (bilinear, antialiased, rounded to uint8), the batch goes through the model once
    (with test-time augmentation if chosen), and ``kseg.tasks.postprocess.final_mask`` brings each probability map
    back to its image's size with the model's threshold, hole filling and largest-component selection.
    Bad inputs fail the request with INVALID_ARGUMENT naming the image (``image_bytes[2] is empty``, ``is
    not a PNG, JPEG, BMP, GIF or WebP image``, ``is a truncated PNG``, ``is a 1-bit BMP``, too many pixels).

``predict_images``
    ``images``: float32 ``[N, H, W, 3]`` in [0, 1] at the model's size -> ``probabilities`` ``[N, H, W, C]``
    (sigmoid or softmax; no TTA). ``kseg.prediction.inference.load_predictor`` uses this one, so ``kseg.evaluate`` and
    ``kseg.predict`` accept an export (and apply TTA and post-processing themselves).
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import pathlib
import re
import shutil
import uuid

import tensorflow as tf

import kseg  # noqa: F401  (sets the Keras backend and quiets TensorFlow before they are imported)
from kseg import tasks
from kseg.core import settings
from kseg.core.errors import FAILURE, KsegError
from kseg.core.serving_contract import (
    IMAGE_BYTES,
    KSEG_FILE,
    MAX_VERSION,
    PROBABILITIES_INPUT,
    PROBABILITIES_OUTPUT,
    PROBABILITIES_SIGNATURE,
    SERVING_SIGNATURE,
    STAGING_PREFIX,
    looks_like_a_version,
    version_numbers,
)
from kseg.data.preprocessing import resize_image, scale_to_unit
from kseg.prediction import inference
from kseg.tasks import postprocess

log = logging.getLogger(__name__)

DEFAULT_EXPORT_DIR = pathlib.Path("export/models")
DEFAULT_NAME = "kseg"
#: Images with more pixels are refused before decoding (a 6000x4000 photo is 24 megapixels).
DEFAULT_MAX_MEGAPIXELS = 50.0
#: ``--max-megapixels``: above 1000 megapixels one decoded image is 3 GB, more than a request should hold.
MAX_MEGAPIXELS = settings.float_in(0, 1000, low_open=True)
#: ``--version``: kseg counts versions from 1; TF Serving reads them as int64.
VERSION = settings.int_in(1, MAX_VERSION)
#: ``--name`` becomes a folder name and part of the serving URL /v1/models/NAME.
NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}"

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_HEADER_BYTES = 32
_TAIL_BYTES = 65536  # where the end marker of a PNG (IEND) or JPEG (EOI) is looked for


class ExportError(KsegError, ValueError):
    """The export cannot be written where asked; the message names the path and what to do."""


class ExportWriteError(ExportError):
    """Writing the export failed part way (disk full, I/O error); nothing was left in the model folder."""

    exit_status = FAILURE


# -------------------------------------------------------------------------------- the serving graph ---


def _little_endian(byte_values, signed=False):
    """Integer (int64) from little-endian bytes (a uint8 vector)."""
    values = tf.cast(byte_values, tf.int64)
    result = tf.reduce_sum(
        values * tf.bitwise.left_shift(tf.constant(1, tf.int64), 8 * tf.range(tf.size(values, tf.int64)))
    )
    if signed:
        bits = 8 * tf.size(values, tf.int64)
        result = tf.where(
            result >= tf.bitwise.left_shift(tf.constant(1, tf.int64), bits - 1),
            result - tf.bitwise.left_shift(tf.constant(1, tf.int64), bits),
            result,
        )
    return result


def _header_field(header, offset, length, big_endian=False, signed=False):
    values = tf.io.decode_raw(tf.strings.substr(header, offset, length), tf.uint8)
    return _little_endian(values[::-1] if big_endian else values, signed)


def _ends_with_marker(data, length, marker: bytes):
    """Whether ``marker`` occurs in the last ``_TAIL_BYTES`` of ``data`` (a truncated file lacks its end marker)."""
    tail = tf.strings.substr(data, tf.maximum(length - _TAIL_BYTES, 0), _TAIL_BYTES)
    return tf.size(tf.strings.split(tail, sep=marker)) > 1


def _check(condition, index, template, *values, after=()):
    """An assertion that fails the request with INVALID_ARGUMENT and ``template`` formatted with
    ``image_bytes[index]`` and ``values``; it runs after the ops in ``after``."""
    with tf.control_dependencies(list(after)):
        message = tf.strings.format("image_bytes[{}] " + template, (index, *values))
        return tf.debugging.Assert(condition, [message], summarize=1)


def decode_checked(data, index, max_pixels: int):
    """Decode one encoded image to uint8 ``[h, w, 3]``, failing with a message that names ``index`` and the
    problem (empty, unknown format, truncated, unsupported BMP depth, too large) before TF's own decoders,
    whose errors name neither."""
    length = tf.strings.length(data)
    header = tf.strings.substr(
        tf.strings.join([tf.strings.substr(data, 0, _HEADER_BYTES), b"\0" * _HEADER_BYTES]), 0, _HEADER_BYTES
    )
    is_png = tf.equal(tf.strings.substr(header, 0, 8), _PNG_SIGNATURE)
    is_jpeg = tf.equal(tf.strings.substr(header, 0, 3), b"\xff\xd8\xff")
    is_gif = tf.equal(tf.strings.substr(header, 0, 4), b"GIF8")
    is_bmp = tf.equal(tf.strings.substr(header, 0, 2), b"BM")
    is_webp = tf.equal(tf.strings.substr(header, 0, 4), b"RIFF") & tf.equal(tf.strings.substr(header, 8, 4), b"WEBP")
    known = is_png | is_jpeg | is_gif | is_bmp | is_webp

    checks = [_check(length > 0, index, "is empty; expected an encoded PNG, JPEG, BMP, GIF or WebP image")]
    checks.append(
        _check(
            (length == 0) | known,
            index,
            "is not a PNG, JPEG, BMP, GIF or WebP image ({} bytes starting with {}); "
            "convert other formats (e.g. TIFF) to PNG",
            length,
            tf.strings.substr(data, 0, 8),
            after=checks,
        )
    )
    checks.append(
        _check(
            ~is_png | _ends_with_marker(data, length, b"IEND"),
            index,
            "is a truncated PNG ({} bytes, no IEND chunk at its end)",
            length,
            after=checks,
        )
    )
    checks.append(
        _check(
            ~is_jpeg | _ends_with_marker(data, length, b"\xff\xd9"),
            index,
            "is a truncated JPEG ({} bytes, no end-of-image marker)",
            length,
            after=checks,
        )
    )
    bmp_bits = _header_field(header, 28, 2)
    checks.append(
        _check(
            ~is_bmp | tf.reduce_any(tf.equal(bmp_bits, [8, 24, 32])),
            index,
            "is a {}-bit BMP; TensorFlow decodes 8-, 24- and 32-bit BMPs only: convert it to PNG",
            bmp_bits,
            after=checks,
        )
    )

    # The size from the header, so that a huge image is refused before it is decoded (-1: not in the header).
    png_size = tf.stack([_header_field(header, 20, 4, big_endian=True), _header_field(header, 16, 4, big_endian=True)])
    gif_size = tf.stack([_header_field(header, 8, 2), _header_field(header, 6, 2)])
    bmp_size = tf.stack([tf.abs(_header_field(header, 22, 4, signed=True)), _header_field(header, 18, 4, signed=True)])
    with tf.control_dependencies(checks):
        jpeg_size = tf.cond(
            is_jpeg,
            lambda: tf.io.extract_jpeg_shape(data, output_type=tf.int32)[:2],
            lambda: tf.constant([-1, -1], tf.int32),
        )
    size = tf.where(
        is_png,
        png_size,
        tf.where(
            is_gif,
            gif_size,
            tf.where(
                is_bmp, bmp_size, tf.where(is_jpeg, tf.cast(jpeg_size, tf.int64), tf.constant([-1, -1], tf.int64))
            ),
        ),
    )
    pixels = size[0] * size[1]
    checks.append(
        _check(
            pixels <= max_pixels,
            index,
            "is {}x{} pixels, more than the {}-pixel limit of this export; resize it first",
            size[1],
            size[0],
            max_pixels,
            after=checks + [jpeg_size],
        )
    )

    with tf.control_dependencies(checks):
        image = tf.io.decode_image(data, channels=3, dtype=tf.uint8, expand_animations=False)
    image = tf.ensure_shape(image, [None, None, 3])
    shape = tf.shape(image)
    # WebP carries its size outside the fixed header: check after decoding.
    decoded_check = _check(
        tf.cast(shape[0], tf.int64) * tf.cast(shape[1], tf.int64) <= max_pixels,
        index,
        "is {}x{} pixels, more than the {}-pixel limit of this export; resize it first",
        shape[1],
        shape[0],
        max_pixels,
    )
    with tf.control_dependencies([decoded_check]):
        return tf.identity(image)


def decoded_batch(image_bytes, image_size, max_pixels: int):
    """``(batch, sizes)``: encoded images -> float32 ``[N, H, W, 3]`` at ``image_size`` (as ``kseg.prediction``
    resizes) and each image's original ``(height, width)``, int32 ``[N, 2]``; bad images fail the request."""
    height, width = image_size
    count = tf.shape(image_bytes)[0]
    nonempty = tf.debugging.Assert(count > 0, ["image_bytes holds no images; send at least one encoded image"])
    with tf.control_dependencies([nonempty]):
        image_bytes = tf.identity(image_bytes)

    def prepare(args):
        index, data = args
        image = decode_checked(data, index, max_pixels)
        return resize_image(image, (height, width)), tf.shape(image)[:2]

    resized, sizes = tf.map_fn(
        prepare,
        (tf.range(count), image_bytes),
        fn_output_signature=(tf.TensorSpec([height, width, 3], tf.uint8), tf.TensorSpec([2], tf.int32)),
    )
    return scale_to_unit(resized), sizes


def serving_functions(
    model, postprocessing: postprocess.PostProcessing, max_pixels: int = int(DEFAULT_MAX_MEGAPIXELS * 1e6)
):
    """``(serve, predict_images)``: the endpoints for ``model``, as plain functions to trace. ``serve`` decodes
    and resizes, then returns what the model's task returns (``kseg.tasks``); ``predict_images`` (model-size
    images to probabilities) is None for tasks that have no such endpoint (instances)."""
    task = tasks.of_model(model)
    image_size = inference.model_image_size(model)

    def serve(image_bytes):
        batch, sizes = decoded_batch(image_bytes, image_size, max_pixels)
        return task.serving_outputs(model, batch, sizes, postprocessing)

    def predict_images(images):
        nonempty = tf.debugging.Assert(tf.shape(images)[0] > 0, ["images holds no images; send at least one"])
        with tf.control_dependencies([nonempty]):
            return {PROBABILITIES_OUTPUT: task.probabilities(model, tf.identity(images))}

    return serve, (predict_images if task.has_probabilities_signature else None)


# ----------------------------------------------------------------------------------------- the files ---


def check_name(name) -> str:
    if not isinstance(name, str) or not re.fullmatch(NAME_PATTERN, name):
        raise ExportError(
            f"--name {settings.shown(name)}: use 1 to 128 letters, digits, '.', '_' and '-', starting with a "
            f"letter or digit (it becomes part of the serving URL /v1/models/NAME)"
        )
    return name


def checked(check, value, flag: str):
    """``value`` through ``check`` (the flag's argparse type), for callers of ``export_model`` in Python."""
    try:
        return check(value)
    except settings.Invalid as e:
        raise ExportError(f"{flag}: {e}") from None


def next_version(model_dir) -> int:
    """One more than the highest version folder (complete or not), or 1. Folders named with digits that TF
    Serving cannot read as a version (beyond int64) are passed over with a warning, not counted up from."""
    model_dir = pathlib.Path(model_dir)
    if model_dir.is_dir():
        for path in sorted(model_dir.iterdir()):
            if looks_like_a_version(path.name):
                log.warning(
                    f"{path} is not a version TF Serving can load (versions are integers up to {MAX_VERSION}); "
                    f"passed over when choosing the next version"
                )
    versions = version_numbers(model_dir)
    if versions and versions[-1] == MAX_VERSION:
        raise ExportError(f"{model_dir} holds version {MAX_VERSION}, the highest there is; pass --version")
    return versions[-1] + 1 if versions else 1


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_staging(model_dir: pathlib.Path) -> list[pathlib.Path]:
    """Remove staging folders left by exports that were killed (their process is gone); name those whose
    writer cannot be told (another machine's, or an older kseg's naming)."""
    removed = []
    for path in sorted(model_dir.glob(f"{STAGING_PREFIX}*")):
        match = re.fullmatch(re.escape(STAGING_PREFIX) + r"\d+-(\d+)-[0-9a-f]+", path.name)
        if match and not _process_alive(int(match.group(1))):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
            log.warning(f"removed {path}, left by an export that was killed before it finished")
        elif not match:
            log.warning(
                f"{path} looks like the staging folder of an unfinished export; TF Serving ignores it. "
                f"Remove it if no export is running"
            )
    return removed


def _describe_os_error(e: OSError) -> str:
    return e.strerror or type(e).__name__


def _make_folders(folder: pathlib.Path) -> list[pathlib.Path]:
    """Create ``folder`` and its missing parents; the ones created, deepest first."""
    missing = [path for path in (folder, *folder.parents) if not path.exists()]
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ExportError(f"cannot create the export folder {folder}: {_describe_os_error(e)}") from None
    return missing


def _remove_if_empty(folders: list[pathlib.Path]) -> None:
    for folder in folders:
        try:
            folder.rmdir()  # only an empty one: another export may have written there meanwhile
        except OSError:
            return


def export_model(
    model_path,
    export_dir=DEFAULT_EXPORT_DIR,
    name: str = DEFAULT_NAME,
    version: int | None = None,
    postprocessing: postprocess.PostProcessing | None = None,
    max_megapixels: float = DEFAULT_MAX_MEGAPIXELS,
) -> pathlib.Path:
    """Export the Keras model at ``model_path`` (a ``.keras`` file or a run directory) to
    ``export_dir/name/version`` and return that folder. ``postprocessing`` defaults to the model's stored
    choice (its ``best.postprocessing.json`` sidecar, else a plain 0.5 threshold).

    The arguments are checked before anything is read or created. A failed or interrupted export leaves no
    version and no staging folder, nor the model and export folders it created (while they are empty)."""
    name = check_name(name)
    version = None if version is None else checked(VERSION, version, "--version")
    max_megapixels = checked(MAX_MEGAPIXELS, max_megapixels, "--max-megapixels")
    predictor = inference.load_predictor(model_path)
    if predictor.keras_model is None and not hasattr(predictor, "serving_module"):
        raise ExportError(
            f"{model_path}: this is already an exported SavedModel; export the .keras model (or "
            f"run directory) it came from"
        )
    model_dir = pathlib.Path(export_dir) / name
    if version is not None:
        _refuse_existing(model_dir / str(version))
    created = _make_folders(model_dir)
    try:
        if not os.access(model_dir, os.W_OK | os.X_OK):
            raise ExportError(f"cannot write to the export folder {model_dir}: permission denied")
        version = version if version is not None else next_version(model_dir)
        _refuse_existing(model_dir / str(version))
        return _write_version(predictor, postprocessing or predictor.postprocessing, model_dir, version, max_megapixels)
    except BaseException:
        _remove_if_empty(created)
        raise


def _refuse_existing(target: pathlib.Path) -> None:
    if target.exists():
        raise ExportError(
            f"{target} already exists; versions are never overwritten. Leave out --version to "
            f"export as version {next_version(target.parent)}, or pass another one"
        )


def _write_version(
    predictor, postprocessing: postprocess.PostProcessing, model_dir: pathlib.Path, version: int, max_megapixels
) -> pathlib.Path:
    """Stage the SavedModel in a hidden sibling folder and rename it to ``model_dir/version``."""
    max_pixels = max(1, round(max_megapixels * 1e6))
    if predictor.keras_model is None:  # a ready-made model (pretrained:NAME)
        postprocessing = predictor.postprocessing
        save, described = _pretrained_saver(predictor, max_pixels), _pretrained_metadata(predictor)
    else:
        save, described = _keras_saver(predictor, postprocessing, max_pixels), _keras_metadata(predictor)
    target = model_dir / str(version)
    remove_stale_staging(model_dir)
    # Not a number, so TF Serving skips it; the pid tells a later export whether its writer is still alive.
    staging = model_dir / f"{STAGING_PREFIX}{version}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        save(staging)
        postprocess.write(staging / postprocess.SAVEDMODEL_FILE, postprocessing)
        metadata = {
            **described,
            "postprocessing": postprocessing.to_dict(),
            "max_megapixels": max_megapixels,
            "exported_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "kseg_version": kseg.__version__,
            "tensorflow_version": tf.__version__,
        }
        (staging / KSEG_FILE).parent.mkdir(parents=True, exist_ok=True)
        (staging / KSEG_FILE).write_text(json.dumps(metadata, indent=2) + "\n")
        if target.exists():  # another export took this version meanwhile
            raise ExportError(f"{target} already exists; versions are never overwritten")
        os.rename(staging, target)  # atomic: a polling server sees no version or a complete one
    except OSError as e:
        raise ExportWriteError(f"cannot write the export to {model_dir}: {_describe_os_error(e)}") from None
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return target


def _keras_saver(predictor, postprocessing, max_pixels: int):
    """Writes a Keras model's signatures with ``keras.export.ExportArchive``."""
    import keras

    model = predictor.keras_model
    height, width = predictor.image_size
    serve, predict_images = serving_functions(model, postprocessing, max_pixels)
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(SERVING_SIGNATURE, serve, input_signature=[tf.TensorSpec([None], tf.string, name=IMAGE_BYTES)])
    if predict_images is not None:
        archive.add_endpoint(
            PROBABILITIES_SIGNATURE,
            predict_images,
            input_signature=[tf.TensorSpec([None, height, width, 3], tf.float32, name=PROBABILITIES_INPUT)],
        )
    return lambda staging: archive.write_out(str(staging), verbose=False)


def _keras_metadata(predictor) -> dict:
    import keras

    model = predictor.keras_model
    height, width = predictor.image_size
    task = tasks.of_model(model)
    return {
        "task": task.name,
        "image_size": [height, width],
        "num_classes": predictor.num_classes,
        "binary": predictor.num_classes == 1,
        "signatures": task.serving_signatures(height, width, predictor.num_classes, model=model),
        **task.export_metadata(model),
        "source_model": str(pathlib.Path(predictor.path).resolve()),
        "keras_version": keras.__version__,
    }


def _pretrained_saver(predictor, max_pixels: int):
    """A ready-made pose model's module (network + ``serve``), saved with ``tf.saved_model.save``; images are
    decoded by ``decode_checked`` as in every kseg export."""
    module = predictor.serving_module(lambda data, index: decode_checked(data, index, max_pixels))
    return lambda staging: tf.saved_model.save(module, str(staging), signatures={SERVING_SIGNATURE: module.serve})


def _pretrained_metadata(predictor) -> dict:
    from kseg.tasks.keypoints import keypoint_signatures

    return {
        "task": predictor.task,
        "image_size": list(predictor.image_size),
        "num_classes": predictor.num_classes,
        "binary": False,
        "signatures": keypoint_signatures(predictor.joint_names, predictor.max_people),
        "joint_names": list(predictor.joint_names),
        "max_people": predictor.max_people,
        "source_model": predictor.path,
    }
