"""Keypoints: each person's skeleton as named joints (LSP's 14 for ``tfds_ph2/lspet``).

Targets: a Gaussian heatmap per joint at stride 4 from the (augmented) points, with a weight per joint
(``kseg.tasks.keypoint_ops.heatmap_targets``). Head: one heatmap per joint on the U-Net decoder
(``kseg.models.keypoint_heads``). Loss: weighted mean squared error. Prediction: the peak of each heatmap to
sub-pixel accuracy, in TensorFlow ops, so the same function runs in the SavedModel; flip TTA averages with
the mirrored image's heatmaps, left and right swapped. A trained model finds one person per image (LSPET
labels one); the pretrained multi-person models (``kseg.prediction.pretrained``) return up to 20.
Scores: PCK (``kseg.evaluation.keypoint_report``).
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from kseg.core.serving_contract import KEYPOINT_OUTPUTS
from kseg.models import keypoint_heads
from kseg.tasks import keypoint_files, keypoint_ops
from kseg.tasks.keypoint_files import KeypointResult

NAME = "keypoints"
HEATMAPS = keypoint_heads.HEATMAPS
STRIDE = keypoint_heads.STRIDE
#: The heatmap MSE is a mean over mostly-background pixels; scaled so the logged loss reads in units near 1.
#: (A spatial-softmax cross-entropy was tried instead: val PCK@0.2 0.06 and 0.10 after 1 and 2 epochs, against
#: 0.12 and 0.18 for this MSE, on the same preset.)
HEATMAP_WEIGHT = 1000.0
#: PCK at this fraction of the torso chooses the best epoch (the issue's headline figure).
MONITOR_FRACTION = 0.2


@keras.saving.register_keras_serializable(package="kseg")
class HeatmapLoss(keras.losses.Loss):
    """Mean squared error of the heatmaps, each joint weighted. ``y_true`` [B, h, w, 2J]: J target heatmaps,
    then each joint's weight as a constant map (0 for a joint that is not visible or off the image)."""

    def __init__(self, name="heatmap_mse", reduction="sum_over_batch_size"):
        super().__init__(name=name, reduction=reduction)

    def call(self, y_true, y_pred):
        y_true, y_pred = tf.cast(y_true, tf.float32), tf.cast(y_pred, tf.float32)
        joints = tf.shape(y_pred)[-1]
        target, weight = y_true[..., :joints], y_true[..., joints:]
        return tf.reduce_mean(weight * tf.square(target - y_pred), axis=[1, 2, 3])


def joint_names_of(model) -> tuple:
    return model.get_layer(HEATMAPS).joint_names


def build_model(model_preset: str, image_size, joint_names, *, replicas: int = 1, dropout: float = 0.0):
    from kseg.models import build_unet_base

    base = build_unet_base(model_preset, image_size, replicas=replicas, dropout=dropout, heads="keypoint heads")
    return add_heads(base, joint_names, batch_norm="sync" if replicas > 1 else True)


def add_heads(base: keras.Model, joint_names, batch_norm=True) -> keras.Model:
    return keypoint_heads.add_keypoint_heads(base, joint_names, batch_norm=batch_norm)


def is_keypoint_model(model) -> bool:
    outputs = getattr(model, "output", None)
    return isinstance(outputs, dict) and HEATMAPS in outputs


@tf.autograph.experimental.do_not_convert
def targets(images, keypoints):
    """``(images, {"keypoint_heatmaps": [B, h, w, 2J]})`` for a batch of points ``[B, J, 3]`` at the
    images' size."""
    size = tf.shape(images)[1:3]
    return images, {HEATMAPS: keypoint_ops.heatmap_targets(keypoints, size, STRIDE)}


# ------------------------------------------------------------------------------------ prediction ---


@tf.autograph.experimental.do_not_convert
def heatmaps_of(model, batch, tta: bool = False, permutation=None):
    """The model's heatmaps for a batch; with ``tta`` averaged with the mirrored batch's, mapped back."""
    heatmaps = tf.cast(model(batch, training=False)[HEATMAPS], tf.float32)
    if not tta:
        return heatmaps
    mirrored = tf.cast(model(tf.reverse(batch, axis=[2]), training=False)[HEATMAPS], tf.float32)
    return (heatmaps + keypoint_ops.flip_heatmaps(mirrored, permutation)) / 2


