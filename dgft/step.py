"""One training step's pieces, between the data and the optimizer: `corrupt_batch` noises a batch (and lists in the
prompt what the noise left clean), `batch_loss` runs the model on it (self-conditioning's first pass too) and sums the
denoising loss. `dgft.train` calls them each step; `bench/profile_step.py` times them.
"""

from __future__ import annotations

import torch

from dgft import noise as N
from dgft.loss import denoising_loss, encoder_ar_loss, loss_count
from dgft.model import denoise, encode, forbid_answers, prompt_logits


def corrupt_batch(batch: dict, cfg, gen, vocab_size: int, task=None) -> dict:
    """Add noise level t, the corrupted canvas and the counts to a batch.

    `count` is what the loss is normalised by: the scored positions, or their summed weight when the batch
    weighs positions (`weight`, (B, L) float, from the batch or from the task's `position_weight` of the
    positions the model is shown). With `noise.known_in_prompt` the positions the noise left alone
    are also written into the prompt (the task's `known_prompt`), as `sampler.reprompt` does with accepted ones.
    """
    target, scored = batch["target"], batch["scored"]
    givens = batch.get("givens", batch["fixed"])  # in the prompt always, even where corrupt_givens_p noised them
    t = N.sample_t(target.shape[0], cfg.noise.eps, gen, power=cfg.noise.t_power)
    support = batch["choices"] if cfg.noise.support == "answer" else vocab_size
    noisy, hit = N.corrupt(cfg.noise.kind, target, t, ~batch["fixed"], support, N.mask_ids(cfg.noise.kind, batch), gen)
    order_p = float(cfg.task.get("solver_order_p", 0.0))
    if order_p > 0:
        noisy, hit = _solver_ordered(batch, noisy, hit, order_p, cfg, gen, support, task)
    wrong_p = float(cfg.task.get("wrong_known_p", 0.0))
    if wrong_p > 0:
        noisy = _wrong_known(batch, noisy, hit, wrong_p, gen, task)
    weigh = getattr(task, "position_weight", None)  # a task's own weighting, given what the model is shown
    if weigh is not None and "weight" not in batch:
        weight = weigh(target, givens | ~hit, batch["size"])
        batch = batch if weight is None else {**batch, "weight": weight * scored}
    count = loss_count(scored, hit, cfg.noise.kind, cfg.noise.loss_weight, batch.get("weight"))
    if cfg.noise.known_in_prompt:
        batch = {**batch}
        batch["prompt_ids"], batch["prompt_mask"] = task.known_prompt(target, givens, noisy, ~hit & ~givens,
                                                                      batch["size"])
    tokens = batch["prompt_mask"].sum() + target.numel()
    return {**batch, "t": t, "noisy": noisy, "hit": hit, "count": count, "tokens": tokens}


def _drawn_with_clean_givens(batch: dict, p: float, gen) -> torch.Tensor:
    """(B,) bool: each example drawn with probability p, among those whose givens the noise leaves clean (not
    freed by `task.corrupt_givens_p`)."""
    fixed = batch["fixed"]
    return (torch.rand(fixed.shape[0], generator=gen) < p) & (fixed == batch.get("givens", fixed)).all(-1)


def _solver_ordered(batch: dict, noisy, hit, p: float, cfg, gen, support, task):
    """`task.solver_order_p`: in that share of examples (those whose givens stay clean), the same number of
    corrupted cells, moved onto the cells a solver fills last (the task's `solving_rank`, ties in random order),
    so the clean ones are what it fills first: the states a sampler passes through, accepting its surest cell
    first. Uniform random subsets of clean cells are far easier to complete than these (eval/RESULTS.md)."""
    target, fixed = batch["target"], batch["fixed"]
    rows = _drawn_with_clean_givens(batch, p, gen)
    if not rows.any():
        return noisy, hit
    moved = N.order_hits(hit[rows], task.solving_key(target[rows], fixed[rows], batch["size"], gen))
    ones = torch.ones(int(rows.sum()))
    noisy, hit = noisy.clone(), hit.clone()
    noisy[rows], _ = N.corrupt(cfg.noise.kind, target[rows], ones, moved, support, N.mask_ids(cfg.noise.kind, batch),
                               gen)
    hit[rows] = moved
    return noisy, hit


