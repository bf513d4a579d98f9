"""Corruption processes, as pure tensor functions.

Uniform-state (DiffusionGemma's): at noise level t each corruptible position is replaced, with
probability t, by a token drawn uniformly from its support (the task's answer tokens for that position,
or the whole vocabulary). Absorbing-state (LLaDA, MDLM): replaced by the mask token instead.
t ~ U(eps, 1) per example.

Example: target (1, 4) = [7, 8, 9, 7], t = [0.5], corruptible = [T, T, F, T] -> about half of positions
0, 1, 3 hold a random support token; position 2 is never touched.
"""

from __future__ import annotations

import torch

Support = "int | torch.Tensor"  # vocabulary size V (draw from 0..V-1), or (L, K) token ids per position


def sample_t(batch: int, eps: float, generator: torch.Generator | None = None, device=None,
             power: float = 1.0) -> torch.Tensor:
    """(B,) noise levels in [eps, 1): uniform, or with `power` k != 1 eps + (1 - eps) u^(1/k), u ~ U(0, 1).

    k = 2 draws t with density growing linearly in t (P(t < 1/2) = 1/4): more of the training on the heavily
    corrupted states where a sampler makes its first, least informed choices.
    """
    u = torch.rand(batch, generator=generator, device=device)
    return eps + (1 - eps) * (u if power == 1 else u ** (1 / power))


