"""Keypoints: heatmap targets and sub-pixel decoding, the left/right swap of mirrored images, augmentation that
moves points with the pixels, PCK on hand-computed cases, and the model's joint names surviving a save."""

import numpy as np
import pytest
import tensorflow as tf

from kseg.data import augment
from kseg.evaluation import keypoint_report
from kseg.tasks import keypoint_ops
from kseg.tasks.keypoint_files import KeypointResult
from tfds_ph2.lspet_source import JOINT_NAMES

LSP = tuple(JOINT_NAMES)


def _gaussian(height, width, x, y, sigma=keypoint_ops.SIGMA):
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    return np.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2 * sigma**2))


@pytest.mark.parametrize("x, y", [(10.3, 7.65), (4.0, 20.0), (30.49, 1.51), (17.75, 12.25)])
def test_a_gaussian_peak_comes_back_to_sub_pixel_accuracy(x, y):
    heatmaps = np.stack([_gaussian(24, 40, x, y), 0.5 * _gaussian(24, 40, y, x / 2)], axis=-1)[None]
    decoded = keypoint_ops.decode_heatmaps(tf.constant(heatmaps)).numpy()[0]
    np.testing.assert_allclose(decoded[0, :2], [x, y], atol=0.01)
    np.testing.assert_allclose(decoded[1, :2], [y, x / 2], atol=0.01)
    assert decoded[0, 2] == pytest.approx(heatmaps[0, ..., 0].max())
    assert decoded[1, 2] == pytest.approx(heatmaps[0, ..., 1].max())


def test_a_plain_argmax_would_be_off_by_up_to_half_a_pixel():
    """The refinement is what buys the accuracy: the peak pixel alone is 0.35 px away here."""
    heatmap = _gaussian(24, 40, 10.35, 7.0)[None, ..., None]
    decoded = keypoint_ops.decode_heatmaps(tf.constant(heatmap)).numpy()[0, 0]
    assert np.unravel_index(heatmap[0, ..., 0].argmax(), (24, 40))[1] == 10
    assert decoded[0] == pytest.approx(10.35, abs=0.01)


def test_targets_put_each_visible_joint_where_decoding_finds_it_in_image_pixels():
    points = np.array([[[37.2, 21.9, 1], [90.0, 60.5, 1], [5.0, 5.0, 0], [-40.0, 10.0, 1]]], np.float32)
    made = keypoint_ops.heatmap_targets(tf.constant(points), (96, 128), stride=4).numpy()
    assert made.shape == (1, 24, 32, 8)
    heatmaps, weights = made[..., :4], made[..., 4:]
    np.testing.assert_array_equal(weights[0, 0, 0], [1, 1, 0, 0])  # invisible; off the image
    assert heatmaps[..., 2].max() == 0 and heatmaps[..., 3].max() == 0
    decoded = keypoint_ops.decode_heatmaps(tf.constant(heatmaps[..., :2]))
    in_pixels = keypoint_ops.heatmap_to_image(decoded[..., :2], 4).numpy()[0]
    np.testing.assert_allclose(in_pixels, points[0, :2, :2], atol=0.05)


def test_the_heatmap_loss_ignores_joints_of_weight_zero():
    from kseg.tasks.keypoints import HeatmapLoss

    points = tf.constant([[[10.0, 10.0, 1], [20.0, 20.0, 0]]])
    target = keypoint_ops.heatmap_targets(points, (32, 32), stride=4)
    perfect = target[..., :2]
    wrong_where_ignored = tf.concat([perfect[..., :1], tf.ones_like(perfect[..., 1:])], axis=-1)
    loss = HeatmapLoss()
    assert float(loss(target, perfect)) == 0.0
    assert float(loss(target, wrong_where_ignored)) == 0.0
    assert float(loss(target, tf.zeros_like(perfect))) > 0.0


def test_resizing_keeps_pixel_centres():
    points = tf.constant([[0.0, 0.0, 1.0], [99.0, 49.0, 0.0], [49.5, 24.5, 1.0]])
    resized = keypoint_ops.resize_keypoints(points, (50, 100), (100, 200)).numpy()
    np.testing.assert_allclose(resized, [[0.5, 0.5, 1], [198.5, 98.5, 0], [99.5, 49.5, 1]])
    back = keypoint_ops.resize_keypoints(tf.constant(resized), (100, 200), (50, 100)).numpy()
    np.testing.assert_allclose(back, points.numpy(), atol=1e-5)


# ------------------------------------------------------------------------------------- left and right ---


def test_the_flip_permutation_swaps_left_and_right_and_keeps_the_middle():
    permutation = keypoint_ops.flip_permutation(LSP)
    named = {LSP[i]: LSP[j] for i, j in enumerate(permutation)}
    assert named["left_knee"] == "right_knee" and named["right_wrist"] == "left_wrist"
    assert named["neck"] == "neck" and named["head_top"] == "head_top"
    assert sorted(permutation) == list(range(14))
    with pytest.raises(ValueError, match="left_eye"):
        keypoint_ops.flip_permutation(("left_eye", "nose"))


