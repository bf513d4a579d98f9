"""Sudoku as a denoising task: tokens, prompt and canvas, fixed cells, rules and decoding.

Example (4x4, `tokens=cell`): the puzzle `1200 0000 0000 0021` becomes the prompt
`[BOS] [4x4] 4x4_r1c1=1 4x4_r1c2=2 4x4_r4c3=2 4x4_r4c4=1 [SEP]` for the encoder, and the canvas target is
the 16 tokens `4x4_r1c1=1 4x4_r1c2=2 4x4_r1c3=3 ...` of the solution. Each cell token carries its row,
column and box, so the model need not learn the grid's geometry from 1-D positions; `tokens=digit`
uses plain digit tokens (prompt `[BOS] [4x4] 1 2 . . ...`) and leaves the geometry to the model.

Given cells stay clean in the canvas (they are `fixed`) and are not scored, unless an example is drawn
to have its givens corrupted too (`corrupt_givens_p`), which `free` sampling needs.
"""

from __future__ import annotations

import itertools
import math
from functools import lru_cache

import numpy as np
import torch

from dgft.tasks.sudoku import grid as G

SPECIALS = ["[PAD]", "[EOS]", "[BOS]", "[IMG]", "[BOI]", "[EOI]", "[MASK]", "[SEP]", "[UNK]", "[4x4]", "[9x9]"]
PAD, EOS, BOS, IMG, BOI, EOI, MASK, SEP, UNK = range(9)
SIZE_TOKEN = {4: 9, 9: 10}
SIZES = (4, 9)


def vocabulary(tokens: str) -> list[str]:
    """Every token of the task's vocabulary, in id order."""
    words = list(SPECIALS)
    if tokens == "cell":
        for n in SIZES:
            words += [f"{n}x{n}_r{c // n + 1}c{c % n + 1}={d}" for c in range(n * n) for d in range(1, n + 1)]
    else:
        words += ["."] + [str(d) for d in range(1, 10)]
    return words


@lru_cache(maxsize=None)
def _offsets(tokens: str) -> dict[int, int]:
    """First cell-token id per size (cell mode) or id of digit 1 (digit mode)."""
    if tokens == "cell":
        start, out = len(SPECIALS), {}
        for n in SIZES:
            out[n] = start
            start += n * n * n
        return out
    return {n: len(SPECIALS) + 1 for n in SIZES}


@lru_cache(maxsize=None)
def _adjacency(n: int) -> torch.Tensor:
    """(L, L) float 1 where two distinct cells share a row, column or box."""
    adj = torch.zeros(n * n, n * n)
    for unit in G.units(n):
        idx = torch.tensor(np.array(unit), dtype=torch.long)
        adj[idx[:, None], idx[None, :]] = 1
    adj.fill_diagonal_(0)
    return adj


def _cell_unit_index(n: int) -> torch.Tensor:
    """(L, 3) each cell's row, column and box, each numbered 0..n-1 (`grid._cell_units` without its offsets)."""
    return torch.as_tensor(G._cell_units(n) - np.arange(3) * n)


@lru_cache(maxsize=None)
def _unit_matrix(n: int) -> torch.Tensor:
    """(3n, L) float 1 where a cell belongs to a unit (rows, columns, boxes)."""
    table = torch.tensor(G.units(n))  # a copy: the grid's table is read-only
    return torch.zeros(3 * n, n * n).scatter_(1, table, 1.0)


