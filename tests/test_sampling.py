"""The sampler on an untrained tiny model: pinned cells never change, `rules` never breaks a rule."""

import re

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from dgft.config import SamplerConfig
from dgft.model import build_tiny
from dgft.sampling import accept_count, entropy, fill_forced, sample
from dgft.tasks.sudoku import grid as G
from dgft.tasks.sudoku.task import SudokuTask

from conftest import tiny_cfg


def _puzzles(n, count, seed):
    rng = np.random.default_rng(seed)
    out = [G.generate(n, givens=0, rng=rng, max_tries=1) for _ in range(count)]
    return np.stack([p for p, _, _ in out]), np.stack([s for _, s, _ in out])


def _record_denoise(monkeypatch, record):
    """The sampler's decoder passes call record(canvas, sc_logits) before they run."""
    import dgft.sampling as S

    real = S.denoise
    monkeypatch.setattr(S, "denoise", lambda m, cache, canvas, mask, sc_logits=None:
                        record(canvas, sc_logits) or real(m, cache, canvas, mask, sc_logits=sc_logits))


def _check_rules_answers(res, digits, puzzles, steps, min_filled=0.75):
    """A `rules` answer keeps the givens, breaks no rule and fills most open cells. A cell is left empty only where
    the rules leave it no digit, or where the steps ran out with it still open (on the last step `_accept` rejects
    the later of two peers that pick the same digit, with no step left to retry): such a cell's puzzle used every
    step and, where the history was recorded, the cell was never accepted."""
    open_ = puzzles == 0
    assert (digits[~open_] == puzzles[~open_]).all()
    assert all(G.rule_violations(d) == 0 for d in digits), "rules mode emitted a rule-breaking digit"
    filled = (digits > 0) & open_
    assert filled.sum() >= min_filled * open_.sum(), f"rules mode filled {filled.sum()} of {open_.sum()} open cells"
    has_digit_left = G.allowed_digits(digits).any(-1) & (digits == 0)  # (B, L): empty, and a digit still allowed
    ran_out = np.broadcast_to((res.steps.cpu().numpy() == steps)[:, None], digits.shape)
    if res.history:
        ran_out = ran_out & ~res.history[-1][1].numpy()
    assert not (has_digit_left & ~ran_out).any(), "rules mode left a cell empty although the rules allow a digit"


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
        res = sample(model, batch, task, scfg, mode, noise_kind=noise_kind, generator=torch.Generator().manual_seed(0),
                     record=True)
        fixed = batch["fixed"]
        assert torch.equal(res.canvas[fixed], batch["target"][fixed]), f"{mode} changed a pinned cell"
        digits = task.decode(res.canvas, n)
        assert (digits[puzzles != 0] == puzzles[puzzles != 0]).all()
        if mode == "rules":
            _check_rules_answers(res, digits, puzzles, scfg.steps)
        else:
            assert (digits > 0).all(), "clamped mode must fill every cell with a digit"
        assert (res.steps <= scfg.steps).all() and (res.steps >= 1).all()


def test_free_mode_can_change_givens_and_records_history(setup, monkeypatch):
    """A stand-in model that gives the solution everywhere except at one given cell, where it prefers another
    digit: `free` takes that digit (nothing is pinned), `clamped` keeps the given."""
    import dgft.sampling as S

    cfg, task, model = setup
    puzzles, solutions = _puzzles(4, 8, seed=1)
    batch = task.encode(puzzles, solutions)
    target, choices = batch["target"], batch["choices"]
    given = torch.as_tensor(puzzles != 0).float().argmax(-1)  # (B,) each puzzle's first given cell
    rows = torch.arange(len(puzzles))
    other = choices[given, torch.as_tensor(puzzles[rows.numpy(), given.numpy()] % 4, dtype=torch.long)]  # next digit
    assert (other != target[rows, given]).all()
    wanted = target.clone()
    wanted[rows, given] = other
    V = task.vocab_size
    monkeypatch.setattr(S, "denoise", lambda m, cache, canvas, mask, sc_logits=None:
                        torch.nn.functional.one_hot(wanted, V).float() * 50)
    scfg = OmegaConf.structured(SamplerConfig(steps=8))
    res = sample(model, batch, task, scfg, "free", generator=torch.Generator().manual_seed(0), record=True)
    assert len(res.history) == int(res.steps.max())
    assert res.history[-1][1].all()  # everything accepted at the end
    assert torch.equal(res.canvas, wanted), "free mode kept a given the model overrode"
    clamped = sample(model, batch, task, scfg, "clamped", generator=torch.Generator().manual_seed(0))
    assert torch.equal(clamped.canvas[rows, given], target[rows, given]), "clamped mode changed a given"
    assert torch.equal(clamped.canvas, target)


