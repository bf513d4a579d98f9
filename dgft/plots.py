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
from matplotlib.ticker import LogFormatter, MaxNLocator  # noqa: E402


class PlainLog(LogFormatter):
    """A log axis's labels as plain numbers (0.3, 2, 10), on the ticks matplotlib's own log labels would show,
    rather than its "3x10^-1" and "6.48x10^0"."""

    def __call__(self, x, pos=None):
        return f"{x:g}" if super().__call__(x, pos) else ""


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
    fig, ax = plt.subplots(figsize=(7, 4.4))
    marker = "." if len(train) < 3 else None  # one or two points drawn as a line alone would not show
    if train:
        s, l = zip(*train)
        ax.plot(s, l, color="C0", marker=marker, label="train loss (scored tokens)")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy")
    if any(loss > 0 for _, loss in train):  # a loss of 0 throughout (a perfect model) stays on a linear axis
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(PlainLog())
        ax.yaxis.set_minor_formatter(PlainLog(labelOnlyBase=False))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    if evals:
        ax2 = ax.twinx()
        for i, key in enumerate(sorted(evals)):  # from C1 on: none shares the train loss's colour
            ax2.plot(*zip(*evals[key]), "o--", color=f"C{i + 1}", markersize=4, label=f"held-out {key}")
        ax2.set_ylabel("held-out exact (clamped)")
        ax2.set_ylim(-0.02, 1.02)  # points at 0 and 1 drawn whole
        more = ax2.get_legend_handles_labels()
        handles, labels = handles + more[0], labels + more[1]
    if handles:  # one legend, under the axes, where it covers no curve
        fig.legend(handles, labels, loc="lower center", ncol=min(len(handles), 3), fontsize=8, frameon=False)
    ax.set_title("dgft training")
    rows_of_legend = -(-len(handles) // 3) if handles else 0
    fig.tight_layout(rect=(0, 0.06 * rows_of_legend, 1, 1))
    fig.savefig(out, dpi=110)
    plt.close(fig)


def cell_style(given: bool, accepted: bool, digit: int, right: int) -> tuple[str, str, str, str | None]:
    """(text, colour, weight, background or None) of one cell of a denoising frame; digit 0: no digit."""
    if given:
        return str(digit), "black", "bold", None
    if accepted and not digit:  # accepted without a digit: the rules left it empty, for good
        return "×", "red", "bold", "mistyrose"
    if accepted:
        return str(digit), ("green" if digit == right else "red"), "normal", None
    return (str(digit) if digit else "·"), "lightgrey", "normal", None


def plot_denoising(frames: list[np.ndarray], accepted: list[np.ndarray], givens: np.ndarray, solution: np.ndarray,
                   out: str | Path, title: str = "") -> None:
    """One grid per shown step: givens black, accepted cells green (right) or red (wrong), open cells grey, cells
    the rules left without a digit a red cross on red; a key under the grids says so."""
    n = int(round(len(givens) ** 0.5))
    b = int(round(n ** 0.5))
    show = np.unique(np.linspace(0, len(frames) - 1, min(len(frames), 8)).round().astype(int))
    fig, axes = plt.subplots(1, len(show), figsize=(2.2 * len(show), 2.5))
    axes = np.atleast_1d(axes)
    for ax, i in zip(axes, show):
        grid, acc = frames[i], accepted[i]
        for c in range(n * n):
            r, col = divmod(c, n)
            text, color, weight, shade = cell_style(bool(givens[c]), bool(acc[c]), int(grid[c]), int(solution[c]))
            if shade:
                ax.add_patch(plt.Rectangle((col, n - r - 1), 1, 1, color=shade, zorder=0))
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
    fig.text(0.5, 0.01, "bold black: given   green / red: filled, right / wrong   grey: still open   "
             "red ×: left empty (the rules allowed no digit)", ha="center", va="bottom", fontsize=7)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    fig.savefig(out, dpi=110)
    plt.close(fig)
