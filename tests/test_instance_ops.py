"""Instance targets and grouping (Panoptic-DeepLab style) in TF ops: exact targets, round trips, serving."""

import time

import numpy as np
import pytest
import tensorflow as tf

from kseg.tasks import instance_ops as io

# ------------------------------------------------------------------------------------------ helpers ---


def _scene(*rectangles, shape=(64, 64), ids=None):
    """Label image with one instance per (y0, x0, y1, x1) rectangle (end exclusive), later ones on top."""
    labels = np.zeros(shape, np.int32)
    for k, (y0, x0, y1, x1) in enumerate(rectangles):
        labels[y0:y1, x0:x1] = ids[k] if ids else k + 1
    return labels


def _same_partition(expected, found):
    """True when two label images split the pixels the same way (labels may be permuted; 0 stays 0)."""
    expected, found = np.asarray(expected).ravel(), np.asarray(found).ravel()
    if not np.array_equal(expected == 0, found == 0):
        return False
    pairs = np.unique(np.stack([expected, found]), axis=1)
    return len(np.unique(pairs[0])) == len(np.unique(pairs[1])) == pairs.shape[1]


def _targets_of(labels):
    targets = io.instance_targets(labels)
    return targets["foreground"], targets["centre_heatmap"], targets["offsets"]


def _group_targets(labels, **options):
    """Grouping fed with the exact targets of ``labels`` as if they were perfect predictions."""
    return io.group_instances(*_targets_of(labels), **options)


def _check_instances(result, probability=None):
    """Scores descending; labels 1..n consecutive; boxes and areas are those of each label's pixels."""
    labels = result.labels.numpy()
    scores, boxes, areas = result.scores.numpy(), result.boxes.numpy(), result.areas.numpy()
    n = len(scores)
    assert np.all(np.diff(scores) <= 0)
    assert sorted(set(np.unique(labels)) - {0}) == list(range(1, n + 1))
    for k in range(1, n + 1):
        ys, xs = np.nonzero(labels == k)
        assert areas[k - 1] == len(ys)
        np.testing.assert_array_equal(boxes[k - 1], [ys.min(), xs.min(), ys.max() + 1, xs.max() + 1])
        if probability is not None:
            assert scores[k - 1] <= probability[ys, xs].mean() * (1 + 1e-5)


# ------------------------------------------------------------------------------------------- targets ---


def test_single_square_gives_a_unit_peak_at_its_centre_and_offsets_towards_it():
    labels = _scene((10, 20, 21, 31), shape=(40, 50), ids=[7])  # 11x11, centre of mass (15, 25)
    targets = {k: v.numpy() for k, v in io.instance_targets(labels).items()}
    heatmap, offsets = targets["centre_heatmap"], targets["offsets"]
    assert heatmap.max() == 1.0 and np.argwhere(heatmap == 1.0).tolist() == [[15, 25]]
    assert heatmap[15, 33] == pytest.approx(np.exp(-64 / (2 * 8.0**2)))  # sigma 8 px
    np.testing.assert_array_equal(offsets[10, 20], [5, 5])
    np.testing.assert_array_equal(offsets[20, 30], [-5, -5])
    np.testing.assert_array_equal(offsets[15, 25], [0, 0])
    np.testing.assert_array_equal(offsets[12, 29], [3, -4])
    np.testing.assert_array_equal(targets["foreground"], labels != 0)
    np.testing.assert_array_equal(targets["offset_weight"], labels != 0)
    assert np.all(offsets[labels == 0] == 0)


def test_even_sized_instance_rounds_its_centre_to_a_pixel():
    labels = _scene((0, 0, 10, 4), shape=(12, 12))  # centre of mass (4.5, 1.5): rounded half up to (5, 2)
    heatmap = io.instance_targets(labels)["centre_heatmap"].numpy()
    assert np.argwhere(heatmap == 1.0).tolist() == [[5, 2]]


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.uint16, np.uint8])
def test_non_consecutive_ids_and_dtypes(dtype):
    labels = _scene((2, 2, 13, 13), (20, 30, 31, 41), shape=(40, 50), ids=[200, 5]).astype(dtype)
    targets = io.instance_targets(labels)
    heatmap, offsets = targets["centre_heatmap"].numpy(), targets["offsets"].numpy()
    assert sorted(map(tuple, np.argwhere(heatmap == 1.0))) == [(7, 7), (25, 35)]
    np.testing.assert_array_equal(offsets[2, 2], [5, 5])
    np.testing.assert_array_equal(offsets[30, 30], [-5, 5])


