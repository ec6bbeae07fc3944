"""Bottom-up instance segmentation in TensorFlow ops: Panoptic-DeepLab targets and grouping.

"Every person their own mask" without a detector: the encoder-decoder predicts, per pixel, a foreground logit,
an instance-centre heatmap and an offset ``(dy, dx)`` from the pixel to the centre of the instance it belongs
to. Instances are the peaks of the heatmap; a foreground pixel joins the peak nearest to where its offset
points. That is the recipe of Panoptic-DeepLab (Cheng et al., CVPR 2020); the reference implementation we
read is TF Model Garden's ``official/projects/panoptic`` (``panoptic_deeplab_input.py`` for the targets,
``panoptic_deeplab_merge.py`` for the grouping), and detectron2's ``Panoptic-DeepLab`` for the instance score.

Everything here is core TensorFlow (no ``numpy_function``/``py_function``, no Python loop over instances or
pixels), so the same code makes training targets inside a ``tf.data`` map, where the image size and the
number of instances are unknown at trace time, and groups instances inside a SavedModel served by TF
Serving (see ``kseg.tasks.postprocess`` for the same rule on the semantic side).

Training recipe (the paper's): centre heatmap = a 2-D Gaussian of sigma 8 input pixels at each instance's
centre of mass (``instance_targets``), MSE loss on it weighted 200; L1 loss on the offsets only where
``offset_weight`` is 1 (foreground), weighted 0.01 when the offsets are in input pixels (with
``output_stride`` s the offsets come out in output pixels, 1/s as large, so scale that weight by s to keep
the same balance); the usual foreground loss on the semantic logit. Inference: ``group_instances`` with
NMS kernel 7 at stride 4 (13 at full resolution), centre threshold 0.1 and at most 200 candidate centres.

Coordinates: a pixel ``(i, j)`` sits at ``(i, j)``; boxes are pixel *edges*, ``(ymin, xmin, ymax, xmax)`` with
``ymax = last row + 1``, so that a box scales to another image size by plain multiplication. A stride-s
grid follows ``tf.image.resize``'s half-pixel convention (the one 2x2 max-pool encoders and bilinear
upsampling share): output pixel ``i`` covers input pixels ``s*i .. s*i+s-1`` and is centred at
``s*i + (s-1)/2``.
"""

from __future__ import annotations

from typing import NamedTuple

import tensorflow as tf

from kseg.core.serving_contract import MAX_INSTANCES

#: Public functions hold no Python control flow on tensors, so AutoGraph has nothing to convert; skipping it
#: makes a tf.function or tf.data map that calls them trace in about a quarter of the time (3.5 s -> 0.9 s
#: for the batched grouping).
_plain_tensorflow = tf.autograph.experimental.do_not_convert

#: Keys of the dictionary ``instance_targets`` returns.
FOREGROUND = "foreground"
CENTRE_HEATMAP = "centre_heatmap"
OFFSETS = "offsets"
OFFSET_WEIGHT = "offset_weight"

#: Panoptic-DeepLab's defaults (paper and Model Garden config).
SIGMA = 8.0
CENTRE_THRESHOLD = 0.1
NMS_KERNEL = 7
TOP_K = 200
FOREGROUND_THRESHOLD = 0.5


class Instances(NamedTuple):
    """Grouped instances of one image; ``n`` is known only at run time.

    - ``labels``: int32 [H, W], 0 background, 1..n the instances in descending score order;
    - ``scores``: float32 [n], descending;
    - ``boxes``: float32 [n, 4], (ymin, xmin, ymax, xmax) pixel edges of each instance's pixels;
    - ``areas``: int32 [n], pixel counts.
    """

    labels: tf.Tensor
    scores: tf.Tensor
    boxes: tf.Tensor
    areas: tf.Tensor


class PaddedInstances(NamedTuple):
    """``Instances`` with fixed-size outputs for serving: rows past ``count`` are zeros.

    - ``labels``: int32 [H, W]; ``scores``: float32 [M]; ``boxes``: float32 [M, 4]; ``areas``: int32 [M];
    - ``count``: int32 [], the number of real instances (M = ``max_instances``).

    A SavedModel signature must return a dict: use ``result._asdict()``.
    """

    labels: tf.Tensor
    scores: tf.Tensor
    boxes: tf.Tensor
    areas: tf.Tensor
    count: tf.Tensor


