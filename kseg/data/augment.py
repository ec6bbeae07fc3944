"""Paired augmentation of image and mask batches, vectorised and deterministic under a seed.

Geometry (flips, 90-degree rotations, scale, rotation, translation) is folded into one affine transform per
image and applied once with ``ImageProjectiveTransformV3``: bilinear for the image, nearest for the mask, so
the mask keeps exact class ids and the two stay aligned to the pixel. Colour jitter touches only the
image. Working on whole batches with stateless random ops keeps the pipeline cheap on two cores and makes
a seeded run repeat exactly.

Copy-paste (Ghiasi et al., "Simple Copy-Paste is a Strong Data Augmentation Method for Instance
Segmentation", CVPR 2021) is for instance label images only: an image receives a random subset of the
people of its neighbour in the batch, mirrored and shifted at random, on top of its own; the people it
covers keep only what still shows. Crowds and occlusion are what a bottom-up instance model gets wrong on
Penn-Fudan, and 100 training photos hold few of them.
"""

from __future__ import annotations

import dataclasses
import math

import tensorflow as tf


@dataclasses.dataclass(frozen=True)
class Augmentation:
    """Ranges of the random transforms; a zero turns a transform off."""

    flip: bool = True
    rotate90: bool = True
    scale: float = 0.15  # zoom factor drawn from [1 - scale, 1 + scale] (log-uniform)
    rotate_degrees: float = 20.0  # extra rotation drawn from [-rotate_degrees, rotate_degrees]
    translate: float = 0.08  # shift drawn from [-translate, translate] of the image size
    brightness: float = 0.1  # added to [0, 1] intensities
    contrast: float = 0.15  # factor drawn from [1 - contrast, 1 + contrast]
    saturation: float = 0.15
    hue: float = 0.03  # fraction of a full turn of the colour wheel
    fill_mode: str = "reflect"
    copy_paste: float = 0.0  # probability that an image receives people of another (instance masks only)

    def __post_init__(self):
        for name in ("scale", "rotate_degrees", "translate", "brightness", "contrast", "saturation", "hue"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"Augmentation.{name} must be a number >= 0, got {value!r}")
        if not isinstance(self.copy_paste, (int, float)) or not 0 <= self.copy_paste <= 1:
            raise ValueError(f"Augmentation.copy_paste must be a probability in [0, 1], got {self.copy_paste!r}")
        if self.scale >= 1 or self.contrast >= 1 or self.saturation >= 1:
            raise ValueError("Augmentation.scale, contrast and saturation must be below 1")
        if self.fill_mode not in ("reflect", "constant", "nearest", "wrap"):
            raise ValueError(
                f"Augmentation.fill_mode must be reflect, constant, nearest or wrap, got {self.fill_mode!r}"
            )

    @property
    def has_geometry(self) -> bool:
        return self.flip or self.rotate90 or any((self.scale, self.rotate_degrees, self.translate))

    @property
    def has_colour(self) -> bool:
        return any((self.brightness, self.contrast, self.saturation, self.hue))


# Photos of people standing: mirror images and a wide range of scales (people near and far), small tilts, never
# upside down (no quarter or half turns).
_PEOPLE = Augmentation(
    rotate90=False, scale=0.35, rotate_degrees=10, translate=0.1, brightness=0.15, contrast=0.2, saturation=0.2
)

#: Named strengths for configs and the command line.
AUGMENTATIONS = {
    "none": Augmentation(
        flip=False,
        rotate90=False,
        scale=0,
        rotate_degrees=0,
        translate=0,
        brightness=0,
        contrast=0,
        saturation=0,
        hue=0,
    ),
    "flips": Augmentation(scale=0, rotate_degrees=0, translate=0, brightness=0, contrast=0, saturation=0, hue=0),
    "light": Augmentation(
        scale=0.1, rotate_degrees=10, translate=0.05, brightness=0.05, contrast=0.1, saturation=0.1, hue=0.02
    ),
    "medium": Augmentation(),
    "strong": Augmentation(
        scale=0.25, rotate_degrees=45, translate=0.12, brightness=0.2, contrast=0.3, saturation=0.3, hue=0.06
    ),
    "people": _PEOPLE,
    # Sports poses: people lean, tumble and stretch, so wider tilts than "people"; mirrors swap left and right
    # joints (augment_keypoints).
    "pose": Augmentation(
        rotate90=False, scale=0.25, rotate_degrees=20, translate=0.1, brightness=0.15, contrast=0.2, saturation=0.2
    ),
    # "people", and half of the images receive people pasted from another photo (instance datasets only).
    "people-paste": dataclasses.replace(_PEOPLE, copy_paste=0.5),
}