def _dots(points, size):
    """An image with a dot under each point, each in its own channel (up to three)."""
    image = np.zeros((*size, 3), np.float32)
    for channel, (x, y, _) in enumerate(points):
        image[int(round(y)), int(round(x)), channel] = 1.0
    return image


def _dot_positions(image, count):
    return np.array([np.unravel_index(image[..., c].argmax(), image.shape[:2])[::-1] for c in range(count)], np.float32)


def test_a_mirror_moves_the_points_with_the_pixels_and_swaps_left_and_right():
    names = ("left_hand", "right_hand", "nose")
    permutation = keypoint_ops.flip_permutation(names)
    points = np.array([[5, 10, 1], [30, 20, 1], [17, 3, 1]], np.float32)
    image = _dots(points, (32, 40))
    only_flip = augment.Augmentation(
        rotate90=False, scale=0, rotate_degrees=0, translate=0, brightness=0, contrast=0, saturation=0, hue=0
    )
    flipped_once = False
    for seed in range(6):
        images, moved = augment.augment_keypoints(
            tf.constant(image[None]), tf.constant(points[None]), tf.constant([seed, 7]), only_flip, permutation
        )
        moved = moved.numpy()[0]
        if moved[2, 0] == points[2, 0]:  # not mirrored this time
            np.testing.assert_allclose(moved, points)
            continue
        flipped_once = True
        # The new left hand is the old right hand, mirrored: x -> width - 1 - x.
        np.testing.assert_allclose(moved[0], [39 - 30, 20, 1])
        np.testing.assert_allclose(moved[1], [39 - 5, 10, 1])
        np.testing.assert_allclose(moved[2], [39 - 17, 3, 1])
        # The pixels went the same way: the old right hand's dot is where the new left hand is.
        dots = _dot_positions(images.numpy()[0], 3)
        np.testing.assert_allclose(dots[1], moved[0, :2])
    assert flipped_once


def test_rotation_scale_and_shift_move_points_with_the_pixels():
    points = np.array([[20, 20, 1], [40, 22, 1], [31, 45, 0]], np.float32)
    image = np.zeros((64, 64, 3), np.float32)
    for channel, (x, y, _) in enumerate(points):  # a dot per point, each in its own channel
        image[int(y), int(x), channel] = 1.0
    strong = augment.Augmentation(
        flip=False, rotate90=False, scale=0.2, rotate_degrees=30, translate=0.1, brightness=0, contrast=0,
        saturation=0, hue=0, fill_mode="constant",
    )  # fmt: skip
    for seed in range(4):
        images, moved = augment.augment_keypoints(
            tf.constant(image[None]), tf.constant(points[None]), tf.constant([seed, 1]), strong, [0, 1, 2]
        )
        moved, images = moved.numpy()[0], images.numpy()[0]
        np.testing.assert_array_equal(moved[:, 2], points[:, 2])
        for channel in range(3):
            # Bilinear sampling spreads a dot over its neighbours; its brightest pixel stays within one of the point.
            y, x = np.unravel_index(images[..., channel].argmax(), images.shape[:2])
            assert abs(x - moved[channel, 0]) <= 1.0 and abs(y - moved[channel, 1]) <= 1.0, (seed, channel)


def test_flip_tta_maps_the_mirrored_heatmaps_back():
    heatmaps = np.stack([_gaussian(16, 20, 4.0, 5.0), _gaussian(16, 20, 12.0, 9.0), _gaussian(16, 20, 9, 2)], -1)
    mirrored = heatmaps[:, ::-1][..., [1, 0, 2]]  # a mirror image's heatmaps: left and right trade places
    back = keypoint_ops.flip_heatmaps(tf.constant(mirrored[None]), [1, 0, 2]).numpy()[0]
    np.testing.assert_allclose(back, heatmaps)


# ----------------------------------------------------------------------------------------------- PCK ---


def _person(**joints):
    """14 LSP joints, invisible at (0, 0) unless given as name=(x, y)."""
    points = np.zeros((14, 3), np.float32)
    for name, (x, y) in joints.items():
        points[LSP.index(name)] = [x, y, 1]
    return points


