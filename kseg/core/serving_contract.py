"""The contract between an exported SavedModel and its callers, in one place without TensorFlow.

``kseg.export`` writes it, ``kseg.prediction.inference`` and ``kseg.client`` (which must not need TensorFlow) read it:
signature, input and output names, where kseg's metadata lives in a version folder, and how the newest
version of a model folder is found (TF Serving's rule: the highest integer-named folder).
"""

from __future__ import annotations

import pathlib

#: The signature TF Serving calls when a request names none: encoded images in, PNG masks out.
SERVING_SIGNATURE = "serving_default"
IMAGE_BYTES = "image_bytes"
SERVING_OUTPUTS = ("mask_bytes", "height", "width", "foreground_fraction")
#: ``serving_default``'s outputs for instance models: the label image as PNG, the image size, how many people
#: and their scores, boxes and areas padded to the export's maximum (``MAX_INSTANCES``).
INSTANCE_OUTPUTS = ("label_bytes", "height", "width", "count", "scores", "boxes", "areas")
#: ``serving_default``'s outputs for keypoint models: per image and person each joint's (x, y, score) at the
#: image's original size, the person's score, how many people, the image size, and the joints' names (a row per
#: image, so a client of TF Serving, which cannot read ``kseg.json``, knows which joint is which).
KEYPOINT_OUTPUTS = ("keypoints", "scores", "count", "height", "width", "joint_names")
#: The most people an instance model returns per image (the best-scoring ones), as detection models cap their
#: detections: the serving outputs are padded to it, so it fixes their shapes.
MAX_INSTANCES = 100
#: The signature that maps model-size float images to probabilities (used by kseg.evaluate and kseg.predict).
PROBABILITIES_SIGNATURE = "predict_images"
PROBABILITIES_INPUT = "images"
PROBABILITIES_OUTPUT = "probabilities"
#: Metadata and post-processing kept in a version folder (TF Serving ignores assets.extra).
KSEG_FILE = "assets.extra/kseg.json"
POSTPROCESSING_FILE = "assets.extra/postprocessing.json"
SAVED_MODEL_FILE = "saved_model.pb"
#: An export is staged in a hidden, non-numeric sibling folder (TF Serving skips it) and renamed into place.
STAGING_PREFIX = ".export-"


#: TF Serving reads version folder names as int64 (``safe_strto64``): a larger number is no version to it.
MAX_VERSION = 2**63 - 1


def version_of(name: str) -> int | None:
    """The version number a folder name stands for (ASCII digits, at most ``MAX_VERSION``), or None."""
    if not (name.isascii() and name.isdigit()):
        return None
    number = int(name)
    return number if number <= MAX_VERSION else None


def looks_like_a_version(name: str) -> bool:
    """All digits, so meant as a version, yet not one TF Serving can read (beyond int64, or not ASCII)."""
    return name.isdigit() and version_of(name) is None


def is_version_dir(path: pathlib.Path) -> bool:
    """A complete exported version: a version-named folder holding ``saved_model.pb``."""
    return version_of(path.name) is not None and (path / SAVED_MODEL_FILE).is_file()


def version_numbers(model_dir) -> list[int]:
    """Every version-named folder in ``model_dir``, complete or not (a version number that is taken)."""
    model_dir = pathlib.Path(model_dir)
    if not model_dir.is_dir():
        return []
    versions = (version_of(p.name) for p in model_dir.iterdir() if p.is_dir())
    return sorted(v for v in versions if v is not None)


def newest_version_dir(model_dir) -> pathlib.Path | None:
    """The highest-numbered complete version in ``model_dir`` (what TF Serving serves by default), or None."""
    model_dir = pathlib.Path(model_dir)
    if not model_dir.is_dir():
        return None
    versions = sorted((version_of(p.name), p) for p in model_dir.iterdir() if is_version_dir(p))
    return versions[-1][1] if versions else None


def resolve_saved_model(path) -> pathlib.Path | None:
    """``path`` itself if it is an exported version, else its newest version, else None."""
    path = pathlib.Path(path)
    if (path / SAVED_MODEL_FILE).is_file():
        return path
    return newest_version_dir(path)
