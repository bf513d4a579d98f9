"""Code infilling as a denoising task: prompt, canvas, end marker, fixed positions and decoding.

Example (canvas_length=8): prefix "def f(x):\n", middle "    y = x\n", suffix "    return y\n" give the
encoder prompt `[BOS] [PRE] def| f|(|x|):|\n [SUF]    | return| y|\n [MID]` (BPE tokens split by |) and the
canvas target `   | y| =| x|\n [EOS] [PAD] [PAD]`: the middle's tokens, the end marker, padding. Prefix and
suffix are tokenized on their own, the prefix cut from the left and the suffix from the right so the prompt
fits `prompt_tokens`; when one side is short the other gets its share.

The canvas has a fixed length, so the model says where the middle ends by writing [EOS]; `decode` reads up
to the first [EOS]. Scored (graded): the middle and its [EOS]. Loss weight (`weight`): 1 there, `pad_weight`
(default 0.1) on the padding after it. Padding carries no information but is most of a short middle's
canvas: at full weight it swamps the loss (on a toy copy task learning was seed-sensitive until it was
down-weighted), at weight 0 the sampler's padding positions would be left to chance.

Nothing is fixed, except: with `oracle_length` the [EOS] and the padding after the true end are pinned, so
the model is given the length (the "oracle" evaluation, and a share `oracle_length_p` of training); with
`canvas_prefix_tokens = c > 0` the canvas starts with the last c prefix tokens, pinned, so the decoder also
sees the left context in its own bidirectional attention. Every canvas position may hold any ordinary
token, [EOS] or [PAD] (`choices`); there is no `rules` mode.

Middles longer than `canvas_length - canvas_prefix_tokens - 1` tokens do not fit: `fits` says which, and
the data side skips and counts them. A pretrained model's own tokenizer works when it has fill-in-the-middle
markers (`[PRE]`, `<|fim_prefix|>`, ...), which are read from its vocabulary.
"""
from __future__ import annotations

import numpy as np
import torch

from dgft.config import InfillTaskConfig
from dgft.tasks import left_pad
from dgft.tasks.infill import tokenizer as T

MARKERS = {"pre": ("[PRE]", "<|fim_prefix|>", "<fim_prefix>"), "suf": ("[SUF]", "<|fim_suffix|>", "<fim_suffix>"),
           "mid": ("[MID]", "<|fim_middle|>", "<fim_middle>")}
CHARS_PER_TOKEN_CAP = 8  # prefix/suffix text is cut to prompt_tokens * this before tokenizing (saves time only)


InfillConfig = InfillTaskConfig  # the task's settings; the schema, a comment per field, is in dgft/config.py

_DEFAULTS = InfillConfig()


def setting(cfg, key: str):
    """A setting from a task config (dataclass, DictConfig, namespace), or its default when the config lacks it."""
    return getattr(cfg, key, getattr(_DEFAULTS, key))