class SudokuTask:
    """Renders Sudoku records into tensors and scores answers. One object per run (holds settings)."""

    name = "sudoku"
    pad_id = PAD  # what an empty position holds (the text task: its tokenizer's padding)

    def __init__(self, cfg):
        self.tokens = cfg.tokens
        self.cfg = cfg
        self.offsets = _offsets(self.tokens)

    # --- tokenizer --------------------------------------------------------------------------------
    def build_tokenizer(self):
        """A WordLevel tokenizer over the task vocabulary, as a transformers fast tokenizer."""
        from tokenizers import Tokenizer, models, pre_tokenizers
        from transformers import PreTrainedTokenizerFast

        vocab = {w: i for i, w in enumerate(vocabulary(self.tokens))}
        tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
        tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        return PreTrainedTokenizerFast(
            tokenizer_object=tok, bos_token="[BOS]", eos_token="[EOS]", pad_token="[PAD]", unk_token="[UNK]",
            mask_token="[MASK]", sep_token="[SEP]", padding_side="left",
        )

    @property
    def vocab_size(self) -> int:
        return len(vocabulary(self.tokens))

    # --- tokens of one size -----------------------------------------------------------------------
    def answer_tokens(self, n: int) -> torch.Tensor:
        """(L, K) token ids a canvas position may hold: position i, digit k+1."""
        L = n * n
        if self.tokens == "cell":
            return self.offsets[n] + torch.arange(L)[:, None] * n + torch.arange(n)[None, :]
        return (self.offsets[n] + torch.arange(n))[None, :].expand(L, n).clone()

    def mask_tokens(self, n: int) -> torch.Tensor:
        """(L,) the token absorbing noise puts at each cell: [MASK]. (A mask token per cell, keeping the cell's
        identity, was tried and learned no better within the CPU budget: eval/RESULTS.md.)"""
        return torch.full((n * n,), MASK, dtype=torch.long)

    def _cell_ids(self, n: int, digits: np.ndarray) -> np.ndarray:
        """(B, L) token ids of digits 1..n at each cell (digits must be nonzero)."""
        L = n * n
        if self.tokens == "cell":
            return self.offsets[n] + np.arange(L)[None, :] * n + (digits.astype(np.int64) - 1)
        return self.offsets[n] + digits.astype(np.int64) - 1

    def prompt_ids(self, puzzle: np.ndarray) -> list[int]:
        """Encoder prompt of one puzzle (1-D digits, 0 blank)."""
        n = G.side(puzzle)
        head = [BOS, SIZE_TOKEN[n]]
        if self.tokens == "cell":
            cells = np.flatnonzero(puzzle)
            body = self._cell_ids(n, puzzle[None, :].clip(min=1))[0][cells].tolist()
        else:
            dot = len(SPECIALS)
            body = [dot if v == 0 else self.offsets[n] + int(v) - 1 for v in puzzle]
        return head + body + [SEP]

    def prompts(self, puzzles: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Encoder prompts of same-size puzzles (B, L digits, 0 blank) -> (prompt_ids, prompt_mask), left-padded.

        The same tensors as `left_pad([self.prompt_ids(p) for p in puzzles], PAD)`, built without a Python loop
        over the batch (it runs on every training step with `noise.known_in_prompt`, and on every sampling
        step with `sampler.reprompt`).
        """
        puzzles = np.asarray(puzzles)
        B, L = puzzles.shape
        n = math.isqrt(L)
        if self.tokens != "cell":  # a token per cell: every prompt has the same length
            body = np.where(puzzles == 0, len(SPECIALS), self.offsets[n] + puzzles.astype(np.int64) - 1)
            ids = np.concatenate([np.full((B, 1), BOS), np.full((B, 1), SIZE_TOKEN[n]), body, np.full((B, 1), SEP)], 1)
            return torch.as_tensor(ids, dtype=torch.long), torch.ones(ids.shape, dtype=torch.long)
        given = puzzles != 0
        k = given.sum(1)
        order = np.argsort(given, axis=1, kind="stable")  # blanks first, then the givens in cell order
        cells = self._cell_ids(n, puzzles.clip(min=1))
        out = np.full((B, L + 3), PAD, dtype=np.int64)  # each prompt right-aligned: BOS, size, givens, SEP
        out[:, 2:L + 2] = np.where(np.take_along_axis(given, order, 1), np.take_along_axis(cells, order, 1), PAD)
        out[:, L + 2] = SEP
        out[np.arange(B), L - k] = BOS
        out[np.arange(B), L + 1 - k] = SIZE_TOKEN[n]
        first = L - int(k.max())  # the longest prompt starts here
        mask = np.arange(L + 3)[None, :] >= (L - k)[:, None]
        return torch.as_tensor(out[:, first:]), torch.as_tensor(mask[:, first:].astype(np.int64))

    # --- batches ----------------------------------------------------------------------------------
    def encode(self, puzzles: np.ndarray, solutions: np.ndarray, corrupt_givens: np.ndarray | None = None) -> dict:
        """Tensors for a batch of same-size puzzles (B, L) -> dict.

        prompt_ids/prompt_mask (B, P) left-padded; target (B, L) solution tokens; fixed (B, L) cells kept clean
        and pinned; scored (B, L) cells in the loss; givens (B, L) the puzzle's givens, which stay in the prompt
        even where `corrupt_givens` frees them in the canvas; choices (L, K) tokens a position may hold.
        """
        n = G.side(puzzles[0])
        prompt_ids, prompt_mask = self.prompts(puzzles)
        target = torch.as_tensor(self._cell_ids(n, solutions), dtype=torch.long)
        givens = torch.as_tensor(puzzles != 0)
        fixed, scored = givens.clone(), ~givens
        if corrupt_givens is not None:
            cg = torch.as_tensor(corrupt_givens, dtype=torch.bool)[:, None]
            fixed = fixed & ~cg
            scored = scored | cg
        return {"prompt_ids": prompt_ids, "prompt_mask": prompt_mask, "target": target, "fixed": fixed,
                "givens": givens, "scored": scored, "choices": self.answer_tokens(n), "mask_ids": self.mask_tokens(n),
                "size": n}

    # --- data for the trainer (dgft.train) -------------------------------------------------------
    def build_splits(self, seed: int, log=print):
        """The generated, cached DatasetDict {"train": base puzzles, "heldout": puzzles} (dgft.data)."""
        from dgft.data import build_splits

        return build_splits(self.cfg, seed, log=log)

    def write_heldout(self, heldout, data_dir) -> None:
        """RUN/data/heldout.csv: what `dgft eval RUN` evaluates when no data file is given."""
        from pathlib import Path

        from dgft.data import records
        from dgft.tasks.sudoku.io import write_puzzles

        write_puzzles(Path(data_dir) / "heldout.csv", records(heldout))

    def train_batches(self, train, batch_size: int, seed: int):
        from dgft.data import TrainBatches

        return TrainBatches(train, self, self.cfg, batch_size, seed)

    def eval_batches(self, heldout, count: int) -> list[dict]:
        """A few fixed held-out batches (one per size) for periodic evaluation."""
        out = []
        for n in sorted(set(heldout["size"])):
            rows = [r for r in heldout if r["size"] == n][:count]
            if rows:
                p = np.stack([G.from_string(r["puzzle"]) for r in rows])
                s = np.stack([G.from_string(r["solution"]) for r in rows])
                out.append(self.encode(p, s))
        return out

    @torch.no_grad()
    def quick_eval(self, model, batches: list[dict], cfg, gen) -> dict:
        """Clamped-mode exact and blank-cell accuracy on a few held-out puzzles per size.

        With the puzzle alone and one pass per step (`sampler.views` = `sampler.passes` = 1) whatever the sampler's
        settings: a progress check during training, where V views and P passes would cost V x P times the time.
        """
        from omegaconf import OmegaConf

        from dgft.sampling import sample

        model.eval()
        out = {}
        scfg = OmegaConf.merge(cfg.sampler, {"views": 1, "passes": 1})
        for b in batches:
            n = b["size"]
            res = sample(model, b, self, scfg, mode="clamped", noise_kind=cfg.noise.kind,
                         support=cfg.noise.support, generator=gen)
            pred = self.decode(res.canvas, n)
            sol = self.decode(b["target"], n)
            blanks = ~self.at_cells(b["fixed"], n).numpy()  # per cell (a text canvas also holds its layout)
            out[f"{n}x{n}_clamped_cell_acc"] = float(((pred == sol) & blanks).sum() / max(blanks.sum(), 1))
            out[f"{n}x{n}_clamped_exact"] = float((pred == sol).all(-1).mean())
        return out

    # --- model initialisation ---------------------------------------------------------------------
    @torch.no_grad()
    def init_embeddings(self, embedding: torch.Tensor, std: float, generator: torch.Generator) -> None:
        """Give each cell token a structured start: the sum of random row, column, box and digit vectors.

        The model is unchanged; only the starting point of its (tied) embedding table is. Tokens that share a
        row, column, box or digit then share a direction from step one, so attention can match peers and
        digits before it has learned anything, instead of discovering the grid from 729 unrelated vectors.
        """
        if self.tokens != "cell":
            return
        H = embedding.shape[1]
        for n in SIZES:
            parts = [torch.randn(n, H, generator=generator) for _ in range(4)]  # row, col, box, digit
            rows, cols, boxes = _cell_unit_index(n).T
            place = parts[0][rows] + parts[1][cols] + parts[2][boxes]  # (L, H)
            vec = place[:, None, :] + parts[3][None, :, :]  # (L, n, H)
            vec = vec + 0.5 * torch.randn(vec.shape, generator=generator)  # room for token-specific features
            vec = vec / vec.std() * std
            start = self.offsets[n]
            embedding[start:start + n * n * n] = vec.reshape(-1, H).to(embedding.dtype)

    def init_attention(self, layout: dict, embedding: torch.Tensor, generator: torch.Generator) -> None:
        """Start three attention heads of every layer as peer lookups (`model.structured_attention`).

        Query head 0 matches the tokens of the same row, head 1 of the same column, head 2 of the same box: in the
        head dims rotary embeddings leave alone (`dgft.model.attention_layout`), the query and the key projections
        get a fitted map from a cell token's (normalised) embedding to a code of its unit, orthonormal across a
        grid's units, added to their random start. The keys, which are also the values, carry a code of the
        token's digit in the rotated dims, so each head starts by reading the digits of a cell's peers. Query heads
        sharing a key head take its two halves of free dims; a third sharing one is left as it was. The model is
        unchanged; only its starting point is (like `init_embeddings`, which this builds on).
        """
        if self.tokens != "cell":
            return
        D, groups = layout["head_dim"], layout["groups"]
        free, rotated = layout["free"], layout["rotated"]
        halves = (free[: len(free) // 2], free[len(free) // 2:])
        tokens, labels = [], {"row": [], "col": [], "box": [], "digit": []}
        for n in SIZES:
            unit = dict(zip(("row", "col", "box"), _cell_unit_index(n).T))
            for name, per_cell in unit.items():  # each size's units get their own codes
                labels[name].append(per_cell.repeat_interleave(n) + (0 if n == 9 else 9))
            labels["digit"].append(torch.arange(n).repeat(n * n))
            tokens.append(self.offsets[n] + torch.arange(n ** 3))
        x = embedding.detach().double()[torch.cat(tokens)]
        x = x / x.pow(2).mean(-1, keepdim=True).sqrt()  # what the first layer reads, after its input RMSNorm

        def fitted(label: torch.Tensor, dims: torch.Tensor) -> torch.Tensor:  # (len(dims), H): embedding -> code
            codes = torch.nn.functional.normalize(torch.randn(13, len(dims), generator=generator), dim=-1)
            if len(dims) >= 9:  # a 9x9 grid's nine units orthonormal
                codes[:9] = torch.linalg.qr(torch.randn(len(dims), len(dims), generator=generator))[0][:9]
            # The embeddings span few dims (sums of unit and digit vectors), so x is rank-deficient: the fit is the
            # minimum-norm one, by SVD in float64 with the rank cut well above rounding. (float32's default solver
            # gave answers that differed in the last bits from one process to the next.)
            w = torch.linalg.lstsq(x, codes[label].double(), rcond=1e-9, driver="gelsd").solution.T
            return (w / w.std()).float()

        queries, keys = [], []  # (rows of q_proj or k_proj within a layer, fitted map)
        for head, name in enumerate(("row", "col", "box")[: len(layout["layers"][0][0]) // D]):
            slot = head % groups
            if slot >= 2:
                continue
            dims = halves[slot]
            w = fitted(torch.cat(labels[name]), dims)
            queries.append((head * D + dims, w))
            keys.append(((head // groups) * D + dims, w))
        digit = fitted(torch.cat(labels["digit"]), rotated)
        keys += [(kv * D + rotated, digit) for kv in sorted({int(rows[0]) // D for rows, _ in keys})]
        with torch.no_grad():
            for q, k in layout["layers"]:
                for weight, parts in ((q, queries), (k, keys)):
                    scale = weight.std()
                    for rows, w in parts:
                        weight[rows] += (scale * w).to(weight.dtype)

    # --- sampling hooks ---------------------------------------------------------------------------
    def rule_mask(self, choice: torch.Tensor, accepted: torch.Tensor, n: int) -> torch.Tensor:
        """(B, L, K) bool: digits not yet fixed among a cell's peers. choice (B, L) digit index, accepted (B, L)."""
        present = torch.nn.functional.one_hot(choice.clamp(0, n - 1), n).float() * accepted[..., None].float()
        counts = torch.einsum("ij,bjk->bik", _adjacency(n).to(present.device), present)
        return counts == 0

    def rules_forbid(self, batch: dict) -> torch.Tensor:
        """(B, L, K) bool: at each cell of a training batch the model is not shown, the digits a shown peer holds.

        Shown: the givens and the cells the noise left clean (what `noise.known_in_prompt` lists), with the digits
        they are shown with (a cell `task.wrong_known_p` planted holds its wrong one). `task.sc_rules_p`
        removes these from the self-conditioning input, as `sampler.self_conditioning_from=rules` does in `rules`
        mode with the accepted cells.
        """
        givens = batch.get("givens", batch["fixed"])
        known = givens | ~batch["hit"]
        shown = torch.where(givens, batch["target"], batch["noisy"])  # a planted wrong digit (wrong_known_p) as shown
        index = (shown[..., None] == batch["choices"][None]).float().argmax(-1)
        return ~self.rule_mask(index, known, batch["size"]) & ~known[..., None]

    def known_prompt(self, target: torch.Tensor, givens: torch.Tensor, canvas: torch.Tensor, accepted: torch.Tensor,
                     n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The prompt of a puzzle whose givens are the original ones plus every cell accepted so far.

        For `sampler.reprompt`: what the sampler has fixed moves into the encoder's prompt, where the model reads
        it as given, instead of sitting in the canvas among noise tokens that look just like it.
        target, canvas (B, L) tokens; givens, accepted (B, L) bool. Returns (prompt_ids, prompt_mask) left-padded.
        """
        known = givens | accepted
        tokens = torch.where(givens, target, canvas)
        digits = self.decode(torch.where(known, tokens, torch.full_like(tokens, self.pad_id)), n)  # 0: unknown
        ids, mask = self.prompts(digits)
        return ids.to(canvas.device), mask.to(canvas.device)

    def single_cells(self, target: torch.Tensor, known: torch.Tensor, n: int) -> torch.Tensor:
        """(B, L) bool: the unknown cells that a naked or a hidden single fixes, given the `known` cells.

        target (B, L) solution tokens; known (B, L) bool. A naked single is a cell with one digit left that no
        peer holds; a hidden single, the one cell of a row, column or box where some digit can still go.
        """
        choice = (target[..., None] == self.answer_tokens(n).to(target.device)).float().argmax(-1)  # digit index
        candidate = self.rule_mask(choice, known, n) & ~known[..., None]  # (B, L, n) digits no known peer holds
        unit = _unit_matrix(n).to(target.device)
        naked = candidate.sum(-1) == 1
        places = torch.einsum("ul,bld->bud", unit, candidate.float())  # cells of unit u where digit d can go
        hidden = (torch.einsum("ul,bud->bld", unit, (places == 1).float()) > 0) & candidate
        return ~known & (naked | hidden.any(-1))

    def solving_rank(self, target: torch.Tensor, known: torch.Tensor, n: int) -> torch.Tensor:
        """(B, L) float: the wave in which singles fix each cell, starting from the `known` cells (-1).

        Wave 0 is every cell a naked or hidden single fixes given the known cells (`single_cells`), wave 1 those
        fixed once wave 0 is known, and so on; cells that singles never reach rank `L` (after all waves). This is
        the order a solver, or a sampler accepting its surest cell first, fills a grid in: `task.solver_order_p`
        trains on the states along it.
        """
        rank = torch.where(known, -1.0, float(target.shape[-1]))
        known, wave = known.clone(), 0
        while True:
            fixed = self.single_cells(target, known, n)
            if not fixed.any():
                return rank
            rank = rank.masked_fill(fixed, float(wave))
            known, wave = known | fixed, wave + 1

    def solving_key(self, target: torch.Tensor, known: torch.Tensor, n: int,
                    generator: torch.Generator | None = None) -> torch.Tensor:
        """(B, L) float: `solving_rank` with ties in random order and -inf at the known cells, the key that
        `noise.order_hits` moves corrupted cells by: the highest are the cells a singles solver fills last."""
        rank = self.solving_rank(target, known, n)
        return (rank + 0.5 * torch.rand(rank.shape, generator=generator)).masked_fill(known, -math.inf)

    def plant_wrong(self, tokens: torch.Tensor, candidates: torch.Tensor, known: torch.Tensor, n: int,
                    generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """A mistake the rules would let a sampler make, in each row: -> (tokens (B, L), planted (B, L) bool).

        At one random `candidates` cell per row (B, L bool), a random digit other than the one it holds that no
        `known` peer holds; rows where no candidate has such a digit are left as they are. `task.wrong_known_p`
        trains on states with one or two of these among the known cells, so the model learns to doubt an accepted
        cell (`sampler.revise`).
        """
        answers = self.answer_tokens(n).to(tokens.device)  # (L, n)
        choice = (tokens[..., None] == answers).float().argmax(-1)
        own = torch.nn.functional.one_hot(choice, n).bool()
        alt = self.rule_mask(choice, known, n) & ~own & candidates[..., None]  # (B, L, n) wrong, rule-keeping digits
        ok = alt.any(-1)
        rows = torch.nonzero(ok.any(-1))[:, 0]
        cell = torch.rand(ok.shape, generator=generator).masked_fill(~ok, -1.0).argmax(-1)[rows]
        digit = torch.rand((len(rows), n), generator=generator).masked_fill(~alt[rows, cell], -1.0).argmax(-1)
        tokens, planted = tokens.clone(), torch.zeros_like(ok)
        tokens[rows, cell] = answers[cell, digit]
        planted[rows, cell] = True
        return tokens, planted

    def position_weight(self, target: torch.Tensor, known: torch.Tensor, n: int) -> torch.Tensor | None:
        """(B, L) loss weight per position for training (None: flat): `task.singles_weight` on the cells that
        singles fix given what the model is shown (`single_cells`), 1 elsewhere."""
        w = float(self.cfg.get("singles_weight", 1.0))
        if w == 1.0:
            return None
        return 1.0 + (w - 1.0) * self.single_cells(target, known, n).float()

    def views(self, n: int, count: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """`count` symmetric forms of an n x n puzzle, for `sampler.views`: (cells (V, L), digits (V, n)); view v's
        position j shows cell cells[v, j], and digit index k appears there as digits[v, k]. View 0 is the puzzle."""
        rng = np.random.default_rng([seed, n])
        cells, digits = [np.arange(n * n)], [np.arange(n)]
        for _ in range(count - 1):
            c, d = G.random_symmetry(n, rng)
            cells.append(c)
            digits.append(d[1:] - 1)
        return torch.as_tensor(np.stack(cells)), torch.as_tensor(np.stack(digits))

    def at_cells(self, canvas_values: torch.Tensor, n: int) -> torch.Tensor:
        """(B, L) per-canvas-position values -> (B, n*n) per cell (here every position is a cell)."""
        return canvas_values

    def decode(self, canvas: torch.Tensor, n: int) -> np.ndarray:
        """(B, L) token ids -> (B, L) digits, 0 where a token is not a digit of that cell."""
        choices = self.answer_tokens(n).to(canvas.device)  # (L, K)
        hit = canvas[..., None] == choices[None]  # (B, L, K)
        digits = hit.float().argmax(-1) + 1
        return (digits * hit.any(-1)).cpu().numpy().astype(np.int8)

    def render(self, digits: np.ndarray) -> str:
        """One grid as rows of digits ('.' for blank), for logs and pictures."""
        n = G.side(digits)
        rows = ["".join("." if v == 0 else str(int(v)) for v in digits[r * n:(r + 1) * n]) for r in range(n)]
        return "\n".join(rows)


# --- equivalence of small puzzles -----------------------------------------------------------------
@lru_cache(maxsize=None)
def _positional_symmetries(n: int) -> np.ndarray:
    """(S, L) cell permutations from band/stack swaps, row/column swaps inside them, and transpose."""
    b = math.isqrt(n)
    line_perms = []
    for bands in itertools.permutations(range(b)):
        for inner in itertools.product(itertools.permutations(range(b)), repeat=b):
            line_perms.append([bands[i] * b + inner[i][j] for i in range(b) for j in range(b)])
    out = []
    for rows in line_perms:
        for cols in line_perms:
            perm = np.array([rows[r] * n + cols[c] for r in range(n) for c in range(n)])
            out.append(perm)
            out.append(perm.reshape(n, n).T.reshape(-1))
    return np.unique(np.stack(out), axis=0)


def canonical_form(puzzle: np.ndarray) -> str:
    """A string equal for all augmentations of a puzzle (exact; enumerates symmetries, for 4x4 only)."""
    n = G.side(puzzle)
    if n != 4:
        raise ValueError("canonical_form enumerates every symmetry: use it for 4x4 puzzles only")
    best = None
    for perm in _positional_symmetries(n):
        moved = puzzle[perm]
        labels: dict[int, int] = {}
        s = "".join("0" if v == 0 else str(labels.setdefault(int(v), len(labels) + 1)) for v in moved)
        best = s if best is None or s < best else best
    return best


def equivalence_key(puzzle: np.ndarray, solution: np.ndarray) -> tuple:
    """Key for keeping held-out puzzles apart from training ones: exact for 4x4, G.invariant for 9x9."""
    if G.side(puzzle) == 4:
        return ("4x4", canonical_form(puzzle))
    return ("9x9", G.invariant(solution))
