"""Instance segmentation: every person their own mask (Panoptic-DeepLab, bottom-up).

Targets: from the instance label image of each (augmented) example, the foreground mask at full resolution
and the centre heatmap and offsets at stride 4 (``kseg.tasks.instance_ops.instance_targets``). Heads: the U-Net's
``logits`` as foreground, a centre heatmap and offsets at stride 4 (``kseg.models.instance_heads``). Loss:
BCE + Dice on the foreground, MSE x 200 on the heatmap, L1 on the offsets over foreground pixels (the
paper's balance). Prediction: heatmap and offsets upsampled to the model's size, grouped there
(``group_instances``, all TensorFlow ops, so the same function runs in the SavedModel), then brought to each
image's own size. Scores: COCO mask and box AP by pycocotools (``kseg.tasks.coco``).
"""

from __future__ import annotations

import dataclasses
import logging

import keras
import numpy as np
import tensorflow as tf

from kseg.core.serving_contract import INSTANCE_OUTPUTS, MAX_INSTANCES
from kseg.models import instance_heads
from kseg.tasks import instance_files, instance_ops
from kseg.tasks.instance_files import InstanceResult

log = logging.getLogger(__name__)

NAME = "instances"
#: Loss weights of Panoptic-DeepLab (heatmap MSE x 200); the offset L1 is a mean over foreground pixels in
#: stride-4 pixels, weighted so that it starts near the other two terms.
CENTRE_WEIGHT = 200.0
OFFSET_WEIGHT = 0.05
#: Grouping at the model's full resolution (offsets and heatmap upsampled 4x): the paper's NMS kernel 7 at
#: stride 4 covers 13 full-resolution pixels.
NMS_KERNEL = 13


@keras.saving.register_keras_serializable(package="kseg")
class CentreHeatmapLoss(keras.losses.Loss):
    """Mean squared error of the centre heatmap (Panoptic-DeepLab's loss; weight it 200)."""

    def __init__(self, name="centre_heatmap_mse", reduction="sum_over_batch_size"):
        super().__init__(name=name, reduction=reduction)

    def call(self, y_true, y_pred):
        return tf.reduce_mean(tf.square(tf.cast(y_true, tf.float32) - tf.cast(y_pred, tf.float32)), axis=[1, 2, 3])


@keras.saving.register_keras_serializable(package="kseg")
class OffsetLoss(keras.losses.Loss):
    """L1 of the offsets over foreground pixels. ``y_true`` [B, h, w, 3] = (dy, dx, weight): background pixels
    (weight 0) have no centre to point to. A mean per image, so a crowd and a single person count alike."""

    def __init__(self, name="offset_l1", reduction="sum_over_batch_size"):
        super().__init__(name=name, reduction=reduction)

    def call(self, y_true, y_pred):
        y_true = tf.cast(y_true, tf.float32)
        weight = y_true[..., 2:3]
        error = tf.abs(y_true[..., :2] - tf.cast(y_pred, tf.float32)) * weight
        return tf.reduce_sum(error, axis=[1, 2, 3]) / tf.maximum(tf.reduce_sum(weight, axis=[1, 2, 3]), 1.0)


def augmentation(aug):
    """Geometry fills with background: a reflected border would copy a person under the same id, and the
    centre of mass of the two copies would lie between them."""
    return dataclasses.replace(aug, fill_mode="constant")


@tf.autograph.experimental.do_not_convert
def targets(images, labels):
    """``(images, {"foreground": [B,H,W,1], "centre_heatmap": [B,h,w,1], "offsets": [B,h,w,3]})`` for a batch of
    instance label images ``[B, H, W, 1]`` (the offsets carry their loss weight as a third channel)."""
    labels = tf.cast(labels[..., 0], tf.int32)
    made = instance_ops.instance_targets(labels, output_stride=instance_heads.HEAD_STRIDE)
    return images, {
        instance_heads.FOREGROUND: tf.cast(labels > 0, tf.float32)[..., None],
        instance_heads.CENTRE_HEATMAP: made[instance_ops.CENTRE_HEATMAP][..., None],
        instance_heads.OFFSETS: tf.concat(
            [made[instance_ops.OFFSETS], made[instance_ops.OFFSET_WEIGHT][..., None]], axis=-1
        ),
    }


