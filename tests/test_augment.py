"""Paired augmentation: image and mask move together, masks keep exact labels, seeds repeat."""

import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from kseg.data.augment import AUGMENTATIONS, Augmentation, augment_batch, copy_paste, get_augmentation


def _batch(size=32, batch=6):
    rng = np.random.default_rng(0)
    masks = np.zeros((batch, size, size, 1), np.float32)
    for i in range(batch):
        y, x = rng.integers(4, size - 12, 2)
        masks[i, y : y + 8, x : x + 10] = 1
    # The image encodes the mask in its red channel, so alignment can be checked after transforms.
    images = np.concatenate([masks, rng.uniform(0, 1, (batch, size, size, 2)).astype(np.float32)], axis=-1)
    return tf.constant(images), tf.constant(masks)


def test_geometry_moves_image_and_mask_together():
    images, masks = _batch()
    geometry_only = Augmentation(brightness=0, contrast=0, saturation=0, hue=0)
    out_images, out_masks = augment_batch(images, masks, tf.constant([1, 2]), geometry_only)
    assert set(np.unique(out_masks.numpy())) <= {0.0, 1.0}
    red = out_images.numpy()[..., 0]
    inside, outside = red[out_masks.numpy()[..., 0] == 1], red[out_masks.numpy()[..., 0] == 0]
    assert inside.mean() > 0.85 and outside.mean() < 0.1  # bilinear blurs edges, but stays aligned
    assert not np.array_equal(out_masks.numpy(), masks.numpy())


def test_flips_and_quarter_turns_are_exact_permutations():
    images, masks = _batch()
    aug = AUGMENTATIONS["flips"]
    out_images, out_masks = augment_batch(images, masks, tf.constant([3, 4]), aug)
    for i in range(images.shape[0]):
        candidates = [np.rot90(m, k) for m in (masks[i].numpy(), masks[i].numpy()[:, ::-1]) for k in range(4)]
        assert any(np.array_equal(out_masks[i].numpy(), c) for c in candidates)
        image_candidates = [np.rot90(m, k) for m in (images[i].numpy(), images[i].numpy()[:, ::-1]) for k in range(4)]
        assert any(np.allclose(out_images[i].numpy(), c, atol=1e-5) for c in image_candidates)


def test_multiclass_masks_keep_integer_labels():
    images, masks = _batch()
    labels = tf.cast(masks, tf.int32) * 3
    _, out = augment_batch(images, labels, tf.constant([5, 6]), AUGMENTATIONS["strong"])
    assert out.dtype == tf.int32 and set(np.unique(out.numpy())) <= {0, 3}


def test_same_seed_same_result_different_seed_differs():
    images, masks = _batch()
    a = augment_batch(images, masks, tf.constant([7, 8]), AUGMENTATIONS["medium"])
    b = augment_batch(images, masks, tf.constant([7, 8]), AUGMENTATIONS["medium"])
    c = augment_batch(images, masks, tf.constant([7, 9]), AUGMENTATIONS["medium"])
    np.testing.assert_array_equal(a[0].numpy(), b[0].numpy())
    assert not np.array_equal(a[0].numpy(), c[0].numpy())


def test_colour_jitter_leaves_mask_and_stays_in_range():
    images, masks = _batch()
    colour_only = Augmentation(
        flip=False,
        rotate90=False,
        scale=0,
        rotate_degrees=0,
        translate=0,
        brightness=0.3,
        contrast=0.5,
        saturation=0.5,
        hue=0.2,
    )
    out_images, out_masks = augment_batch(images, masks, tf.constant([1, 1]), colour_only)
    np.testing.assert_array_equal(out_masks.numpy(), masks.numpy())
    assert out_images.numpy().min() >= 0.0 and out_images.numpy().max() <= 1.0
    assert np.abs(out_images.numpy() - images.numpy()).mean() > 0.01


def _colour_reference(images, seed, aug):
    """The colour steps one after another in NumPy, as the textbook describes them (same random draws)."""
    from kseg.data.augment import _uniform

    seeds = tf.unstack(tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 10))
    batch = images.shape[0]
    b = _uniform(seeds[6], batch, -aug.brightness, aug.brightness).numpy()
    c = _uniform(seeds[7], batch, 1 - aug.contrast, 1 + aug.contrast).numpy()
    s = _uniform(seeds[8], batch, 1 - aug.saturation, 1 + aug.saturation).numpy()
    theta = _uniform(seeds[9], batch, -aug.hue, aug.hue).numpy() * 2 * np.pi
    to_yiq = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
    out = []
    for x, bi, ci, si, ti in zip(images.astype(np.float64), b, c, s, theta):
        x = x + bi
        x = (x - x.mean()) * ci + x.mean()
        grey = (x @ np.array([0.299, 0.587, 0.114]))[..., None]
        x = grey + (x - grey) * si
        yiq = x @ to_yiq.T
        i, q = yiq[..., 1].copy(), yiq[..., 2].copy()
        yiq[..., 1], yiq[..., 2] = np.cos(ti) * i - np.sin(ti) * q, np.sin(ti) * i + np.cos(ti) * q
        out.append(np.clip(yiq @ np.linalg.inv(to_yiq).T, 0, 1))
    return np.stack(out)


