"""Semantic segmentation: a class for every pixel (lesion vs skin, person vs background, K classes).

The kind kseg started with; its pieces live where they always did (``kseg.tasks.losses``, ``kseg.tasks.metrics``,
``kseg.tasks.postprocess``, ``kseg.evaluation.cases``) and this object is what the shared paths ask of them.
"""

from __future__ import annotations

import keras

NAME = "semantic"


class SemanticTask:
    """The semantic kind as one object: what training, evaluation, prediction and export ask of it."""

    name = NAME
    monitor = "val_dice"
    monitor_label = "val Dice"
    headline = ("dice", "Dice")
    targets = None  # the pipeline's masks are the targets
    #: The ``PostProcessing`` fields (and the flags that set them) that apply to this kind.
    postprocessing_fields = ("tta", "threshold", "fill_holes", "largest_component")

    @staticmethod
    def describe(postprocessing) -> str:
        return postprocessing.describe()

    @staticmethod
    def augmentation(aug):
        return aug

    def build_model(self, config, replicas: int = 1, num_classes: int = 1, class_names=()) -> keras.Model:
        del class_names  # a class per output channel; the names are the dataset's
        from kseg.models import build_preset

        overrides = {"dropout": config.dropout} if config.dropout else {}
        if replicas > 1:
            overrides["batch_norm"] = "sync"
        return build_preset(config.model_preset, image_size=config.image_size, num_classes=num_classes, **overrides)

    def compile_args(self, config, num_classes: int) -> dict:
        from kseg.tasks.losses import get_loss
        from kseg.tasks.metrics import default_metrics

        return dict(
            loss=get_loss(config.loss, num_classes=num_classes),
            metrics=default_metrics(num_classes=num_classes, threshold=config.threshold),
        )

    def is_model(self, model) -> bool:
        return not isinstance(getattr(model, "output", None), dict)

    def validation_callbacks(self, load_split, class_names=()) -> list:
        del load_split, class_names  # Keras computes val_dice from the compiled metrics
        return []

    # ------------------------------------------------------------------------------------- serving ---

    has_probabilities_signature = True

    @staticmethod
    def probabilities(model, batch):
        from kseg.tasks import postprocess

        return postprocess.probabilities_from_logits(model(batch, training=False))

    def serving_outputs(self, model, batch, sizes, postprocessing) -> dict:
        """``serving_default``'s outputs for a decoded batch: per image the mask as PNG at its original size
        (0/255 binary, class ids otherwise), its size and the share of foreground pixels."""
        import tensorflow as tf

        from kseg.core.serving_contract import SERVING_OUTPUTS
        from kseg.tasks import postprocess

        binary = int(model.outputs[0].shape[-1]) == 1
        probabilities = lambda images: self.probabilities(model, images)
        if postprocessing.tta:
            probs = postprocess.tta_probabilities(probabilities, batch)
        else:
            probs = probabilities(batch)

        def finish(args):
            prob, size = args
            mask = postprocess.final_mask(prob, size, postprocessing)
            png = tf.io.encode_png((mask * 255 if binary else mask)[..., None])
            return png, tf.reduce_mean(tf.cast(mask > 0, tf.float32))

        masks, fractions = tf.map_fn(
            finish, (probs, sizes), fn_output_signature=(tf.TensorSpec([], tf.string), tf.TensorSpec([], tf.float32))
        )
        return dict(zip(SERVING_OUTPUTS, (masks, sizes[:, 0], sizes[:, 1], fractions)))

    @staticmethod
    def export_metadata(model) -> dict:
        del model
        return {"max_instances": None}

    @staticmethod
    def serving_signatures(height: int, width: int, num_classes: int, model=None) -> dict:
        """The signatures an export holds, as ``kseg.json`` documents them."""
        from kseg.core.serving_contract import IMAGE_BYTES, PROBABILITIES_SIGNATURE, SERVING_SIGNATURE

        return {
            SERVING_SIGNATURE: {
                "inputs": {IMAGE_BYTES: "string [N]"},
                "outputs": {
                    "mask_bytes": "string [N] (PNG)",
                    "height": "int32 [N]",
                    "width": "int32 [N]",
                    "foreground_fraction": "float32 [N]",
                },
            },
            PROBABILITIES_SIGNATURE: {
                "inputs": {"images": f"float32 [N, {height}, {width}, 3]"},
                "outputs": {"probabilities": f"float32 [N, {height}, {width}, {num_classes}]"},
            },
        }

    def summary_parts(self, metrics: dict) -> list[str]:
        return [
            f"{split} Dice {metrics[split]['dice']:.4f} IoU {metrics[split]['iou']:.4f}"
            for split in ("validation", "test")
            if split in metrics
        ]


TASK = SemanticTask()