def build_model(model_preset: str, image_size, *, replicas: int = 1, dropout: float = 0.0) -> keras.Model:
    from kseg.models import build_unet_base

    base = build_unet_base(model_preset, image_size, replicas=replicas, dropout=dropout, heads="instance heads")
    return add_heads(base, batch_norm="sync" if replicas > 1 else True)


def add_heads(base: keras.Model, batch_norm=True) -> keras.Model:
    return instance_heads.add_instance_heads(base, batch_norm=batch_norm)


def compile_args(loss_name: str) -> dict:
    from kseg.tasks.losses import get_loss
    from kseg.tasks.metrics import Dice

    return dict(
        loss={
            instance_heads.FOREGROUND: get_loss(loss_name, num_classes=1),
            instance_heads.CENTRE_HEATMAP: CentreHeatmapLoss(),
            instance_heads.OFFSETS: OffsetLoss(),
        },
        loss_weights={
            instance_heads.FOREGROUND: 1.0,
            instance_heads.CENTRE_HEATMAP: CENTRE_WEIGHT,
            instance_heads.OFFSETS: OFFSET_WEIGHT,
        },
        metrics={instance_heads.FOREGROUND: [Dice(num_classes=1)]},
    )


def is_instance_model(model) -> bool:
    outputs = getattr(model, "output", None)
    return isinstance(outputs, dict) and instance_heads.CENTRE_HEATMAP in outputs


# ------------------------------------------------------------------------------------ prediction ---


@tf.autograph.experimental.do_not_convert
def model_outputs(model, batch, tta: bool = False) -> dict:
    """The model's outputs for a batch; with ``tta`` averaged with those of the mirrored batch, mapped back
    (maps mirrored, the offsets' dx negated: a mirrored pixel's centre is the mirrored centre)."""
    outputs = model(batch, training=False)
    if not tta:
        return outputs
    mirrored = model(tf.reverse(batch, axis=[2]), training=False)
    averaged = {}
    for name, value in outputs.items():
        back = tf.reverse(tf.cast(mirrored[name], tf.float32), axis=[2])
        if name == instance_heads.OFFSETS:
            back = back * tf.constant([1.0, -1.0])
        averaged[name] = (tf.cast(value, tf.float32) + back) / 2
    return averaged


@tf.autograph.experimental.do_not_convert
def group_outputs(outputs: dict, *, foreground_threshold: float = 0.5, max_instances: int = MAX_INSTANCES):
    """Model outputs for a batch -> ``PaddedInstances`` at the model's size (labels [B, H, W], scores [B, M],
    boxes [B, M, 4] in model pixels, areas [B, M], count [B]). TensorFlow ops only."""
    logits = tf.cast(outputs[instance_heads.FOREGROUND], tf.float32)
    size = tf.shape(logits)[1:3]
    probability = tf.sigmoid(logits)
    heatmap = tf.image.resize(tf.cast(outputs[instance_heads.CENTRE_HEATMAP], tf.float32), size, method="bilinear")
    offsets = instance_ops.resize_offsets(tf.cast(outputs[instance_heads.OFFSETS], tf.float32), size)
    return instance_ops.group_instances_batch(
        probability,
        heatmap,
        offsets,
        foreground_threshold=foreground_threshold,
        nms_kernel=NMS_KERNEL,
        max_instances=max_instances,
    )


def to_image_size(padded, size):
    """One image's ``PaddedInstances`` (no batch axis) at the model's size -> at ``size`` (height, width)."""
    return instance_ops.instances_to_size(padded, size)