# ------------------------------------------------------------------------------------------ resizing ---


def _nearest_indices(source: tf.Tensor, target: tf.Tensor) -> tf.Tensor:
    """Source index for each of ``target`` outputs, half-pixel nearest: ``floor((i + 0.5) * source / target)``.

    Integer arithmetic (``(2i + 1) * source // (2 * target)``) so that no float rounding can move a pixel.
    """
    source = tf.cast(source, tf.int64)
    target = tf.cast(target, tf.int64)
    index = (2 * tf.range(target, dtype=tf.int64) + 1) * source // (2 * target)
    return tf.cast(tf.minimum(index, source - 1), tf.int32)


@_plain_tensorflow
def resize_label_image(labels, size) -> tf.Tensor:
    """Nearest-neighbour resize of label images ``[..., H, W]`` to ``[..., size[0], size[1]]``.

    Label ids are never interpolated: a bilinear (or antialiased) resize would invent ids that lie between
    two instances' ids. This picks, for output pixel i, input pixel ``floor((i + 0.5) * H / size[0])``, the
    same pixel ``tf.image.resize(..., "nearest")`` picks, but by integer gathers, so every integer dtype
    (int64 ids included) comes back exactly and no channel axis is needed. A trailing channel axis of a
    decoded PNG (``[H, W, 1]``) must be squeezed first. ``size`` may be a tensor (unknown at trace time).
    """
    labels = tf.convert_to_tensor(labels)
    if labels.shape.rank is not None and labels.shape.rank < 2:
        raise ValueError(f"resize_label_image: expected [..., H, W], got shape {labels.shape}")
    size = tf.convert_to_tensor(size, tf.int32)
    shape = tf.shape(labels)
    rows = _nearest_indices(shape[-2], size[0])
    cols = _nearest_indices(shape[-1], size[1])
    return tf.gather(tf.gather(labels, rows, axis=-2), cols, axis=-1)


@_plain_tensorflow
def resize_offsets(offsets, size) -> tf.Tensor:
    """Bilinear resize of offsets ``[..., H, W, 2]`` to ``size``, rescaling dy and dx to the new pixels.

    An offset is a length in pixels of its grid, so when the grid grows by ``size[0] / H`` the vector grows by
    the same factor. Under the half-pixel convention the factor is exactly the size ratio (not
    ``(size - 1) / (H - 1)``, which belongs to ``align_corners``). Use it to group at full resolution a model
    that predicts at stride s (``group_instances`` then wants the full-resolution NMS kernel, 13).
    """
    offsets = tf.convert_to_tensor(offsets, tf.float32)
    size = tf.convert_to_tensor(size, tf.int32)
    shape = tf.shape(offsets)
    scale = tf.cast(size, tf.float32) / tf.cast(shape[-3:-1], tf.float32)
    return tf.image.resize(offsets, size, method="bilinear") * scale


@_plain_tensorflow
def instances_to_size(instances: Instances | PaddedInstances, size) -> Instances | PaddedInstances:
    """Grouped results of one image, brought from the grid they were grouped on to the image's ``size``.

    The label image is resized nearest (``resize_label_image``), boxes are scaled (they are pixel edges, so
    scaling is exact for the region they describe) and areas are recounted on the resized label image, so
    that they stay the pixel counts of the label image returned (an instance thinner than a pixel of the
    new grid may recount to 0 when shrinking). Scores and ``count`` are unchanged. Works on ``Instances``
    and ``PaddedInstances`` alike.
    """
    size = tf.convert_to_tensor(size, tf.int32)
    old = tf.shape(instances.labels)[:2]
    labels = resize_label_image(instances.labels, size)
    factor = tf.cast(size, tf.float32) / tf.cast(old, tf.float32)
    boxes = instances.boxes * tf.tile(factor, [2])[None, :]
    slots = tf.shape(instances.scores)[0]
    counts = tf.math.bincount(tf.reshape(labels, [-1]), minlength=slots + 1, maxlength=slots + 1, dtype=tf.int32)
    return instances._replace(labels=labels, boxes=boxes, areas=counts[1:])


