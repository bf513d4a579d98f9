"""Tasks: parsing, rendering and scoring, one module or package per task.

A task owns everything task-specific: its files, its tokenizer, how an example becomes a prompt and a
canvas, which canvas positions are fixed, what tokens each position may hold, its rules (for `rules`
sampling) and how an answer is scored. The trainer, noise, loss and sampler see only tensors.
"""

from __future__ import annotations


def get_task(cfg):
    """The task object for a `task` config node."""
    if cfg.name == "sudoku":
        from dgft.tasks.sudoku.task import SudokuTask

        return SudokuTask(cfg)
    raise ValueError(f"task.name={cfg.name!r}: unknown task")
