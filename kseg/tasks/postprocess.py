"""From model probabilities to the final mask: threshold, test-time augmentation and component clean-up.

nnU-Net's lesson is that these choices are part of the model: they are picked on validation data
(``kseg.evaluate --choose-postprocessing``), saved next to the model, and then applied identically by
``kseg.evaluate``, ``kseg.predict`` and the exported SavedModel. So every step here is written with core
TensorFlow ops only (no NumPy, SciPy or Python loops over pixels) and runs eagerly or inside a serving graph.

Connected components and hole filling run at the model's resolution, where a lesion is a few hundred pixels
across, and are carried to the original size as a gate; running them on a 6000x4000 photo would take
thousands of propagation steps. The steps:

1. probabilities at the model size (averaged over flips, and 90-degree rotations for square inputs, with ``tta``);
2. bilinear resize of the probabilities to the image's original size, threshold (or argmax);
3. ``fill_holes``: background the model-size mask encloses becomes foreground;
4. ``largest_component``: only the largest 8-connected foreground region (grown by one model-size pixel so
   that its upsampled border is not clipped) is kept.

Steps 3-4 apply to binary models only.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib

import tensorflow as tf

from kseg.core import settings
from kseg.core.defaults import THRESHOLD
from kseg.core.errors import KsegError
from kseg.core.files import atomic_write_text
from kseg.core.serving_contract import POSTPROCESSING_FILE

#: Sidecar file that stores the choice next to a ``.keras`` model (``best.keras`` -> ``best.postprocessing.json``).
SIDECAR_SUFFIX = ".postprocessing.json"
#: Where an exported SavedModel keeps the same JSON (TF Serving ignores ``assets.extra``).
SAVEDMODEL_FILE = POSTPROCESSING_FILE


class PostProcessingError(KsegError, ValueError):
    """A post-processing file or value is invalid; the message names the file or field."""


@dataclasses.dataclass(frozen=True)
class PostProcessing:
    """How probabilities become a mask; the defaults are a plain 0.5 threshold."""

    threshold: float = THRESHOLD
    tta: bool = False
    fill_holes: bool = False
    largest_component: bool = False

    def __post_init__(self):
        # The same checkers as every other setting (kseg.core.settings): a stored choice is a setting too.
        checks = {
            "threshold": settings.THRESHOLD,
            **dict.fromkeys(("tta", "fill_holes", "largest_component"), settings.boolean),
        }
        for name, check in checks.items():
            try:
                object.__setattr__(self, name, check(getattr(self, name)))
            except settings.Invalid as e:
                raise PostProcessingError(f"{name}: {e}") from None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict, source: str = "post-processing") -> PostProcessing:
        if not isinstance(values, dict):
            raise PostProcessingError(f"{source}: expected a JSON object, got {type(values).__name__}")
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - fields - {"chosen_on", "steps"})
        if unknown:
            raise PostProcessingError(f"{source}: unknown field {unknown[0]!r}; expected {sorted(fields)}")
        try:
            return cls(**{k: v for k, v in values.items() if k in fields})
        except PostProcessingError as e:
            raise PostProcessingError(f"{source}: {e}") from None

    def describe(self) -> str:
        parts = [f"threshold {self.threshold:g}"]
        parts += [name for name in ("tta", "fill_holes", "largest_component") if getattr(self, name)]
        return ", ".join(parts)


def sidecar_path(model_path) -> pathlib.Path:
    """``best.keras`` -> ``best.postprocessing.json`` (same folder)."""
    path = pathlib.Path(model_path)
    return path.with_name(path.stem + SIDECAR_SUFFIX)


def read(path) -> PostProcessing:
    """The post-processing stored in a JSON file."""
    path = pathlib.Path(path)
    try:
        values = json.loads(path.read_text())
    except OSError as e:
        raise PostProcessingError(f"{path}: cannot read ({e.strerror})") from None
    except json.JSONDecodeError as e:
        raise PostProcessingError(f"{path}: not valid JSON ({e})") from None
    return PostProcessing.from_dict(values, source=str(path))


def write(path, postprocessing: PostProcessing, **extra) -> pathlib.Path:
    """Write ``postprocessing`` (and ``extra`` notes, e.g. the validation scores behind it) as JSON, atomically."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_text(path, json.dumps({**postprocessing.to_dict(), **extra}, indent=2) + "\n")


