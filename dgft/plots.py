"""Pictures people would rather look at than read: the loss curve of a run, a puzzle being denoised.

Example: `plot_loss("RUN/metrics.jsonl", "RUN/loss.png")`.
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def heldout_series(rows: list[dict]) -> dict[str, list[tuple[int, float]]]:
    """The periodic held-out exact-match figures of metrics rows, by key: Sudoku's `9x9_clamped_exact`, infill's
    `clamped_exact` and `clamped_<kind>_exact`."""
    series: dict[str, list[tuple[int, float]]] = {}
    for r in rows:
        for k, v in r.items():
            if "clamped" in k and k.endswith("exact"):
                series.setdefault(k, []).append((r["step"], v))
    return series


def plot_loss(metrics_path: str | Path, out: str | Path) -> None:
    rows = [json.loads(line) for line in Path(metrics_path).read_text().splitlines() if line.strip()]
    train = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    evals = heldout_series(rows)
    fig, ax = plt.subplots(figsize=(7, 4))
    if train:
        s, l = zip(*train)
        ax.plot(s, l, label="train loss (scored tokens)")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    if evals:
        ax2 = ax.twinx()
        for key in sorted(evals):
            ax2.plot(*zip(*evals[key]), "o--", label=f"held-out {key}")
        ax2.set_ylabel("held-out exact (clamped)")
        ax2.set_ylim(0, 1)
        ax2.legend(loc="center right", fontsize=8)
    ax.legend(loc="upper right", fontsize=8)
    ax.set_title("dgft training")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def plot_denoising(frames: list[np.ndarray], accepted: list[np.ndarray], givens: np.ndarray, solution: np.ndarray,
                   out: str | Path, title: str = "") -> None:
    """One grid per shown step: givens black, accepted cells green (right) or red (wrong), open cells grey."""
    n = int(round(len(givens) ** 0.5))
    b = int(round(n ** 0.5))
    show = np.unique(np.linspace(0, len(frames) - 1, min(len(frames), 8)).round().astype(int))
    fig, axes = plt.subplots(1, len(show), figsize=(2.2 * len(show), 2.5))
    axes = np.atleast_1d(axes)
    for ax, i in zip(axes, show):
        grid, acc = frames[i], accepted[i]
        for c in range(n * n):
            r, col = divmod(c, n)
            if givens[c]:
                color, weight = "black", "bold"
            elif acc[c]:
                color, weight = ("green" if grid[c] == solution[c] else "red"), "normal"
            else:
                color, weight = "lightgrey", "normal"
            text = str(int(grid[c])) if grid[c] else "·"
            ax.text(col + 0.5, n - r - 0.5, text, ha="center", va="center", color=color, fontweight=weight,
                    fontsize=7 if n == 9 else 12)
        for k in range(n + 1):
            lw = 1.4 if k % b == 0 else 0.3
            ax.axhline(k, color="black", lw=lw)
            ax.axvline(k, color="black", lw=lw)
        ax.set_xlim(0, n)
        ax.set_ylim(0, n)
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"step {i + 1}", fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