def test_free_mode_with_mask_noise_never_answers_the_mask_token(setup, monkeypatch):
    """A model whose surest token everywhere is the mask: `free` takes the next best, so no position ends masked
    (an accepted mask would be final, and read by later steps as still open)."""
    import dgft.sampling as S

    cfg, task, model = setup
    puzzles, solutions = _puzzles(4, 6, seed=2)
    batch = task.encode(puzzles, solutions)
    mask_ids = batch["mask_ids"]
    V = task.vocab_size

    def denoise(m, cache, canvas, mask, sc_logits=None):
        logits = torch.nn.functional.one_hot(batch["target"], V).float() * 20
        return logits.scatter(-1, mask_ids.expand(canvas.shape[1])[None, :, None].expand(*canvas.shape, 1), 50.0)

    monkeypatch.setattr(S, "denoise", denoise)
    for temperature in (0.0, 1.0):
        scfg = OmegaConf.structured(SamplerConfig(steps=8, temperature=temperature))
        res = sample(model, batch, task, scfg, "free", noise_kind="mask", generator=torch.Generator().manual_seed(0))
        assert not torch.isin(res.canvas, mask_ids).any()
        if temperature == 0:
            assert torch.equal(res.canvas, batch["target"])


def test_accept_count_entropy_bound():
    # entropies 0.0, 0.05, 0.06, 0.5 -> sum - max <= 0.1 holds for the first three
    ent = torch.tensor([[0.5, 0.0, 0.06, 0.05]])
    score = -ent
    open_ = torch.ones_like(ent, dtype=torch.bool)
    order, count = accept_count(score, open_, "entropy", step=0, steps=10, entropy_bound=0.1, ent=ent)
    assert count.item() == 3 and order[0, :3].tolist() == [1, 3, 2]
    # ranked by entropy, not by top probability: a flatter tail can give a surer top digit a higher entropy
    order, count = accept_count(torch.tensor([[0.9, 0.0, 0.0, 0.8]]), open_, "entropy", step=0, steps=10,
                                entropy_bound=0.1, ent=torch.tensor([[0.3, 1.0, 1.0, 0.05]]))
    assert order[0, 0].item() == 3 and count.item() == 2
    _, count = accept_count(score, open_, "fixed", step=0, steps=2, ent=ent)
    assert count.item() == 2
    _, count = accept_count(score, open_, "entropy", step=9, steps=10, ent=ent)
    assert count.item() == 4  # last step takes everything open
    closed = torch.tensor([[True, False, False, False]])
    _, count = accept_count(score, closed, "confidence", step=0, steps=10, confidence=2.0, ent=ent)
    assert count.item() == 1  # at least one per step
    # only open positions count toward the confidence rule's quota: a sure given is not an acceptance
    order, count = accept_count(torch.tensor([[0.95, 0.95, 0.5, 0.4]]), torch.tensor([[False, True, True, True]]),
                                "confidence", step=0, steps=10, confidence=0.9, ent=ent)
    assert count.item() == 1 and order[0, 0].item() == 1


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


def test_reprompt_keeps_pins_and_rules_and_prompts_each_pass_with_what_is_accepted(setup):
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
    res = sample(model, batch, spy, scfg, "rules", generator=torch.Generator().manual_seed(0), record=True)
    fixed = batch["fixed"]
    assert torch.equal(res.canvas[fixed], batch["target"][fixed])
    digits = task.decode(res.canvas, 9)
    assert all(G.rule_violations(d) == 0 for d in digits)
    assert len(prompts) == len(res.history) - 1  # encoded again before every pass after the first, not after the last
    ids, mask = prompts[-1]
    before_last = res.history[-2][1].numpy()  # what was accepted when the last pass ran
    for b in range(6):  # the last prompt holds every cell accepted by then
        assert ids[b][mask[b].bool()].tolist() == task.prompt_ids(np.where(before_last[b], digits[b], 0))


def test_reprompt_needs_a_task_that_can_rebuild_its_prompt(setup):
    cfg, task, model = setup
    puzzles, solutions = _puzzles(4, 2, seed=1)
    batch = task.encode(puzzles, solutions)

    class NoHook:
        name = "nohook"

    scfg = OmegaConf.structured(SamplerConfig(steps=4, reprompt=True))
    with pytest.raises(ValueError, match="sampler.reprompt"):
        sample(model, batch, NoHook(), scfg, "rules")


