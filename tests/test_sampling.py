"""The sampler on an untrained tiny model: pinned cells never change, `rules` never breaks a rule."""

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from dgft.config import SamplerConfig
from dgft.model import build_tiny
from dgft.sampling import accept_count, entropy, sample
from dgft.tasks.sudoku import grid as G
from dgft.tasks.sudoku.task import SudokuTask

from conftest import tiny_cfg


def _puzzles(n, count, seed):
    rng = np.random.default_rng(seed)
    out = [G.generate(n, givens=0, rng=rng, max_tries=1) for _ in range(count)]
    return np.stack([p for p, _, _ in out]), np.stack([s for _, s, _ in out])


@pytest.fixture(scope="module")
def setup():
    cfg = tiny_cfg()
    task = SudokuTask(cfg.task)
    model = build_tiny(cfg.model, task.vocab_size, seed=3).eval()
    return cfg, task, model


@pytest.mark.parametrize("n", [4, 9])
@pytest.mark.parametrize("acceptance", ["entropy", "fixed", "confidence"])
@pytest.mark.parametrize("noise_kind", ["uniform", "mask"])
def test_pins_and_rules(setup, n, acceptance, noise_kind):
    cfg, task, model = setup
    puzzles, solutions = _puzzles(n, 12, seed=n)
    batch = task.encode(puzzles, solutions)
    scfg = OmegaConf.structured(SamplerConfig(steps=6 if acceptance == "fixed" else 40, acceptance=acceptance,
                                              temperature=0.7))
    for mode in ("clamped", "rules"):
        res = sample(model, batch, task, scfg, mode, noise_kind=noise_kind, generator=torch.Generator().manual_seed(0))
        fixed = batch["fixed"]
        assert torch.equal(res.canvas[fixed], batch["target"][fixed]), f"{mode} changed a pinned cell"
        digits = task.decode(res.canvas, n)
        assert (digits[puzzles != 0] == puzzles[puzzles != 0]).all()
        if mode == "rules":
            assert all(G.rule_violations(d) == 0 for d in digits), "rules mode emitted a rule-breaking digit"
        else:
            assert (digits > 0).all(), "clamped mode must fill every cell with a digit"
        assert (res.steps <= scfg.steps).all() and (res.steps >= 1).all()


def test_free_mode_can_change_givens_and_records_history(setup):
    cfg, task, model = setup
    puzzles, solutions = _puzzles(4, 8, seed=1)
    batch = task.encode(puzzles, solutions)
    scfg = OmegaConf.structured(SamplerConfig(steps=8))
    res = sample(model, batch, task, scfg, "free", generator=torch.Generator().manual_seed(0), record=True)
    assert len(res.history) == int(res.steps.max())
    assert res.history[-1][1].all()  # everything accepted at the end


def test_accept_count_entropy_bound():
    # entropies 0.0, 0.05, 0.06, 0.5 -> sum - max <= 0.1 holds for the first three
    ent = torch.tensor([[0.5, 0.0, 0.06, 0.05]])
    score = -ent
    open_ = torch.ones_like(ent, dtype=torch.bool)
    order, count = accept_count(score, open_, "entropy", step=0, steps=10, entropy_bound=0.1, ent=ent)
    assert count.item() == 3 and order[0, :3].tolist() == [1, 3, 2]
    _, count = accept_count(score, open_, "fixed", step=0, steps=2, ent=ent)
    assert count.item() == 2
    _, count = accept_count(score, open_, "entropy", step=9, steps=10, ent=ent)
    assert count.item() == 4  # last step takes everything open
    closed = torch.tensor([[True, False, False, False]])
    _, count = accept_count(score, closed, "confidence", step=0, steps=10, confidence=2.0, ent=ent)
    assert count.item() == 1  # at least one per step


def test_entropy_of_uniform():
    p = torch.full((3, 4), 0.25)
    assert torch.allclose(entropy(p), torch.full((3,), np.log(4), dtype=torch.float32))


@pytest.mark.parametrize("tokens", ["cell", "digit"])
def test_known_prompt_is_the_puzzle_with_accepted_cells_given(tokens):
    cfg = tiny_cfg()
    cfg.task.tokens = tokens
    task = SudokuTask(cfg.task)
    puzzles, solutions = _puzzles(4, 3, seed=5)
    batch = task.encode(puzzles, solutions)
    accepted = torch.zeros_like(batch["fixed"])
    accepted[:, [0, 5]] = True  # two more cells, whatever they were
    canvas = torch.where(batch["fixed"] | accepted, batch["target"], torch.zeros_like(batch["target"]))
    ids, mask = task.known_prompt(batch["target"], batch["fixed"], canvas, accepted, 4)
    for b in range(3):
        want = puzzles[b].copy()
        want[[0, 5]] = solutions[b][[0, 5]]
        assert ids[b][mask[b].bool()].tolist() == task.prompt_ids(want)


def test_reprompt_keeps_pins_and_rules_and_ends_with_the_answer_as_prompt(setup):
    cfg, task, model = setup
    puzzles, solutions = _puzzles(9, 6, seed=2)
    batch = task.encode(puzzles, solutions)
    prompts = []

    class Spy(SudokuTask):
        def known_prompt(self, *args):
            out = super().known_prompt(*args)
            prompts.append(out)
            return out

    spy = Spy(cfg.task)
    scfg = OmegaConf.structured(SamplerConfig(steps=81, acceptance="fixed", reprompt=True))
    res = sample(model, batch, spy, scfg, "rules", generator=torch.Generator().manual_seed(0))
    fixed = batch["fixed"]
    assert torch.equal(res.canvas[fixed], batch["target"][fixed])
    digits = task.decode(res.canvas, 9)
    assert all(G.rule_violations(d) == 0 for d in digits)
    assert len(prompts) >= int((~fixed).sum(-1).max()) - 1  # the encoder saw every acceptance
    ids, mask = prompts[-1]
    for b in range(6):  # the last prompt holds every cell the sampler filled
        assert ids[b][mask[b].bool()].tolist() == task.prompt_ids(digits[b])


def test_reprompt_needs_a_task_that_can_rebuild_its_prompt(setup):
    cfg, task, model = setup
    puzzles, solutions = _puzzles(4, 2, seed=1)
    batch = task.encode(puzzles, solutions)

    class NoHook:
        name = "nohook"

    scfg = OmegaConf.structured(SamplerConfig(steps=4, reprompt=True))
    with pytest.raises(ValueError, match="sampler.reprompt"):
        sample(model, batch, NoHook(), scfg, "rules")
