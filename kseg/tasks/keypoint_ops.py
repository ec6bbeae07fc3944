"""Keypoints as heatmaps, in TensorFlow ops: training targets, sub-pixel decoding, the left/right swap of a
mirror image, and the LSP torso that PCK is measured against.

Coordinates are ``(x, y)`` in pixels with the pixel-centre convention (pixel ``i`` covers ``[i - 0.5, i + 0.5]``)
at every scale, so going from image pixels to a stride-``s`` heatmap is ``x / s + (1 / s - 1) / 2`` and back
``(x + 0.5) * s - 0.5``: a joint does not drift by half a heatmap pixel between the two.

Decoding: the argmax of each joint's heatmap, refined by fitting a parabola to the *log* heatmap through
the argmax and its two neighbours on each axis. A Gaussian's logarithm is a parabola, so a clean Gaussian
peak comes back exactly, wherever it lies between pixels (Zhang et al., "Distribution-Aware Coordinate
Representation for Human Pose Estimation", CVPR 2020, do the same with the full Hessian).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from kseg.data.augment import flip_permutation  # noqa: F401  (the tasks' name for it)
from kseg.data.preprocessing import resize_keypoints  # noqa: F401

#: Target Gaussian's standard deviation in heatmap pixels (SimpleBaseline's 2 at stride 4).
SIGMA = 2.0
#: Heatmap values kept above this before taking a logarithm.
_FLOOR = 1e-6


def image_to_heatmap(xy, stride):
    """Image-pixel coordinates -> heatmap-pixel coordinates at ``stride`` (pixel-centre convention)."""
    return (tf.cast(xy, tf.float32) + 0.5) / stride - 0.5


def heatmap_to_image(xy, stride):
    return (tf.cast(xy, tf.float32) + 0.5) * stride - 0.5


def inside(xy, size):
    """Which points lie on the image of ``size`` (h, w) (within its outer pixel edges)."""
    size = tf.cast(size, tf.float32)
    x, y = xy[..., 0], xy[..., 1]
    return (x >= -0.5) & (y >= -0.5) & (x <= size[1] - 0.5) & (y <= size[0] - 0.5)


def heatmap_targets(keypoints, image_size, stride: int, sigma: float = SIGMA):
    """Training targets for a batch: ``keypoints`` ``[B, J, 3]`` (x, y, visible) in pixels of images of
    ``image_size`` -> ``[B, h, w, 2J]``: J Gaussian heatmaps (peak 1) at stride ``stride``, then each
    joint's loss weight as a constant map (1 for a visible joint on the image, else 0: LSPET's occluded
    joints carry guessed or placeholder positions, and a joint pushed off the image has no peak to learn)."""
    height, width = image_size[0] // stride, image_size[1] // stride
    keypoints = tf.cast(keypoints, tf.float32)
    weight = tf.cast((keypoints[..., 2] > 0) & inside(keypoints[..., :2], image_size), tf.float32)  # [B, J]
    centre = image_to_heatmap(keypoints[..., :2], stride)  # [B, J, 2]
    ys = tf.range(height, dtype=tf.float32)[None, :, None, None]
    xs = tf.range(width, dtype=tf.float32)[None, None, :, None]
    cx, cy = centre[:, None, None, :, 0], centre[:, None, None, :, 1]
    heatmaps = tf.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / (2.0 * sigma**2)) * weight[:, None, None, :]
    weights = tf.broadcast_to(weight[:, None, None, :], tf.shape(heatmaps))
    return tf.concat([heatmaps, weights], axis=-1)


def decode_heatmaps(heatmaps):
    """``[B, h, w, J]`` heatmaps -> ``[B, J, 3]``: (x, y) of each joint's peak in heatmap pixels, to sub-pixel
    accuracy, and the peak's value as the joint's score."""
    heatmaps = tf.cast(heatmaps, tf.float32)
    shape = tf.shape(heatmaps)
    batch, height, width, joints = shape[0], shape[1], shape[2], shape[3]
    flat = tf.reshape(tf.transpose(heatmaps, [0, 3, 1, 2]), [batch, joints, height * width])
    index = tf.argmax(flat, axis=-1, output_type=tf.int32)
    score = tf.reduce_max(flat, axis=-1)
    y, x = index // width, index % width
    logs = tf.math.log(tf.maximum(flat, _FLOOR))

    def at(dy, dx):
        yy = tf.clip_by_value(y + dy, 0, height - 1)
        xx = tf.clip_by_value(x + dx, 0, width - 1)
        return tf.gather(logs, yy * width + xx, batch_dims=2)

    centre = at(0, 0)

    def shift(before, after, position, size):
        curvature = before + after - 2.0 * centre
        # The vertex of the parabola through (-1, before), (0, centre), (1, after).
        step = 0.5 * (before - after) / tf.where(curvature < -1e-6, curvature, -1.0)
        step = tf.where(curvature < -1e-6, tf.clip_by_value(step, -0.5, 0.5), 0.0)
        at_edge = (position == 0) | (position == size - 1)
        return tf.where(at_edge, 0.0, step)

    dx = shift(at(0, -1), at(0, 1), x, width)
    dy = shift(at(-1, 0), at(1, 0), y, height)
    return tf.stack([tf.cast(x, tf.float32) + dx, tf.cast(y, tf.float32) + dy, score], axis=-1)


def flip_heatmaps(heatmaps, permutation):
    """Heatmaps of a mirrored image mapped back onto the original: mirrored and the twins swapped."""
    return tf.gather(tf.reverse(heatmaps, axis=[2]), permutation, axis=-1)


# ------------------------------------------------------------------------------------------- scoring ---

#: LSP's torso for PCK: from the left shoulder to the right hip (Johnson & Everingham's protocol; also the
#: one the issue fixes); where one of those is not visible, the other diagonal, right shoulder to left hip.
TORSO = ("left_shoulder", "right_hip")
OTHER_DIAGONAL = ("right_shoulder", "left_hip")


def torso_sizes(truths: np.ndarray, joint_names) -> np.ndarray:
    """``[N, J, 3]`` true keypoints -> ``[N]`` torso sizes in the same pixels: the LSP diagonal, else the other
    one, else 0 (unscorable). A joint must be visible to count: LSPET marks a joint it could not place with
    flag 0 and a placeholder such as (0, -26), and a torso measured to it would be meaningless. On the 4,000
    LSPET images the LSP diagonal exists in 71.8%, one of the two in 83.1%."""
    names = list(joint_names)
    sizes = np.zeros(len(truths))
    for a, b in reversed((TORSO, OTHER_DIAGONAL)):  # the LSP diagonal last, so it wins
        a, b = names.index(a), names.index(b)
        both = (truths[:, a, 2] > 0) & (truths[:, b, 2] > 0)
        sizes = np.where(both, np.linalg.norm(truths[:, a, :2] - truths[:, b, :2], axis=-1), sizes)
    return sizes


def pck_hits(predicted: np.ndarray, truths: np.ndarray, torso: np.ndarray, fraction: float) -> np.ndarray:
    """``[N, J]`` bool: joint within ``fraction`` x torso of the truth. A missing prediction (NaN) misses."""
    distance = np.linalg.norm(predicted[..., :2] - truths[..., :2], axis=-1)
    with np.errstate(invalid="ignore"):
        return np.nan_to_num(distance, nan=np.inf) <= fraction * torso[:, None]
