"""Scoring a trained model on a split at each image's original resolution, and the run's figures."""

from __future__ import annotations

import csv

import numpy as np

from kseg import data, inference, plots, scoring


def score_split(model, dataset: str, split: str, *, threshold: float, num_classes: int = 1, data_dir=None,
                manual_dir=None, batch_size: int = 8, keep: int = 0, progress=None):
    """Per-case scores of ``model`` on ``split``, predicted at the model's size and scored at the original size.

    Returns ``(cases, kept)``: one dict per image (``image_id`` and ``kseg.scoring.SCORE_NAMES``), and the
    first ``keep`` ``(image, true_mask, predicted_mask, image_id)`` tuples for pictures.
    """
    examples = data.load_examples(dataset, split, data_dir=data_dir, manual_dir=manual_dir,
                                  num_classes=num_classes)
    cases, kept, chunk = [], [], []

    def flush():
        probs = inference.predict_probabilities(model, [ex["image"] for ex in chunk], batch_size=batch_size)
        for ex, prob in zip(chunk, probs):
            pred = inference.to_mask(prob, threshold)
            true = ex["mask"][..., 0]
            scores = (scoring.binary_scores(pred, true) if num_classes == 1
                      else scoring.multiclass_scores(pred, true, num_classes))
            cases.append({"image_id": ex["image_id"].decode(), **scores})
            if len(kept) < keep:
                kept.append((ex["image"], true, pred, ex["image_id"].decode()))
        if progress:
            progress(len(cases))
        chunk.clear()

    for example in examples.as_numpy_iterator():
        chunk.append(example)
        if len(chunk) == batch_size:
            flush()
    if chunk:
        flush()
    return cases, kept


def mean_scores(cases) -> dict:
    """Means over images of each score (what ``metrics.json`` reports), plus the number of images."""
    result = {name: float(np.mean([c[name] for c in cases])) for name in scoring.SCORE_NAMES}
    result["median_dice"] = float(np.median([c["dice"] for c in cases]))
    result["images"] = len(cases)
    return result


def plot_curves(history_csv, path) -> None:
    """Loss and Dice per epoch, training and validation, from Keras' ``history.csv``."""
    with open(history_csv) as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return
    epochs = [int(r["epoch"]) + 1 for r in rows]
    fig, (ax_loss, ax_dice) = plots.plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, key in ((ax_loss, "loss"), (ax_dice, "dice")):
        for prefix, style in (("", "-"), ("val_", "--")):
            if prefix + key in rows[0]:
                ax.plot(epochs, [float(r[prefix + key]) for r in rows], style, label=(prefix or "train_") + key)
        ax.set_xlabel("epoch")
        ax.set_title(key)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plots.plt.close(fig)


def plot_predictions(kept, path, title: str) -> None:
    plots.contour_grid(
        path,
        [k[0] for k in kept],
        true_masks=[k[1] for k in kept],
        pred_masks=[k[2] for k in kept],
        titles=[f"{k[3]}: Dice {scoring.binary_scores(k[2] > 0, k[1] > 0)['dice']:.3f}" for k in kept],
        title=title,
    )