def for_model(model_path) -> PostProcessing:
    """The choice stored with a ``.keras`` model or SavedModel, or the defaults if none was stored."""
    path = pathlib.Path(model_path)
    candidate = path / SAVEDMODEL_FILE if path.is_dir() else sidecar_path(path)
    return read(candidate) if candidate.exists() else PostProcessing()


def probabilities_from_logits(logits):
    """Sigmoid for one output channel (binary), softmax over several (classes); float32 whatever the policy."""
    logits = tf.cast(logits, tf.float32)
    return tf.sigmoid(logits) if logits.shape[-1] == 1 else tf.nn.softmax(logits, axis=-1)


# ------------------------------------------------------------------------------- test-time augmentation ---


def tta_transforms(height: int, width: int) -> list[tuple[bool, bool, bool]]:
    """``(transpose, flip_up_down, flip_left_right)`` triples: the 8 symmetries of a square, or the 4 that keep
    a non-square ``height x width`` (a fixed-size model cannot take the transposed image)."""
    transposes = (False, True) if height == width else (False,)
    return [(t, ud, lr) for t in transposes for ud in (False, True) for lr in (False, True)]


def _apply_transform(batch, transform, inverse=False):
    transpose, flip_ud, flip_lr = transform
    if transpose and not inverse:
        batch = tf.transpose(batch, [0, 2, 1, 3])
    if flip_ud:
        batch = tf.reverse(batch, axis=[1])
    if flip_lr:
        batch = tf.reverse(batch, axis=[2])
    if transpose and inverse:
        batch = tf.transpose(batch, [0, 2, 1, 3])
    return batch


def tta_probabilities(predict, batch):
    """Mean of ``predict`` (model-size batch -> probabilities) over the symmetries, each mapped back."""
    height, width = int(batch.shape[1]), int(batch.shape[2])
    total = None
    transforms = tta_transforms(height, width)
    for transform in transforms:
        probs = _apply_transform(predict(_apply_transform(batch, transform)), transform, inverse=True)
        total = probs if total is None else total + probs
    return total / float(len(transforms))


# ------------------------------------------------------------------------------ components and holes ---


def _component_labels(allowed, step):
    """Labels of the connected regions of ``allowed`` (bool ``[N, H, W, 1]``; ``step`` is the max over a
    pixel's neighbourhood, which sets the connectivity): 0 outside them, and on every pixel of a region the
    largest (flat index + 1) in it. Graph-friendly.

    Each round spreads the largest label one pixel (``step``) and then jumps: a label names a pixel of the same
    region (label - 1), whose own label is at least as large, so every pixel takes that one. Spreading alone
    needs as many rounds as the longest path inside a region (hundreds for a lesion); with the jumps far
    fewer. The result is the same: the rounds stop only when no neighbour differs, and then the whole region
    carries its largest index."""
    shape = tf.shape(allowed)
    count, pixels = shape[0], shape[1] * shape[2]
    ids = tf.reshape(tf.range(1, pixels + 1, dtype=tf.float32), [1, shape[1], shape[2], 1])
    zeros = tf.zeros(shape, tf.float32)
    labels = tf.where(allowed, tf.tile(ids, [count, 1, 1, 1]), zeros)

    def body(current, _):
        spread = tf.reshape(tf.where(allowed, step(current), zeros), [count, pixels])
        named = tf.maximum(tf.cast(spread, tf.int32) - 1, 0)  # the pixel each label names (background: any)
        jumped = tf.maximum(spread, tf.gather(spread, named, batch_dims=1))
        updated = tf.where(allowed, tf.reshape(jumped, shape), zeros)
        return updated, tf.reduce_any(tf.not_equal(updated, current))

    labels, _ = tf.while_loop(lambda _, changed: changed, body, [labels, tf.constant(True)], parallel_iterations=1)
    return tf.cast(labels[..., 0], tf.int32)