@tf.autograph.experimental.do_not_convert
def keypoints_at_model_size(heatmaps):
    """``[B, J, 3]``: (x, y) in model-input pixels and each joint's score."""
    decoded = keypoint_ops.decode_heatmaps(heatmaps)
    score = tf.clip_by_value(decoded[..., 2:], 0.0, 1.0)
    return tf.concat([keypoint_ops.heatmap_to_image(decoded[..., :2], STRIDE), score], axis=-1)


class KeypointPredictor:
    """A Keras keypoint model on images of any size: resize as in training, predict, decode, back to size."""

    task = NAME

    def __init__(self, model: keras.Model, path="<in memory>", postprocessing=None):
        from kseg.tasks.postprocess import PostProcessing

        self.model, self.path = model, str(path)
        self.image_size = tuple(int(side) for side in model.inputs[0].shape[1:3])
        self.joint_names = joint_names_of(model)
        self.num_classes = len(self.joint_names)
        self.postprocessing = postprocessing or PostProcessing()
        permutation = keypoint_ops.flip_permutation(self.joint_names)

        @tf.function(reduce_retracing=True)
        def predict_one(image, tta):
            from kseg.data.preprocessing import resize_image, scale_to_unit

            batch = scale_to_unit(resize_image(image, self.image_size))[None]
            points = keypoints_at_model_size(heatmaps_of(model, batch, tta, permutation))[0]
            return keypoint_ops.resize_keypoints(points, self.image_size, tf.shape(image)[:2])

        self._predict_one = predict_one

    @property
    def keras_model(self):
        return self.model

    def predict(self, images, batch_size: int = 8, postprocessing=None) -> list[KeypointResult]:
        """One person per image, at the image's own size."""
        del batch_size
        tta = bool((postprocessing or self.postprocessing).tta)
        results = []
        for image in images:
            points = self._predict_one(tf.convert_to_tensor(image, tf.uint8), tta).numpy()
            score = np.array([points[:, 2].mean()], np.float32)
            results.append(KeypointResult(points[None], score, self.joint_names, tuple(np.shape(image)[:2])))
        return results

    def prediction_files(self, image, result: KeypointResult, source: str = "") -> dict[str, bytes]:
        return keypoint_files.prediction_files(image, result, source)


# ------------------------------------------------------------------------------------ validation ---


class PCKCallback(keras.callbacks.Callback):
    """``val_pck`` (PCK@0.2 over visible joints, at the model's size) at the end of each epoch. Put it before
    the callbacks that read the logs (history, checkpoint)."""

    def __init__(self, validation_data: tf.data.Dataset, joint_names):
        super().__init__()
        self.validation_data, self.joint_names = validation_data, tuple(joint_names)
        self._step = tf.function(lambda model, images: keypoints_at_model_size(heatmaps_of(model, images)))

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        predicted, truths = [], []
        for images, points in self.validation_data:
            predicted.append(self._step(self.model, images).numpy())
            truths.append(points.numpy())
        predicted, truths = np.concatenate(predicted), np.concatenate(truths)
        torso = keypoint_ops.torso_sizes(truths, self.joint_names)
        hits = keypoint_ops.pck_hits(predicted, truths, torso, MONITOR_FRACTION)
        visible = (truths[..., 2] > 0) & (torso > 0)[:, None]
        logs["val_pck"] = float(hits[visible].mean()) if visible.any() else 0.0


# ------------------------------------------------------------------------------------------ the task ---


