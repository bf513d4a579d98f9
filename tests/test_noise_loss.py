"""Corruption statistics and the loss's normalisation, on plain tensors."""

import math

import pytest
import torch

from dgft import noise as N
from dgft.loss import denoising_loss, encoder_ar_loss


def test_sample_t_range():
    t = N.sample_t(10000, 0.05, torch.Generator().manual_seed(0))
    assert t.min() >= 0.05 and t.max() < 1
    assert abs(t.mean().item() - 0.525) < 0.01


def test_sample_t_power_skews_toward_high_noise():
    t = N.sample_t(20000, 0.0, torch.Generator().manual_seed(0), power=2.0)
    assert t.min() >= 0 and t.max() < 1
    assert abs((t < 0.5).float().mean().item() - 0.25) < 0.01  # P(t < x) = x^2
    assert abs(t.mean().item() - 2 / 3) < 0.01
    same = N.sample_t(100, 0.05, torch.Generator().manual_seed(1), power=1.0)
    assert torch.equal(same, N.sample_t(100, 0.05, torch.Generator().manual_seed(1)))


def test_uniform_corruption_rate_support_and_fixed_positions():
    g = torch.Generator().manual_seed(0)
    B, L, K = 4000, 20, 5
    support = 100 + torch.arange(L)[:, None] * K + torch.arange(K)[None]  # (L, K)
    target = support[:, 0].expand(B, L).clone()
    corruptible = torch.ones(B, L, dtype=torch.bool)
    corruptible[:, :3] = False
    t = torch.full((B,), 0.3)
    noisy, hit = N.corrupt_uniform(target, t, corruptible, support, g)
    assert not hit[:, :3].any() and torch.equal(noisy[:, :3], target[:, :3])
    assert abs(hit[:, 3:].float().mean().item() - 0.3) < 0.01
    # every noise token lies in its own position's support, spread uniformly over it
    assert ((noisy[..., None] == support[None]).any(-1)).all()
    counts = torch.stack([(noisy[:, 3:][hit[:, 3:]] == support[3:, k].expand(B, L - 3)[hit[:, 3:]]).sum()
                          for k in range(K)]).float()
    assert (counts / counts.sum() - 1 / K).abs().max() < 0.02


def test_uniform_corruption_with_vocab_support_and_mask():
    g = torch.Generator().manual_seed(1)
    target = torch.randint(7, 50, (1000, 30), generator=g)  # random tokens, never the mask id 6
    t = torch.rand(1000, generator=g)
    noisy, hit = N.corrupt("uniform", target, t, torch.ones_like(target, dtype=torch.bool), 50, 6, g)
    assert noisy.max() < 50 and noisy.min() >= 0
    assert abs(hit.float().mean().item() - t.mean().item()) < 0.01  # each position hit with its row's t
    rows = hit.float().mean(-1)
    assert torch.corrcoef(torch.stack([rows, t]))[0, 1] > 0.9  # ... row by row, not one rate for all
    assert torch.equal(noisy[~hit], target[~hit])
    counts = torch.bincount(noisy[hit], minlength=50).float()  # noise drawn evenly over the whole vocabulary
    assert len(counts) == 50 and (counts / counts.mean() - 1).abs().max() < 0.25
    noisy, hit = N.corrupt("mask", target, t, torch.ones_like(target, dtype=torch.bool), 50, 6, g)
    assert torch.equal(noisy == 6, hit)
    assert abs(hit.float().mean().item() - t.mean().item()) < 0.01


def test_order_hits_keeps_each_rows_count_and_takes_the_highest_keys():
    g = torch.Generator().manual_seed(2)
    hit = torch.rand(200, 30, generator=g) < 0.4
    key = torch.rand(200, 30, generator=g)
    key[:, :5] = -math.inf  # never hit
    moved = N.order_hits(hit, key)
    assert torch.equal(moved.sum(-1), hit.sum(-1)) and not moved[:, :5].any()
    for row in range(200):
        if 0 < moved[row].sum() < 25:
            assert key[row][moved[row]].min() > key[row][~moved[row]].max()
    assert N.order_hits(torch.tensor([[True, False, True, False]]),
                        torch.tensor([[0.0, 3.0, 1.0, 2.0]])).tolist() == [[False, True, False, True]]