@pytest.mark.parametrize("reprompt,source", [(False, "model"), (True, "model"), (True, "rules")])
def test_views_keep_pins_and_rules(setup, reprompt, source):
    cfg, task, model = setup
    puzzles, solutions = _puzzles(9, 5, seed=4)
    batch = task.encode(puzzles, solutions)
    scfg = OmegaConf.structured(SamplerConfig(steps=81, acceptance="fixed", reprompt=reprompt, views=3,
                                              self_conditioning_from=source))
    for mode in ("clamped", "rules"):
        res = sample(model, batch, task, scfg, mode, generator=torch.Generator().manual_seed(0), record=True)
        fixed = batch["fixed"]
        assert torch.equal(res.canvas[fixed], batch["target"][fixed])
        digits = task.decode(res.canvas, 9)
        if mode == "rules":
            _check_rules_answers(res, digits, puzzles, scfg.steps)
        else:
            assert (digits > 0).all()


@pytest.mark.parametrize("view_batch,calls", [(1, 4), (3, 2), (0, 1)])
def test_views_map_each_view_back_to_the_puzzle(setup, monkeypatch, view_batch, calls):
    """A stand-in model that echoes its canvas: every view then votes for the solution, if mapped back right,
    however the views are stacked into model calls (`sampler.view_batch`)."""
    import dgft.sampling as S

    cfg, task, model = setup
    puzzles, solutions = _puzzles(9, 4, seed=5)
    batch = task.encode(puzzles, solutions)
    V = task.vocab_size
    monkeypatch.setattr(S, "denoise", lambda m, cache, canvas, mask, sc_logits=None:
                        torch.nn.functional.one_hot(canvas, V).float() * 10)
    scfg = OmegaConf.structured(SamplerConfig(views=4, view_batch=view_batch))
    target = batch["target"]
    views = S._Views(model, task, scfg, 9, batch["choices"], target, batch["fixed"],
                     lambda copies=1: torch.zeros_like(target).repeat(copies, 1))
    assert not torch.equal(views.cells[1], views.cells[0]) and torch.equal(views.cells[0], torch.arange(81))
    assert len(views.chunks) == calls and sum(views.chunks, []) == [0, 1, 2, 3]
    views.encode(target, torch.ones_like(batch["fixed"]))
    scores = views.scores(target, torch.ones_like(batch["fixed"]))  # every cell known: each view echoes it
    assert torch.equal(scores.argmax(-1), S._choice_index(target, batch["choices"]))
    assert all(mask.sum(-1).eq(81 + 3).all() for mask in views.masks)  # each view's prompt lists all 81 cells
    # the digits the rules forbid on the puzzle are removed from each view's self-conditioning in its own layout:
    # forbid every digit but the solution's, and each view's self-conditioning points at its view of the solution
    solution = S._choice_index(target, batch["choices"])
    views.sc = [torch.full((len(vs) * 4, 81, V), -1e3).scatter(2, batch["choices"][None].expand(len(vs) * 4, 81, 9),
                                                                0.0) for vs in views.chunks]
    views.forbid(torch.nn.functional.one_hot(solution, 9) == 0)
    for c, vs in enumerate(views.chunk_index):
        assert torch.equal(views.sc[c].argmax(-1), views._tokens(vs, solution))
        for i, v in enumerate(views.chunks[c]):  # row block i of a chunk is view v: its tokens are view v's
            assert torch.equal(views._tokens(vs, solution)[i * 4:(i + 1) * 4], views._tokens(vs[i:i + 1], solution))
            relabelled = views.digits[v][solution[:, views.cells[v]]] + 1  # view v: cells moved, digits relabelled
            assert (task.decode(views._tokens(vs[i:i + 1], solution), 9) == relabelled.numpy()).all()


def test_views_stacked_in_one_call_sample_as_one_call_per_view(setup):
    """`sampler.view_batch` changes how many model calls a step makes, not what the sampler decides."""
    cfg, task, model = setup
    puzzles, solutions = _puzzles(9, 6, seed=8)
    batch = task.encode(puzzles, solutions)
    out = {}
    for view_batch in (1, 2, 0):
        scfg = OmegaConf.structured(SamplerConfig(steps=81, acceptance="fixed", reprompt=True, views=3, passes=2,
                                                  self_conditioning_from="rules", view_batch=view_batch))
        out[view_batch] = sample(model, batch, task, scfg, "rules", generator=torch.Generator().manual_seed(1))
    for view_batch in (2, 0):
        assert torch.equal(out[view_batch].canvas, out[1].canvas)
        assert torch.equal(out[view_batch].steps, out[1].steps)