def test_empty_image_has_no_targets():
    targets = io.instance_targets(np.zeros((17, 23), np.int32))
    for name in (io.FOREGROUND, io.CENTRE_HEATMAP, io.OFFSETS, io.OFFSET_WEIGHT):
        assert not np.any(targets[name].numpy()), name
    assert targets[io.OFFSETS].shape == (17, 23, 2)


def test_output_stride_makes_targets_on_the_coarse_grid():
    labels = _scene((8, 8, 32, 24), (40, 40, 64, 60), shape=(64, 64))
    targets = io.instance_targets(labels, output_stride=4)
    heatmap, offsets = targets["centre_heatmap"].numpy(), targets["offsets"].numpy()
    assert heatmap.shape == (16, 16) and offsets.shape == (16, 16, 2)
    # Centres of mass (19.5, 15.5) and (51.5, 49.5) -> grid (19.5 - 1.5) / 4 = 4.5 -> 5, ...
    assert sorted(map(tuple, np.argwhere(heatmap == 1.0))) == [(5, 4), (13, 12)]
    assert heatmap[5, 4 + 2] == pytest.approx(np.exp(-4 / (2 * 2.0**2)))  # sigma 8 input px = 2 grid px
    coarse = io.resize_label_image(labels, (16, 16)).numpy()
    np.testing.assert_array_equal(targets["foreground"].numpy(), coarse != 0)
    np.testing.assert_array_equal(offsets[2, 2], [3, 2])  # in grid pixels
    # Grouping on the coarse grid recovers the coarse instances.
    grouped = io.group_instances(targets["foreground"], heatmap, offsets)
    assert _same_partition(coarse, grouped.labels)


def test_batch_and_tf_data_with_unknown_shapes():
    scenes = [_scene((3, 3, 20, 12), (5, 14, 20, 30), shape=(24, 32)), _scene(shape=(24, 32))]
    batched = io.instance_targets(np.stack(scenes))
    assert batched["offsets"].shape == (2, 24, 32, 2)
    sizes = [(24, 32), (19, 41)]
    images = [_scene((2, 2, 15, 17), (6, 20, 18, 40), shape=s) for s in sizes]

    # Images of different sizes, cropped out of one padded array inside the map so that H and W are unknown
    # when the map is traced. (Not Dataset.from_generator: in this file it left the process ~2.5x slower at
    # the grouping timing below, for reasons not pinned down.)
    padded = np.zeros((2, 24, 41), np.int32)
    for k, (image, (h, w)) in enumerate(zip(images, sizes)):
        padded[k, :h, :w] = image
    dataset = tf.data.Dataset.from_tensor_slices((padded, np.int32(sizes))).map(
        lambda image, size: io.instance_targets(image[: size[0], : size[1]])
    )
    assert dataset.element_spec[io.OFFSETS].shape.as_list() == [None, None, 2]
    for labels, targets in zip(scenes[:1] + images, [{k: v[0] for k, v in batched.items()}, *dataset]):
        expected = io.instance_targets(labels)
        for name, value in expected.items():
            np.testing.assert_array_equal(targets[name].numpy(), value.numpy(), err_msg=name)


# -------------------------------------------------------------------------------------- round trips ---

ROUND_TRIPS = {
    "one person": _scene((10, 20, 50, 36)),
    "two touching": _scene((8, 10, 56, 30), (8, 30, 56, 50)),  # share the edge between columns 29 and 30
    "three, one in another's box": _scene(
        (4, 4, 44, 12),  # the upright of an L ...
        (36, 4, 44, 40),  # ... and its foot: one L-shaped person, id 1, centre of mass (30, 15) on background
        (10, 18, 30, 40),  # a person inside the L's bounding box
        (48, 44, 62, 60),
        ids=[1, 1, 2, 3],
    ),
    "empty": _scene(),
}