def test_zero_loss_at_perfect_logits_and_normalisation():
    target = torch.tensor([[3, 1, 2], [0, 0, 4]])
    logits = torch.full((2, 3, 5), -1e4)
    logits.scatter_(2, target[..., None], 1e4)
    scored = torch.tensor([[True, False, True], [True, True, True]])
    s, n = denoising_loss(logits, target, scored, torch.ones_like(scored))
    assert s.item() < 1e-6 and n.item() == 5
    uniform = torch.zeros(2, 3, 5)
    s, n = denoising_loss(uniform, target, scored, torch.ones_like(scored))
    assert math.isclose(s.item() / n.item(), math.log(5), rel_tol=1e-5)
    # absorbing noise scores only the hit positions, 1/t weighting scales them
    hit = torch.tensor([[True, True, False], [False, False, False]])
    s, n = denoising_loss(uniform, target, scored, hit, kind="mask")
    assert n.item() == 1 and math.isclose(s.item(), math.log(5), rel_tol=1e-5)
    s2, n2 = denoising_loss(uniform, target, scored, hit, kind="mask", t=torch.tensor([0.5, 1.0]), weight="inv_t")
    assert math.isclose(s2.item(), 2 * s.item(), rel_tol=1e-5)
    assert n2.item() == 5  # 1/t is averaged over every scored position, masked or not (MDLM's ELBO)


def test_inv_t_loss_per_position_does_not_depend_on_the_noise_level():
    """A model with the same cross-entropy everywhere: with 1/t, the normalised loss is that cross-entropy at any t
    (its expectation), not 1/t times it, as dividing by the masked count made it."""
    from dgft import noise as N
    from dgft.loss import loss_count

    gen = torch.Generator().manual_seed(0)
    B, L, V = 64, 81, 9
    target = torch.randint(V, (B, L), generator=gen)
    scored = torch.ones(B, L, dtype=torch.bool)
    logits = torch.zeros(B, L, V + 1)
    for low in (0.05, 0.5):
        t = low + 0.05 * torch.rand(B, generator=gen)
        _, hit = N.corrupt("mask", target, t, scored, V, torch.tensor(V), gen)
        s, n = denoising_loss(logits, target, scored, hit, kind="mask", t=t, weight="inv_t")
        assert torch.equal(n, loss_count(scored, hit, "mask", "inv_t"))
        assert math.isclose(s.item() / n.item(), math.log(V + 1), rel_tol=0.1), (low, s.item() / n.item())


def test_encoder_ar_loss_counts_only_real_pairs():
    ids = torch.tensor([[0, 0, 5, 6, 7]])
    mask = torch.tensor([[0, 0, 1, 1, 1]])
    logits = torch.zeros(1, 5, 10)
    s, n = encoder_ar_loss(logits, ids, mask)
    assert n.item() == 2 and math.isclose(s.item(), 2 * math.log(10), rel_tol=1e-5)


def test_position_weights_scale_the_loss_and_its_count():
    uniform = torch.zeros(1, 4, 5)
    target = torch.zeros(1, 4, dtype=torch.long)
    scored = torch.tensor([[True, True, False, False]])
    weight = torch.tensor([[1.0, 1.0, 0.1, 0.1]])  # an infill: middle + [EOS], then padding at 0.1
    s, n = denoising_loss(uniform, target, scored, torch.ones_like(scored), position_weight=weight)
    assert math.isclose(n.item(), 2.2, rel_tol=1e-6) and math.isclose(s.item(), 2.2 * math.log(5), rel_tol=1e-5)
    hit = torch.tensor([[True, False, True, False]])  # absorbing noise: only the hit positions count
    s, n = denoising_loss(uniform, target, scored, hit, kind="mask", position_weight=weight)
    assert math.isclose(n.item(), 1.1, rel_tol=1e-6) and math.isclose(s.item(), 1.1 * math.log(5), rel_tol=1e-5)


def test_absorbing_noise_needs_the_batchs_mask_tokens():
    batch = {"target": torch.zeros(2, 4, dtype=torch.long)}
    assert N.mask_ids("uniform", batch) is None
    try:
        N.mask_ids("mask", batch)
        raise AssertionError("no error for absorbing noise without mask tokens")
    except ValueError as err:
        assert "no mask token" in str(err)
    batch["mask_ids"] = torch.full((4,), 6)
    assert N.mask_ids("mask", batch) is batch["mask_ids"]


def test_known_in_prompt_lists_givens_and_the_cells_noise_left_clean():
    import numpy as np
    from omegaconf import OmegaConf

    from conftest import tiny_cfg
    from dgft.tasks.sudoku import grid as G
    from dgft.tasks.sudoku.task import SudokuTask
    from dgft.step import corrupt_batch

    cfg = tiny_cfg()
    cfg.noise.known_in_prompt = True
    task = SudokuTask(cfg.task)
    rng = np.random.default_rng(0)
    made = [G.generate(9, givens=30, rng=rng, max_tries=1) for _ in range(4)]
    puzzles, solutions = np.stack([m[0] for m in made]), np.stack([m[1] for m in made])
    out = corrupt_batch(task.encode(puzzles, solutions), OmegaConf.create(cfg), torch.Generator().manual_seed(0),
                   task.vocab_size, task)
    for b in range(4):
        known = puzzles[b].copy()
        clean = ~out["hit"][b].numpy() & (puzzles[b] == 0)
        known[clean] = solutions[b][clean]
        assert 0 < clean.sum() < (puzzles[b] == 0).sum() or out["t"][b] > 0.95 or out["t"][b] < 0.05
        prompt = out["prompt_ids"][b][out["prompt_mask"][b].bool()].tolist()
        assert prompt == task.prompt_ids(known)
    assert out["tokens"] == out["prompt_mask"].sum() + out["target"].numel()


