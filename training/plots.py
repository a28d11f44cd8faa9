"""Pictures of a training run: the DSG schedule (like the paper's Fig. 2, left)."""

from __future__ import annotations

import itertools
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")  # headless
import matplotlib.pyplot as plt


def plot_dsg(history, path: Path) -> Path:
    """Validation score per task over iterations; thick = go, thin = stop (as in the paper)."""
    fig, ax = plt.subplots(figsize=(10, 5.5))
    palette = plt.get_cmap("tab20").colors  # 12 tasks: tab10 would repeat colours
    for k, (slug, points) in enumerate(sorted(history.val.items())):
        stopped = dict(history.stopped.get(slug, []))
        color = palette[(2 * k) % 20 if k < 10 else (2 * k + 1) % 20]
        first = True
        for (s0, v0), (s1, v1) in itertools.pairwise(points):
            lw = 0.8 if stopped.get(s0, False) else 2.6
            ax.plot([s0, s1], [v0, v1], linewidth=lw, color=color, label=slug if first else None)
            first = False
        if len(points) == 1:
            ax.plot([points[0][0]], [points[0][1]], "o", color=color, label=slug)
    ax.set_xlabel("iteration")
    ax.set_ylabel("validation score")
    ax.set_title("Dynamic stop-and-go: thick = go, thin = stop (updates every iter-gap)")
    ax.legend(fontsize=8, ncol=2, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_losses(history, path: Path, smooth: int = 9) -> Path:
    """Training loss per task over iterations (running mean of `smooth` batches; log scale)."""
    fig, ax = plt.subplots(figsize=(10, 5.5))
    palette = plt.get_cmap("tab20").colors
    for k, (slug, points) in enumerate(sorted(history.loss.items())):
        if not points:
            continue
        values = np.array([v for _, v in points], dtype=float)
        w = max(1, min(smooth, len(values)))
        means = np.convolve(values, np.ones(w) / w, mode="valid")  # running mean, one per full window
        steps = [s for s, _ in points][w - 1 :]
        color = palette[(2 * k) % 20 if k < 10 else (2 * k + 1) % 20]
        ax.plot(steps, means, linewidth=1.6, color=color, label=slug)
    ax.set_xlabel("iteration")
    ax.set_ylabel(f"training loss (running mean of {smooth} batches)")
    ax.set_yscale("log")
    ax.set_title("Training loss per task")
    ax.legend(fontsize=8, ncol=2, loc="upper right")
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
