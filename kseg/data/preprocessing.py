"""The one way an image becomes model input, shared by training pipelines, inference and the serving graph.

A model is only as good as the match between what it saw in training and what it gets later: the same
resize (bilinear, antialiased, rounded back to uint8, as cached by the training pipeline) and the same
scaling to [0, 1] everywhere.
"""

from __future__ import annotations

import tensorflow as tf

from kseg.core.defaults import IMAGE_SIZE


def resize_image(image, image_size=IMAGE_SIZE):
    """uint8 image(s) at ``image_size`` (bilinear, antialiased, rounded to uint8)."""
    image = tf.image.resize(image, image_size, method="bilinear", antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)


def scale_to_unit(images):
    """uint8 images -> float32 in [0, 1]: the model's ``image`` input."""
    return tf.cast(images, tf.float32) / 255.0


def model_input(images, image_size):
    """uint8 images of any sizes (a list, or one batch) -> float32 ``[N, H, W, 3]`` in [0, 1] at ``image_size``."""
    resized = [resize_image(tf.convert_to_tensor(image), image_size) for image in images]
    return scale_to_unit(tf.stack(resized))
