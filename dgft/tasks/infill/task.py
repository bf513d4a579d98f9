"""Code infilling as a denoising task: prompt, canvas, end marker, fixed positions and decoding.

Example (canvas_length=8): prefix "def f(x):\n", middle "    y = x\n", suffix "    return y\n" give the
encoder prompt `[BOS] [PRE] def| f|(|x|):|\n [SUF]    | return| y|\n [MID]` (BPE tokens split by |) and the
canvas target `   | y| =| x|\n [EOS] [PAD] [PAD]`: the middle's tokens, the end marker, padding. Prefix and
suffix are tokenized on their own, the prefix cut from the left and the suffix from the right so the prompt
fits `prompt_tokens`; when one side is short the other gets its share.

That is the `fim` prompt format, for a tokenizer with fill-in-the-middle markers (`[PRE]`, `<|fim_prefix|>`,
..., read from its vocabulary): the BPE the embedded model trains has them. A pretrained model's tokenizer
without them (DiffusionGemma's) is asked through its chat template (`chat`), as `sudoku/text.py` asks for a
Sudoku: the prompt is the template over one user turn, INSTRUCTION with the code and `<FILL_ME>` for the hole,
then the generation prompt; the canvas is the middle, then the token the model ends its turn with
(end-of-turn, else EOS), then padding. The same example through a Gemma-like template:

    <start_of_turn>user
    Fill in the missing middle of this Python code. Answer with only the code that replaces <FILL_ME>, exactly
    as it goes there (indentation and newlines included).

    ```python
    def f(x):
    <FILL_ME>    return y

    ```<end_of_turn>
    <start_of_turn>model

(one line of instruction, wrapped here) and the canvas `   | y| =| x|\n <end_of_turn> <pad> <pad>`. The
template is rendered once with stand-ins for the prefix and suffix and cut there (`chat_frame`), so the
instruction and template are always whole and only the code is cut to fit. `task.prompt_format=auto` takes
`fim` when the tokenizer has the markers, else `chat` when it has a template, else stops naming both.

The canvas has a fixed length, so the model says where the middle ends by writing the end token ([EOS], or
the end of turn); `decode` reads up to the first one. Scored (graded): the middle and its end token. Loss
weight (`weight`): 1 there, `pad_weight` (default 0.1) on the padding after it. Padding carries no
information but is most of a short middle's canvas: at full weight it swamps the loss (on a toy copy task
learning was seed-sensitive until it was down-weighted), at weight 0 the sampler's padding positions would
be left to chance.

Nothing is fixed, except: with `oracle_length` the end token and the padding after the true end are pinned,
so the model is given the length (the "oracle" evaluation, and a share `oracle_length_p` of training); with
`canvas_prefix_tokens = c > 0` the canvas starts with the last c prefix tokens, pinned, so the decoder also
sees the left context in its own bidirectional attention. Every canvas position may hold any ordinary
token, the end token or the padding (`choices`); there is no `rules` mode.

Middles longer than `canvas_length - canvas_prefix_tokens - 1` tokens do not fit: `fits` says which, and
the data side skips and counts them.
"""
from __future__ import annotations

import numpy as np
import torch

from dgft.config import ConfigError, InfillTaskConfig
from dgft.tasks import chat, left_pad
from dgft.tasks.infill import tokenizer as T

MARKERS = {"pre": ("[PRE]", "<|fim_prefix|>", "<fim_prefix>"), "suf": ("[SUF]", "<|fim_suffix|>", "<fim_suffix>"),
           "mid": ("[MID]", "<|fim_middle|>", "<fim_middle>")}
FIM_PADS = ("<fim_pad>", "<|fim_pad|>")  # padding markers of fill-in-the-middle tokenizers without a pad token
PROMPT_FORMATS = ("auto", "fim", "chat")
HOLE = "<FILL_ME>"  # marks the hole in the chat prompt's code
INSTRUCTION = ("Fill in the missing middle of this Python code. Answer with only the code that replaces {hole}, "
               "exactly as it goes there (indentation and newlines included).\n\n```python\n{prefix}{hole}{suffix}\n```")