def result_from_padded(padded) -> InstanceResult:
    count = int(padded.count)
    return InstanceResult(
        labels=np.asarray(padded.labels),
        scores=np.asarray(padded.scores)[:count],
        boxes=np.asarray(padded.boxes)[:count],
        areas=np.asarray(padded.areas)[:count],
    )


class InstancePredictor:
    """A Keras instance model on images of any size: resize as in training, predict, group, back to size."""

    def __init__(self, model: keras.Model, path="<in memory>", max_instances: int = MAX_INSTANCES, postprocessing=None):
        from kseg.tasks.postprocess import PostProcessing

        self.model, self.path, self.max_instances = model, str(path), max_instances
        self.image_size = tuple(int(side) for side in model.inputs[0].shape[1:3])
        #: Only ``tta`` applies to instances (flip TTA, ``model_outputs``); it is stored like a semantic choice.
        self.postprocessing = postprocessing or PostProcessing()

        @tf.function(reduce_retracing=True)
        def predict_one(image, tta):
            from kseg.data.preprocessing import resize_image, scale_to_unit

            batch = scale_to_unit(resize_image(image, self.image_size))[None]
            grouped = group_outputs(model_outputs(model, batch, tta), max_instances=max_instances)
            one = instance_ops.PaddedInstances(*(t[0] for t in grouped))
            return to_image_size(one, tf.shape(image)[:2])

        self._predict_one = predict_one

    task = NAME
    num_classes = 1

    @property
    def keras_model(self):
        return self.model

    def predict(self, images, batch_size: int = 8, postprocessing=None) -> list[InstanceResult]:
        """Each image's people at its own size (one image at a time: sizes differ, and grouping is per image).
        ``postprocessing`` overrides the stored choice; only its ``tta`` applies."""
        del batch_size
        tta = bool((postprocessing or self.postprocessing).tta)
        return [result_from_padded(self._predict_one(tf.convert_to_tensor(image, tf.uint8), tta)) for image in images]

    def prediction_files(self, image, result: InstanceResult, source: str = "") -> dict[str, bytes]:
        return instance_files.prediction_files(image, result, source)


# ------------------------------------------------------------------------------------ validation ---


class MaskAPCallback(keras.callbacks.Callback):
    """``val_mask_ap`` (and ``val_mask_ap50``) at the end of each epoch: the validation images at the model's
    size, grouped as at inference and scored by pycocotools. Put it before the callbacks that read the logs
    (history, checkpoint): Keras calls them in order with the same ``logs`` dict."""

    def __init__(self, validation_data: tf.data.Dataset):
        super().__init__()
        self.validation_data = validation_data

        def step(model, images):
            return group_outputs(model(images, training=False))

        self._step = tf.function(step, reduce_retracing=True)

    def on_epoch_end(self, epoch, logs=None):
        from kseg.tasks.coco import InstancePrediction, coco_scores

        if logs is None:
            return
        truths, predictions = [], []
        for images, labels in self.validation_data:
            grouped = self._step(self.model, images)
            for i in range(int(tf.shape(images)[0])):
                count = int(grouped.count[i])
                truths.append(labels[i, ..., 0].numpy())
                predictions.append(InstancePrediction(grouped.labels[i].numpy(), grouped.scores[i, :count].numpy()))
        scores = coco_scores(truths, predictions)
        logs["val_mask_ap"] = scores["mask_ap"]
        logs["val_mask_ap50"] = scores["mask_ap50"]


# ------------------------------------------------------------------------------------------ the task ---


