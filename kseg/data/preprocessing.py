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


def resize_keypoints(keypoints, from_size, to_size):
    """``[..., J, 2+]`` (x, y, ...) in pixels of an image of ``from_size`` (h, w) -> of ``to_size``; other
    channels (visibility) pass unchanged."""
    from_size = tf.cast(from_size, tf.float32)
    to_size = tf.cast(to_size, tf.float32)
    scale = tf.stack([to_size[1] / from_size[1], to_size[0] / from_size[0]])
    xy = (tf.cast(keypoints[..., :2], tf.float32) + 0.5) * scale - 0.5
    return tf.concat([xy, tf.cast(keypoints[..., 2:], tf.float32)], axis=-1)
