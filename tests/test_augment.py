"""Paired augmentation: image and mask move together, masks keep exact labels, seeds repeat."""

import numpy as np
import pytest
import tensorflow as tf

from kseg.augment import PRESETS, Augmentation, augment_batch, get_augmentation


def _batch(size=32, batch=6):
    rng = np.random.default_rng(0)
    masks = np.zeros((batch, size, size, 1), np.float32)
    for i in range(batch):
        y, x = rng.integers(4, size - 12, 2)
        masks[i, y:y + 8, x:x + 10] = 1
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
    aug = PRESETS["flips"]
    out_images, out_masks = augment_batch(images, masks, tf.constant([3, 4]), aug)
    for i in range(images.shape[0]):
        candidates = [np.rot90(m, k) for m in (masks[i].numpy(), masks[i].numpy()[:, ::-1]) for k in range(4)]
        assert any(np.array_equal(out_masks[i].numpy(), c) for c in candidates)
        image_candidates = [np.rot90(m, k) for m in (images[i].numpy(), images[i].numpy()[:, ::-1]) for k in range(4)]
        assert any(np.allclose(out_images[i].numpy(), c, atol=1e-5) for c in image_candidates)


def test_multiclass_masks_keep_integer_labels():
    images, masks = _batch()
    labels = tf.cast(masks, tf.int32) * 3
    _, out = augment_batch(images, labels, tf.constant([5, 6]), PRESETS["strong"])
    assert out.dtype == tf.int32 and set(np.unique(out.numpy())) <= {0, 3}


def test_same_seed_same_result_different_seed_differs():
    images, masks = _batch()
    a = augment_batch(images, masks, tf.constant([7, 8]), PRESETS["medium"])
    b = augment_batch(images, masks, tf.constant([7, 8]), PRESETS["medium"])
    c = augment_batch(images, masks, tf.constant([7, 9]), PRESETS["medium"])
    np.testing.assert_array_equal(a[0].numpy(), b[0].numpy())
    assert not np.array_equal(a[0].numpy(), c[0].numpy())


def test_colour_jitter_leaves_mask_and_stays_in_range():
    images, masks = _batch()
    colour_only = Augmentation(flip=False, rotate90=False, scale=0, rotate_degrees=0, translate=0,
                               brightness=0.3, contrast=0.5, saturation=0.5, hue=0.2)
    out_images, out_masks = augment_batch(images, masks, tf.constant([1, 1]), colour_only)
    np.testing.assert_array_equal(out_masks.numpy(), masks.numpy())
    assert 0.0 <= out_images.numpy().min() and out_images.numpy().max() <= 1.0
    assert np.abs(out_images.numpy() - images.numpy()).mean() > 0.01


def test_validation_and_names():
    with pytest.raises(ValueError, match="Augmentation.scale"):
        Augmentation(scale=-1)
    with pytest.raises(ValueError, match="unknown augmentation 'wild'"):
        get_augmentation("wild")
    assert get_augmentation("none") == PRESETS["none"]