def get_augmentation(name_or_augmentation) -> Augmentation:
    if isinstance(name_or_augmentation, Augmentation):
        return name_or_augmentation
    if name_or_augmentation not in AUGMENTATIONS:
        raise ValueError(f"unknown augmentation {name_or_augmentation!r}; choose one of {sorted(AUGMENTATIONS)}")
    return AUGMENTATIONS[name_or_augmentation]


def _uniform(seed, batch, low, high):
    return tf.random.stateless_uniform([batch], seed=seed, minval=low, maxval=high)


def _affine_matrices(aug: Augmentation, seeds, batch, height, width):
    """Per-image 3x3 matrices mapping *output* pixel coordinates to *input* coordinates."""
    h, w = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
    cy, cx = (h - 1.0) / 2.0, (w - 1.0) / 2.0
    angle = tf.zeros([batch])
    if aug.rotate90:
        quarter_turns = tf.random.stateless_uniform([batch], seed=seeds[0], minval=0, maxval=4, dtype=tf.int32)
        if height != width:  # a quarter turn would change the shape; keep the half turn only
            quarter_turns = quarter_turns // 2 * 2
        angle += tf.cast(quarter_turns, tf.float32) * (math.pi / 2)
    if aug.rotate_degrees:
        angle += _uniform(seeds[1], batch, -1.0, 1.0) * (aug.rotate_degrees * math.pi / 180)
    zoom = tf.ones([batch])
    if aug.scale:
        zoom = tf.exp(_uniform(seeds[2], batch, math.log(1 - aug.scale), math.log(1 + aug.scale)))
    mirror = tf.ones([batch])
    if aug.flip:
        mirror = tf.where(_uniform(seeds[3], batch, 0.0, 1.0) < 0.5, -1.0, 1.0)
    shift_x = shift_y = tf.zeros([batch])
    if aug.translate:
        shift_x = _uniform(seeds[4], batch, -aug.translate, aug.translate) * w
        shift_y = _uniform(seeds[5], batch, -aug.translate, aug.translate) * h
    # input = R(-angle) . mirror . (output - centre - shift) / zoom + centre
    cos, sin = tf.cos(angle) / zoom, tf.sin(angle) / zoom
    a0, a1 = cos * mirror, sin
    b0, b1 = -sin * mirror, cos
    ox, oy = cx + shift_x, cy + shift_y
    a2 = cx - a0 * ox - a1 * oy
    b2 = cy - b0 * ox - b1 * oy
    zeros = tf.zeros([batch])
    # Snap near-integers so that flips and quarter turns are exact permutations of pixels.
    rounded = lambda t: tf.where(tf.abs(t - tf.round(t)) < 1e-4, tf.round(t), t)
    return tf.stack(
        [rounded(a0), rounded(a1), rounded(a2), rounded(b0), rounded(b1), rounded(b2), zeros, zeros], axis=1
    )


def _transform(images, transforms, interpolation, fill_mode):
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=images,
        transforms=transforms,
        output_shape=tf.shape(images)[1:3],
        fill_value=0.0,
        interpolation=interpolation,
        fill_mode=fill_mode.upper(),
    )


