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

    @staticmethod
    def augmentation(aug):
        return aug

    def build_model(self, config, replicas: int = 1, num_classes: int = 1) -> keras.Model:
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

    def validation_callbacks(self, load_split) -> list:
        del load_split  # Keras computes val_dice from the compiled metrics
        return []

    def summary_parts(self, metrics: dict) -> list[str]:
        return [
            f"{split} Dice {metrics[split]['dice']:.4f} IoU {metrics[split]['iou']:.4f}"
            for split in ("validation", "test")
            if split in metrics
        ]


TASK = SemanticTask()
