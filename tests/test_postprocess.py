"""Post-processing: graph-op components and holes against SciPy, TTA equivariance, the final mask, files."""

import json

import numpy as np
import pytest
import tensorflow as tf
from scipy import ndimage

from kseg.tasks import postprocess
from kseg.tasks.postprocess import PostProcessing


def _random_masks(seed, shape=(3, 40, 56)):
    rng = np.random.default_rng(seed)
    return ndimage.gaussian_filter(rng.random(shape), (0, 2, 2)) > 0.52


@pytest.mark.parametrize("seed", [0, 1])
def test_largest_component_matches_scipy(seed):
    masks = _random_masks(seed)
    result = postprocess.largest_component(masks).numpy()
    for mask, kept in zip(masks, result):
        labels, count = ndimage.label(mask, structure=np.ones((3, 3)))
        assert count > 1  # the case is not trivial
        sizes = np.bincount(labels.ravel())[1:]
        np.testing.assert_array_equal(kept, labels == np.argmax(sizes) + 1)


@pytest.mark.parametrize("seed", [0, 1])
def test_fill_holes_matches_scipy(seed):
    masks = ~_random_masks(seed)  # many enclosed background pockets
    result = postprocess.fill_holes(masks).numpy()
    for mask, filled in zip(masks, result):
        assert filled.sum() > mask.sum()
        np.testing.assert_array_equal(filled, ndimage.binary_fill_holes(mask))


def _serpentine(size):
    """A one-pixel-wide path snaking row by row through the inside of a ``size`` square, off its border: one
    4-connected component about size**2 / 2 pixels long whose largest index lies near the end far from its start,
    the case that needs the most rounds to label."""
    mask = np.zeros((size, size), bool)
    for turn, row in enumerate(range(1, size - 1, 2)):
        mask[row, 1 : size - 1] = True
        if row + 2 < size - 1:
            mask[row + 1, size - 2 if turn % 2 == 0 else 1] = True
    return mask


def test_component_labels_carry_each_components_largest_index_even_along_a_long_path():
    masks = np.stack([_serpentine(41), _random_masks(3, (1, 41, 41))[0]])
    labels = postprocess.component_labels(masks).numpy()
    for mask, label in zip(masks, labels):
        scipy_labels, count = ndimage.label(mask, structure=np.ones((3, 3)))
        expected = np.zeros(mask.shape, np.int64)
        for component in range(1, count + 1):
            where = scipy_labels == component
            expected[where] = np.flatnonzero(where.ravel()).max() + 1
        np.testing.assert_array_equal(label, expected)


def test_fill_holes_finds_the_way_out_of_a_maze():
    walls = ~_serpentine(41)  # the path is background walled in on every side: all of it is one hole
    np.testing.assert_array_equal(postprocess.fill_holes(walls[None]).numpy()[0], ndimage.binary_fill_holes(walls))
    assert postprocess.fill_holes(walls[None]).numpy()[0].all()
    walls[1, 0] = False  # a way out at the path's start, the far end from its largest index: nothing is a hole
    np.testing.assert_array_equal(postprocess.fill_holes(walls[None]).numpy()[0], walls)
    np.testing.assert_array_equal(ndimage.binary_fill_holes(walls), walls)


def test_empty_and_full_masks_are_left_alone():
    empty, full = np.zeros((1, 8, 9), bool), np.ones((1, 8, 9), bool)
    assert not postprocess.largest_component(empty).numpy().any()
    assert not postprocess.fill_holes(empty).numpy().any()
    assert postprocess.largest_component(full).numpy().all() and postprocess.fill_holes(full).numpy().all()


@pytest.mark.parametrize("size,count", [((8, 8), 8), ((8, 12), 4)])
def test_tta_inverts_every_transform(size, count):
    """A model that is the identity on its input gives the input back after TTA: every inverse is right."""
    assert len(postprocess.tta_transforms(*size)) == count
    batch = tf.random.uniform((2, *size, 3), seed=1)
    identity = lambda b: b[..., :1]
    np.testing.assert_allclose(
        postprocess.tta_probabilities(identity, batch).numpy(), batch[..., :1].numpy(), atol=1e-6
    )