def _wrong_known(batch: dict, noisy, hit, p: float, gen, task):
    """`task.wrong_known_p`: in that share of examples (those whose givens stay clean), one or two of the blank
    cells the noise left clean (shown as known, in the prompt too with `noise.known_in_prompt`) get a wrong digit
    no known peer holds (the task's `plant_wrong`), and are still scored with the true one: what a sampler's
    mistaken acceptance looks like, so the model learns to doubt it rather than build on it (`sampler.revise`)."""
    target, givens = batch["target"], batch.get("givens", batch["fixed"])
    rows = _drawn_with_clean_givens(batch, p, gen)
    if not rows.any():
        return noisy
    known = givens | ~hit
    second = torch.rand(target.shape[0], generator=gen) < 0.5
    planted = torch.zeros_like(hit)
    for candidates in (rows, rows & second):
        allowed = candidates[:, None] & ~hit & ~givens & ~planted & batch["scored"]
        noisy, new = task.plant_wrong(noisy, allowed, known, batch["size"], gen)
        planted |= new
    return noisy


def _to(x: torch.Tensor, device) -> torch.Tensor:
    """Host tensor -> device; to CUDA through pinned memory, so the copy does not wait for the device."""
    if device.type != "cuda":
        return x.to(device)
    return x.pin_memory().to(device, non_blocking=True)


def batch_loss(model, m: dict, cfg, gen, device, task=None):
    """Summed denoising loss of one micro-batch, plus the (already normalised) encoder AR term."""
    ids, mask = _to(m["prompt_ids"], device), _to(m["prompt_mask"], device)
    noisy = _to(m["noisy"], device)
    want_hidden = cfg.noise.encoder_ar_weight > 0
    enc = encode(model, ids, mask, return_hidden=want_hidden)
    cache, hidden = enc if want_hidden else (enc, None)
    sc_logits = sc_mask = None
    if cfg.noise.self_conditioning_p > 0:
        drawn = torch.rand(noisy.shape[0], generator=gen) < cfg.noise.self_conditioning_p  # on the host: no sync
        if drawn.any():
            # The first pass runs only for the examples that use it; the others get zero logits (masked anyway).
            sc_mask, idx = _to(drawn, device), _to(drawn.nonzero()[:, 0], device)
            with torch.no_grad():
                sub_cache, passes = _select_cache(cache, idx), int(cfg.noise.get("self_conditioning_passes", 1))
                sub = denoise(model, sub_cache, noisy[idx], mask[idx])
                for _ in range(int(torch.randint(passes, (1,), generator=gen)) if passes > 1 else 0):
                    sub = denoise(model, sub_cache, noisy[idx], mask[idx], sc_logits=sub)
                sc_logits = torch.zeros(noisy.shape + (sub.shape[-1],), dtype=sub.dtype, device=device)
                sc_logits[idx] = sub
            rules_p = float(cfg.task.get("sc_rules_p", 0.0))
            if rules_p > 0:  # these examples' first pass is fed back without the digits a shown peer holds
                rows = drawn & (torch.rand(noisy.shape[0], generator=gen) < rules_p)
                forbid = task.rules_forbid(m) & rows[:, None, None]
                sc_logits = forbid_answers(sc_logits, _to(m["choices"], device), _to(forbid, device))
    logits = denoise(model, cache, noisy, mask, sc_logits=sc_logits, sc_mask=sc_mask)
    weight = _to(m["weight"], device) if "weight" in m else None
    loss_sum, _ = denoising_loss(logits, _to(m["target"], device), _to(m["scored"], device), _to(m["hit"], device),
                                 cfg.noise.kind, _to(m["t"], device), cfg.noise.loss_weight, weight)
    extra = torch.zeros((), device=device)
    if want_hidden:
        ar_sum, ar_n = encoder_ar_loss(prompt_logits(model, hidden), ids, mask)
        extra = cfg.noise.encoder_ar_weight * ar_sum / ar_n.clamp_min(1)
    return loss_sum, extra


def _select_cache(cache, idx):
    """A copy of an encoder KV cache restricted to the batch rows `idx` (the original is untouched)."""
    import copy

    sub = copy.copy(cache)
    sub.layers = [copy.copy(layer) for layer in cache.layers]
    for layer in sub.layers:
        layer.keys, layer.values = layer.keys[idx], layer.values[idx]
    return sub
