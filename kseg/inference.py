"""Running a segmentation model on images of any size and bringing its output back to each image's size.

Training, evaluation and prediction all go through here, so a mask is produced the same way everywhere:
resize the image to the model's input size exactly as the training pipeline does, predict, resize the
*probabilities* (bilinear) back to the original size, then threshold (binary) or take the argmax.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from kseg.data import resize_image
from kseg.defaults import THRESHOLD


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