STAND_INS = ("\ue000PREFIX\ue000", "\ue000SUFFIX\ue000")  # where the chat template is cut (private-use characters)
MIN_CONTEXT = 4  # prompt tokens left for prefix and suffix at the least (the fim frame takes 4 of the minimum 8)
CHARS_PER_TOKEN_CAP = 8  # prefix/suffix text is cut to prompt_tokens * this before tokenizing (saves time only)


InfillConfig = InfillTaskConfig  # the task's settings; the schema, a comment per field, is in dgft/config.py

_DEFAULTS = InfillConfig()


def setting(cfg, key: str):
    """A setting from a task config (dataclass, DictConfig, namespace), or its default when the config lacks it."""
    return getattr(cfg, key, getattr(_DEFAULTS, key))


def pick_format(wanted: str, markers: dict, tok) -> str:
    """`fim` or `chat` for task.prompt_format=`wanted`, given the tokenizer and its marker ids (None: missing)."""
    if wanted not in PROMPT_FORMATS:
        raise ConfigError(f"task.prompt_format={wanted!r}: expected one of {', '.join(PROMPT_FORMATS)}")
    has_fim = None not in markers.values()
    has_chat = bool(getattr(tok, "chat_template", None))
    if wanted == "auto" and (has_fim or has_chat):
        return "fim" if has_fim else "chat"
    missing = next((key for key, found in markers.items() if found is None), None)
    no_fim = f"no fill-in-the-middle marker for {missing} (tried {', '.join(MARKERS[missing])})" if missing else ""
    add_markers = "add them with tokenizer.add_special_tokens and resize the embeddings"
    if wanted == "auto":
        raise ConfigError(f"tokenizer: {no_fim} and no chat template, so there is no prompt to build; "
                          f"task.prompt_format=fim needs the markers ({add_markers}), task.prompt_format=chat needs "
                          "a chat template (tokenizer.chat_template)")
    if wanted == "fim" and not has_fim:
        raise ConfigError(f"task.prompt_format=fim: the tokenizer has {no_fim}; {add_markers}"
                          + (", or use its chat template: task.prompt_format=chat" if has_chat else ""))
    if wanted == "chat" and not has_chat:
        raise ConfigError("task.prompt_format=chat: the tokenizer has no chat template"
                          + ("; it has fill-in-the-middle markers: task.prompt_format=fim" if has_fim else ""))
    return wanted


