"""Sudoku as text for a pretrained model: the puzzle through the model's chat template, the answer as digits.

The embedded model gets one token per (cell, digit) (`task.py`); a pretrained DiffusionGemma reads and
writes text. Here the encoder's prompt is the chat template applied to one user turn (instruction + the
grid, `.` for blanks) with the generation prompt, so the model is asked as it was tuned to be asked; the
canvas is the answer alone, rows of digits separated by newlines, then the end-of-turn/end-of-text token
and padding to the canvas length. The loss covers the answer only: the template's turn header is in the
prompt, never in the canvas.

Pinning needs each cell to be exactly one canvas position, so the tokenizer is probed once per grid size:
every digit of the answer must be a token of its own (Gemma's tokenizer splits digits) and the layout must
not depend on the digits, else a clear error. Positions that are not cells (newlines, the end token,
padding) are `fixed` to their token and their `choices` hold only that token, so `clamped` and `rules`
sampling never change them; `rules` runs on the cell positions.

Example: `SudokuTextTask(cfg, tokenizer)` with a 9x9 puzzle gives a prompt like
`<start_of_turn>user\\nSolve this 9x9 Sudoku...\\n53..7....\\n...<end_of_turn>\\n<start_of_turn>model\\n` and a
canvas `534678912\\n672195348\\n...179[EOS][PAD]...`.
"""

from __future__ import annotations

import numpy as np
import torch

from dgft.config import ConfigError
from dgft.tasks import left_pad
from dgft.tasks.chat import end_of_turn_id, load_tokenizer, user_turn_ids
from dgft.tasks.sudoku import grid as G
from dgft.tasks.sudoku.task import SudokuTask

INSTRUCTION = ("Solve this {n}x{n} Sudoku. Blanks are '.'. Answer with the completed grid only: "
               "{n} rows of {n} digits, one row per line.\n\n{grid}")


class TextLayoutError(ConfigError):
    """The tokenizer cannot give each Sudoku cell one canvas position; the message says why."""


def load_text_task(cfg) -> "SudokuTextTask":
    """The text task for a `task` node with tokens=text: its tokenizer loaded from `task.tokenizer`."""
    tokenizer = load_tokenizer(cfg.tokenizer)
    if not getattr(tokenizer, "chat_template", None):
        raise TextLayoutError(f"task.tokenizer={cfg.tokenizer!r}: the tokenizer has no chat template")
    return SudokuTextTask(cfg, tokenizer, int(cfg.canvas_length))


def grid_text(digits: np.ndarray) -> str:
    n = G.side(digits)
    return "\n".join("".join("." if v == 0 else str(int(v)) for v in digits[r * n:(r + 1) * n]) for r in range(n))


