"""kseg: semantic and instance segmentation with Keras 3 and TensorFlow.

Data flows one way: ``tfds_ph2`` (files -> TFDS records) -> ``kseg.data`` (records or folders -> batched
tensors) -> ``kseg.models`` + ``kseg.tasks.losses``/``kseg.tasks.metrics`` -> training, evaluation, export.
Pieces every stage needs (image decoding, thresholds) live in ``kseg.core.imageio`` and ``kseg.core.defaults``.
"""

import os as _os
import sys as _sys

# TensorFlow's C++ start-up chatter (oneDNN, absl, CUDA probing) buries the messages users need: keep its
# errors only. A command's --verbose, or TF_CPP_MIN_LOG_LEVEL set by the user, brings the rest back; it must be
# decided here, before TensorFlow is imported, so the flag is looked for in the command line itself.
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "0" if "--verbose" in _sys.argv[1:] else "2")
_os.environ.setdefault("KERAS_BACKEND", "tensorflow")

from kseg.core import quiet_import as _quiet_import  # noqa: E402  (standard library only)

_quiet_import.install()

__version__ = "0.1.0"