class InfillTask:
    """Renders infilling examples into tensors and decodes canvases. One object per run (holds the tokenizer)."""

    name = "infill"

    def __init__(self, cfg=None, tokenizer=None):
        self.cfg = cfg
        self.canvas_length = int(setting(cfg, "canvas_length"))
        self.prompt_tokens = int(setting(cfg, "prompt_tokens"))
        self.context = int(setting(cfg, "canvas_prefix_tokens"))
        self.pad_weight = float(setting(cfg, "pad_weight"))
        if self.canvas_length < self.context + 2:
            raise ValueError(f"canvas_length={self.canvas_length}: needs room for canvas_prefix_tokens="
                             f"{self.context}, one middle token and [EOS]")
        if self.prompt_tokens < 8:
            raise ValueError(f"prompt_tokens={self.prompt_tokens}: too small for [BOS] [PRE] [SUF] [MID] and context")
        self.tokenizer = None
        if tokenizer is not None:
            self.use_tokenizer(tokenizer)

    # --- tokenizer --------------------------------------------------------------------------------
    def build_tokenizer(self, texts=None):
        """Train the byte-level BPE on `texts` (default: the training split's files, cached per corpus)."""
        if texts is None:
            from dgft.tasks.infill.data import corpus_tokenizer

            tok = corpus_tokenizer(self.cfg)
        else:
            tok = T.train_tokenizer(texts, vocab_size=int(setting(self.cfg, "vocab_size")))
        self.use_tokenizer(tok)
        return tok

    def use_tokenizer(self, tok) -> None:
        """Read the special and marker ids from a tokenizer (the run's, or a pretrained model's)."""
        vocab = tok.get_vocab()
        self.tokenizer = tok
        self.pad, self.eos, self.bos = tok.pad_token_id, tok.eos_token_id, tok.bos_token_id
        if None in (self.pad, self.eos, self.bos):
            raise ValueError("tokenizer: needs pad, eos and bos tokens")
        self.markers = {}
        for key, names in MARKERS.items():
            found = next((vocab[n] for n in names if n in vocab), None)
            if found is None:
                raise ValueError(f"tokenizer has no fill-in-the-middle marker for {key} (tried {', '.join(names)}); "
                                 "add one with tokenizer.add_special_tokens and resize the embeddings")
            self.markers[key] = found
        special = set(tok.all_special_ids) | set(self.markers.values())
        ordinary = [i for i in range(len(tok)) if i not in special]
        self._choices = torch.tensor([self.pad, self.eos] + ordinary, dtype=torch.long)
        self._special = torch.zeros(len(tok), dtype=torch.bool)
        self._special[sorted(special)] = True

    @property
    def vocab_size(self) -> int:
        if self.tokenizer is None:
            return int(setting(self.cfg, "vocab_size"))
        return len(self.tokenizer)

    def _ids(self, texts: list[str]) -> list[list[int]]:
        if self.tokenizer is None:
            raise RuntimeError("InfillTask has no tokenizer yet: call build_tokenizer() or pass tokenizer=")
        if not texts:
            return []
        return self.tokenizer(texts, add_special_tokens=False)["input_ids"]

    # --- sizes ------------------------------------------------------------------------------------
    def middle_tokens(self, examples: list[dict]) -> np.ndarray:
        """(B,) number of tokens of each middle."""
        return np.array([len(ids) for ids in self._ids([e["middle"] for e in examples])], dtype=np.int64)

    def fits(self, examples: list[dict]) -> np.ndarray:
        """(B,) bool: the middle, its [EOS] and the canvas prefix fit the canvas."""
        return self.middle_tokens(examples) + 1 + self.context <= self.canvas_length

    def choices(self, L: int | None = None) -> torch.Tensor:
        """(L, K) token ids a canvas position may hold: [PAD], [EOS] and every ordinary token (a view)."""
        L = L or self.canvas_length
        return self._choices[None, :].expand(L, -1)

    # --- batches ----------------------------------------------------------------------------------
    def encode(self, examples: list[dict], oracle_length=None) -> dict:
        """Tensors for a batch of examples (dicts with prefix, middle, suffix) -> dict.

        prompt_ids/prompt_mask (B, P) left-padded; target (B, L) [canvas prefix] middle [EOS] [PAD]...; fixed (B, L)
        pinned positions; scored (B, L) the middle and [EOS] (what is graded); weight (B, L) float loss weight
        (1 where scored, pad_weight on unpinned padding, 0 elsewhere); choices (L, K); lengths (B,) middle tokens;
        always_pinned (B, L) the fixed positions again: they are context (the canvas prefix, the given length),
        so even `free` sampling keeps them; with an oracle length, allowed (B, L, K): [PAD] and [EOS] (the first
        two choices) are not allowed before the true end.
        `oracle_length`: bool, or (B,) bools, to pin [EOS] and the padding after the true end.
        """
        B, L, c = len(examples), self.canvas_length, self.context
        cut = self.prompt_tokens * CHARS_PER_TOKEN_CAP
        pre = self._ids([e["prefix"][-cut:] for e in examples])
        suf = self._ids([e["suffix"][:cut] for e in examples])
        mid = self._ids([e["middle"] for e in examples])
        oracle = np.broadcast_to(np.asarray(bool(oracle_length) if oracle_length is None else oracle_length,
                                            dtype=bool), (B,))
        avail = self.prompt_tokens - 4
        prompts = []
        target = torch.full((B, L), self.pad, dtype=torch.long)
        fixed = torch.zeros((B, L), dtype=torch.bool)
        scored = torch.zeros((B, L), dtype=torch.bool)
        for b in range(B):
            p, s, m = pre[b], suf[b], mid[b]
            if len(m) + 1 + c > L:
                raise ValueError(f"{examples[b].get('path', 'example')} ({examples[b].get('function', '')}): middle "
                                 f"of {len(m)} tokens does not fit canvas_length={L}; filter with task.fits")
            s_take = min(len(s), max(avail // 2, avail - len(p)))
            p_take = min(len(p), avail - s_take)
            prompts.append([self.bos, self.markers["pre"]] + p[len(p) - p_take:] + [self.markers["suf"]] + s[:s_take]
                           + [self.markers["mid"]])
            if c:
                ctx = p[max(0, len(p) - c):]
                target[b, c - len(ctx):c] = torch.tensor(ctx, dtype=torch.long)
                fixed[b, :c] = True
            end = c + len(m)
            target[b, c:end] = torch.tensor(m, dtype=torch.long)
            target[b, end] = self.eos
            scored[b, c:end + 1] = True
            if oracle[b]:
                fixed[b, end:] = True
        scored &= ~fixed
        extra = {}
        if oracle.any():  # clamped sampling: with the length given, no [PAD] or [EOS] before the end
            before_end = torch.arange(L)[None, :] < torch.tensor([c + len(m) for m in mid])[:, None]  # (B, L)
            allowed = torch.ones((B, L, len(self._choices)), dtype=torch.bool)
            allowed[:, :, :2] = ~(torch.tensor(oracle.tolist())[:, None] & before_end)[..., None]
            extra["allowed"] = allowed
        padding = (torch.arange(L)[None, :] > torch.tensor([c + len(m) for m in mid])[:, None]) & ~fixed
        weight = scored.float() + self.pad_weight * padding.float()
        prompt_ids, prompt_mask = left_pad(prompts, self.pad)
        return {"prompt_ids": prompt_ids, "prompt_mask": prompt_mask, "target": target, "fixed": fixed,
                "scored": scored, "weight": weight, "choices": self.choices(L), "always_pinned": fixed,
                "lengths": torch.tensor([len(m) for m in mid], dtype=torch.long), **extra}

    # --- reading answers --------------------------------------------------------------------------
    def decode(self, canvas: torch.Tensor) -> list[str]:
        """(B, L) token ids -> the middle of each row: tokens after the canvas prefix up to the first [EOS].

        Special tokens before the [EOS] ([PAD] where a sampler left a position empty) are dropped.
        """
        out = []
        special = self._special.to(canvas.device)
        for row in canvas[:, self.context:]:
            ends = (row == self.eos).nonzero()
            row = row[:int(ends[0])] if len(ends) else row
            known = row < len(special)  # a model's vocabulary may be padded past the tokenizer's
            row = row[known & ~special[row.clamp(0, len(special) - 1)]]
            out.append(self.tokenizer.decode(row.tolist()))
        return out

    def score(self, predictions: list[str], examples: list[dict]) -> dict:
        """Exact match of predicted middles, overall and per kind.

        `exact`: the same string, indentation and newlines included; `exact_lines`: equal up to trailing
        whitespace on each line and trailing blank lines (HumanEval-Infilling's `exact_match`).
        """
        from dgft.tasks.infill.humaneval import exact_match

        rows = [(p == e["middle"], exact_match(p, e["middle"]), e.get("kind", ""))
                for p, e in zip(predictions, examples)]
        out = {"n": len(rows)}
        for kind in [None] + sorted({k for _, _, k in rows}):
            sel = [r for r in rows if kind is None or r[2] == kind]
            head = "" if kind is None else f"{kind}_"
            out[f"{head}exact"] = float(np.mean([r[0] for r in sel])) if sel else 0.0
            out[f"{head}exact_lines"] = float(np.mean([r[1] for r in sel])) if sel else 0.0
        return out

    # --- data for the trainer (dgft.train) -------------------------------------------------------
    def build_splits(self, seed: int, log=print):
        """The cached DatasetDict {"train": files, "heldout": examples}. The split is seeded by `split_seed`,
        not the run's seed, so every run of a corpus is evaluated on the same held-out examples."""
        from dgft.tasks.infill.data import build_splits

        return build_splits(self.cfg, log=log)

    def write_heldout(self, heldout, data_dir) -> None:
        """RUN/data/heldout.jsonl.gz: the held-out examples, one JSON object a line, for `dgft eval RUN`."""
        import gzip
        import json
        from pathlib import Path

        with gzip.open(Path(data_dir) / "heldout.jsonl.gz", "wt", encoding="utf-8") as f:
            for row in heldout:
                f.write(json.dumps(dict(row)) + "\n")

    def train_batches(self, train, batch_size: int, seed: int):
        from dgft.tasks.infill.data import InfillBatches

        return InfillBatches(train, self, self.cfg, batch_size, seed)

    def eval_batches(self, heldout, count: int) -> list[dict]:
        """One fixed batch of `count` held-out examples that fit, taken in turn from each kind (model's length)."""
        from dgft.tasks.infill.data import heldout_examples

        rows, _ = heldout_examples(heldout, self, log=lambda *_: None)
        by_kind: dict[str, list] = {}
        for r in rows:
            by_kind.setdefault(r["kind"], []).append(r)
        picked = [r for group in zip(*by_kind.values()) for r in group][:count] if by_kind else []
        if not picked:
            return []
        return [{**self.encode(picked), "examples": picked}]

    @torch.no_grad()
    def quick_eval(self, model, batches: list[dict], cfg, gen) -> dict:
        """Clamped sampling with the model's own length: exact middles (overall and per kind) and the share of
        graded positions ([EOS] included) right."""
        from dgft.sampling import sample

        model.eval()
        out = {}
        for b in batches:
            res = sample(model, b, self, cfg.sampler, mode="clamped", noise_kind=cfg.noise.kind,
                         support=cfg.noise.support, generator=gen)
            scored = b["scored"]
            right = (res.canvas.cpu() == b["target"]) & scored
            out["clamped_token_acc"] = float(right.sum() / max(int(scored.sum()), 1))
            for key, value in self.score(self.decode(res.canvas), b["examples"]).items():
                if key.endswith("exact"):
                    out[f"clamped_{key}"] = value
        return out

    # --- hooks the Sudoku task has ----------------------------------------------------------------
    def init_embeddings(self, embedding: torch.Tensor, std: float, generator: torch.Generator) -> None:
        """No structured start for code tokens: the model's random init stays."""

    def rule_mask(self, *args, **kwargs):
        raise ValueError("task infill has no rules: sample with modes free and clamped")