def test_pck_on_hand_computed_cases():
    # Image 1: torso |(0,0) - (30,40)| = 50, so PCK@0.2 allows 10 px and PCK@0.1 5 px.
    truth_1 = _person(left_shoulder=(0, 0), right_hip=(30, 40), neck=(100, 100), left_knee=(60, 60))
    guess_1 = truth_1.copy()
    guess_1[LSP.index("neck"), :2] = [106, 108]  # 10 px off: a hit at 0.2, a miss at 0.1
    guess_1[LSP.index("left_knee"), :2] = [60, 71]  # 11 px off: a miss at both
    # Image 2: no LSP diagonal (left shoulder hidden); the other one, |(0,0) - (0,20)| = 20, stands in.
    truth_2 = _person(right_shoulder=(0, 0), left_hip=(0, 20), right_hip=(50, 50))
    guess_2 = truth_2.copy()
    guess_2[LSP.index("right_hip"), :2] = [53, 50]  # 3 px off: a hit at 0.2 (4 px), a miss at 0.1 (2 px)
    # Image 3: no torso at all: not scored.
    truth_3 = _person(neck=(5, 5))
    truths = np.stack([truth_1, truth_2, truth_3])
    guesses = np.stack([guess_1, guess_2, truth_3])
    guesses[..., 2] = 0.9
    summary, rows = keypoint_report.score(["a", "b", "c"], truths, guesses, LSP)
    # Scored joints: image 1 has 4 visible (3 hits at 0.2: shoulder, hip, neck); image 2 has 3 (3 hits).
    assert summary["pck"] == pytest.approx(6 / 7)
    assert summary["pck_0.1"] == pytest.approx(4 / 7)  # image 1: shoulder, hip; image 2: shoulder, hip
    assert summary["images_unscored"] == 1 and summary["images"] == 3
    assert summary["per_joint"]["neck"] == {"visible": 1, "pck": 1.0, "pck_0.1": 0.0}
    assert summary["per_joint"]["left_knee"] == {"visible": 1, "pck": 0.0, "pck_0.1": 0.0}
    assert summary["per_joint"]["head_top"]["pck"] is None
    assert [row["torso"] for row in rows] == [50.0, 20.0, 0.0]
    assert rows[0]["pck"] == pytest.approx(0.75) and np.isnan(rows[2]["pck"])


def test_a_model_without_some_joints_is_scored_on_those_it_has_and_says_which_it_lacks():
    truth = _person(left_shoulder=(0, 0), right_hip=(30, 40), head_top=(10, 10), neck=(12, 14))
    names = tuple(n for n in LSP if n != "head_top")  # COCO models have no head top
    keypoints = truth[[LSP.index(n) for n in names]][None].copy()
    keypoints[..., 2] = 0.8
    result = KeypointResult(keypoints, np.array([0.8], np.float32), names, (50, 50))
    matched = keypoint_report.matched_joints(result, LSP)
    assert np.isnan(matched[0, LSP.index("head_top")]).all()
    summary, _ = keypoint_report.score(["a"], truth[None], matched, LSP, names)
    assert summary["pck"] == 1.0 and summary["joints_missing"] == ["head_top"]
    assert summary["per_joint"]["head_top"]["pck"] is None


def test_the_person_nearest_the_annotated_one_is_scored():
    truth = _person(left_shoulder=(10, 10), right_hip=(20, 30), neck=(12, 5))
    far = truth.copy()
    far[:, :2] += 200
    near = truth.copy()
    near[:, :2] += 1
    candidates = np.stack([far, near])
    candidates[..., 2] = 0.9
    np.testing.assert_array_equal(keypoint_report.nearest_person(candidates, truth), candidates[1])


def test_an_image_with_nobody_found_misses_every_joint():
    truth = _person(left_shoulder=(10, 10), right_hip=(20, 30))
    empty = KeypointResult(np.zeros((0, 14, 3), np.float32), np.zeros(0, np.float32), LSP, (40, 40))
    matched = keypoint_report.matched_joints(empty, LSP)
    summary, _ = keypoint_report.score(["a"], truth[None], keypoint_report.nearest_person(matched, truth)[None], LSP)
    assert summary["pck"] == 0.0


# --------------------------------------------------------------------------------------------- model ---


def test_the_model_names_its_joints_and_the_names_survive_a_save(tmp_path):
    import keras

    from kseg.tasks import keypoints

    model = keypoints.build_model("unet-small", (64, 64), LSP)
    assert keypoints.joint_names_of(model) == LSP
    assert model.output[keypoints.HEATMAPS].shape[1:] == (16, 16, 14)
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras", compile=False)
    assert keypoints.joint_names_of(loaded) == LSP
    batch = np.random.default_rng(0).uniform(size=(2, 64, 64, 3)).astype(np.float32)
    np.testing.assert_allclose(
        loaded(batch)[keypoints.HEATMAPS], model(batch)[keypoints.HEATMAPS], atol=1e-6
    )  # fmt: skip
    from kseg import tasks

    assert tasks.of_model(loaded).name == "keypoints"


def test_heatmaps_stay_float32_under_mixed_precision():
    import keras

    from kseg.tasks import keypoints

    previous = keras.mixed_precision.global_policy().name
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        model = keypoints.build_model("unet-small", (32, 32), LSP)
    finally:
        keras.mixed_precision.set_global_policy(previous)
    assert model.output[keypoints.HEATMAPS].dtype == "float32"