class SudokuTextTask(SudokuTask):
    """The Sudoku task rendered as chat text for a pretrained tokenizer (`task.tokens=text`)."""

    def __init__(self, cfg, tokenizer, canvas_length: int):
        super().__init__(cfg)
        self.tokenizer = tokenizer
        self.canvas_length = canvas_length
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.end_id = end_of_turn_id(tokenizer)
        if self.end_id is None:
            raise TextLayoutError("the tokenizer has neither an end-of-turn token nor an EOS token")
        self.layouts = {n: self._layout(n) for n in cfg.sizes}

    # --- layout of the answer on the canvas -------------------------------------------------------
    def _answer_ids(self, digits: np.ndarray) -> list[int]:
        return self.tokenizer(grid_text(digits), add_special_tokens=False)["input_ids"]

    def _layout(self, n: int) -> dict:
        """Canvas template of an n x n answer: token ids, cell positions, digit token ids."""
        digit_ids = []
        for d in range(1, n + 1):
            ids = self.tokenizer(str(d), add_special_tokens=False)["input_ids"]
            if len(ids) != 1:
                raise TextLayoutError(f"tokenizer: digit {d} is {len(ids)} tokens; each digit must be one token")
            digit_ids.append(ids[0])
        rng = np.random.default_rng(0)
        probes = [np.tile(np.arange(1, n + 1), n), rng.integers(1, n + 1, n * n), np.full(n * n, n)]
        layouts = [self._answer_ids(p) for p in probes]
        if len({len(x) for x in layouts}) != 1 or len(layouts[0]) < n * n:
            raise TextLayoutError(f"tokenizer: a {n}x{n} answer does not tokenize to one token per cell "
                                  f"(lengths {[len(x) for x in layouts]} for {n * n} cells); digits must not merge")
        ids = torch.tensor(layouts[0])
        is_digit = torch.isin(ids, torch.tensor(digit_ids))
        cells = is_digit.nonzero()[:, 0]
        if len(cells) != n * n:
            raise TextLayoutError(f"tokenizer: found {len(cells)} digit tokens in a {n}x{n} answer, expected {n * n}")
        for other in layouts[1:]:
            other = torch.tensor(other)
            if not torch.equal(other[~is_digit], ids[~is_digit]):
                raise TextLayoutError(f"tokenizer: the {n}x{n} answer's separators change with the digits")
        length = len(ids) + 1
        if length > self.canvas_length:
            raise TextLayoutError(f"model.canvas_length={self.canvas_length}: a {n}x{n} answer needs {length} tokens")
        template = torch.full((self.canvas_length,), self.pad_id, dtype=torch.long)
        template[: len(ids)] = ids
        template[len(ids)] = self.end_id
        return {"template": template, "cells": cells, "digits": torch.tensor(digit_ids)}

    def layout(self, n: int) -> dict:
        """The canvas layout of an n x n answer; a size the run has none for (not in task.sizes) is a ConfigError."""
        if n not in self.layouts:
            raise ConfigError(f"task.sizes={list(self.layouts)}: no {n}x{n} answer layout (a tokens=text run lays out "
                              f"only the sizes it was trained on); use {n}x{n} puzzles with a run that has {n} in "
                              "task.sizes")
        return self.layouts[n]

    # --- the task interface -----------------------------------------------------------------------
    def build_tokenizer(self):
        return self.tokenizer

    @property
    def vocab_size(self) -> int:
        return len(self.tokenizer)

    def answer_tokens(self, n: int) -> torch.Tensor:
        """(L, K): a cell may hold any digit; every other position only its own token."""
        lay = self.layout(n)
        out = lay["template"][:, None].repeat(1, n)
        out[lay["cells"]] = lay["digits"][None, :]
        return out

    def mask_tokens(self, n: int) -> torch.Tensor:
        mask = self.tokenizer.mask_token_id
        if mask is None:
            raise TextLayoutError("noise.kind=mask: this tokenizer has no mask token; use noise=uniform")
        tokens = self.layout(n)["template"].clone()
        tokens[self.layout(n)["cells"]] = mask
        return tokens

    def prompt_ids(self, puzzle: np.ndarray) -> list[int]:
        n = G.side(puzzle)
        return user_turn_ids(self.tokenizer, INSTRUCTION.format(n=n, grid=grid_text(puzzle)))

    def prompts(self, puzzles: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Chat prompts differ in length by their text: one `prompt_ids` per puzzle, left-padded."""
        return left_pad([self.prompt_ids(p) for p in puzzles], self.pad_id)

    def encode(self, puzzles: np.ndarray, solutions: np.ndarray, corrupt_givens: np.ndarray | None = None) -> dict:
        n = G.side(puzzles[0])
        lay = self.layout(n)
        prompt_ids, prompt_mask = left_pad([self.prompt_ids(p) for p in puzzles], self.pad_id)
        B = len(puzzles)
        target = lay["template"][None].repeat(B, 1)
        target[:, lay["cells"]] = lay["digits"][torch.as_tensor(solutions, dtype=torch.long) - 1]
        given = torch.as_tensor(puzzles != 0)
        givens = torch.ones_like(target, dtype=torch.bool)  # structure: newlines, end token, padding
        givens[:, lay["cells"]] = given  # in the prompt always, even where corrupt_givens frees them in the canvas
        fixed = givens.clone()
        if corrupt_givens is not None:
            fixed[:, lay["cells"]] = given & ~torch.as_tensor(corrupt_givens, dtype=torch.bool)[:, None]
        scored = torch.zeros_like(fixed)
        scored[:, lay["cells"]] = ~fixed[:, lay["cells"]]  # the blanks, and the givens corrupt_givens frees
        layout = torch.ones_like(fixed)  # newlines, end of turn, padding: never noised in training, so pinned in
        layout[:, lay["cells"]] = False  # `free` sampling too (the model never learnt to restore them)
        out = {"prompt_ids": prompt_ids, "prompt_mask": prompt_mask, "target": target, "fixed": fixed,
               "givens": givens, "scored": scored, "choices": self.answer_tokens(n), "size": n,
               "always_pinned": layout}
        if self.tokenizer.mask_token_id is not None:
            out["mask_ids"] = self.mask_tokens(n)  # [MASK] at the cells, the layout's own tokens elsewhere
            out["absorbing_ids"] = torch.tensor([self.tokenizer.mask_token_id])
        return out

    def init_embeddings(self, embedding, std, generator) -> None:
        """A pretrained model keeps its embeddings."""

    def rule_mask(self, choice: torch.Tensor, accepted: torch.Tensor, n: int) -> torch.Tensor:
        """(B, L, K): the cell rules at cell positions; everything allowed elsewhere (those are pinned)."""
        cells = self.layout(n)["cells"].to(choice.device)
        inner = super().rule_mask(choice[:, cells], accepted[:, cells], n)
        out = torch.ones(choice.shape + (n,), dtype=torch.bool, device=choice.device)
        out[:, cells] = inner
        return out

    def at_cells(self, canvas_values: torch.Tensor, n: int) -> torch.Tensor:
        return canvas_values[:, self.layout(n)["cells"].to(canvas_values.device)]

    def well_formed(self, canvas: torch.Tensor, n: int) -> np.ndarray:
        """(B,) bool: the answer's structure (newlines, end of turn, padding) is the layout's. dgft's sampler pins
        the layout in every mode (`always_pinned`), but a canvas from elsewhere (another sampler, an edited samples
        file) may not keep it: an answer whose structure was overwritten is not a grid, whatever its cell positions
        hold (the evaluation scores it as all blank, and counts it in `malformed`)."""
        lay = self.layout(n)
        structure = torch.ones(canvas.shape[-1], dtype=torch.bool)
        structure[lay["cells"]] = False
        structure = structure.to(canvas.device)
        return (canvas[:, structure] == lay["template"].to(canvas.device)[structure]).all(-1).cpu().numpy()

    def decode(self, canvas: torch.Tensor, n: int) -> np.ndarray:
        lay = self.layout(n)
        at_cells = canvas[:, lay["cells"].to(canvas.device)]
        hit = at_cells[..., None] == lay["digits"].to(canvas.device)[None, None]
        digits = hit.float().argmax(-1) + 1
        return (digits * hit.any(-1)).cpu().numpy().astype(np.int8)