@pytest.mark.parametrize("name", list(ROUND_TRIPS))
def test_exact_targets_group_back_into_the_same_instances(name):
    labels = ROUND_TRIPS[name]
    result = _group_targets(labels)
    count = len(np.unique(labels)) - 1
    assert len(result.scores) == count
    assert _same_partition(labels, result.labels)
    _check_instances(result)
    if count:
        np.testing.assert_allclose(result.scores, 1.0)  # unit peaks, foreground probability 1
    else:
        assert not np.any(result.labels.numpy())
        padded = io.group_instances_padded(*_targets_of(labels))
        assert int(padded.count) == 0 and not np.any(padded.scores.numpy())


def test_the_overlap_case_is_not_trivial():
    labels = ROUND_TRIPS["three, one in another's box"]
    ys, xs = np.nonzero(labels == 1)
    inner = labels[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    assert np.any(inner == 2)  # person 2 lies inside person 1's box


# --------------------------------------------------------------------------------- noisy predictions ---


def _noisy(labels, seed=0):
    """Targets blurred like a trained model's output: soft foreground, jittered offsets, noisy heatmap."""
    rng = np.random.default_rng(seed)
    targets = {k: v.numpy() for k, v in io.instance_targets(labels).items()}
    probability = np.clip(0.1 + 0.8 * targets["foreground"] + rng.normal(0, 0.05, labels.shape), 0, 1)
    heatmap = 0.8 * targets["centre_heatmap"] + rng.uniform(0, 0.02, labels.shape)
    offsets = targets["offsets"] + rng.uniform(-0.4, 0.4, targets["offsets"].shape)
    return probability.astype(np.float32), heatmap.astype(np.float32), offsets.astype(np.float32)


def test_weak_spurious_peak_is_ignored():
    labels = ROUND_TRIPS["two touching"]
    probability, heatmap, offsets = _noisy(labels)
    heatmap[40:60, 0:25] = np.minimum(heatmap[40:60, 0:25], 0.05)
    heatmap[50, 12] = 0.09  # a lone local maximum inside person 1, below the 0.1 threshold
    assert heatmap[50, 12] == heatmap[47:54, 9:16].max()
    result = io.group_instances(probability, heatmap, offsets)
    assert len(result.scores) == 2 and _same_partition(labels, result.labels)
    _check_instances(result, probability)
    # Above the threshold it is a centre, but no pixel votes for it: dropped, the two people stay.
    heatmap[50, 12] = 0.5
    assert len(io.find_centres(heatmap)[0]) == 3
    result = io.group_instances(probability, heatmap, offsets)
    assert len(result.scores) == 2 and _same_partition(labels, result.labels)


def test_max_instances_keeps_the_best_and_clears_the_rest():
    labels = _scene((2, 2, 20, 20), (30, 2, 50, 20), (2, 34, 20, 60))
    targets = io.instance_targets(labels)
    probability = np.choose(labels, [0.0, 0.7, 0.95, 0.8]).astype(np.float32)  # person 2 best, then 3
    result = io.group_instances(probability, targets["centre_heatmap"], targets["offsets"], max_instances=2)
    np.testing.assert_allclose(result.scores, [0.95, 0.8], rtol=1e-5)
    labels_found = result.labels.numpy()
    assert np.all(labels_found[labels == 2] == 1) and np.all(labels_found[labels == 3] == 2)
    assert np.all(labels_found[labels == 1] == 0)  # capped away: background, not absorbed by a neighbour
    _check_instances(result, probability)
    padded = io.group_instances_padded(probability, targets["centre_heatmap"], targets["offsets"], max_instances=4)
    assert int(padded.count) == 3 and padded.scores.shape == (4,) and padded.scores[3] == 0


def test_min_area_drops_small_instances_and_renumbers():
    labels = _scene((2, 2, 20, 20), (40, 40, 42, 42), (30, 2, 50, 20))  # instance 2 has 4 pixels
    result = _group_targets(labels, min_area=5)
    assert len(result.scores) == 2 and sorted(np.unique(result.labels.numpy())) == [0, 1, 2]
    assert np.all(result.labels.numpy()[labels == 2] == 0)
    _check_instances(result)


def test_scores_boxes_and_areas_on_a_random_scene():
    rng = np.random.default_rng(3)
    rectangles = []
    for _ in range(6):
        y, x = rng.integers(0, 70, 2)
        h, w = rng.integers(8, 30, 2)
        rectangles.append((y, x, y + h, x + w))
    labels = _scene(*rectangles, shape=(96, 96))
    probability, heatmap, offsets = _noisy(labels, seed=3)
    result = io.group_instances(probability, heatmap, offsets, nms_kernel=5)
    assert len(result.scores) >= 3
    _check_instances(result, probability)
    # Score = peak value x mean foreground probability of the instance's pixels.
    found, peaks = result.labels.numpy(), io.find_centres(heatmap, nms_kernel=5)[1].numpy()
    for k, score in enumerate(result.scores.numpy(), start=1):
        peak = score / probability[found == k].mean()
        assert np.min(np.abs(peaks - peak)) < 1e-5


def test_plateau_gives_one_centre_and_top_k_is_exact():
    heatmap = np.zeros((30, 30), np.float32)
    heatmap[10:13, 10:14] = 0.9  # a flat top, as a saturated output gives
    centres, values = io.find_centres(heatmap)
    assert centres.numpy().tolist() == [[12, 13]] and values.numpy().tolist() == pytest.approx([0.9])
    heatmap = np.zeros((30, 30), np.float32)
    for k, (y, x) in enumerate([(2, 2), (2, 20), (15, 10), (25, 3), (25, 25)]):
        heatmap[y, x] = 0.2 + 0.1 * k
    centres, values = io.find_centres(heatmap, top_k=3)
    assert centres.numpy().tolist() == [[25, 25], [25, 3], [15, 10]]
    np.testing.assert_allclose(values, [0.6, 0.5, 0.4])


def test_bad_parameters_are_refused():
    plane = np.zeros((8, 8), np.float32)
    with pytest.raises(ValueError, match="nms_kernel"):
        io.group_instances(plane, plane, np.zeros((8, 8, 2), np.float32), nms_kernel=6)
    with pytest.raises(ValueError, match="max_instances"):
        io.group_instances(plane, plane, np.zeros((8, 8, 2), np.float32), max_instances=0)
    with pytest.raises(TypeError, match="integer"):
        io.instance_targets(plane)
    with pytest.raises(ValueError, match="output_stride"):
        io.instance_targets(np.zeros((8, 8), np.int32), output_stride=0)


# --------------------------------------------------------------------------------------- resizing ---


def test_resize_label_image_is_nearest_and_keeps_ids():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, (13, 17)).astype(np.int32)
    for size in [(13, 17), (26, 34), (7, 9), (40, 5)]:
        expected = tf.image.resize(labels[..., None], size, method="nearest")[..., 0]
        np.testing.assert_array_equal(io.resize_label_image(labels, size), expected)
    large = np.full((4, 4), 2**40 + 3, np.int64)
    assert io.resize_label_image(large, (9, 9)).numpy().max() == 2**40 + 3
    assert io.resize_label_image(np.stack([labels, labels]), (26, 34)).shape == (2, 26, 34)


