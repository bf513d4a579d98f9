"""Tasks: parsing, rendering and scoring, one module or package per task.

A task owns everything task-specific: its files, its tokenizer, how an example becomes a prompt and a
canvas, which canvas positions are fixed, what tokens each position may hold, its rules (for `rules`
sampling) and how an answer is scored. The trainer, noise, loss and sampler see only tensors.

What the trainer calls on a task (`dgft.train`): `build_tokenizer()`, `vocab_size`, `build_splits(seed, log)`
-> {"train", "heldout"}, `write_heldout(heldout, data_dir)`, `train_batches(train, batch_size, seed)` (an
iterator with `state_dict`/`load_state_dict`), `eval_batches(heldout, count)` and `quick_eval(model, batches,
cfg, generator)` -> {metric: value}, `init_embeddings(...)`. A batch is a dict of tensors: prompt_ids,
prompt_mask, target, fixed, scored, choices, and optionally mask_ids (per-position mask tokens; absorbing noise needs them), weight
(per-position loss weight) and always_pinned (positions pinned even in `free` sampling).
Each task's evaluation is `dgft.tasks.<task>.evaluate.evaluate_run`, which `dgft.evaluate` dispatches to.
`chat.py` holds what the tasks that ask a pretrained model through its chat template share.
"""

from __future__ import annotations


def left_pad(prompts: list[list[int]], pad_id: int):
    """Token lists -> (ids (B, P), mask (B, P)) left-padded to the longest, as the encoder's prompts are."""
    import torch

    P = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), P), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), P), dtype=torch.long)
    for b, p in enumerate(prompts):
        ids[b, P - len(p):] = torch.tensor(p, dtype=torch.long)
        mask[b, P - len(p):] = 1
    return ids, mask


def get_task(cfg):
    """The task object for a `task` config node."""
    if cfg.name == "sudoku":
        if cfg.get("tokens") == "text":
            from dgft.tasks.sudoku.text import load_text_task

            return load_text_task(cfg)
        from dgft.tasks.sudoku.task import SudokuTask

        return SudokuTask(cfg)
    if cfg.name == "infill":
        from dgft.tasks.infill.task import InfillTask

        return InfillTask(cfg)
    raise ValueError(f"task.name={cfg.name!r}: unknown task")
