"""Figures people look at: image grids with mask contours, training curves.

Matplotlib runs headless (Agg) so that figures render on servers and in CI.
"""

from __future__ import annotations

import csv
import io
import math
import pathlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from kseg.core.files import atomic_write_bytes  # noqa: E402
from kseg.core.outputs import MARKER  # noqa: E402
from kseg.tasks import instance_files  # noqa: E402

TRUE_COLOUR = "#00e676"  # green: ground truth
PRED_COLOUR = "#ff1744"  # red: prediction


def save_figure(fig, path, dpi: int = 90) -> None:
    """Write ``fig`` as a PNG at ``path``, whole or not at all (``kseg.core.files.atomic_write_bytes``), and close
    it."""
    buffer = io.BytesIO()
    try:  # with kseg's marker, so that a later run may replace it (kseg.core.outputs.check_replaceable)
        fig.savefig(buffer, format="png", dpi=dpi, metadata={MARKER: f"kseg figure {pathlib.Path(path).name}"})
    finally:
        plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())


def _outline(ax, mask, colour):
    mask = np.asarray(mask).squeeze()
    if mask.ndim == 2 and mask.max(initial=0) > 0 and mask.min(initial=1) == 0:
        ax.contour(mask.astype(np.float32), levels=[0.5], colors=[colour], linewidths=1.5)


def _image_grid(path, count: int, draw, titles, columns: int, title, what: str):
    """A grid of ``count`` panels, ``columns`` to a row; ``draw(ax, index)`` fills panel ``index``."""
    if count == 0:
        raise ValueError(f"{what} needs at least one image")
    columns = min(columns, count)
    rows = math.ceil(count / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 2.7 * rows), squeeze=False)
    for index, ax in enumerate(axes.flat):
        ax.axis("off")
        if index >= count:
            continue
        draw(ax, index)
        if titles is not None:
            ax.set_title(str(titles[index]), fontsize=9)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, path)
    return path


def contour_grid(path, images, true_masks=None, pred_masks=None, titles=None, columns: int = 4, title=None):
    """Save a grid of images with true (green) and predicted (red) mask outlines to ``path`` (PNG)."""

    def draw(ax, index):
        image = np.asarray(images[index])
        ax.imshow(image if image.dtype == np.uint8 else np.clip(image, 0, 1))
        if true_masks is not None:
            _outline(ax, true_masks[index], TRUE_COLOUR)
        if pred_masks is not None:
            _outline(ax, pred_masks[index], PRED_COLOUR)

    return _image_grid(path, len(images), draw, titles, columns, title, "contour_grid")


def people_grid(path, images, labels, titles=None, columns: int = 4, title=None):
    """Save a grid of images with each person of an instance label image in their own colour (``kseg.show``)."""

    def draw(ax, index):
        ax.imshow(instance_files.overlay(images[index], np.asarray(labels[index])[..., 0]))

    return _image_grid(path, len(images), draw, titles, columns, title, "people_grid")


def examples_grid(path, images, masks, instances: bool, titles, name: str):
    """A dataset's examples as ``kseg.show`` draws them: class masks outlined, or each person in a colour."""
    if instances:
        people = sum(int(np.max(mask)) for mask in masks)
        return people_grid(path, images, masks, titles=titles, title=f"{name}: {people} people, each in a colour")
    return contour_grid(path, images, true_masks=masks, titles=titles, title=f"{name}: masks outlined in green")


def keypoints_grid(path, images, keypoints, joint_names, titles, name: str):
    """A keypoint dataset's examples as ``kseg.show`` draws them: each visible joint and the bones between."""
    from kseg.tasks import keypoint_files

    def draw(ax, index):
        ax.imshow(keypoint_files.draw_skeletons(images[index], np.asarray(keypoints[index])[None], joint_names, 0.5))

    title = f"{name}: visible joints and bones"
    return _image_grid(path, len(images), draw, titles, 4, title, "keypoints_grid")


def _number(text) -> float | None:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def training_curves(history_csv, path, score: str = "dice") -> None:
    """Loss and the task's score per epoch (Dice; mask AP for instances, validation only), training and
    validation, from Keras' ``history.csv``."""
    with open(history_csv) as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return
    epochs = [int(r["epoch"]) + 1 for r in rows]
    fig, (ax_loss, ax_dice) = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, key in ((ax_loss, "loss"), (ax_dice, score)):
        for prefix, style in (("", "-"), ("val_", "--")):
            values = [_number(r.get(prefix + key)) for r in rows]
            if any(v is not None for v in values):  # a run without validation logs val_* as NA
                points = [(e, v) for e, v in zip(epochs, values) if v is not None]
                ax.plot(*zip(*points), style, label=(prefix or "train_") + key)
        ax.set_xlabel("epoch")
        ax.set_title(key)
        ax.grid(alpha=0.3)
        if ax.get_lines():
            ax.legend()
    fig.tight_layout()
    save_figure(fig, path)


def instance_grid(path, images, true_labels, pred_labels, titles=None, title=None):
    """Pairs of panels per image: the truth and the prediction, each person in their own colour."""
    count = len(images)
    if count == 0:
        raise ValueError("instance_grid needs at least one image")
    columns = 4
    rows = math.ceil(2 * count / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 2.7 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for index in range(count):
        for part, (labels, kind) in enumerate(((true_labels[index], "truth"), (pred_labels[index], "prediction"))):
            ax = axes.flat[2 * index + part]
            ax.imshow(instance_files.overlay(images[index], labels))
            name = titles[index] if titles is not None else ""
            ax.set_title(f"{name} {kind}".strip(), fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, path)
    return path


def skeleton_grid(path, images, truths, predictions, joint_names, titles=None, columns: int = 4, title=None):
    """Save a grid of images with the true skeleton (green) and the predicted one (red) of each: ``truths``
    [J, 3] (x, y, visible) and ``predictions`` [J, 3] (x, y, score; NaN where the model has no such joint)
    per image, joints in ``joint_names`` order."""
    from kseg.tasks import keypoint_files

    green, red = (0, 200, 0), (230, 30, 30)

    def draw(ax, index):
        truth = np.asarray(truths[index], np.float32)
        picture = keypoint_files.draw_skeletons(images[index], truth[None], joint_names, threshold=0.5, colour=green)
        predicted = np.nan_to_num(np.asarray(predictions[index], np.float32), nan=-1.0)
        picture = keypoint_files.draw_skeletons(picture, predicted[None], joint_names, threshold=0.0, colour=red)
        ax.imshow(picture)

    return _image_grid(path, len(images), draw, titles, columns, title, "skeleton_grid")