def test_results_come_back_at_the_image_size():
    labels = _scene((2, 2, 12, 10), (4, 12, 14, 30), shape=(16, 32))
    small = _group_targets(labels)
    big = io.instances_to_size(small, (32, 64))
    np.testing.assert_array_equal(big.labels, io.resize_label_image(small.labels, (32, 64)))
    np.testing.assert_array_equal(big.boxes, small.boxes * 2)
    np.testing.assert_array_equal(big.areas, small.areas * 4)
    _check_instances(big)
    padded = io.instances_to_size(io.group_instances_padded(*_targets_of(labels), max_instances=5), (32, 64))
    np.testing.assert_array_equal(padded.areas, [*(small.areas.numpy() * 4), 0, 0, 0])


def test_resize_offsets_scales_the_vectors():
    offsets = np.broadcast_to(np.float32([2.0, -3.0]), (8, 10, 2))
    resized = io.resize_offsets(offsets, (32, 20)).numpy()
    assert resized.shape == (32, 20, 2)
    np.testing.assert_allclose(resized[..., 0], 8.0)
    np.testing.assert_allclose(resized[..., 1], -6.0)


# ---------------------------------------------------------------------------------------- serving ---


class _Grouper(tf.Module):
    @tf.function(
        input_signature=[
            tf.TensorSpec([None, None, None], tf.float32),
            tf.TensorSpec([None, None, None], tf.float32),
            tf.TensorSpec([None, None, None, 2], tf.float32),
        ]
    )
    def group(self, foreground_prob, centre_heatmap, offsets):
        return io.group_instances_batch(foreground_prob, centre_heatmap, offsets, max_instances=8)._asdict()

    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.int32)])
    def targets(self, labels):
        return io.instance_targets(labels)