def test_rules_self_conditioning_reads_what_the_rules_leave(setup, monkeypatch):
    """sampler.self_conditioning_from=rules: the next pass reads no mass on a digit a peer already holds."""
    import dgft.sampling as S

    cfg, task, model = setup
    puzzles, solutions = _puzzles(9, 3, seed=6)
    batch = task.encode(puzzles, solutions)
    fed = []
    _record_denoise(monkeypatch, lambda canvas, sc_logits: fed.append((canvas.clone(), sc_logits)))
    for source in ("model", "rules"):
        fed.clear()
        scfg = OmegaConf.structured(SamplerConfig(steps=81, acceptance="fixed", self_conditioning_from=source))
        sample(model, batch, task, scfg, "rules", generator=torch.Generator().manual_seed(0))
        canvas, sc = fed[1]  # the second pass reads the first step's distribution
        probs = sc.softmax(-1)
        first_open = ~batch["fixed"]
        allowed = task.rule_mask(S._choice_index(batch["target"], batch["choices"]), batch["fixed"], 9)
        on_choices = torch.gather(probs, 2, batch["choices"][None].expand(3, 81, 9))
        forbidden_mass = (on_choices * (~allowed & first_open[..., None])).sum()
        if source == "rules":
            assert forbidden_mass < 1e-6
        else:
            assert forbidden_mass > 1e-3  # an untrained model spreads mass over forbidden digits too


def test_task_views_are_symmetries_of_the_puzzle():
    task = SudokuTask(tiny_cfg().task)
    rng = np.random.default_rng(6)
    puzzle, solution, _ = G.generate(9, givens=28, rng=rng, max_tries=1)
    cells, digits = task.views(9, 5)
    assert torch.equal(cells[0], torch.arange(81)) and torch.equal(digits[0], torch.arange(9))
    for c, d in zip(cells.numpy(), digits.numpy()):
        relabel = np.concatenate([[0], d + 1])
        view_puzzle, view_solution = relabel[puzzle[c]], relabel[solution[c]]
        assert G.is_solution(view_solution, view_puzzle) and G.invariant(view_solution) == G.invariant(solution)
    assert torch.equal(task.views(9, 5)[0], cells)  # seeded: the same views every call


def test_training_progress_check_reads_the_puzzle_alone_with_one_pass(setup, monkeypatch):
    """Whatever the sampler's views and passes, the trainer's check samples with one of each (its figures stay
    comparable across sampler settings, and cheap)."""
    import dgft.sampling as S

    cfg, task, model = setup
    cfg = tiny_cfg(sampler={"views": 4, "passes": 2, "steps": 4})
    seen = []
    real = S.sample
    monkeypatch.setattr(S, "sample", lambda *a, **k: seen.append((a[3].views, a[3].passes)) or real(*a, **k))
    puzzles, solutions = _puzzles(4, 3, seed=1)
    out = task.quick_eval(model, [task.encode(puzzles, solutions)], cfg, torch.Generator().manual_seed(0))
    assert seen == [(1, 1)] and "4x4_clamped_exact" in out


def test_passes_run_that_many_decoder_passes_per_step_each_reading_the_last(setup, monkeypatch):
    cfg, task, model = setup
    puzzles, solutions = _puzzles(4, 3, seed=7)
    batch = task.encode(puzzles, solutions)
    calls = []
    _record_denoise(monkeypatch, lambda canvas, sc_logits: calls.append(sc_logits))
    scfg = OmegaConf.structured(SamplerConfig(steps=16, acceptance="fixed", passes=3))
    res = sample(model, batch, task, scfg, "rules", generator=torch.Generator().manual_seed(0))
    assert len(calls) == 3 * int(res.steps.max())
    assert calls[0] is None and all(c is not None for c in calls[1:])  # each pass reads the one before
    assert all(G.rule_violations(d) == 0 for d in task.decode(res.canvas, 4))