def chat_frame(tok) -> tuple[list[int], list[int], list[int]]:
    """The chat prompt's ids around the code: (before the prefix, between prefix and suffix, after the suffix).

    The template is rendered once over INSTRUCTION with stand-ins for prefix and suffix and cut at them; a
    prompt is these pieces with the (cut) prefix and suffix tokens put in, so it reads as the template over the
    whole message would, and the instruction and template are never cut.
    """
    text = chat.user_turn_text(tok, INSTRUCTION.format(hole=HOLE, prefix=STAND_INS[0], suffix=STAND_INS[1]))
    if any(text.count(mark) != 1 for mark in STAND_INS) or text.index(STAND_INS[0]) > text.index(STAND_INS[1]):
        raise ConfigError("task.prompt_format=chat: the tokenizer's chat template does not keep the user's message "
                          "as written, so the code cannot be placed in it")
    head, rest = text.split(STAND_INS[0])
    between, tail = rest.split(STAND_INS[1])
    return tuple(tok(piece, add_special_tokens=False)["input_ids"] for piece in (head, between, tail))


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
        self.tokenizer = self.prompt_format = None
        if tokenizer is not None:
            self.use_tokenizer(tokenizer)

    # --- tokenizer --------------------------------------------------------------------------------
    def build_tokenizer(self, texts=None):
        """The run's tokenizer: the pretrained one at `tokenizer` when set, else the byte-level BPE trained on
        `texts` (default: the training split's files, cached per corpus)."""
        if texts is None and setting(self.cfg, "tokenizer"):
            tok = chat.load_tokenizer(setting(self.cfg, "tokenizer"))
        elif texts is None:
            from dgft.tasks.infill.data import corpus_tokenizer

            tok = corpus_tokenizer(self.cfg)
        else:
            tok = T.train_tokenizer(texts, vocab_size=int(setting(self.cfg, "vocab_size")))
        self.use_tokenizer(tok)
        return tok

    def use_tokenizer(self, tok) -> None:
        """Read the prompt format, the special ids and the prompt's frame from a tokenizer (the run's, or a
        pretrained model's). `frame`: the prompt's ids (before the prefix, between prefix and suffix, after the
        suffix); `end`: the token that ends the middle on the canvas."""
        vocab = tok.get_vocab()
        self.tokenizer = tok
        markers = {key: next((vocab[n] for n in names if n in vocab), None) for key, names in MARKERS.items()}
        self.prompt_format = pick_format(str(setting(self.cfg, "prompt_format")), markers, tok)
        if self.prompt_format == "fim":
            self.end, self.bos, self.markers = tok.eos_token_id, tok.bos_token_id, markers
            self.pad = tok.pad_token_id  # else a fill-in-the-middle padding marker (StarCoder's <fim_pad>)
            if self.pad is None:
                self.pad = next((vocab[n] for n in FIM_PADS if n in vocab), None)
            if self.end is None or self.pad is None or self.pad == self.end:
                raise ConfigError(f"task.tokenizer={setting(self.cfg, 'tokenizer')}: prompt_format=fim needs an end "
                                  f"token (EOS) and a different padding token (a pad token, or one of "
                                  f"{', '.join(FIM_PADS)}) (end {self.end}, pad {self.pad})")
            # a tokenizer without BOS (Qwen2.5-Coder's) starts the prompt at the prefix marker, as its model does
            head = [markers["pre"]] if self.bos is None else [self.bos, markers["pre"]]
            self.frame = (head, [markers["suf"]], [markers["mid"]])
            special = set(tok.all_special_ids) | set(self.markers.values())
        else:
            self.end, self.bos, self.markers = chat.end_of_turn_id(tok), tok.bos_token_id, {}
            self.pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
            if self.end is None or self.pad is None or self.pad == self.end:
                raise ConfigError("task.prompt_format=chat: the tokenizer needs an end token (end of turn or EOS) "
                                  f"and a different padding token (end {self.end}, pad {self.pad})")
            self.frame = chat_frame(tok)
            frame = sum(map(len, self.frame))
            if self.prompt_tokens - frame < MIN_CONTEXT:
                raise ConfigError(f"task.prompt_tokens={self.prompt_tokens}: the chat template and instruction take "
                                  f"{frame} tokens; give at least {frame + MIN_CONTEXT} to leave room for code")
            special = (set(tok.all_special_ids) | {self.end}
                       | {i for i, added in tok.added_tokens_decoder.items() if added.special})
        ordinary = [i for i in range(len(tok)) if i not in special]
        self._choices = torch.tensor([self.pad, self.end] + ordinary, dtype=torch.long)
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
        # code that spells a special token ("<eos>", "<|endoftext|>", "<fim_middle>") is text, not that token,
        # whatever the tokenizer saved as its default
        return self.tokenizer(texts, add_special_tokens=False, split_special_tokens=True)["input_ids"]

    # --- sizes ------------------------------------------------------------------------------------
    def middle_tokens(self, examples: list[dict]) -> np.ndarray:
        """(B,) number of tokens of each middle."""
        return np.array([len(ids) for ids in self._ids([e["middle"] for e in examples])], dtype=np.int64)

    def fits(self, examples: list[dict]) -> np.ndarray:
        """(B,) bool: the middle, its end token and the canvas prefix fit the canvas."""
        return self.middle_tokens(examples) + 1 + self.context <= self.canvas_length

    def choices(self, L: int | None = None) -> torch.Tensor:
        """(L, K) token ids a canvas position may hold: the padding, the end token and every ordinary token (a
        view)."""
        L = L or self.canvas_length
        return self._choices[None, :].expand(L, -1)

    # --- batches ----------------------------------------------------------------------------------
    def encode(self, examples: list[dict], oracle_length=None) -> dict:
        """Tensors for a batch of examples (dicts with prefix, middle, suffix) -> dict.

        prompt_ids/prompt_mask (B, P) left-padded, the `fim` or `chat` prompt; target (B, L) [canvas prefix] middle
        end [PAD]... (end: [EOS], or the end of turn for `chat`); fixed (B, L) pinned positions; scored (B, L) the
        middle and its end (what is graded); weight (B, L) float loss weight
        (1 where scored, pad_weight on unpinned padding, 0 elsewhere); choices (L, K); lengths (B,) middle tokens;
        always_pinned (B, L) the fixed positions again: they are context (the canvas prefix, the given length),
        so even `free` sampling keeps them; with an oracle length, allowed (B, L, K): padding and end (the first
        two choices) are not allowed before the true end.
        `oracle_length`: bool, or (B,) bools, to pin the end token and the padding after the true end.
        """
        B, L, c = len(examples), self.canvas_length, self.context
        cut = self.prompt_tokens * CHARS_PER_TOKEN_CAP
        pre = self._ids([e["prefix"][-cut:] for e in examples])
        suf = self._ids([e["suffix"][:cut] for e in examples])
        mid = self._ids([e["middle"] for e in examples])
        oracle = np.broadcast_to(np.asarray(bool(oracle_length) if oracle_length is None else oracle_length,
                                            dtype=bool), (B,))
        head, between, tail = self.frame
        avail = self.prompt_tokens - len(head) - len(between) - len(tail)
        prompts, prompt_cut = [], []
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
            prompts.append(head + p[len(p) - p_take:] + between + s[:s_take] + tail)
            prompt_cut.append(p_take < len(p) or s_take < len(s) or len(examples[b]["prefix"]) > cut
                              or len(examples[b]["suffix"]) > cut)
            if c:
                ctx = p[max(0, len(p) - c):]
                target[b, c - len(ctx):c] = torch.tensor(ctx, dtype=torch.long)
                fixed[b, :c] = True
            end = c + len(m)
            target[b, c:end] = torch.tensor(m, dtype=torch.long)
            target[b, end] = self.end
            scored[b, c:end + 1] = True
            if oracle[b]:
                fixed[b, end:] = True
        scored &= ~fixed
        extra = {}
        if oracle.any():  # clamped sampling: with the length given, no padding or end token before the end
            before_end = torch.arange(L)[None, :] < torch.tensor([c + len(m) for m in mid])[:, None]  # (B, L)
            allowed = torch.ones((B, L, len(self._choices)), dtype=torch.bool)
            allowed[:, :, :2] = ~(torch.tensor(oracle.tolist())[:, None] & before_end)[..., None]
            extra["allowed"] = allowed
        padding = (torch.arange(L)[None, :] > torch.tensor([c + len(m) for m in mid])[:, None]) & ~fixed
        weight = scored.float() + self.pad_weight * padding.float()
        prompt_ids, prompt_mask = left_pad(prompts, self.pad)
        if self.tokenizer.mask_token_id is not None:  # absorbing noise's token (the run's BPE has [MASK])
            extra["mask_ids"] = torch.full((L,), self.tokenizer.mask_token_id, dtype=torch.long)
        return {"prompt_ids": prompt_ids, "prompt_mask": prompt_mask, "target": target, "fixed": fixed,
                "scored": scored, "weight": weight, "choices": self.choices(L), "always_pinned": fixed,
                "lengths": torch.tensor([len(m) for m in mid], dtype=torch.long),
                "prompt_cut": torch.tensor(prompt_cut, dtype=torch.bool), **extra}

    # --- reading answers --------------------------------------------------------------------------
    def decode(self, canvas: torch.Tensor) -> list[str]:
        """(B, L) token ids -> the middle of each row: tokens after the canvas prefix up to the first end token.

        Special tokens before the end ([PAD] where a sampler left a position empty) are dropped.
        """
        out = []
        special = self._special.to(canvas.device)
        for row in canvas[:, self.context:]:
            ends = (row == self.end).nonzero()
            row = row[:int(ends[0])] if len(ends) else row
            known = row < len(special)  # a model's vocabulary may be padded past the tokenizer's
            row = row[known & ~special[row.clamp(0, len(special) - 1)]]
            if self.prompt_format == "chat":  # a pretrained tokenizer may tidy spaces (" ." -> "."); code keeps them
                out.append(self.tokenizer.decode(row.tolist(), clean_up_tokenization_spaces=False))
            else:
                out.append(self.tokenizer.decode(row.tolist()))
        return out

    def score(self, predictions: list[str], examples: list[dict]) -> dict:
        """Exact match of predicted middles, overall and per kind.

        `exact`: the same string, indentation and newlines included; `exact_lines`: equal up to trailing
        whitespace on each whole line and trailing blank lines (`humaneval.exact_match`: what follows the last line
        break counts as it is).
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