def _max_8(x):
    return tf.nn.max_pool2d(x, ksize=3, strides=1, padding="SAME")


def _max_4(x):
    return tf.maximum(
        tf.nn.max_pool2d(x, ksize=(3, 1), strides=1, padding="SAME"),
        tf.nn.max_pool2d(x, ksize=(1, 3), strides=1, padding="SAME"),
    )


def component_labels(masks):
    """8-connected component labels of boolean masks ``[N, H, W]``: 0 for background, and every pixel of a
    component carries the same positive label (the largest flat index in it, plus one)."""
    masks = tf.convert_to_tensor(masks, tf.bool)
    return _component_labels(masks[..., None], _max_8)


def _sum_per_label(labels, values):
    """Sum of ``values`` per label of each image: ``[N, H*W + 1]`` (label 0 is the background)."""
    shape = tf.shape(labels)
    per_image = shape[1] * shape[2] + 1
    offsets = tf.range(shape[0])[:, None, None] * per_image
    sums = tf.math.unsorted_segment_sum(
        tf.reshape(values, [-1]), tf.reshape(labels + offsets, [-1]), shape[0] * per_image
    )
    return tf.reshape(sums, [shape[0], per_image])


def largest_component(masks):
    """Boolean masks ``[N, H, W]`` keeping only each mask's largest 8-connected component (empty stays empty)."""
    masks = tf.convert_to_tensor(masks, tf.bool)
    labels = component_labels(masks)
    sizes = _sum_per_label(labels, tf.cast(labels > 0, tf.int32))
    best = tf.argmax(sizes, axis=1, output_type=tf.int32)
    return masks & tf.equal(labels, best[:, None, None])


def fill_holes(masks):
    """Boolean masks ``[N, H, W]`` with every background region that does not touch the border filled
    (background connectivity 4, as ``scipy.ndimage.binary_fill_holes``)."""
    masks = tf.convert_to_tensor(masks, tf.bool)
    background = tf.logical_not(masks)
    labels = _component_labels(background[..., None], _max_4)
    height, width = tf.shape(masks)[1], tf.shape(masks)[2]
    rows = tf.range(height)[:, None]
    cols = tf.range(width)[None, :]
    border = (rows == 0) | (rows == height - 1) | (cols == 0) | (cols == width - 1)
    touches_border = _sum_per_label(labels, tf.cast(background & border[None], tf.int32)) > 0
    outside = background & tf.gather(touches_border, labels, batch_dims=1)
    return tf.logical_not(outside)


# ----------------------------------------------------------------------------------------- the mask ---


def _resize_nearest(masks, size):
    return tf.cast(tf.image.resize(tf.cast(masks, tf.uint8)[..., None], size, method="nearest")[..., 0], tf.bool)


def final_mask(model_probs, original_size, postprocessing: PostProcessing = PostProcessing()):
    """One image's mask at ``original_size`` (uint8 ``[h, w]``: {0, 1}, or class ids) from its model-size
    probabilities ``[H, W, C]``. Graph-compatible; ``original_size`` may be a tensor."""
    model_probs = tf.convert_to_tensor(model_probs, tf.float32)
    probs = tf.image.resize(model_probs, original_size, method="bilinear")
    if model_probs.shape[-1] != 1:
        return tf.cast(tf.argmax(probs, axis=-1), tf.uint8)
    threshold = postprocessing.threshold
    mask = probs[..., 0] >= threshold
    if postprocessing.fill_holes or postprocessing.largest_component:
        small = (model_probs[..., 0] >= threshold)[None]
        if postprocessing.fill_holes:
            filled = fill_holes(small)
            mask = mask | _resize_nearest(filled & ~small, original_size)[0]
            small = filled
        if postprocessing.largest_component:
            keep = largest_component(small)
            grown = tf.nn.max_pool2d(tf.cast(keep, tf.float32)[..., None], 3, 1, "SAME")[..., 0] > 0
            mask = mask & _resize_nearest(grown, original_size)[0]
    return tf.cast(mask, tf.uint8)