def test_doubted_picks_each_rows_least_likely_revisable_token_below_the_bound():
    from dgft.sampling import doubted

    choices = torch.tensor([[10, 11], [20, 21], [30, 31]])  # (L, K)
    canvas = torch.tensor([[10, 21, 30], [11, 20, 31], [10, 20, 30]])
    scores = torch.log(torch.tensor([[[0.9, 0.1], [0.8, 0.2], [0.6, 0.4]],  # row 0: cell 1 holds 21 at p 0.2
                                     [[0.9, 0.1], [0.7, 0.3], [0.6, 0.4]],  # row 1: cell 0 (p 0.1) is not revisable
                                     [[0.9, 0.1], [0.9, 0.1], [0.9, 0.1]]]))  # row 2: all likely
    revisable = torch.tensor([[True, True, True], [False, True, True], [True, True, True]])
    out = doubted(scores, canvas, revisable, choices, "rules", below=0.5)
    assert out.tolist() == [[False, True, False], [False, False, True], [False, False, False]]
    assert not doubted(scores, canvas, revisable, choices, "rules", below=0.15)[0].any()


@pytest.mark.parametrize("views", [1, 3])
def test_revise_reopens_acceptances_and_still_keeps_pins_and_rules(setup, views):
    """With a bound no untrained model's token clears, every step takes an acceptance back; the end state still
    holds the givens, breaks no rule, and a cell reopened once can be accepted again."""
    cfg, task, model = setup
    puzzles, solutions = _puzzles(9, 4, seed=5)
    batch = task.encode(puzzles, solutions)
    scfg = OmegaConf.structured(SamplerConfig(steps=90, acceptance="fixed", reprompt=True, views=views,
                                              revise=0.99))
    for mode in ("clamped", "rules"):
        res = sample(model, batch, task, scfg, mode, generator=torch.Generator().manual_seed(0), record=True)
        fixed = batch["fixed"]
        assert torch.equal(res.canvas[fixed], batch["target"][fixed])
        reopened = [(before & ~after).any(-1) for (_, before), (_, after) in zip(res.history, res.history[1:])]
        assert torch.stack(reopened).any(0).all(), "no acceptance was taken back"
        assert not any((before & ~after & fixed).any() for (_, before), (_, after) in zip(res.history, res.history[1:]))
        digits = task.decode(res.canvas, 9)
        if mode == "rules":
            _check_rules_answers(res, digits, puzzles, scfg.steps)
        else:
            assert (digits > 0).all()


def test_revise_off_is_the_plain_sampler_and_needs_uniform_noise(setup):
    cfg, task, model = setup
    puzzles, solutions = _puzzles(4, 6, seed=6)
    batch = task.encode(puzzles, solutions)
    plain = OmegaConf.structured(SamplerConfig(steps=16, acceptance="fixed"))
    off = OmegaConf.structured(SamplerConfig(steps=16, acceptance="fixed", revise=0.0))
    a = sample(model, batch, task, plain, "rules", generator=torch.Generator().manual_seed(1))
    b = sample(model, batch, task, off, "rules", generator=torch.Generator().manual_seed(1))
    assert torch.equal(a.canvas, b.canvas)
    with pytest.raises(ValueError, match="sampler.revise"):
        sample(model, batch, task, OmegaConf.structured(SamplerConfig(steps=16, revise=0.5)), "rules",
               noise_kind="mask")


def _naked_singles_solve(puzzle):
    """Whether filling naked singles alone, wave after wave, solves the puzzle (numpy, independent of the sampler)."""
    g = puzzle.copy()
    while (g == 0).any():
        allowed = G.allowed_digits(g)
        naked = (g == 0) & (allowed.sum(-1) == 1)
        if not naked.any():
            return False
        g[naked] = allowed[naked].argmax(-1) + 1
    return True


def test_fill_forced_fills_naked_singles_in_waves_and_never_two_peers_with_one_digit(setup):
    cfg, task, model = setup
    rng = np.random.default_rng(5)
    solution = G.random_solution(4, rng)
    batch = task.encode(solution[None], solution[None])
    choices, target = batch["choices"], batch["target"]
    open_ = torch.zeros_like(target, dtype=torch.bool)
    open_[0, [0, 1, 2, 3, 4]] = True  # row 0 and cell 4 open: some are forced only once others are filled
    canvas = torch.where(open_, choices[:, 0][None], target)  # open cells hold some digit token, not counted
    out, filled = fill_forced(canvas, open_, ~open_, task, choices, 4)
    assert torch.equal(filled, open_) and torch.equal(out, target)

    grid = np.array([0, 0, 1, 2, 3, 2, 4, 1, 1, 3, 2, 4, 2, 1, 3, 3])  # cells 0 and 1, peers, both leave only 4
    canvas = choices[torch.arange(16), torch.as_tensor(grid - 1).clamp_min(0)][None]
    open_ = torch.as_tensor(grid == 0)[None]
    out, filled = fill_forced(canvas, open_, ~open_, task, choices, 4)
    assert filled[0].nonzero().flatten().tolist() == [0], "two peers took the same forced digit"
    assert task.decode(out, 4)[0][0] == 4


