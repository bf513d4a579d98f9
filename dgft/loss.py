"""The denoising objective, returned as (sum, count) so a trainer can normalise by the number of scored
tokens across a whole gradient-accumulation window rather than per micro-batch.

Uniform-state noise scores every scored position (flat cross-entropy, as DiffusionGemma trains); absorbing
noise scores only the masked ones, optionally weighted by 1/t (MDLM's ELBO weight, averaged over every scored
position, as MDLM and LLaDA normalise it). A task may weigh
positions unequally (`position_weight`, e.g. an infill's padding after [EOS] at 0.1); the count is then the
weighted count, so a batch of short middles does not pull harder than one of long middles.
"""

from __future__ import annotations

import torch.nn.functional as F


def loss_weights(scored, hit, kind: str = "uniform", position_weight=None):
    """(B, L) float weight of each position in the loss, before any 1/t: scored (B, L) bool, hit (B, L) bool.

    Uniform noise: `scored` (or `position_weight` when given); absorbing noise: the same, on hit positions only.
    """
    positions = scored if kind == "uniform" else scored & hit
    if position_weight is None:
        return positions.float()
    return position_weight.float() if kind == "uniform" else position_weight.float() * hit


def loss_count(scored, hit, kind: str = "uniform", weight: str = "flat", position_weight=None):
    """What a batch's loss sum is normalised by: its scored positions' (weighted) count. Absorbing noise with a flat
    weight averages over the masked positions; with 1/t (MDLM's and LLaDA's ELBO) over every scored position,
    masked or not: an example's 1/t already undoes its masked share (about t of its positions), so dividing by the
    masked count too would weigh each step by a second, random 1/t (the batch's mean)."""
    over = "uniform" if kind == "uniform" or weight == "inv_t" else kind
    return loss_weights(scored, hit, over, position_weight).sum()


def token_cross_entropy(logits, target):
    """Cross-entropy per position: logits (B, L, V), target (B, L) -> (B, L) float32.

    Computed over (B*L, V) rows, not as cross_entropy(logits.transpose(1, 2)): that (B, V, L) layout takes
    torch's spatial softmax kernel, which on CUDA spent 427 ms of a 572 ms QLoRA step at a 262k vocabulary
    (eval/RESULTS.md); the row layout is the ordinary, fast softmax.
    """
    B, L, V = logits.shape
    return F.cross_entropy(logits.float().reshape(B * L, V), target.reshape(B * L), reduction="none").view(B, L)


def denoising_loss(logits, target, scored, hit, kind: str = "uniform", t=None, weight: str = "flat",
                   position_weight=None):
    """logits (B, L, V), target (B, L), scored (B, L) bool, hit (B, L) bool, t (B,) -> (loss_sum, n_tokens).

    n_tokens is what the sum is normalised by (`loss_count`, a float tensor, for exact normalisation): the positions
    that entered it, or with 1/t every scored one; with `position_weight` (B, L) float their summed weight.
    """
    w = loss_weights(scored, hit, kind, position_weight)
    n = loss_count(scored, hit, kind, weight, position_weight)
    ce = token_cross_entropy(logits, target)  # (B, L)
    if weight == "inv_t":
        w = w / t[:, None]
    return (ce * w).sum(), n


def encoder_ar_loss(logits, prompt_ids, prompt_mask):
    """Next-token cross-entropy on the prompt from encoder logits (B, P, V) -> (loss_sum, n_tokens)."""
    pred, tgt = logits[:, :-1].float(), prompt_ids[:, 1:]
    valid = (prompt_mask[:, 1:] * prompt_mask[:, :-1]).bool()
    ce = token_cross_entropy(pred, tgt)
    return (ce * valid).sum(), valid.sum().float()
