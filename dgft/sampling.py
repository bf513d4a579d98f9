"""dgft's denoising loop over the model's forward, with pinned positions and per-step constraints.

transformers' `generate()` renoises any canvas it is given, so it cannot keep a Sudoku's givens or an
infill's prefix; this loop can. One encoder pass per batch, then per step: a decoder pass (fed the
previous step's logits as self-conditioning), the constraints of the mode, an acceptance rule that fixes
some positions for good, and fresh noise on the rest.

Modes: `free` pins nothing (except the positions a batch marks `always_pinned`: context rather than answer,
such as an infill's given length) and lets each position take any vocabulary token; `clamped` pins the fixed
positions and restricts every position to its answer tokens (and, where a batch has `allowed` (B, L, K), to
those of its choices the example allows); `rules` is clamped plus the task's
`rule_mask` (for Sudoku: no digit already fixed among a cell's peers), applied against everything fixed
so far, including earlier acceptances of the same step. No search, no backtracking: a cell the rules leave
without any digit is left empty (token [PAD]) rather than filled with a rule-breaking digit.

With `sampler.reprompt` every acceptance also moves into the encoder's prompt (the task's `known_prompt`) and
the prompt is encoded again, so the model reads what is fixed as given rather than guessing which canvas
tokens are noise; a model trained with `noise.known_in_prompt` expects it.

With `sampler.views` > 1 (`clamped` and `rules`; tasks with `views`, i.e. Sudoku) the model reads each puzzle in
that many symmetric forms per step (view 0 is the puzzle itself; the others relabel digits and swap lines, as
training's augmentation does), and the acceptance uses the average of their answer log-probabilities, mapped
back to the puzzle: test-time augmentation. Everything else (pins, rules, acceptance) happens on the puzzle.

`sampler.self_conditioning_from=rules` (`rules` mode): the next pass reads its own logits without the digits a
peer already holds at the open cells (each view in its own layout), so the model reads the candidates the rules
leave, as a model trained with `task.sc_rules_p` saw them; `model` (the default) feeds the logits back as they are.

`sampler.passes=P` runs P decoder passes per step before accepting, each self-conditioned on the one before
(the recurrence self-conditioning trains, run longer): P times the time.

How this differs from transformers' `generate()` for DiffusionGemma (checked against its source): the entropy
rule's formula is the same (entropies ranked lowest first, the largest k whose sum minus max stays within the bound,
at least one a step), but there every step re-decides over all positions, so an accepted token is sampled again and
can fall back to noise, while here an acceptance is final (what pinning needs) and the bound is summed over the
open positions only; the answer here is the accepted tokens (samples, at temperature > 0), there the last step's
argmax everywhere; `generate()` anneals its temperature (0.8 to 0.4) and feeds back tempered logits as
self-conditioning, while this loop keeps one temperature (0: argmax, acceptance reading the model's own
probabilities) and feeds back the raw logits, as training does.

`sampler.fill_forced` (`rules` mode) fills, before each step's decoder pass, every open position the rules leave
a single choice (for Sudoku, a naked single), wave after wave until none is left, without spending a step or a
model call on it. The one-cell-per-step sampler accepts such positions first anyway (their probability is 1 once
the rules renormalise it), at one model call each; filling them at once spends the calls on the model's own
decisions only. Those are made on the same states, but the self-conditioning the first pass reads then comes from
a pass some cells back rather than one: each skipped step was also a pass carried forward, and with 32 views that
cost 6 of 134 harder held-out puzzles (eval/RESULTS.md, session 18). Two positions forced to the same choice among peers (a state already
wrong) are filled one at a time, so the second is rejected and left empty, never filled against the rules.

`sampler.revise=R` (uniform noise, where the model scores every position, clean or not) lets the model take back
its own acceptances: after each step's acceptances, of the unpinned positions accepted in earlier steps, the one
whose token the model now gives the lowest probability is reopened (renoised, and out of the prompt) if that
probability is below R: at most one per example per step, never on the last step. The model decides, not the
rules: a cell the rules leave without a digit stays open (rather than empty) while steps remain, so the model may
revise a peer; whatever is still open at the last step is left empty as before. A model trained with
`task.wrong_known_p` has seen wrong digits among the known cells and learned to doubt them.

Example: `sample(model, batch, task, cfg.sampler, mode="rules", noise_kind="uniform")` -> SampleResult
with canvas (B, L) tokens and steps (B,) used.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from dgft import noise as N
from dgft.config import NOISE_KINDS, NOISE_SUPPORTS, check_sampler_values
from dgft.model import denoise, encode, forbid_answers

MODES = ("free", "clamped", "rules")


@dataclass
class SampleResult:
    canvas: torch.Tensor  # (B, L) final tokens ([PAD] where rules left a cell empty)
    steps: torch.Tensor  # (B,) sampler steps until every position was accepted (each runs passes x views model calls)
    history: list = field(default_factory=list)  # per step (canvas (B, L), accepted (B, L)) if recorded
    revisions: torch.Tensor | None = None  # (B,) acceptances taken back (sampler.revise)


# --- acceptance rules (pure) ----------------------------------------------------------------------
def entropy(probs: torch.Tensor) -> torch.Tensor:
    """(..., K) probabilities -> (...) entropy in nats."""
    return -(probs * probs.clamp_min(1e-12).log()).sum(-1)


def accept_count(score: torch.Tensor, open_: torch.Tensor, rule: str, step: int, steps: int,
                 entropy_bound: float = 0.1, confidence: float = 0.9, ent: torch.Tensor | None = None):
    """How many open positions each example accepts this step, and their order.

    score (B, L): higher = more certain (max probability); ent (B, L) entropies; open_ (B, L) bool.
    Returns (order (B, L) positions by decreasing certainty, count (B,) >= 1 where anything is open).
    `entropy`: positions ranked by increasing entropy, the largest k with sum - max <= bound (DiffusionGemma's
    rule); `confidence`: positions with max probability >= confidence; `fixed`: ceil(open / steps left), ranked by
    max probability. The last step accepts everything still open.
    """
    n_open = open_.sum(-1)
    certainty = -ent if rule == "entropy" else score  # the entropy rule ranks as DiffusionGemma's sampler does
    key = torch.where(open_, certainty, torch.full_like(score, -math.inf))
    order = key.argsort(-1, descending=True)
    if step >= steps - 1:
        count = n_open
    elif rule == "fixed":
        count = torch.ceil(n_open / (steps - step)).long()
    elif rule == "confidence":
        count = ((score >= confidence) & open_).sum(-1)
    elif rule == "entropy":
        e = torch.gather(torch.where(open_, ent, torch.full_like(ent, math.inf)), 1, order)
        e = torch.nan_to_num(e, posinf=1e9)
        bound = e.cumsum(-1) - e.cummax(-1).values
        count = (bound <= entropy_bound).sum(-1)
    else:
        raise ValueError(f"sampler.acceptance={rule!r}: expected entropy, confidence or fixed")
    return order, torch.minimum(count.clamp_min(1), n_open)


# --- the loop -------------------------------------------------------------------------------------
@torch.no_grad()
def sample(model, batch: dict, task, scfg, mode: str, noise_kind: str = "uniform", support: str = "answer",
           generator=None, record: bool = False, pad_id: int = 0) -> SampleResult:
    """`generator`: the noise's and a tempered pick's; a torch.Generator (one stream for the batch),
    `noise.RowGenerators` (one per example: each example's draws independent of the rest of the batch), or None."""
    if mode not in MODES:
        raise ValueError(f"sampling mode {mode!r}: expected one of {', '.join(MODES)}")
    if noise_kind not in NOISE_KINDS or support not in NOISE_SUPPORTS:
        raise ValueError(f"noise_kind={noise_kind!r}, support={support!r}: expected noise_kind "
                         f"{' or '.join(NOISE_KINDS)} and support {' or '.join(NOISE_SUPPORTS)} (the run's noise.kind "
                         "and support)")
    check_sampler_values(scfg)  # dgft's commands checked them already; a caller of its own may not have
    device = next(model.parameters()).device
    prompt_ids, prompt_mask = batch["prompt_ids"].to(device), batch["prompt_mask"].to(device)
    target, choices = batch["target"].to(device), batch["choices"].to(device)  # (B, L), (L, K)
    n = batch.get("size")
    B, L = target.shape
    vocab = model.config.text_config.vocab_size if hasattr(model.config, "text_config") else model.config.vocab_size
    prior = choices if support == "answer" else vocab
    if isinstance(generator, torch.Generator) and generator.device != device:  # a host one seeds one on the device
        generator = torch.Generator(device).manual_seed(int(torch.randint(2**62, (1,), generator=generator)))

    mask_ids = N.mask_ids(noise_kind, batch)  # (L,) per-position mask tokens, for absorbing noise
    example_choices = batch["allowed"].to(device) if "allowed" in batch else None  # (B, L, K) bool, if any

    def noise_like(copies: int = 1):  # (copies * B, L), copy-major: copy c of example b is row c * B + b
        if noise_kind == "mask":
            return mask_ids.to(device)[None].expand(copies * B, L).clone()
        if isinstance(generator, N.RowGenerators):  # each example's copies in one host draw
            return N.draw(prior, (copies * B, L), generator, device)
        # a copy per draw: a CUDA generator lays out one long draw differently, and view_batch must not matter
        return torch.cat([N.draw(prior, (B, L), generator, device) for _ in range(copies)])

    if mode != "free":
        pinned = batch["fixed"].to(device)
    elif "always_pinned" in batch:
        pinned = batch["always_pinned"].to(device)
    else:
        pinned = torch.zeros_like(target, dtype=torch.bool)
    reprompt = bool(getattr(scfg, "reprompt", False))
    if reprompt and not hasattr(task, "known_prompt"):
        raise ValueError(f"sampler.reprompt=true: task {getattr(task, 'name', task)!r} cannot rebuild its prompt "
                         "from accepted positions; set sampler.reprompt=false")
    givens = batch["fixed"].to(device)
    canvas = torch.where(pinned, target, noise_like())
    accepted, empty = pinned.clone(), torch.zeros_like(pinned)
    steps_used = torch.zeros(B, dtype=torch.long, device=device)
    revisions = torch.zeros(B, dtype=torch.long, device=device)
    views = None
    if int(getattr(scfg, "views", 1)) > 1 and mode != "free":
        if not hasattr(task, "views"):
            raise ValueError(f"sampler.views={scfg.views}: task {getattr(task, 'name', task)!r} has no symmetric views "
                             "of an example; set sampler.views=1")
        views = _Views(model, task, scfg, n, choices, target, givens, noise_like)
        views.encode(canvas, accepted)
    else:
        cache = encode(model, prompt_ids, prompt_mask)
    sc_logits, history = None, []
    sc_from = getattr(scfg, "self_conditioning_from", "model")
    passes = int(getattr(scfg, "passes", 1)) if scfg.self_conditioning else 1
    revise = float(getattr(scfg, "revise", 0.0))
    if revise > 0 and noise_kind != "uniform":
        raise ValueError(f"sampler.revise={revise}: needs uniform noise (a mask-noise model never scores an unmasked "
                         "token); set sampler.revise=0")
    fill = bool(getattr(scfg, "fill_forced", False)) and mode == "rules"
    stale = False  # accepted cells not yet in the encoder's prompt (sampler.reprompt)

    def shown(canvas):  # the canvas with [PAD] where the rules left a cell empty: the answer, and its pictures
        return torch.where(empty, torch.full_like(canvas, pad_id), canvas)

    for step in range(scfg.steps):
        if fill:
            canvas, filled = fill_forced(canvas, ~accepted, accepted & ~empty, task, choices, n)
            accepted |= filled
            stale |= bool(filled.any())
        open_ = ~accepted
        if not open_.any():
            if record and fill and filled.any():  # the last wave of forced cells finished every puzzle
                history.append((shown(canvas).cpu(), accepted.clone().cpu()))
            break
        known = accepted & ~empty  # what the rules, the prompt and the views count this step
        if reprompt and stale:  # re-encode only before a decoder pass that reads it
            if views is not None:
                views.encode(canvas, known)
            else:
                prompt_ids, prompt_mask = task.known_prompt(target, givens, canvas, known, n)
                cache = encode(model, prompt_ids, prompt_mask)
            stale = False
        steps_used += open_.any(-1).long()
        allowed = task.rule_mask(_choice_index(canvas, choices), known, n) if mode == "rules" else None
        feed_rules = allowed is not None and sc_from == "rules" and scfg.self_conditioning
        forbid = ~allowed & open_[..., None] if feed_rules else None
        for _ in range(passes):  # each pass after the first reads the one before as self-conditioning
            if views is not None:
                scores = views.scores(canvas, known)  # (B, L, K) mean log-probabilities over the views
            else:
                logits = denoise(model, cache, canvas, prompt_mask, sc_logits=sc_logits)  # (B, L, V)
                sc_logits = logits if scfg.self_conditioning else None
            if forbid is not None:  # the next pass reads what the rules leave
                if views is not None:
                    views.forbid(forbid)
                else:
                    sc_logits = forbid_answers(sc_logits, choices, forbid)
        if mode == "free":
            scores = belief = logits
            if noise_kind == "mask":  # the mask token is the noise, never an answer (MDLM's -inf on its logit)
                scores = belief = logits.index_fill(-1, N.absorbing_ids(batch).to(device), -math.inf)
        else:
            if views is None:
                scores = torch.gather(logits, 2, choices[None].expand(B, L, -1))  # (B, L, K)
            if example_choices is not None:
                scores = scores.masked_fill(~example_choices, -math.inf)
            belief = scores  # the model's own, before the rules: what judges earlier acceptances (revise)
            if mode == "rules":
                scores = scores.masked_fill(~allowed, -math.inf)
        revising = revise > 0 and step < scfg.steps - 1  # never on the last step: what is open then stays empty
        no_digit = torch.isinf(scores).all(-1)
        stuck = no_digit & open_  # rules left no digit: never filled; left empty (while revising, kept open)
        dead = torch.zeros_like(stuck) if revising else stuck
        scores = scores.masked_fill(no_digit[..., None], 0.0)
        probs = _probs(scores, scfg.temperature)
        pick = _pick(probs, scfg.temperature, generator)  # (B, L) index into scores' last dim
        certainty = probs.max(-1).values
        order, count = accept_count(certainty, open_ & ~stuck, scfg.acceptance, step, scfg.steps,
                                    scfg.entropy_bound, scfg.confidence, ent=entropy(probs))
        tokens = pick if mode == "free" else _token_of(pick, choices)
        new = _accept(order, count, open_ & ~stuck, tokens, canvas, known, task, choices, n, mode)
        reopened = torch.zeros_like(new)
        if revising:
            # only in puzzles still sampling: one already finished would stop here alone, so its batch changes nothing
            reopened = doubted(belief, canvas, known & ~pinned & open_.any(-1, keepdim=True), choices, mode, revise)
            revisions += reopened.sum(-1)
        canvas = torch.where(new, tokens, canvas)
        accepted = (accepted | new | dead) & ~reopened
        empty |= dead
        # an empty cell reads as noise, as an open one does and as every view reads it (training never shows [PAD])
        canvas = torch.where(accepted & ~empty, canvas, noise_like())
        stale |= bool(new.any() or reopened.any())
        if record:
            history.append((shown(canvas).cpu(), accepted.clone().cpu()))
    # Out of steps with positions still open (rules rejected a same-step conflict): leave them empty.
    canvas = torch.where(accepted & ~empty, canvas, torch.full_like(canvas, pad_id))
    return SampleResult(canvas=canvas, steps=steps_used, history=history, revisions=revisions)


class _Views:
    """The symmetric views of `sampler.views`: each with its own prompt, encoder cache and self-conditioning.

    The task's `views(n, count)` gives (cells (V, L), digits (V, K)): view v's position j shows cell cells[v, j],
    and answer index k of a cell appears there as digits[v, k]. Its prompt is the task's `known_prompt` of the
    view (the givens, plus the accepted cells when `sampler.reprompt` re-encodes after each step).

    Views run `sampler.view_batch` at a time (0: all) as one model call over a batch of (views x B) rows, view-major:
    on a GPU, where a small model's step costs its kernel launches, that is one call instead of V (on a CPU, which
    is compute-bound, one view per call is faster). A view's prompt has as many known cells as the puzzle's, so the
    views of a chunk share the prompt length.
    """

    def __init__(self, model, task, scfg, n, choices, target, givens, noise_like):
        cells, digits = task.views(n, int(scfg.views))
        device = target.device
        self.cells, self.digits = cells.to(device), digits.to(device)
        self.digit_back = self.digits.argsort(-1)  # view answer index -> the puzzle's
        self.back = self.cells.argsort(-1)  # position of each cell in each view
        self.model, self.task, self.n, self.choices, self.noise_like = model, task, n, choices, noise_like
        self.self_conditioning = bool(scfg.self_conditioning)
        self.target = _choice_index(target, choices)  # (B, L) answer index of the solution
        self.givens = givens
        V = self.cells.shape[0]
        size = int(getattr(scfg, "view_batch", 1)) or V  # a run saved before the setting: one view per call
        self.chunks = [list(range(s, min(s + size, V))) for s in range(0, V, size)]  # view numbers per model call
        self.chunk_index = [torch.tensor(vs, device=device) for vs in self.chunks]  # the same, to index with
        self.caches, self.masks, self.sc = ([None] * len(self.chunks) for _ in range(3))

    def _at(self, vs: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """(B, L, ...) per cell of the puzzle -> (len(vs) * B, L, ...) at each position of views vs (an index
        tensor), view-major."""
        return values[:, self.cells[vs]].transpose(0, 1).flatten(0, 1)

    def _tokens(self, vs: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """(B, L) answer indices of the puzzle's cells -> (len(vs) * B, L) the tokens of views vs (an index tensor)
        at their positions."""
        B, L = index.shape
        viewed = self.digits[vs][:, None, None, :].expand(-1, B, L, -1)  # (C, B, L, K)
        viewed = torch.gather(viewed, 3, index[:, self.cells[vs]].transpose(0, 1)[..., None])[..., 0]  # (C, B, L)
        return _token_of(viewed, self.choices).flatten(0, 1)

    def encode(self, canvas: torch.Tensor, known: torch.Tensor) -> None:
        """Encode every view's prompt: its givens, and the `known` cells of the canvas (B, L) when re-prompting."""
        index = _choice_index(canvas, self.choices)
        for c, vs in enumerate(self.chunk_index):
            givens = self._at(vs, self.givens)
            ids, mask = self.task.known_prompt(self._tokens(vs, self.target), givens, self._tokens(vs, index),
                                               self._at(vs, known) & ~givens, self.n)
            self.caches[c], self.masks[c] = encode(self.model, ids, mask), mask

    def scores(self, canvas: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
        """A decoder pass per chunk of views -> (B, L, K) the views' answer log-probabilities, averaged, on the
        puzzle."""
        index = _choice_index(canvas, self.choices)
        B, L = canvas.shape
        total = 0.0
        for c, (views, vs) in enumerate(zip(self.chunks, self.chunk_index)):
            noise = self.noise_like(len(views))  # (B, L) per view, view-major
            view_canvas = torch.where(self._at(vs, known), self._tokens(vs, index), noise)
            logits = denoise(self.model, self.caches[c], view_canvas, self.masks[c], sc_logits=self.sc[c])
            self.sc[c] = logits if self.self_conditioning else None
            rows = len(views) * B
            logp = torch.gather(logits, 2, self.choices[None].expand(rows, L, -1)).log_softmax(-1)  # views' frames
            for i, v in enumerate(views):  # summed view by view, in order: the same rounding for any chunking
                total = total + logp[i * B:(i + 1) * B][:, self.back[v]][:, :, self.digits[v]]
        return total / len(self.cells)

    def forbid(self, forbid: torch.Tensor) -> None:
        """Remove the puzzle's `forbid` (B, L, K) answers from each view's self-conditioning logits, laid out in
        the view's cells and digits (`sampler.self_conditioning_from=rules`)."""
        for c, views in enumerate(self.chunks):
            if self.sc[c] is not None:
                viewed = torch.cat([forbid[:, self.cells[v]][:, :, self.digit_back[v]] for v in views])
                self.sc[c] = forbid_answers(self.sc[c], self.choices, viewed)


def _probs(scores, temperature: float):
    t = temperature if temperature > 0 else 1.0
    return torch.softmax(scores / t, dim=-1)


def _pick(probs, temperature: float, generator):
    if temperature <= 0:
        return probs.argmax(-1)
    if isinstance(generator, N.RowGenerators):
        return generator.multinomial(probs)
    B, L, K = probs.shape
    return torch.multinomial(probs.reshape(-1, K), 1, generator=generator).reshape(B, L)


def doubted(scores, canvas, revisable, choices, mode: str, below: float):
    """(B, L) bool: in each example, the `revisable` position whose current token has the lowest probability under
    `scores` (B, L, K: answer scores, or (B, L, V) logits in `free` mode), if that probability is below `below`."""
    current = canvas if mode == "free" else _choice_index(canvas, choices)
    prob = torch.softmax(scores, -1).gather(2, current[..., None])[..., 0]
    prob = torch.nan_to_num(prob, nan=1.0).masked_fill(~revisable, math.inf)
    low, where = prob.min(-1)
    out = torch.zeros_like(revisable)
    rows = torch.nonzero(low < below)[:, 0]
    out[rows, where[rows]] = True
    return out


def fill_forced(canvas, open_, known, task, choices, n):
    """Fill every open position the rules leave exactly one choice, wave after wave until none is left.

    canvas (B, L) tokens; open_ (B, L) bool, the positions still to fill; known (B, L) bool, those whose tokens the
    rules count (accepted and not left empty).
    Returns (canvas with the filled tokens, filled (B, L) bool). Within a wave the positions go in order, each
    checked against the rules with the ones before it (`_accept`), so two peers forced to the same choice never
    both take it: the second waits, and with no choice left it is never filled here.
    """
    filled = torch.zeros_like(known)
    while True:
        index = _choice_index(canvas, choices)
        allowed = task.rule_mask(index, known | filled, n)  # (B, L, K)
        forced = open_ & ~filled & (allowed.sum(-1) == 1)
        if not forced.any():
            return canvas, filled
        tokens = _token_of(allowed.float().argmax(-1), choices)  # (B, L)
        order = (~forced).long().argsort(dim=-1, stable=True)  # forced positions first, in position order
        new = _accept(order, forced.sum(-1), forced, tokens, canvas, known | filled, task, choices, n, "rules")
        canvas = torch.where(new, tokens, canvas)
        filled |= new


def _choice_index(canvas, choices):
    """(B, L) index of each canvas token within its position's choices (0 where absent)."""
    return (canvas[..., None] == choices[None]).float().argmax(-1)


def _token_of(index, choices):
    """(..., L) answer indices -> the tokens they stand for at each position (choices (L, K)): `_choice_index`'s
    inverse."""
    return choices[torch.arange(choices.shape[0], device=index.device), index]


def _accept(order, count, open_, tokens, canvas, accepted, task, choices, n, mode):
    """(B, L) bool of positions accepted this step.

    In `rules` mode acceptances go one rank at a time, each checked against the rules with everything
    accepted so far, so two peers never take the same digit in one step; a rejected one waits.
    """
    B, L = canvas.shape
    rank = torch.arange(L, device=canvas.device)[None, :]
    chosen = torch.zeros_like(open_)
    chosen.scatter_(1, order, rank < count[:, None])
    chosen &= open_
    if mode != "rules" or int(count.max()) <= 1:
        return chosen
    new = torch.zeros_like(chosen)
    state, acc = canvas.clone(), accepted.clone()
    for r in range(int(count.max())):
        pos = order[:, r]
        take = chosen.gather(1, pos[:, None])[:, 0]
        if not take.any():
            continue
        allowed = task.rule_mask(_choice_index(state, choices), acc, n)  # (B, L, K)
        tok = tokens.gather(1, pos[:, None])[:, 0]
        k = (tok[:, None] == choices[pos]).float().argmax(-1)
        ok = take & allowed[torch.arange(B), pos, k]
        if r == 0:
            ok = take  # the best candidate was already filtered by the rule mask
        idx = torch.arange(B, device=canvas.device)[ok]
        new[idx, pos[ok]] = True
        state[idx, pos[ok]] = tok[ok]
        acc[idx, pos[ok]] = True
    return new
