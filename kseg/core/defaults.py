"""Defaults shared by every stage, so that training, evaluation, prediction and export agree."""

import math

#: Model input size (height, width) unless a config says otherwise.
IMAGE_SIZE = (256, 256)

#: Foreground probability at or above which a pixel counts as foreground (binary tasks).
THRESHOLD = 0.5

#: Environment variable that points at the folder holding ``PH2Dataset/`` and ``bodies/``.
DATA_DIR_ENV = "KSEG_DATA_DIR"


def probability_to_logit(threshold: float) -> float:
    """The logit at which ``sigmoid(logit) == threshold``; models output logits, users think in probabilities."""
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must be strictly between 0 and 1, got {threshold!r}")
    return math.log(threshold / (1.0 - threshold))
