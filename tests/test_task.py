"""Sudoku rendering: tokenizer ids, prompt/canvas layout, decoding and the rule mask."""

import numpy as np
import pytest
import torch

from dgft.tasks.sudoku import grid as G
from dgft.tasks.sudoku.task import PAD, SudokuTask, canonical_form, vocabulary

from conftest import tiny_cfg


@pytest.mark.parametrize("tokens", ["cell", "digit"])
def test_ids_match_tokenizer_and_round_trip(tokens):
    task = SudokuTask(tiny_cfg(task={"tokens": tokens}).task)
    tok = task.build_tokenizer()
    assert len(tok) == task.vocab_size == len(vocabulary(tokens))
    rng = np.random.default_rng(0)
    for n in (4, 9):
        puzzle, solution, _ = G.generate(n, givens=0, rng=rng, max_tries=1)
        batch = task.encode(puzzle[None], solution[None])
        # the arithmetic ids are the tokenizer's ids of the rendered words
        words = tok.convert_ids_to_tokens(batch["target"][0].tolist())
        assert tok.convert_tokens_to_ids(words) == batch["target"][0].tolist()
        assert np.array_equal(task.decode(batch["target"], n)[0], solution)
        prompt = batch["prompt_ids"][0][batch["prompt_mask"][0].bool()].tolist()
        text = tok.decode(prompt)
        assert tok(text, add_special_tokens=False)["input_ids"] == prompt
        assert torch.equal(batch["fixed"][0], torch.as_tensor(puzzle != 0))
        assert torch.equal(batch["scored"][0], torch.as_tensor(puzzle == 0))


def test_left_padding_and_corrupt_givens():
    task = SudokuTask(tiny_cfg().task)
    rng = np.random.default_rng(1)
    a = G.generate(9, givens=0, rng=rng, max_tries=1)
    b_p = G.with_givens(*a, 40)
    batch = task.encode(np.stack([a[0], b_p]), np.stack([a[1], a[1]]), np.array([False, True]))
    assert batch["prompt_mask"][0, 0] == 0 and batch["prompt_ids"][0, 0] == PAD  # shorter prompt, left-padded
    assert batch["prompt_mask"][1].all()
    assert not batch["fixed"][1].any() and batch["scored"][1].all()


def test_decode_marks_foreign_tokens_empty():
    task = SudokuTask(tiny_cfg().task)
    canvas = task.answer_tokens(4)[:, 0][None].clone()  # digit 1 everywhere
    canvas[0, 5] = task.answer_tokens(4)[6, 2]  # a token of another cell
    canvas[0, 7] = PAD
    d = task.decode(canvas, 4)[0]
    assert d[0] == 1 and d[5] == 0 and d[7] == 0


def test_rule_mask_matches_allowed_digits():
    task = SudokuTask(tiny_cfg().task)
    rng = np.random.default_rng(2)
    for n in (4, 9):
        puzzle, solution, _ = G.generate(n, givens=0, rng=rng, max_tries=1)
        choice = torch.as_tensor(np.where(puzzle > 0, puzzle - 1, 0), dtype=torch.long)[None]
        mask = task.rule_mask(choice, torch.as_tensor(puzzle > 0)[None], n)[0].numpy()
        ref = G.allowed_digits(puzzle)
        blank = puzzle == 0
        assert np.array_equal(mask[blank], ref[blank])


def test_canonical_form_is_invariant():
    rng = np.random.default_rng(3)
    p, s, _ = G.generate(4, givens=0, rng=rng, max_tries=1)
    key = canonical_form(p)
    for _ in range(20):
        q, _ = G.augment(p, s, rng)
        assert canonical_form(q) == key