# ------------------------------------------------------------------------------------------- targets ---


def _check_stride(output_stride) -> int:
    if isinstance(output_stride, bool) or not isinstance(output_stride, int) or output_stride < 1:
        raise ValueError(f"output_stride: expected a positive integer, got {output_stride!r}")
    return output_stride


@_plain_tensorflow
def instance_targets(instance_labels, sigma: float = SIGMA, output_stride: int = 1) -> dict[str, tf.Tensor]:
    """Training targets for the foreground, centre-heatmap and offset heads, from an instance label image.

    Args:
        instance_labels: integer [H, W] (one image) or [B, H, W] (a batch, via ``tf.map_fn``); 0 is
            background, every other id one instance. Ids need not be consecutive or sorted; H, W, B and the
            number of instances may be unknown at trace time (``tf.data`` maps, ``tf.function``).
        sigma: standard deviation of each centre's Gaussian, in *input* pixels (the paper's 8), so that a
            model at another stride sees the same spread on the image.
        output_stride: s >= 1, the stride of the grid the heads predict on. Targets are made on the
            ``ceil(H/s) x ceil(W/s)`` grid directly rather than by resizing full-resolution targets, which
            would blur the heatmap peak below 1 and average offsets of two instances across their border.
            Centres of mass are still computed from the full-resolution labels (an instance smaller than
            the stride keeps an accurate centre); the label of an output pixel is the input pixel nearest
            its centre (``resize_label_image``'s choice when H, W are multiples of s, as they are for U-Net
            inputs).

    Returns:
        A dict of float32 tensors on the output grid, with a leading B for a batch:
        - ``foreground`` [h, w]: 1 on instance pixels, 0 on background;
        - ``centre_heatmap`` [h, w]: the maximum over instances of ``exp(-d^2 / (2 (sigma/s)^2))``, d the
          distance to the instance's centre. The centre is the centre of mass rounded to the nearest output
          pixel (as Panoptic-DeepLab does), so that every instance's peak is exactly 1.0 on a pixel, which
          is what a max-pool NMS can find; all zeros for an image without instances;
        - ``offsets`` [h, w, 2]: (dy, dx) from each foreground pixel to that rounded centre, in output-grid
          pixels (input pixels / s); exact integers; 0 on background. The centre of mass of a bent or
          hollow instance may lie outside it; the offsets still point there (as in the paper);
        - ``offset_weight`` [h, w]: the offset loss's per-pixel weight, 1 on foreground, 0 on background
          (background pixels have no instance to point to).
    """
    stride = _check_stride(output_stride)
    labels = tf.convert_to_tensor(instance_labels)
    if not labels.dtype.is_integer:
        raise TypeError(f"instance_labels: expected an integer label image, got {labels.dtype.name}")
    rank = labels.shape.rank
    if rank == 2:
        return _targets_one(labels, float(sigma), stride)
    if rank == 3:
        spec = tf.TensorSpec([None, None], tf.float32)
        signature = {
            FOREGROUND: spec,
            CENTRE_HEATMAP: spec,
            OFFSETS: tf.TensorSpec([None, None, 2], tf.float32),
            OFFSET_WEIGHT: spec,
        }
        return tf.map_fn(lambda one: _targets_one(one, float(sigma), stride), labels, fn_output_signature=signature)
    raise ValueError(f"instance_labels: expected [H, W] or [B, H, W], got shape {labels.shape}")