def test_tta_averages_a_model_that_is_not_equivariant():
    batch = tf.zeros((1, 4, 6, 3))
    left_ramp = lambda b: tf.broadcast_to(tf.linspace(0.0, 1.0, 6)[None, None, :, None], (1, 4, 6, 1))
    # Flipped left-right and mapped back, the ramp runs the other way: the mean is flat 0.5.
    np.testing.assert_allclose(postprocess.tta_probabilities(left_ramp, batch).numpy(), 0.5, atol=1e-6)


def _disk(height, width, cy, cx, radius):
    yy, xx = np.mgrid[:height, :width]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2


def test_final_mask_threshold_holes_and_components_at_original_size():
    big = _disk(32, 48, 16, 18, 10) & ~_disk(32, 48, 16, 18, 4)  # a ring: its hole should be filled
    speck = _disk(32, 48, 5, 42, 2)
    probs = np.where(big | speck, 0.8, 0.1).astype(np.float32)[..., None]
    size = (96, 144)

    plain = postprocess.final_mask(probs, size).numpy()
    assert plain.shape == size and plain.dtype == np.uint8
    assert plain[48, 54] == 0 and plain[15, 126] == 1  # hole open, speck kept

    cleaned = postprocess.final_mask(probs, size, PostProcessing(fill_holes=True, largest_component=True)).numpy()
    assert cleaned[48, 54] == 1 and cleaned[15, 126] == 0
    expected = (
        tf.image.resize(np.where(ndimage.binary_fill_holes(big), 0.8, 0.1)[..., None].astype(np.float32), size).numpy()[
            ..., 0
        ]
        >= 0.5
    )
    assert np.mean(cleaned.astype(bool) != expected) < 0.002  # equal but for upsampled border pixels

    high = postprocess.final_mask(probs, size, PostProcessing(threshold=0.9)).numpy()
    assert not high.any()


def test_final_mask_multiclass_is_argmax():
    probs = np.zeros((4, 4, 3), np.float32)
    probs[:2, :, 1] = 1
    probs[2:, :, 2] = 1
    mask = postprocess.final_mask(probs, (8, 8)).numpy()
    assert set(np.unique(mask[:3])) == {1} and set(np.unique(mask[5:])) == {2}


def test_final_mask_runs_in_a_graph_with_dynamic_sizes():
    fn = tf.function(
        lambda p, s: postprocess.final_mask(p, s, PostProcessing(largest_component=True)),
        input_signature=[tf.TensorSpec([None, None, 1], tf.float32), tf.TensorSpec([2], tf.int32)],
    )
    probs = np.where(_disk(16, 16, 8, 8, 5), 0.9, 0.0).astype(np.float32)[..., None]
    assert fn(probs, tf.constant([40, 30])).shape == (40, 30)
    assert fn(probs, tf.constant([7, 9])).shape == (7, 9)


def test_choice_round_trips_and_bad_files_name_the_field(tmp_path):
    model = tmp_path / "best.keras"
    assert postprocess.sidecar_path(model).name == "best.postprocessing.json"
    assert postprocess.for_model(model) == PostProcessing()  # nothing stored: plain 0.5 threshold
    choice = PostProcessing(threshold=0.45, tta=True, largest_component=True)
    postprocess.write(postprocess.sidecar_path(model), choice, chosen_on="validation", steps=[])
    assert postprocess.for_model(model) == choice

    path = postprocess.sidecar_path(model)
    path.write_text(json.dumps({"threshold": 1.5}))
    with pytest.raises(postprocess.PostProcessingError, match=r"best.postprocessing.json: threshold"):
        postprocess.for_model(model)
    path.write_text(json.dumps({"tta": "yes"}))
    with pytest.raises(postprocess.PostProcessingError, match="tta: expected true or false"):
        postprocess.for_model(model)
    path.write_text(json.dumps({"treshold": 0.4}))
    with pytest.raises(postprocess.PostProcessingError, match="unknown field 'treshold'"):
        postprocess.for_model(model)
    path.write_text("{not json")
    with pytest.raises(postprocess.PostProcessingError, match="not valid JSON"):
        postprocess.for_model(model)