class InstanceTask:
    """The instance kind as one object: what training, evaluation, prediction and export ask of it."""

    name = NAME
    monitor = "val_mask_ap"
    monitor_label = "val mask AP"
    headline = ("mask_ap", "mask AP")
    #: People come from centre and offset heads: no threshold or mask clean-up to set, only flip TTA.
    postprocessing_fields = ("tta",)

    @staticmethod
    def describe(postprocessing) -> str:
        return "flip TTA" if postprocessing.tta else "no TTA"

    augmentation = staticmethod(augmentation)
    targets = staticmethod(targets)

    def build_model(self, config, replicas: int = 1, num_classes: int = 1, class_names=()) -> keras.Model:
        del num_classes, class_names  # one class, person
        return build_model(config.model_preset, config.image_size, replicas=replicas, dropout=config.dropout)

    def compile_args(self, config, num_classes: int) -> dict:
        del num_classes  # one foreground channel
        return compile_args(config.loss)

    def is_model(self, model) -> bool:
        return is_instance_model(model)

    def validation_callbacks(self, load_split, class_names=()) -> list:
        """``load_split(split)`` loads a split at the model size without targets (kseg.training.setup)."""
        del class_names  # person
        return [MaskAPCallback(load_split("validation"))]

    def predictor(self, model, path="<in memory>", postprocessing=None) -> InstancePredictor:
        return InstancePredictor(model, path, postprocessing=postprocessing)

    # ------------------------------------------------------------------------------------- serving ---

    has_probabilities_signature = False
    max_instances = MAX_INSTANCES

    def serving_outputs(self, model, batch, sizes, postprocessing=None) -> dict:
        """``serving_default``'s outputs for a decoded batch (see ``INSTANCE_OUTPUTS``): per image the label
        image as PNG at its original size, its size, the number of people and their scores, boxes and areas
        padded to ``MAX_INSTANCES`` rows."""
        tta = bool(postprocessing is not None and postprocessing.tta)
        grouped = group_outputs(model_outputs(model, batch, tta), max_instances=MAX_INSTANCES)
        dtype = tf.uint8 if MAX_INSTANCES <= 255 else tf.uint16

        def finish(args):
            labels, scores, boxes, areas, count, size = args
            one = to_image_size(instance_ops.PaddedInstances(labels, scores, boxes, areas, count), size)
            return tf.io.encode_png(tf.cast(one.labels, dtype)[..., None]), one.boxes, one.areas

        pngs, boxes, areas = tf.map_fn(
            finish,
            (grouped.labels, grouped.scores, grouped.boxes, grouped.areas, grouped.count, sizes),
            fn_output_signature=(
                tf.TensorSpec([], tf.string),
                tf.TensorSpec([MAX_INSTANCES, 4], tf.float32),
                tf.TensorSpec([MAX_INSTANCES], tf.int32),
            ),
        )
        values = (pngs, sizes[:, 0], sizes[:, 1], grouped.count, grouped.scores, boxes, areas)
        return dict(zip(INSTANCE_OUTPUTS, values))

    @staticmethod
    def export_metadata(model) -> dict:
        del model
        return {"max_instances": MAX_INSTANCES}

    @staticmethod
    def serving_signatures(height: int, width: int, num_classes: int, model=None) -> dict:
        from kseg.core.serving_contract import IMAGE_BYTES, SERVING_SIGNATURE

        del height, width, num_classes, model  # any image size in; one class
        m = MAX_INSTANCES
        return {
            SERVING_SIGNATURE: {
                "inputs": {IMAGE_BYTES: "string [N]"},
                "outputs": {
                    "label_bytes": "string [N] (PNG: 0 background, person i = i, in descending score order)",
                    "height": "int32 [N]",
                    "width": "int32 [N]",
                    "count": f"int32 [N] (people found, at most {m})",
                    "scores": f"float32 [N, {m}] (rows past count are 0)",
                    "boxes": f"float32 [N, {m}, 4] (ymin, xmin, ymax, xmax pixel edges at the image's size)",
                    "areas": f"int32 [N, {m}] (pixels)",
                },
            }
        }

    def summary_parts(self, metrics: dict) -> list[str]:
        return [
            f"{split} mask AP {metrics[split]['mask_ap']:.4f} AP50 {metrics[split]['mask_ap50']:.4f} box AP "
            f"{metrics[split]['box_ap']:.4f}"
            for split in ("validation", "test")
            if split in metrics
        ]


TASK = InstanceTask()