class RowGenerators:
    """One seeded host generator per example of a batch, so that what an example draws depends on its own seed
    alone: not on the batch it is in, its place there, or the batch's size. `dgft eval` seeds one per puzzle or
    problem from (seed, its index among the examples evaluated: the file's, less lines skipped with
    `on_error=skip` and, for infill, middles too long for the canvas), so `limit=N` draws for its N what the whole
    file's evaluation does, and `sampler.batch_size` or `batch_by` change no draw. Draws are made on the host and
    moved to the device.

    A batch of C copies of each example (the sampler's views, copy-major: copy c of example b is row c * B + b)
    draws each example's C rows from its own generator.
    """

    def __init__(self, seeds):
        self.generators = [torch.Generator().manual_seed(int(s)) for s in seeds]

    def __len__(self) -> int:
        return len(self.generators)

    def randint(self, high: int, shape: tuple[int, int], device=None) -> torch.Tensor:
        """(C * B, L) integers in [0, high): example b's C rows (c * B + b) from its generator, in one draw."""
        rows, L = shape
        B = len(self.generators)
        if rows % B:
            raise ValueError(f"{rows} rows drawn with {B} row generators: expected a multiple of {B}")
        out = torch.stack([torch.randint(0, high, (rows // B, L), generator=g) for g in self.generators], 1)
        return out.reshape(rows, L).to(device)

    def multinomial(self, probs: torch.Tensor) -> torch.Tensor:
        """(B, L, K) probabilities -> (B, L) one index per position, drawn by inverting each position's cumulative
        distribution at a uniform from its example's generator: only (B, L) uniforms come from the host, never the
        (B, L, K) probabilities (K can be a whole vocabulary). An index of probability 0 is never drawn."""
        B, L, K = probs.shape
        if B != len(self.generators):
            raise ValueError(f"{B} rows drawn with {len(self.generators)} row generators")
        u = torch.stack([torch.rand(L, generator=g) for g in self.generators]).to(probs.device)
        cdf = probs.float().cumsum(-1)  # non-decreasing, flat across an index of probability 0
        idx = torch.searchsorted(cdf, (u * cdf[..., -1])[..., None], right=True)[..., 0]  # first cdf above u * total
        last = K - 1 - (probs.flip(-1) > 0).int().argmax(-1)  # the last index of probability > 0
        return torch.minimum(idx, last)  # where u * total rounded up to the total


def example_seed(*key: int) -> int:
    """A seed for one example's RowGenerators from integers such as (seed, index in the file, sample number),
    mixed by numpy's SeedSequence, so that neighbouring keys start unrelated streams."""
    import numpy as np

    hi, lo = np.random.SeedSequence([int(k) for k in key]).generate_state(2, np.uint32)
    return (int(hi) << 31) ^ int(lo)  # < 2**63


def draw(support, shape: tuple[int, int], generator=None, device=None) -> torch.Tensor:
    """(B, L) tokens drawn uniformly from `support` at each position (the uniform prior). `generator`: a
    torch.Generator (one stream for the batch), RowGenerators (one per example), or None (torch's global one)."""
    B, L = shape
    K = support if isinstance(support, int) else support.shape[-1]
    if isinstance(generator, RowGenerators):
        idx = generator.randint(K, (B, L), device)
    else:
        idx = torch.randint(0, K, (B, L), generator=generator, device=device)
    if isinstance(support, int):
        return idx
    return torch.gather(support.to(device).expand(B, L, K), 2, idx[..., None])[..., 0]


def corrupt_uniform(target, t, corruptible, support, generator=None):
    """Uniform-state corruption. target (B, L), t (B,), corruptible (B, L) bool -> (noisy (B, L), hit (B, L)).

    `hit` marks positions that were resampled (they may still hold the clean token by chance, 1/K).
    """
    B, L = target.shape
    hit = (torch.rand((B, L), generator=generator, device=target.device) < t[:, None]) & corruptible
    noise = draw(support, (B, L), generator, target.device)
    return torch.where(hit, noise, target), hit


def corrupt_mask(target, t, corruptible, mask_id, generator=None):
    """Absorbing-state corruption: positions hit with probability t hold the mask token. Returns (noisy, hit).

    `mask_id` is one id, or (L,) ids, one per position (a task's `mask_ids`).
    """
    B, L = target.shape
    hit = (torch.rand((B, L), generator=generator, device=target.device) < t[:, None]) & corruptible
    mask = torch.as_tensor(mask_id, device=target.device).expand(B, L)
    return torch.where(hit, mask, target), hit


def order_hits(hit: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
    """Move each row's hits onto its highest-`key` positions, keeping how many: (B, L) bool -> (B, L) bool.

    key (B, L) float, -inf where a position may not be hit. With random keys the result has the distribution of
    `hit`; with a solving order as the key, the positions a solver would fill last are the corrupted ones.
    Example: hit [[T, F, T, F]], key [[0, 3, 1, 2]] -> [[F, T, F, T]].
    """
    order = key.argsort(-1, descending=True)
    ranked = torch.arange(hit.shape[-1], device=hit.device)[None] < hit.sum(-1, keepdim=True)
    return torch.zeros_like(hit).scatter_(1, order, ranked)


def mask_ids(kind: str, batch: dict):
    """The batch's per-position mask tokens for absorbing noise (None for uniform noise); a clear error when
    the task's tokenizer has no mask token."""
    if kind != "mask":
        return None
    if "mask_ids" not in batch:
        raise ValueError("noise.kind=mask: the task's tokenizer has no mask token; use noise=uniform")
    return batch["mask_ids"]


def absorbing_ids(batch: dict) -> torch.Tensor:
    """The token ids absorbing noise writes, never an answer anywhere: the batch's `absorbing_ids` where its
    `mask_ids` also hold other tokens (tokens=text keeps the answer's layout tokens there), else its `mask_ids`."""
    if "absorbing_ids" in batch:
        return batch["absorbing_ids"]
    return torch.unique(batch["mask_ids"])


def corrupt(kind: str, target, t, corruptible, support, mask_id, generator=None):
    """Dispatch on `noise.kind` ("uniform" or "mask")."""
    if kind == "uniform":
        return corrupt_uniform(target, t, corruptible, support, generator)
    if kind == "mask":
        return corrupt_mask(target, t, corruptible, mask_id, generator)
    raise ValueError(f"noise.kind={kind!r}: expected 'uniform' or 'mask'")