def test_the_loss_is_normalised_over_the_accumulation_window(tmp_path, monkeypatch):
    """With trainer.grad_accum=2 the window's denoising sums are divided by the scored tokens of the whole window
    (not each micro-batch by its own), and the encoder's AR term is averaged over the micro-batches. A stand-in loss
    whose gradient is known: each micro-batch's sum is count * w and its AR term 0.5 * w, for one weight w, so w's
    gradient is sum(count) / sum(count) + 2 * 0.5 / 2 = 1.5 (per micro-batch normalisation would give 3)."""
    import dgft.step as S
    from dgft.cli import main

    seen = []

    def stand_in(model, m, cfg, gen, device, task=None):
        w = next(p for p in model.parameters() if p.requires_grad).flatten()[0]
        return w * float(m["count"]), w * 0.5

    real_clip = torch.nn.utils.clip_grad_norm_

    def clip(params, max_norm):
        params = list(params)
        seen.append(float(params[0].grad.flatten()[0]))
        return real_clip(params, max_norm)

    monkeypatch.setattr(S, "batch_loss", stand_in)
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", clip)
    main(["train", f"hydra.run.dir={tmp_path / 'run'}", f"task.cache_dir={tmp_path / 'cache'}", "task.base_puzzles=12",
          "task.heldout_puzzles=4", "trainer.max_steps=2", "trainer.batch_size=4", "trainer.grad_accum=2",
          "trainer.eval_every=0", "model.num_layers=1", "model.hidden_size=32", "model.num_heads=2",
          "model.num_kv_heads=1", "model.head_dim=16", "model.intermediate_size=64", "model.moe_intermediate_size=32"])
    assert seen == [1.5, 1.5]


def test_row_generators_draw_each_example_from_its_own_seed_whatever_the_batch():
    seeds = [N.example_seed(0, i) for i in range(4)]
    assert len(set(seeds)) == 4 and seeds[1] == N.example_seed(0, 1) != N.example_seed(1, 1)
    whole = N.RowGenerators(seeds).randint(9, (3 * 4, 81))  # 3 copies of 4 examples, copy-major
    alone = N.RowGenerators(seeds[2:3]).randint(9, (3, 81))
    assert torch.equal(whole.view(3, 4, 81)[:, 2], alone)  # example 2's copies, as if it were drawn alone
    assert not torch.equal(whole.view(3, 4, 81)[:, 1], alone) and int(whole.max()) == 8 and int(whole.min()) == 0
    support = torch.arange(81 * 9).view(81, 9)  # per-position token ids, as a task's answer tokens
    tokens = N.draw(support, (4, 81), N.RowGenerators(seeds))
    assert torch.equal(tokens[2:3], N.draw(support, (1, 81), N.RowGenerators(seeds[2:3])))
    offset = tokens - support[:, 0]  # which of its position's 9 tokens each drew
    assert ((offset >= 0) & (offset < 9)).all()
    probs = torch.softmax(torch.randn(4, 81, 9, generator=torch.Generator().manual_seed(0)), -1)
    picks = N.RowGenerators(seeds).multinomial(probs)
    assert torch.equal(picks[2:3], N.RowGenerators(seeds[2:3]).multinomial(probs[2:3]))
    probs = torch.tensor([0.7, 0.0, 0.3, 0.0]).expand(4, 5000, 4)  # a tempered pick never draws what p = 0 forbids
    counts = torch.bincount(N.RowGenerators(seeds).multinomial(probs).flatten(), minlength=4) / 20000
    assert counts[1] == counts[3] == 0 and abs(float(counts[0]) - 0.7) < 0.02
    with pytest.raises(ValueError, match="multiple of 4"):
        N.RowGenerators(seeds).randint(9, (6, 81))
    with pytest.raises(ValueError, match="3 rows drawn with 4"):
        N.RowGenerators(seeds).multinomial(probs[:3])


def test_a_row_generators_pick_never_lands_past_the_last_possible_index(monkeypatch):
    """A uniform times a position's total can round up to the total; the pick is then the last index of probability
    above 0, never one past the end or one the rules forbid."""
    monkeypatch.setattr(N.torch, "rand", lambda n, generator=None: torch.ones(n))  # u = 1: the rounded-up case
    probs = torch.tensor([[[0.25, 0.75, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]]])
    assert N.RowGenerators([0]).multinomial(probs).tolist() == [[1, 0]]
