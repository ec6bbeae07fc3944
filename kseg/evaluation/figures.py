"""Figures of an evaluation: best/median/worst grid, Dice histogram, Dice against threshold."""

from __future__ import annotations

import numpy as np

from kseg.evaluation import plots

GRID_CASES_PER_ROW = 4


def pick_grid_cases(rows, per_group: int = GRID_CASES_PER_ROW) -> list[tuple[str, str]]:
    """``(label, image_id)`` of the best, median and worst cases by Dice (fewer for tiny splits)."""
    order = sorted(range(len(rows)), key=lambda i: (-rows[i]["dice"], rows[i]["image_id"]))
    n = len(order)
    count = min(per_group, max(1, n // 3))
    middle = max(0, n // 2 - count // 2)
    groups = (("best", order[:count]), ("median", order[middle : middle + count]), ("worst", order[n - count :]))
    picked, seen = [], set()
    for label, indices in groups:
        for i in indices:
            if i not in seen:
                seen.add(i)
                picked.append((label, rows[i]["image_id"]))
    return picked


def plot_grid(path, examples, picked, rows, masks, cases) -> None:
    """Best, median and worst cases with true (green) and predicted (red) contours; images re-read from
    ``examples`` (only the picked ones are kept in memory)."""
    by_id = {c.image_id: (m, r, c.true_mask) for c, m, r in zip(cases, masks, rows)}
    wanted = {image_id: label for label, image_id in picked}
    images = {}
    for example in examples.as_numpy_iterator():
        image_id = example["image_id"].decode()
        if image_id in wanted:
            images[image_id] = example["image"]
            if len(images) == len(wanted):
                break
    ids = [image_id for _, image_id in picked]
    plots.contour_grid(
        path,
        [images[i] for i in ids],
        true_masks=[by_id[i][2] for i in ids],
        pred_masks=[by_id[i][0] for i in ids],
        titles=[f"{wanted[i]}: {i}  Dice {by_id[i][1]['dice']:.3f}" for i in ids],
        columns=GRID_CASES_PER_ROW,
        title="green: ground truth, red: prediction",
    )


def plot_histogram(path, rows) -> None:
    fig, ax = plots.plt.subplots(figsize=(5, 3.4))
    ax.hist([r["dice"] for r in rows], bins=np.linspace(0, 1, 41), color="#2979ff")
    ax.set_xlabel("Dice per image")
    ax.set_ylabel("images")
    ax.set_title(f"Dice over {len(rows)} images (mean {np.mean([r['dice'] for r in rows]):.3f})")
    fig.tight_layout()
    plots.save_figure(fig, path)


def plot_threshold_curve(path, curve: dict, chosen: float) -> None:
    fig, ax = plots.plt.subplots(figsize=(5, 3.4))
    ax.plot([float(t) for t in curve], list(curve.values()), marker="o", ms=3)
    ax.axvline(chosen, color="#ff1744", ls="--", label=f"threshold used ({chosen:g})")
    ax.set_xlabel("probability threshold")
    ax.set_ylabel("mean Dice")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    plots.save_figure(fig, path)