def _targets_one(labels: tf.Tensor, sigma: float, stride: int) -> dict[str, tf.Tensor]:
    shape = tf.shape(labels)
    height, width = shape[0], shape[1]
    out_h = (height + stride - 1) // stride
    out_w = (width + stride - 1) // stride

    # Per-instance centre of mass. Coordinate sums go through int64: a float32 sum over a 512x512 person
    # (~1e8) would already be rounded.
    ids, segment = tf.unique(tf.reshape(labels, [-1]), out_idx=tf.int32)
    count = tf.size(ids)
    flat = tf.range(height * width, dtype=tf.int32)
    rows = tf.cast(flat // width, tf.int64)
    cols = tf.cast(flat % width, tf.int64)
    pixels = tf.math.unsorted_segment_sum(tf.ones_like(rows), segment, count)
    centre_y = tf.cast(tf.math.unsorted_segment_sum(rows, segment, count), tf.float64) / tf.cast(pixels, tf.float64)
    centre_x = tf.cast(tf.math.unsorted_segment_sum(cols, segment, count), tf.float64) / tf.cast(pixels, tf.float64)

    # Onto the output grid (pixel i centred at s*i + (s-1)/2), rounded half up to a whole output pixel.
    def to_grid(centre, size):
        grid = (centre - (stride - 1) / 2.0) / stride
        return tf.clip_by_value(tf.cast(tf.floor(grid + 0.5), tf.int32), 0, size - 1)

    grid_y = to_grid(centre_y, out_h)
    grid_x = to_grid(centre_x, out_w)

    # Output-grid pixels take the label (and instance) of the input pixel nearest their centre.
    sample_rows = tf.minimum(tf.range(out_h) * stride + stride // 2, height - 1)
    sample_cols = tf.minimum(tf.range(out_w) * stride + stride // 2, width - 1)
    sampled = tf.gather(tf.reshape(segment, [height, width]), sample_rows)
    sampled = tf.gather(sampled, sample_cols, axis=1)  # [h, w] index into ids
    foreground = tf.gather(ids, sampled) != 0
    fg = tf.cast(foreground, tf.float32)
    dy = tf.where(foreground, tf.cast(tf.gather(grid_y, sampled) - tf.range(out_h)[:, None], tf.float32), 0.0)
    dx = tf.where(foreground, tf.cast(tf.gather(grid_x, sampled) - tf.range(out_w)[None, :], tf.float32), 0.0)

    # Heatmap: a separable Gaussian per instance, kept as a running maximum so memory stays one [h, w] map
    # however many instances there are (an [N, h, w] stack is 100 MB for 100 people at 512x512).
    is_instance = ids != 0
    peak_y = tf.cast(tf.boolean_mask(grid_y, is_instance), tf.float32)
    peak_x = tf.cast(tf.boolean_mask(grid_x, is_instance), tf.float32)
    grid_sigma = sigma / stride
    denominator = 2.0 * grid_sigma * grid_sigma
    along_y = tf.exp(-tf.square(tf.cast(tf.range(out_h), tf.float32)[None, :] - peak_y[:, None]) / denominator)
    along_x = tf.exp(-tf.square(tf.cast(tf.range(out_w), tf.float32)[None, :] - peak_x[:, None]) / denominator)

    def add(i, heatmap):
        return i + 1, tf.maximum(heatmap, along_y[i][:, None] * along_x[i][None, :])

    _, heatmap = tf.while_loop(
        lambda i, _: i < tf.size(peak_y),
        add,
        (tf.constant(0), tf.zeros([out_h, out_w], tf.float32)),
    )
    return {
        FOREGROUND: fg,
        CENTRE_HEATMAP: heatmap,
        OFFSETS: tf.stack([dy, dx], axis=-1),
        OFFSET_WEIGHT: fg,
    }


# ------------------------------------------------------------------------------------------ grouping ---


def _squeeze_channel(tensor: tf.Tensor, name: str) -> tf.Tensor:
    tensor = tf.convert_to_tensor(tensor, tf.float32)
    if tensor.shape.rank == 3 and tensor.shape[-1] == 1:
        tensor = tensor[..., 0]
    if tensor.shape.rank != 2:
        raise ValueError(f"{name}: expected [H, W] or [H, W, 1] for one image, got shape {tensor.shape}")
    return tensor


def _check_grouping(nms_kernel, top_k, max_instances, min_area) -> None:
    def positive(name, value):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}: expected a positive integer, got {value!r}")

    positive("nms_kernel", nms_kernel)
    if nms_kernel % 2 == 0:
        raise ValueError(f"nms_kernel: expected an odd window (centred on the pixel), got {nms_kernel}")
    positive("top_k", top_k)
    positive("max_instances", max_instances)
    if isinstance(min_area, bool) or not isinstance(min_area, int) or min_area < 0:
        raise ValueError(f"min_area: expected a pixel count >= 0, got {min_area!r}")


def _window_max(values: tf.Tensor, kernel: int, axis: int) -> tf.Tensor:
    """Maximum over a centred window of ``kernel`` pixels along ``axis`` of a 2-D map (borders excluded).

    By doubling: the maximum over 2w pixels is the maximum of two shifted maxima over w, so a window of k
    takes about log2(k) + 1 ``tf.maximum`` ops instead of k - 1. (``tf.nn.max_pool2d`` with stride 1 is the
    obvious op, but its CPU kernel took ~0.4 s for 7x7 and ~1.2 s for 13x13 on a 512x512 map on our 2 shared
    cores, against ~7 ms for this.)
    """
    radius = kernel // 2
    if radius == 0:
        return values
    shape = tf.shape(values)
    size = shape[axis]
    pad_shape = [radius, shape[1]] if axis == 0 else [shape[0], radius]
    padding = tf.fill(pad_shape, tf.constant(-float("inf"), values.dtype))
    padded = tf.concat([padding, values, padding], axis=axis)  # padded[j] = values[j - radius]

    def take(tensor, start, length):
        return tensor[start : start + length] if axis == 0 else tensor[:, start : start + length]

    # span[j] = max(padded[j .. j + width - 1]), for every j where that window fits.
    span, width = padded, 1
    while width * 2 <= kernel:
        length = tf.shape(span)[axis] - width
        span = tf.maximum(take(span, 0, length), take(span, width, length))
        width *= 2
    # Output i's window padded[i .. i + kernel - 1] is the union of two overlapping spans of ``width``.
    return tf.maximum(take(span, 0, size), take(span, kernel - width, size))


def _max_filter(values: tf.Tensor, kernel: int) -> tf.Tensor:
    """``max_pool2d(values, kernel, strides=1, padding="SAME")`` of a 2-D map, separably."""
    return _window_max(_window_max(values, kernel, 0), kernel, 1)


@_plain_tensorflow
def find_centres(
    centre_heatmap, threshold: float = CENTRE_THRESHOLD, nms_kernel: int = NMS_KERNEL, top_k: int = TOP_K
) -> tuple[tf.Tensor, tf.Tensor]:
    """Instance centres: local maxima of the heatmap (max-pool NMS) above ``threshold``, best ``top_k`` first.

    Returns ``(centres, values)``: int32 [K, 2] (y, x) and float32 [K], K <= ``top_k``, values descending.
    A pixel is a peak when it equals the maximum of its ``nms_kernel`` x ``nms_kernel`` window. Two peaks in
    one window must be equal (each window holds the other), i.e. a plateau, such as a saturated sigmoid
    gives; plain max-pool NMS would keep every pixel of it and cut one person into several. A second max
    filter over the peaks' flat indices keeps one pixel per plateau (the last in raster order). Indices
    travel as float32, exact for images up to 2**24 pixels.
    """
    _check_grouping(nms_kernel, top_k, 1, 0)
    heatmap = _squeeze_channel(centre_heatmap, "centre_heatmap")
    shape = tf.shape(heatmap)
    candidate = (heatmap >= _max_filter(heatmap, nms_kernel)) & (heatmap > threshold)
    index = tf.reshape(tf.range(shape[0] * shape[1], dtype=tf.float32), shape)
    marked = tf.where(candidate, index, -1.0)
    peaks = candidate & (marked >= _max_filter(marked, nms_kernel))
    centres = tf.cast(tf.where(peaks), tf.int32)
    values = tf.gather_nd(heatmap, centres)
    values, best = tf.math.top_k(values, tf.minimum(top_k, tf.size(values)))
    return tf.gather(centres, best), values


def _nearest_centre(votes: tf.Tensor, centres: tf.Tensor) -> tf.Tensor:
    """Index of the centre nearest each vote, int32 [P] for votes [P, 2] and centres [K, 2]; K when K = 0.

    A running minimum over the centres (a ``tf.while_loop``), each step two fused squared differences over
    the P votes: memory stays O(P) and on CPU it ran 5x (K = 10) to 11x (K = 100) faster than building the
    [P, K] matrix for ``argmin`` (TensorFlow's broadcasting kernels are slow when the inner axis is as short
    as K). Squared distance
    picks the same centre as Euclidean without a square root; on a tie the earlier (higher) peak wins.
    """
    vote_y, vote_x = votes[:, 0], votes[:, 1]
    count = tf.shape(centres)[0]

    def step(i, best, owner):
        distance = tf.math.squared_difference(vote_y, centres[i, 0]) + tf.math.squared_difference(vote_x, centres[i, 1])
        closer = distance < best
        return i + 1, tf.where(closer, distance, best), tf.where(closer, i, owner)

    _, _, owner = tf.while_loop(
        lambda i, *_: i < count,
        step,
        (tf.constant(0), tf.fill(tf.shape(vote_y), float("inf")), tf.fill(tf.shape(vote_y), count)),
    )
    return owner


@_plain_tensorflow
def group_instances(
    foreground_prob,
    centre_heatmap,
    offsets,
    *,
    foreground_threshold: float = FOREGROUND_THRESHOLD,
    centre_threshold: float = CENTRE_THRESHOLD,
    nms_kernel: int = NMS_KERNEL,
    top_k: int = TOP_K,
    max_instances: int = MAX_INSTANCES,
    min_area: int = 1,
) -> Instances:
    """Instances of ONE image from the three heads' outputs, all on one grid (stride s or full resolution).

    Args:
        foreground_prob: float [H, W] or [H, W, 1], probabilities (sigmoid of the foreground logit).
        centre_heatmap: float [H, W] or [H, W, 1].
        offsets: float [H, W, 2], (dy, dx) in pixels of this grid (``resize_offsets`` changes grids).
        foreground_threshold: a pixel is foreground when its probability is above this.
        centre_threshold, nms_kernel, top_k: centre detection (``find_centres``); 0.1, 7 at stride 4 (13 at
            full resolution) and 200 in Panoptic-DeepLab.
        max_instances: at most this many instances come out, the best-scoring ones. Applied *after*
            voting, so that the pixels of a person beyond the cap become background instead of being
            absorbed into a neighbour's mask (which capping the centres before voting would do).
        min_area: instances with fewer pixels are dropped (their pixels become background); instances
            with no pixel at all (a peak no pixel voted for) are always dropped.

    Every foreground pixel votes for the candidate centre nearest to its position plus its offset, compared
    with every centre (``_nearest_centre``): cost P x K for P foreground pixels and K <= ``top_k`` centres,
    cheap for the tens of people an image holds (see ``tests/test_instance_ops.py`` for a timing).

    Score of an instance = centre heatmap value at its peak x mean foreground probability over its pixels,
    as detectron2's Panoptic-DeepLab scores instances (it reads the heatmap at the mask's centre of mass; the
    peak is the centre the pixels actually voted for). Model Garden keeps the heatmap value alone. The peak
    says "a person is centred here", the mean probability says the mask is confidently foreground; a faint
    peak that collects a few unsure pixels ranks below a clear person. Ties keep the peak order.

    Returns ``Instances``: labels 1..n in descending score order (consecutive, since dropped instances are
    renumbered away), scores, boxes (pixel edges) and areas. An image with no centre or no foreground gives
    n = 0 and an all-zero label image.
    """
    _check_grouping(nms_kernel, top_k, max_instances, min_area)
    probability = _squeeze_channel(foreground_prob, "foreground_prob")
    offsets = tf.convert_to_tensor(offsets, tf.float32)
    if offsets.shape.rank != 3:
        raise ValueError(f"offsets: expected [H, W, 2] for one image, got shape {offsets.shape}")
    shape = tf.shape(probability)

    centres, peak_values = find_centres(centre_heatmap, centre_threshold, nms_kernel, top_k)
    candidates = tf.shape(centres)[0]

    pixels = tf.cast(tf.where(probability > foreground_threshold), tf.int32)  # [P, 2]
    votes = tf.cast(pixels, tf.float32) + tf.gather_nd(offsets, pixels)
    owner = _nearest_centre(votes, tf.cast(centres, tf.float32))  # [P] in 0..K, K = no centre

    slots = candidates + 1
    area = tf.math.bincount(owner, minlength=slots, maxlength=slots, dtype=tf.int32)
    probability_sum = tf.math.bincount(
        owner, weights=tf.gather_nd(probability, pixels), minlength=slots, maxlength=slots, dtype=tf.float32
    )
    # One segment max gives both ends of each box: max of (y, x) and max of (-y, -x) = -min.
    extent = tf.math.unsorted_segment_max(tf.concat([pixels, -pixels], axis=1), owner, slots)  # [K+1, 4]
    # The heatmap is regressed (MSE), so a peak can overshoot 1; a score stays a confidence in [0, 1].
    peak = tf.clip_by_value(tf.concat([peak_values, [0.0]], axis=0), 0.0, 1.0)
    score = peak * probability_sum / tf.cast(tf.maximum(area, 1), tf.float32)

    keep = (area >= max(min_area, 1)) & (tf.range(slots) < candidates)
    key = tf.where(keep, score, -float("inf"))
    order = tf.argsort(key, direction="DESCENDING", stable=True)
    count = tf.minimum(tf.reduce_sum(tf.cast(keep, tf.int32)), max_instances)
    chosen = order[:count]

    # Candidate -> final label (0 for dropped candidates and the sentinel), then paint the pixels.
    relabel = tf.scatter_nd(chosen[:, None], tf.range(1, count + 1), [slots])
    labels = tf.scatter_nd(pixels, tf.gather(relabel, owner), shape)
    extent = tf.gather(extent, chosen)
    boxes = tf.cast(tf.concat([-extent[:, 2:], extent[:, :2] + 1], axis=1), tf.float32)
    return Instances(labels=labels, scores=tf.gather(score, chosen), boxes=boxes, areas=tf.gather(area, chosen))


@_plain_tensorflow
def group_instances_padded(foreground_prob, centre_heatmap, offsets, **options) -> PaddedInstances:
    """``group_instances`` with fixed-size outputs for a serving signature (and for ``tf.map_fn``).

    ``scores`` [M], ``boxes`` [M, 4] and ``areas`` [M] (M = ``max_instances``, default 100) are padded with
    zeros past ``count``, so that a batch of images stacks and a client reads ``count`` rows.
    """
    result = group_instances(foreground_prob, centre_heatmap, offsets, **options)
    slots = options.get("max_instances", MAX_INSTANCES)
    pad = slots - tf.shape(result.scores)[0]
    scores = tf.ensure_shape(tf.pad(result.scores, [[0, pad]]), [slots])
    boxes = tf.ensure_shape(tf.pad(result.boxes, [[0, pad], [0, 0]]), [slots, 4])
    areas = tf.ensure_shape(tf.pad(result.areas, [[0, pad]]), [slots])
    return PaddedInstances(result.labels, scores, boxes, areas, slots - pad)


@_plain_tensorflow
def group_instances_batch(foreground_prob, centre_heatmap, offsets, **options) -> PaddedInstances:
    """``group_instances_padded`` over a batch: inputs [B, H, W] (or [B, H, W, 1]) and [B, H, W, 2].

    Returns ``PaddedInstances`` with a leading B: labels [B, H, W], scores [B, M], boxes [B, M, 4], areas
    [B, M], count [B]. Images are grouped one after another (``tf.map_fn``): peaks, votes and segment sums
    differ in size per image, and a single padded [B, P, K] vote would cost the largest image's size B times.
    """
    probability = tf.convert_to_tensor(foreground_prob, tf.float32)
    heatmap = tf.convert_to_tensor(centre_heatmap, tf.float32)
    if probability.shape.rank == 4:
        probability = probability[..., 0]
    if heatmap.shape.rank == 4:
        heatmap = heatmap[..., 0]
    offsets = tf.convert_to_tensor(offsets, tf.float32)
    slots = options.get("max_instances", MAX_INSTANCES)
    signature = PaddedInstances(
        labels=tf.TensorSpec([None, None], tf.int32),
        scores=tf.TensorSpec([slots], tf.float32),
        boxes=tf.TensorSpec([slots, 4], tf.float32),
        areas=tf.TensorSpec([slots], tf.int32),
        count=tf.TensorSpec([], tf.int32),
    )
    return tf.map_fn(
        lambda args: group_instances_padded(*args, **options),
        (probability, heatmap, offsets),
        fn_output_signature=signature,
    )