def test_fill_forced_solves_naked_singles_puzzles_without_a_model_call(setup, monkeypatch):
    cfg, task, model = setup
    rng = np.random.default_rng(6)
    puzzles, solutions = [], []
    while len(puzzles) < 4:
        p, s, order = G.generate(9, givens=0, rng=rng, max_tries=1)
        p = G.with_givens(p, s, order, 40)
        if _naked_singles_solve(p):
            puzzles.append(p), solutions.append(s)
    batch = task.encode(np.stack(puzzles), np.stack(solutions))
    calls = []
    _record_denoise(monkeypatch, lambda canvas, sc: calls.append(1))
    scfg = OmegaConf.structured(SamplerConfig(steps=81, acceptance="fixed", reprompt=True, views=2, fill_forced=True))
    res = sample(model, batch, task, scfg, "rules", generator=torch.Generator().manual_seed(0), record=True)
    assert calls == [] and (res.steps == 0).all()
    assert len(res.history) == 1 and res.history[0][1].all()  # one frame: the forced cells filled every puzzle
    assert (task.decode(res.canvas, 9) == np.stack(solutions)).all()


@pytest.mark.parametrize("views", [1, 3])
def test_fill_forced_keeps_pins_and_rules_and_spends_fewer_passes(setup, monkeypatch, views):
    cfg, task, model = setup
    puzzles, solutions = _puzzles(9, 6, seed=7)  # minimal puzzles: the model has decisions to make
    batch = task.encode(puzzles, solutions)
    counts = {}
    for fill in (False, True):
        calls = []
        monkeypatch.undo()
        _record_denoise(monkeypatch, lambda canvas, sc: calls.append(1))
        scfg = OmegaConf.structured(SamplerConfig(steps=81, acceptance="fixed", reprompt=True, views=views,
                                                  fill_forced=fill))
        res = sample(model, batch, task, scfg, "rules", generator=torch.Generator().manual_seed(0))
        fixed = batch["fixed"]
        assert torch.equal(res.canvas[fixed], batch["target"][fixed])
        digits = task.decode(res.canvas, 9)
        assert all(G.rule_violations(d) == 0 for d in digits)
        counts[fill] = len(calls)
    assert counts[True] < counts[False]


def test_a_cell_the_rules_left_empty_reads_as_noise_not_pad(setup, monkeypatch):
    """A cell left empty is [PAD] in the answer, but the decoder reads noise there, as with views (whose view 0 is
    the puzzle itself) and as in training, which never shows [PAD]: views=1 once fed [PAD] from then on."""
    from dgft.tasks.sudoku.task import PAD

    cfg, task, model = setup
    fed = []
    _record_denoise(monkeypatch, lambda canvas, sc: fed.append(int((canvas == PAD).sum())))
    rng = np.random.default_rng(0)
    made = [G.generate(9, givens=30, rng=rng, max_tries=1) for _ in range(6)]
    puzzles, solutions = np.stack([p for p, _, _ in made]), np.stack([s for _, s, _ in made])
    scfg = OmegaConf.structured(SamplerConfig(steps=81, acceptance="fixed", temperature=0.7))
    res = sample(model, task.encode(puzzles, solutions), task, scfg, "rules",
                 generator=torch.Generator().manual_seed(0), record=True)
    empty = res.canvas == PAD
    assert empty.any(), "no cell was left empty: the test needs a puzzle the random model gets stuck on"
    assert sum(fed) == 0
    assert (res.history[-1][0] == PAD).sum() == empty.sum()  # the pictures show them empty
    _check_rules_answers(res, task.decode(res.canvas, 9), puzzles, 81)


def _constant_denoise(monkeypatch, task, choices, favourite: float):
    """The sampler's decoder answers every cell with the same logits: its first digit `favourite`, the others 0."""
    import dgft.sampling as S

    def denoise(m, cache, canvas, mask, sc_logits=None):
        logits = torch.zeros(*canvas.shape, task.vocab_size)
        logits.scatter_(2, choices[None, :, :1].expand(canvas.shape[0], -1, 1), favourite)
        return logits

    monkeypatch.setattr(S, "denoise", denoise)


