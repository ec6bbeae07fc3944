"""kseg: semantic segmentation with Keras 3 and TensorFlow.

Data flows one way: ``tfds_ph2`` (files -> TFDS records) -> ``kseg.data`` (records or folders -> batched
tensors) -> ``kseg.models`` + ``kseg.losses``/``kseg.metrics`` -> training, evaluation, export.
Pieces every stage needs (image decoding, thresholds) live in ``kseg.imageio`` and ``kseg.defaults``.
"""

import os as _os

# TensorFlow's C++ start-up chatter buries the messages users need; keep warnings and errors.
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
_os.environ.setdefault("KERAS_BACKEND", "tensorflow")

__version__ = "0.1.0"