class KeypointTask:
    """The keypoint kind as one object: what training, evaluation, prediction and export ask of it."""

    name = NAME
    monitor = "val_pck"
    monitor_label = "val PCK@0.2"
    headline = ("pck", "PCK@0.2")
    postprocessing_fields = ("tta",)
    targets = staticmethod(targets)

    @staticmethod
    def describe(postprocessing) -> str:
        return "flip TTA" if postprocessing.tta else "no TTA"

    @staticmethod
    def augmentation(aug):
        return aug

    def build_model(self, config, replicas: int = 1, num_classes: int = 1, class_names=()) -> keras.Model:
        del num_classes  # a heatmap per joint named in class_names
        joint_names = class_names
        return build_model(
            config.model_preset, config.image_size, joint_names, replicas=replicas, dropout=config.dropout
        )

    def compile_args(self, config, num_classes: int) -> dict:
        del config, num_classes
        return dict(loss={HEATMAPS: HeatmapLoss()}, loss_weights={HEATMAPS: HEATMAP_WEIGHT})

    def is_model(self, model) -> bool:
        return is_keypoint_model(model)

    def validation_callbacks(self, load_split, class_names=()) -> list:
        return [PCKCallback(load_split("validation"), class_names)]

    def predictor(self, model, path="<in memory>", postprocessing=None) -> KeypointPredictor:
        return KeypointPredictor(model, path, postprocessing=postprocessing)

    # ------------------------------------------------------------------------------------- serving ---

    has_probabilities_signature = False

    def serving_outputs(self, model, batch, sizes, postprocessing=None) -> dict:
        """``serving_default``'s outputs for a decoded batch (``KEYPOINT_OUTPUTS``): per image one person's
        joints (x, y, score) at the image's original size, the person's score, the count (1), the size."""
        tta = bool(postprocessing is not None and postprocessing.tta)
        names = joint_names_of(model)
        points = keypoints_at_model_size(heatmaps_of(model, batch, tta, keypoint_ops.flip_permutation(names)))
        image_size = tf.shape(batch)[1:3]
        at_size = tf.map_fn(
            lambda args: keypoint_ops.resize_keypoints(args[0], image_size, args[1]),
            (points, sizes),
            fn_output_signature=tf.TensorSpec([len(names), 3], tf.float32),
        )
        count = tf.ones([tf.shape(batch)[0]], tf.int32)
        scores = tf.reduce_mean(at_size[..., 2], axis=-1, keepdims=True)
        return keypoint_outputs(at_size[:, None], scores, count, sizes, names)

    @staticmethod
    def serving_signatures(height: int, width: int, num_classes: int, model=None) -> dict:
        del height, width, num_classes  # any image size in; a channel per joint
        return keypoint_signatures(joint_names_of(model), max_people=1)

    @staticmethod
    def export_metadata(model) -> dict:
        return {"joint_names": list(joint_names_of(model)), "max_people": 1}

    def summary_parts(self, metrics: dict) -> list[str]:
        return [
            f"{split} PCK@0.2 {metrics[split]['pck']:.4f} PCK@0.1 {metrics[split]['pck_0.1']:.4f}"
            for split in ("validation", "test")
            if split in metrics
        ]


def keypoint_outputs(keypoints, scores, count, sizes, joint_names) -> dict:
    """``serving_default``'s outputs (``KEYPOINT_OUTPUTS``) of any keypoint model, trained or pretrained."""
    names = tf.tile(tf.constant(list(joint_names))[None], [tf.shape(sizes)[0], 1])
    return dict(zip(KEYPOINT_OUTPUTS, (keypoints, scores, count, sizes[:, 0], sizes[:, 1], names)))


def keypoint_signatures(joint_names, max_people: int) -> dict:
    """The signature a keypoint export holds, as ``kseg.json`` documents it (trained and pretrained alike)."""
    from kseg.core.serving_contract import IMAGE_BYTES, SERVING_SIGNATURE

    j, m = len(joint_names), max_people
    return {
        SERVING_SIGNATURE: {
            "inputs": {IMAGE_BYTES: "string [N]"},
            "outputs": {
                "keypoints": f"float32 [N, {m}, {j}, 3] (x, y, score per joint, original pixels; joints in "
                f"joint_names order)",
                "scores": f"float32 [N, {m}] (person score, descending; rows past count are 0)",
                "count": f"int32 [N] (people found, at most {m})",
                "height": "int32 [N]",
                "width": "int32 [N]",
                "joint_names": f"string [N, {j}] ({', '.join(joint_names)})",
            },
        }
    }


TASK = KeypointTask()
