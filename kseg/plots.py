"""Figures people look at: image grids with mask contours, training curves.

Matplotlib runs headless (Agg) so that figures render on servers and in CI.
"""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

TRUE_COLOUR = "#00e676"  # green: ground truth
PRED_COLOUR = "#ff1744"  # red: prediction


def _outline(ax, mask, colour):
    mask = np.asarray(mask).squeeze()
    if mask.ndim == 2 and mask.max(initial=0) > 0 and mask.min(initial=1) == 0:
        ax.contour(mask.astype(np.float32), levels=[0.5], colors=[colour], linewidths=1.5)


def contour_grid(path, images, true_masks=None, pred_masks=None, titles=None, columns: int = 4, title=None):
    """Save a grid of images with true (green) and predicted (red) mask outlines to ``path`` (PNG)."""
    count = len(images)
    if count == 0:
        raise ValueError("contour_grid needs at least one image")
    columns = min(columns, count)
    rows = math.ceil(count / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 2.7 * rows), squeeze=False)
    for index, ax in enumerate(axes.flat):
        ax.axis("off")
        if index >= count:
            continue
        image = np.asarray(images[index])
        ax.imshow(image if image.dtype == np.uint8 else np.clip(image, 0, 1))
        if true_masks is not None:
            _outline(ax, true_masks[index], TRUE_COLOUR)
        if pred_masks is not None:
            _outline(ax, pred_masks[index], PRED_COLOUR)
        if titles is not None:
            ax.set_title(str(titles[index]), fontsize=9)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