def test_temperature_shapes_what_the_sampler_draws(setup, monkeypatch):
    """At temperature 0.25 a digit 1 logit ahead is drawn nearly always (p = 0.85); at 4, little more often than
    the others (p = 0.14 against 1/9). Every temperature above 0 once sampled at 1 and no test saw it."""
    cfg, task, model = setup
    puzzles, solutions = _puzzles(9, 8, seed=9)
    batch = task.encode(puzzles, solutions)
    _constant_denoise(monkeypatch, task, batch["choices"], favourite=1.0)
    share = {}
    for temperature in (0.25, 4.0):
        scfg = OmegaConf.structured(SamplerConfig(steps=4, acceptance="fixed", temperature=temperature,
                                                  self_conditioning=False))
        res = sample(model, batch, task, scfg, "clamped", generator=torch.Generator().manual_seed(0))
        digits = task.decode(res.canvas, 9)
        share[temperature] = float((digits[puzzles == 0] == 1).mean())
    assert share[0.25] > 0.75 and share[4.0] < 0.25, share


def test_steps_are_counted_per_puzzle(setup):
    """`steps` (eval's mean steps) counts each puzzle's own steps: a fully given puzzle takes none, however long
    its batch runs."""
    cfg, task, model = setup
    puzzles, solutions = _puzzles(4, 2, seed=2)
    puzzles[0] = solutions[0]
    batch = task.encode(puzzles, solutions)
    open_cells = int((puzzles[1] == 0).sum())
    scfg = OmegaConf.structured(SamplerConfig(steps=8, acceptance="fixed"))
    res = sample(model, batch, task, scfg, "clamped", generator=torch.Generator().manual_seed(0))
    assert res.steps.tolist() == [0, min(open_cells, 8)]


def test_views_average_their_log_probabilities(setup, monkeypatch):
    """The views' answers are averaged, not summed: the scale is what the entropy and confidence rules read."""
    import dgft.sampling as S

    cfg, task, model = setup
    puzzles, solutions = _puzzles(9, 2, seed=6)
    batch = task.encode(puzzles, solutions)
    monkeypatch.setattr(S, "denoise", lambda m, cache, canvas, mask, sc_logits=None:
                        torch.zeros(*canvas.shape, task.vocab_size))
    target = batch["target"]
    views = S._Views(model, task, OmegaConf.structured(SamplerConfig(views=4)), 9, batch["choices"], target,
                     batch["fixed"], lambda copies=1: torch.zeros_like(target).repeat(copies, 1))
    views.encode(target, batch["fixed"])
    scores = views.scores(target, batch["fixed"])
    assert torch.allclose(scores.exp().sum(-1), torch.ones(2, 81))


@pytest.mark.parametrize("mode,views,more", [("rules", 3, {}), ("clamped", 1, {"temperature": 0.7}), ("free", 1, {}),
                                            ("rules", 2, {"revise": 0.5, "temperature": 0.5})])
def test_with_row_generators_a_puzzle_samples_as_it_would_alone(setup, mode, views, more):
    """Each puzzle draws its noise (and a tempered pick) from its own generator: sampled in a batch of five, at any
    place, all views in one call, it gets the answer and step count it gets alone with one view per call, so `dgft
    eval limit=N`, `sampler.batch_size` and `view_batch` change no puzzle's draws. (In float64, where a batch's shape
    moves no logit enough to turn a choice; in float32 it moves them by about 1e-6.) A shared generator gives the
    same puzzle other noise in another batch."""
    import copy

    from dgft import noise as N

    cfg, task, model = setup
    model = copy.deepcopy(model).double()
    puzzles, solutions = _puzzles(9, 5, seed=11)
    scfg = OmegaConf.structured(SamplerConfig(steps=20, acceptance="fixed", views=views, passes=2, reprompt=True,
                                              view_batch=0, **more))
    seeds = [N.example_seed(0, i) for i in range(5)]
    whole = sample(model, task.encode(puzzles, solutions), task, scfg, mode, generator=N.RowGenerators(seeds))
    for i in (0, 3):
        alone = sample(model, task.encode(puzzles[i:i + 1], solutions[i:i + 1]), task,
                       OmegaConf.merge(scfg, {"view_batch": 1}), mode, generator=N.RowGenerators(seeds[i:i + 1]))
        assert torch.equal(whole.canvas[i:i + 1], alone.canvas) and int(whole.steps[i]) == int(alone.steps[0])
        assert int(whole.revisions[i]) == int(alone.revisions[0])
    shared = [sample(model, task.encode(p, s), task, scfg, mode, generator=torch.Generator().manual_seed(0)).canvas
              for p, s in ((puzzles, solutions), (puzzles[3:4], solutions[3:4]))]
    assert not torch.equal(shared[0][3:4], shared[1])