@pytest.mark.parametrize("name", ["light", "medium", "strong"])
def test_colour_jitter_matches_step_by_step_reference(name):
    colour = dataclasses.replace(
        AUGMENTATIONS[name], flip=False, rotate90=False, scale=0, rotate_degrees=0, translate=0
    )
    images, masks = _batch()
    seed = tf.constant([3, 7])
    out_images, _ = augment_batch(images, masks, seed, colour)
    np.testing.assert_allclose(out_images.numpy(), _colour_reference(images.numpy(), seed, colour), atol=2e-5)


def test_validation_and_names():
    with pytest.raises(ValueError, match="Augmentation.scale"):
        Augmentation(scale=-1)
    with pytest.raises(ValueError, match="unknown augmentation 'wild'"):
        get_augmentation("wild")
    assert get_augmentation("none") == AUGMENTATIONS["none"]


def _people(batch=4, size=(24, 40)):
    """Instance label images: image i holds people i+1 wide boxes with ids 1..; the red channel is the id / 10
    so that pasted pixels can be traced to their source."""
    labels = np.zeros((batch, *size, 1), np.int32)
    for i in range(batch):
        for k in range(i % 3 + 1):
            labels[i, 4 + 2 * k : 20, 2 + 12 * k : 10 + 12 * k] = k + 1
    red = labels.astype(np.float32) / 10 + np.arange(batch, dtype=np.float32)[:, None, None, None] / 100
    images = np.concatenate([red, np.zeros((batch, *size, 2), np.float32)], axis=-1)
    return tf.constant(images), tf.constant(labels)


def test_copy_paste_adds_whole_people_with_new_ids():
    images, labels = _people()
    out_images, out_labels = copy_paste(images, labels, tf.constant([1, 2], tf.int64), probability=1.0)
    out_images, out_labels = out_images.numpy(), out_labels.numpy()
    pasted_any = False
    for i in range(4):
        own = labels[i].numpy()
        top = own.max()
        new = out_labels[i][out_labels[i] > top]
        if new.size:
            pasted_any = True
            # a pasted person's pixels come from the previous image of the batch, and its id is above the
            # receiving image's own ids
            source = (i - 1) % 4
            red = out_images[i][..., 0][out_labels[i][..., 0] > top]
            np.testing.assert_allclose(red - source / 100, (new - top) / 10, atol=1e-5)
        # pixels that were not pasted over keep their image and id
        kept = out_labels[i] <= top
        np.testing.assert_array_equal(out_labels[i][kept], own[kept])
        np.testing.assert_array_equal(out_images[i][kept[..., 0]], images[i].numpy()[kept[..., 0]])
    assert pasted_any


def test_copy_paste_probability_zero_and_seeds():
    images, labels = _people()
    same_images, same_labels = copy_paste(images, labels, tf.constant([1, 2], tf.int64), probability=0.0)
    np.testing.assert_array_equal(same_labels.numpy(), labels.numpy())
    np.testing.assert_array_equal(same_images.numpy(), images.numpy())
    a = copy_paste(images, labels, tf.constant([3, 4], tf.int64), probability=1.0)[1].numpy()
    b = copy_paste(images, labels, tf.constant([3, 4], tf.int64), probability=1.0)[1].numpy()
    np.testing.assert_array_equal(a, b)
    with pytest.raises(TypeError, match="instance label images"):
        copy_paste(images, tf.cast(labels, tf.float32), tf.constant([1, 2], tf.int64), probability=1.0)


def test_copy_paste_runs_inside_augment_batch_and_is_validated():
    images, labels = _people()
    aug = dataclasses.replace(AUGMENTATIONS["people-paste"], copy_paste=1.0)
    out_images, out_labels = augment_batch(images, labels, tf.constant([5, 6]), aug)
    assert out_labels.dtype == tf.int32 and out_images.shape == images.shape
    counts = [len(np.unique(out_labels[i].numpy())) - 1 for i in range(4)]
    assert sum(counts) > sum(len(np.unique(labels[i].numpy())) - 1 for i in range(4)) - 2
    with pytest.raises(ValueError, match="copy_paste must be a probability"):
        Augmentation(copy_paste=1.5)