def test_saved_model_with_unknown_shapes(tmp_path):
    path = str(tmp_path / "grouper")
    module = _Grouper()
    tf.saved_model.save(module, path, signatures={"serving_default": module.group, "targets": module.targets})
    loaded = tf.saved_model.load(path)

    scenes = [ROUND_TRIPS["three, one in another's box"], ROUND_TRIPS["empty"]]
    inputs = [np.stack(part) for part in zip(*(map(np.asarray, _targets_of(s)) for s in scenes))]
    out = loaded.signatures["serving_default"](
        foreground_prob=tf.constant(inputs[0]), centre_heatmap=tf.constant(inputs[1]), offsets=tf.constant(inputs[2])
    )
    assert out["count"].numpy().tolist() == [3, 0] and out["boxes"].shape == (2, 8, 4)
    assert _same_partition(scenes[0], out["labels"][0]) and not np.any(out["labels"][1].numpy())
    # Another image size through the same graph, and the targets signature.
    labels = _scene((1, 1, 9, 9), (9, 1, 20, 9), shape=(21, 13))
    targets = loaded.signatures["targets"](labels=tf.constant(labels))
    assert targets["offsets"].shape == (21, 13, 2)
    batch = [tf.expand_dims(targets[k], 0) for k in ("foreground", "centre_heatmap", "offsets")]
    result = loaded.group(*batch)
    assert int(result["count"][0]) == 2 and _same_partition(labels, result["labels"][0])


def test_grouping_time_512(capsys):
    """Not an assertion: prints how long one 512x512 image with 10 people takes to group."""
    rng = np.random.default_rng(0)
    rectangles = []
    for _ in range(10):
        y, x = rng.integers(0, 400, 2)
        h, w = rng.integers(60, 200, 2)
        rectangles.append((y, x, y + h, x + w))
    labels = _scene(*rectangles, shape=(512, 512))
    probability, heatmap, offsets = _noisy(labels)
    spec = tf.TensorSpec([None, None], tf.float32)
    group = tf.function(
        lambda p, h, o: io.group_instances_padded(p, h, o, nms_kernel=13),
        input_signature=[spec, spec, tf.TensorSpec([None, None, 2], tf.float32)],
    )
    group(probability, heatmap, offsets)
    times, cpu = [], []
    for _ in range(7):
        start, start_cpu = time.perf_counter(), time.process_time()
        count = int(group(probability, heatmap, offsets).count)
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    with capsys.disabled():  # CPU time (all threads) is the cost without other processes' contention
        print(
            f"\ngroup_instances 512x512, {count} instances, {np.mean(labels > 0):.0%} foreground: wall median "
            f"{1000 * np.median(times):.1f} ms (min {1000 * min(times):.1f}), CPU median {1000 * np.median(cpu):.1f} ms"
        )