def test_a_finished_puzzle_is_not_revised_while_its_batch_goes_on(setup):
    """With `sampler.revise`, a puzzle that finished stays finished while a slower one in its batch still samples:
    alone it would stop, so reopening its cells would give it other steps, revisions and digits in another batch."""
    import copy

    from dgft import noise as N

    cfg, task, model = setup
    model = copy.deepcopy(model).double()
    puzzles, solutions = _puzzles(9, 2, seed=5)
    puzzles[0] = solutions[0]
    puzzles[0, 0] = 0  # one blank: done at its first step
    scfg = OmegaConf.structured(SamplerConfig(steps=30, acceptance="fixed", revise=0.5, temperature=1.0))
    for seed in range(3):
        seeds = [N.example_seed(seed, i) for i in range(2)]
        whole = sample(model, task.encode(puzzles, solutions), task, scfg, "clamped", generator=N.RowGenerators(seeds))
        alone = sample(model, task.encode(puzzles[:1], solutions[:1]), task, scfg, "clamped",
                       generator=N.RowGenerators(seeds[:1]))
        assert torch.equal(whole.canvas[:1], alone.canvas) and int(whole.steps[0]) == int(alone.steps[0]) == 1
        assert int(whole.revisions[0]) == int(alone.revisions[0])
        assert int(whole.steps[1]) > 1  # the other puzzle went on


def test_eval_seeds_each_puzzle_by_its_place_in_the_file(setup):
    """`dgft eval`'s sampling (run_mode): puzzle i's noise is seeded by (seed, i), so the first N puzzles alone
    (`limit=N`), one per batch (`sampler.batch_size`), or grouped by givens (`batch_by`) get the answers and steps
    of the whole file's evaluation; another seed draws other noise. float64: see the test above."""
    import copy

    from dgft.tasks.sudoku.evaluate import run_mode
    from dgft.tasks.sudoku.io import SudokuRecord

    cfg, task, model = setup
    model = copy.deepcopy(model).double()
    puzzles, solutions = _puzzles(9, 6, seed=12)
    recs = [SudokuRecord(p, s, f"line {i + 1}") for i, (p, s) in enumerate(zip(puzzles, solutions))]
    scfg = OmegaConf.structured(SamplerConfig(steps=16, acceptance="fixed", views=2, passes=2, reprompt=True,
                                              batch_size=6, temperature=0.5))

    def answers(recs, seed=0, **kw):
        got, stats = run_mode(model, task, recs, OmegaConf.merge(scfg, kw.pop("sampler", {})), cfg, "rules", seed,
                              **kw)
        return [a.tolist() for a in got], stats["steps"].tolist()

    whole = answers(recs)
    assert answers(recs[:3]) == (whole[0][:3], whole[1][:3])
    assert answers(recs, sampler={"batch_size": 1}) == whole
    assert answers(recs, by_givens=True) == whole
    assert answers(recs, seed=1) != whole


@pytest.mark.parametrize("bad,named", [({"steps": 0}, "sampler.steps=0"), ({"passes": 0}, "sampler.passes=0"),
                                       ({"acceptance": "entropie"}, "sampler.acceptance='entropie'"),
                                       ({"view_batch": -1}, "sampler.view_batch=-1"),
                                       ({"confidence": 1.5}, "sampler.confidence=1.5"),
                                       ({"temperature": float("nan")}, "sampler.temperature=nan"),
                                       ({"noise_kind": "uniforme"}, "noise_kind='uniforme'")])
def test_sample_called_directly_refuses_settings_that_cannot_work(setup, bad, named):
    """dgft's commands check the sampler's settings when the config is composed; a caller of `sample` who builds
    them alone gets the same refusal, naming the setting, not zero steps of [PAD], an UnboundLocalError deep in
    the loop, or an acceptance rule that is only looked up when a step needs it."""
    cfg, task, model = setup
    puzzles, solutions = _puzzles(4, 1, seed=1)
    settings = {k: v for k, v in bad.items() if k != "noise_kind"}
    scfg = OmegaConf.merge(OmegaConf.structured(SamplerConfig(steps=4)), settings)
    with pytest.raises(ValueError, match=re.escape(named)):
        sample(model, task.encode(puzzles, solutions), task, scfg, "clamped",
               noise_kind=bad.get("noise_kind", "uniform"))
