"""Running a segmentation model on images of any size and bringing its output back to each image's size.

Training, evaluation and prediction all go through here, so a mask is produced the same way everywhere:
resize the image to the model's input size exactly as the training pipeline does, predict, resize the
*probabilities* (bilinear) back to the original size, then threshold (binary) or take the argmax.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Callable

import numpy as np
import tensorflow as tf

from kseg import postprocess
from kseg.data import resize_image
from kseg.defaults import THRESHOLD

#: Signature of an exported SavedModel that maps model-size images to probabilities.
PROBABILITIES_SIGNATURE = "predict_images"


class ModelLoadError(ValueError):
    """A model path is missing or is not a kseg model; the message names the path and what was expected."""


def model_image_size(model) -> tuple[int, int]:
    """The (height, width) a model was built for, read from its ``image`` input."""
    shape = model.inputs[0].shape if hasattr(model, "inputs") and model.inputs else None
    if shape is None or shape[1] is None or shape[2] is None:
        raise ValueError("the model has no fixed input size; build it with image_size=(H, W)")
    return int(shape[1]), int(shape[2])


def to_model_input(images, image_size) -> np.ndarray:
    """uint8 images of any sizes -> float32 batch ``[N, H, W, 3]`` in [0, 1] at ``image_size``."""
    resized = [resize_image(tf.convert_to_tensor(image), image_size) for image in images]
    return tf.cast(tf.stack(resized), tf.float32).numpy() / 255.0


def probabilities(logits: np.ndarray) -> np.ndarray:
    """Sigmoid for one output channel, softmax for several."""
    logits = tf.convert_to_tensor(logits, tf.float32)
    return (tf.sigmoid(logits) if logits.shape[-1] == 1 else tf.nn.softmax(logits, axis=-1)).numpy()


def predict_probabilities(model, images, batch_size: int = 8, transform=None) -> list[np.ndarray]:
    """Per-image probability maps ``[H, W, C]`` at each image's original size.

    ``transform`` (optional) maps a model-size batch to probabilities, e.g. test-time augmentation;
    by default it is ``probabilities(model(batch))``.
    """
    image_size = model_image_size(model)
    predict = transform or (lambda batch: probabilities(model(batch, training=False)))
    results = []
    for start in range(0, len(images), batch_size):
        chunk = images[start:start + batch_size]
        probs = predict(to_model_input(chunk, image_size))
        for image, prob in zip(chunk, probs):
            results.append(tf.image.resize(prob, image.shape[:2], method="bilinear").numpy())
    return results


def to_mask(prob: np.ndarray, threshold: float = THRESHOLD) -> np.ndarray:
    """``[H, W]`` uint8 mask: foreground where probability >= threshold, or the argmax class."""
    if prob.shape[-1] == 1:
        return (prob[..., 0] >= threshold).astype(np.uint8)
    return np.argmax(prob, axis=-1).astype(np.uint8)


# ------------------------------------------------------------------------------------ loading models ---

@dataclasses.dataclass(frozen=True)
class Predictor:
    """A trained model from any of the places kseg stores one, with the post-processing chosen for it."""

    path: str
    image_size: tuple[int, int]
    num_classes: int
    postprocessing: postprocess.PostProcessing
    model_probabilities_fn: Callable  # float32 [N, H, W, 3] in [0, 1] -> probabilities [N, H, W, C]
    keras_model: object = None  # the Keras model when loaded from .keras (None for a SavedModel)

    def model_probabilities(self, batch, tta: bool | None = None):
        """Probabilities at the model size for a model-size batch; ``tta`` defaults to the stored choice."""
        tta = self.postprocessing.tta if tta is None else tta
        batch = tf.convert_to_tensor(batch, tf.float32)
        if tta:
            return postprocess.tta_probabilities(self.model_probabilities_fn, batch)
        return self.model_probabilities_fn(batch)

    def predict(self, images, batch_size: int = 8, postprocessing: postprocess.PostProcessing | None = None):
        """uint8 masks ``[h, w]`` at each image's own size (class ids or {0, 1}), post-processed."""
        postprocessing = postprocessing or self.postprocessing
        masks = []
        for start in range(0, len(images), batch_size):
            chunk = images[start:start + batch_size]
            probs = self.model_probabilities(to_model_input(chunk, self.image_size), tta=postprocessing.tta)
            for image, prob in zip(chunk, probs):
                masks.append(postprocess.final_mask(prob, image.shape[:2], postprocessing).numpy())
        return masks


def _keras_predictor(path: pathlib.Path) -> Predictor:
    import keras

    import kseg.models  # noqa: F401  (registers kseg's layers for deserialization)

    try:  # compile=False: inference needs no loss or metrics (and so no kseg.losses import)
        model = keras.models.load_model(path, compile=False)
    except Exception as e:  # Keras raises many types for a bad archive
        raise ModelLoadError(f"{path}: cannot load as a Keras model ({type(e).__name__}: {e})") from None
    num_classes = int(model.outputs[0].shape[-1])

    @tf.function(reduce_retracing=True)
    def model_probabilities(batch):
        logits = tf.cast(model(batch, training=False), tf.float32)
        return tf.sigmoid(logits) if num_classes == 1 else tf.nn.softmax(logits, axis=-1)

    return Predictor(str(path), model_image_size(model), num_classes, postprocess.for_model(path),
                     model_probabilities, keras_model=model)


def _saved_model_predictor(path: pathlib.Path) -> Predictor:
    try:
        loaded = tf.saved_model.load(str(path))
    except Exception as e:
        raise ModelLoadError(f"{path}: cannot load as a SavedModel ({type(e).__name__}: {e})") from None
    if PROBABILITIES_SIGNATURE not in loaded.signatures:
        raise ModelLoadError(f"{path}: the SavedModel has no {PROBABILITIES_SIGNATURE!r} signature (it has "
                             f"{sorted(loaded.signatures)}); export it with python -m kseg.export")
    signature = loaded.signatures[PROBABILITIES_SIGNATURE]
    (input_name, spec), = signature.structured_input_signature[1].items()
    output_spec = signature.structured_outputs["probabilities"]

    def model_probabilities(batch):
        return signature(**{input_name: tf.convert_to_tensor(batch, tf.float32)})["probabilities"]

    return Predictor(str(path), (int(spec.shape[1]), int(spec.shape[2])), int(output_spec.shape[-1]),
                     postprocess.for_model(path), model_probabilities)


def load_predictor(path) -> Predictor:
    """A ``.keras`` file, a training run directory (its ``best.keras``), an exported SavedModel version
    directory, or a folder of numbered versions (the newest)."""
    path = pathlib.Path(path)
    if not path.exists():
        raise ModelLoadError(f"{path}: no such file or directory; expected a .keras file, a run directory "
                             f"or an exported SavedModel")
    if path.is_file():
        if path.suffix != ".keras":
            raise ModelLoadError(f"{path}: expected a .keras file, a run directory or a SavedModel directory")
        return _keras_predictor(path)
    if (path / "saved_model.pb").exists():
        return _saved_model_predictor(path)
    if (path / "best.keras").exists():
        return _keras_predictor(path / "best.keras")
    versions = sorted((int(p.name), p) for p in path.iterdir() if p.name.isdigit() and (p / "saved_model.pb").exists())
    if versions:
        return _saved_model_predictor(versions[-1][1])
    raise ModelLoadError(f"{path}: found neither best.keras (a run directory), saved_model.pb (an exported "
                         f"version) nor numbered version folders")