def _jitter_colour(aug: Augmentation, images, seeds, batch):
    """Brightness, contrast, saturation and hue, in that order, applied as ONE per-image affine colour map.

    Each step is affine in RGB (hue rotates the chroma plane of YIQ, which keeps luma), so their composition
    is ``x -> K x + v`` per image: one pass over the pixels instead of one per step. On a 2-core CPU the
    pipeline's work is taken from the training step, so this matters (see ``bench/loop.py``). Clipping to
    [0, 1] happens once, at the end, as it would after the separate steps.
    """
    images = tf.cast(images, tf.float32)
    identity = tf.eye(3, batch_shape=[batch])
    brightness = _uniform(seeds[6], batch, -aug.brightness, aug.brightness) if aug.brightness else tf.zeros([batch])
    contrast = _uniform(seeds[7], batch, 1 - aug.contrast, 1 + aug.contrast) if aug.contrast else tf.ones([batch])
    matrix = identity
    if aug.saturation:
        # grey + (x - grey) * s  ==  (s I + (1 - s) 1 w^T) x, with w the luma weights.
        saturation = _uniform(seeds[8], batch, 1 - aug.saturation, 1 + aug.saturation)[:, None, None]
        luma = tf.constant([[0.299, 0.587, 0.114]] * 3)
        matrix = saturation * identity + (1.0 - saturation) * luma
    if aug.hue:
        # Rotate the chroma plane of YIQ by theta: a hue shift that keeps luma.
        theta = _uniform(seeds[9], batch, -aug.hue, aug.hue) * (2 * math.pi)
        to_yiq = tf.constant([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
        to_rgb = tf.linalg.inv(to_yiq)
        c, s = tf.cos(theta), tf.sin(theta)
        one, zero = tf.ones_like(c), tf.zeros_like(c)
        rotation = tf.stack(
            [tf.stack([one, zero, zero], -1), tf.stack([zero, c, -s], -1), tf.stack([zero, s, c], -1)], 1
        )  # [B, 3, 3]
        matrix = tf.einsum("ij,bjk,kl,blm->bim", to_rgb, rotation, to_yiq, matrix)
    # Brightness then contrast: c (x + b - m') + m' with m' = mean(x) + b, i.e. c x + b + (1 - c) mean(x).
    offset = brightness
    if aug.contrast:
        offset += (1.0 - contrast) * tf.reduce_mean(images, axis=[1, 2, 3])
    scaled = matrix * contrast[:, None, None]
    shift = offset[:, None] * tf.reduce_sum(matrix, axis=-1)  # [B, 3]: the matrix applied to (v, v, v)
    images = tf.einsum("bhwc,bdc->bhwd", images, scaled) + shift[:, None, None, :]
    return tf.clip_by_value(images, 0.0, 1.0)


def augment_batch(images, masks, seed, augmentation: Augmentation):
    """Augments ``images`` ``[B, H, W, 3]`` float in [0, 1] and ``masks`` ``[B, H, W, 1]`` alike.

    ``seed`` is a ``[2]`` integer tensor; the same seed gives the same result.
    """
    aug = augmentation
    seeds = tf.unstack(tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 10))
    batch = tf.shape(images)[0]
    height, width = images.shape[1], images.shape[2]
    if aug.has_geometry:
        transforms = _affine_matrices(aug, seeds, batch, height, width)
        images = _transform(images, transforms, "BILINEAR", aug.fill_mode)
        mask_dtype = masks.dtype
        masks = _transform(tf.cast(masks, tf.float32), transforms, "NEAREST", aug.fill_mode)
        masks = tf.cast(masks, mask_dtype)
    if aug.copy_paste:
        paste_seed = tf.random.experimental.stateless_fold_in(tf.cast(seed, tf.int64), 10)
        images, masks = copy_paste(images, masks, paste_seed, aug.copy_paste)
    if aug.has_colour:
        images = _jitter_colour(aug, images, seeds, batch)
    return images, masks


#: Each person of the source image is pasted with this probability (the paper pastes a random subset).
PASTE_PERSON_PROBABILITY = 0.5
#: The pasted people move sideways by up to this fraction of the width (street photos: people stand on
#: the same ground, so they move along it, not up or down).
PASTE_SHIFT = 0.4


def copy_paste(images, labels, seed, probability: float):
    """Pastes people of image ``i - 1`` onto image ``i`` of the batch, with ``probability`` per image.

    ``labels`` ``[B, H, W, 1]`` are instance label images (integers, 0 background); a pasted person gets an
    id above the receiving image's own, so every person stays one id. The source is mirrored (half of the
    time) and shifted sideways before pasting; the image and labels stay aligned to the pixel.
    """
    if not labels.dtype.is_integer:
        raise TypeError(f"copy_paste needs instance label images (integers), got {labels.dtype.name} masks")
    seeds = tf.unstack(tf.random.experimental.stateless_split(seed, 4))
    batch = tf.shape(images)[0]
    width = tf.shape(images)[2]
    source_images, source_labels = tf.roll(images, 1, axis=0), tf.roll(labels, 1, axis=0)
    mirror = tf.where(_uniform(seeds[0], batch, 0.0, 1.0) < 0.5, -1.0, 1.0)
    shift = tf.round(
        _uniform(seeds[1], batch, -PASTE_SHIFT, PASTE_SHIFT) * tf.cast(width, tf.float32)
    )  # whole pixels: exact
    # x_in = mirror * (x_out - shift - cx) + cx; rows unchanged.
    centre = (tf.cast(width, tf.float32) - 1.0) / 2.0
    ones, zeros = tf.ones([batch]), tf.zeros([batch])
    transforms = tf.stack([mirror, zeros, centre - mirror * (shift + centre), zeros, ones, zeros, zeros, zeros], axis=1)
    source_images = _transform(source_images, transforms, "BILINEAR", "constant")
    source_labels = tf.cast(
        _transform(tf.cast(source_labels, tf.float32), transforms, "NEAREST", "constant"), labels.dtype
    )

    ids = tf.cast(source_labels[..., 0], tf.int32)
    top = tf.reduce_max(ids) + 1
    chosen = tf.random.stateless_uniform(tf.stack([batch, top]), seed=seeds[2]) < PASTE_PERSON_PROBABILITY
    receives = _uniform(seeds[3], batch, 0.0, 1.0) < probability
    flat_ids = tf.reshape(ids, [batch, -1])
    pasted = tf.gather(chosen, flat_ids, batch_dims=1) & (flat_ids > 0) & receives[:, None]
    pasted = tf.reshape(pasted, tf.shape(labels))
    own_top = tf.reduce_max(labels, axis=[1, 2, 3], keepdims=True)
    labels = tf.where(pasted, source_labels + own_top, labels)
    images = tf.where(pasted, source_images, images)
    return images, labels


def flip_permutation(joint_names) -> list[int]:
    """Index of each joint's mirror twin (``left_knee`` <-> ``right_knee``; ``neck`` is its own): after a
    horizontal flip, joint ``i`` of the new image is joint ``permutation[i]`` of the old one."""
    names = list(joint_names)
    twin = lambda n: "right_" + n[5:] if n.startswith("left_") else "left_" + n[6:] if n.startswith("right_") else n
    missing = [n for n in names if twin(n) not in names]
    if missing:
        raise ValueError(f"joints {missing} have no mirror twin among {names}")
    return [names.index(twin(n)) for n in names]


def augment_keypoints(images, keypoints, seed, augmentation: Augmentation, flip_permutation):
    """Augments ``images`` ``[B, H, W, 3]`` and their ``keypoints`` ``[B, J, 3]`` (x, y, visible; pixels) alike.

    The same affine transforms as ``augment_batch`` move the image; each point goes through the inverse (the
    matrices map output pixels to input pixels). A mirrored image swaps its joints' roles, so where a
    transform mirrors (negative determinant) joint ``i`` takes the point of joint ``flip_permutation[i]``: the
    left knee of the new image is the old right knee. Visibility is kept; a point pushed off the image is
    the caller's to weigh (``kseg.tasks.keypoint_ops.heatmap_targets``).
    """
    aug = augmentation
    seeds = tf.unstack(tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 10))
    batch = tf.shape(images)[0]
    height, width = images.shape[1], images.shape[2]
    keypoints = tf.cast(keypoints, tf.float32)
    if aug.has_geometry:
        transforms = _affine_matrices(aug, seeds, batch, height, width)
        images = _transform(images, transforms, "BILINEAR", aug.fill_mode)
        a0, a1, a2, b0, b1, b2 = (transforms[:, i, None] for i in range(6))
        determinant = a0 * b1 - a1 * b0
        x, y = keypoints[..., 0] - a2, keypoints[..., 1] - b2
        moved = tf.stack([(b1 * x - a1 * y) / determinant, (a0 * y - b0 * x) / determinant], axis=-1)
        moved = tf.concat([moved, keypoints[..., 2:]], axis=-1)
        swapped = tf.gather(moved, flip_permutation, axis=1)
        keypoints = tf.where((determinant < 0)[..., None], swapped, moved)
    if aug.has_colour:
        images = _jitter_colour(aug, images, seeds, batch)
    return images, keypoints
