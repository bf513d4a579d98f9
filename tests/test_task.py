"""Sudoku rendering: tokenizer ids, prompt/canvas layout, decoding and the rule mask."""

import numpy as np
import pytest
import torch

from dgft.tasks.sudoku import grid as G
from dgft.tasks.sudoku.task import PAD, SudokuTask, canonical_form, vocabulary

from conftest import tiny_cfg


@pytest.mark.parametrize("tokens", ["cell", "digit"])
def test_ids_match_tokenizer_and_round_trip(tokens):
    task = SudokuTask(tiny_cfg(task={"tokens": tokens}).task)
    tok = task.build_tokenizer()
    assert len(tok) == task.vocab_size == len(vocabulary(tokens))
    rng = np.random.default_rng(0)
    for n in (4, 9):
        puzzle, solution, _ = G.generate(n, givens=0, rng=rng, max_tries=1)
        batch = task.encode(puzzle[None], solution[None])
        # the arithmetic ids are the tokenizer's ids of the rendered words
        words = tok.convert_ids_to_tokens(batch["target"][0].tolist())
        assert tok.convert_tokens_to_ids(words) == batch["target"][0].tolist()
        assert np.array_equal(task.decode(batch["target"], n)[0], solution)
        prompt = batch["prompt_ids"][0][batch["prompt_mask"][0].bool()].tolist()
        text = tok.decode(prompt)
        assert tok(text, add_special_tokens=False)["input_ids"] == prompt
        assert torch.equal(batch["fixed"][0], torch.as_tensor(puzzle != 0))
        assert torch.equal(batch["scored"][0], torch.as_tensor(puzzle == 0))


def test_left_padding_and_corrupt_givens():
    task = SudokuTask(tiny_cfg().task)
    rng = np.random.default_rng(1)
    a = G.generate(9, givens=0, rng=rng, max_tries=1)
    b_p = G.with_givens(*a, 40)
    batch = task.encode(np.stack([a[0], b_p]), np.stack([a[1], a[1]]), np.array([False, True]))
    assert batch["prompt_mask"][0, 0] == 0 and batch["prompt_ids"][0, 0] == PAD  # shorter prompt, left-padded
    assert batch["prompt_mask"][1].all()
    assert not batch["fixed"][1].any() and batch["scored"][1].all()


def test_decode_marks_foreign_tokens_empty():
    task = SudokuTask(tiny_cfg().task)
    canvas = task.answer_tokens(4)[:, 0][None].clone()  # digit 1 everywhere
    canvas[0, 5] = task.answer_tokens(4)[6, 2]  # a token of another cell
    canvas[0, 7] = PAD
    d = task.decode(canvas, 4)[0]
    assert d[0] == 1 and d[5] == 0 and d[7] == 0


def test_rule_mask_matches_allowed_digits():
    task = SudokuTask(tiny_cfg().task)
    rng = np.random.default_rng(2)
    for n in (4, 9):
        puzzle, solution, _ = G.generate(n, givens=0, rng=rng, max_tries=1)
        choice = torch.as_tensor(np.where(puzzle > 0, puzzle - 1, 0), dtype=torch.long)[None]
        mask = task.rule_mask(choice, torch.as_tensor(puzzle > 0)[None], n)[0].numpy()
        ref = G.allowed_digits(puzzle)
        blank = puzzle == 0
        assert np.array_equal(mask[blank], ref[blank])


def test_canonical_form_is_invariant():
    rng = np.random.default_rng(3)
    p, s, _ = G.generate(4, givens=0, rng=rng, max_tries=1)
    key = canonical_form(p)
    for _ in range(20):
        q, _ = G.augment(p, s, rng)
        assert canonical_form(q) == key



@pytest.mark.parametrize("tokens", ["cell", "digit"])
def test_single_cells_propagate_exactly_to_what_singles_solve(tokens):
    """Filling in every single cell, repeatedly, completes a puzzle exactly when grid.singles_solvable says so."""
    task = SudokuTask(tiny_cfg(task={"tokens": tokens}).task)
    rng = np.random.default_rng(5)
    puzzles, solutions, solvable = [], [], []
    for givens in (22, 24, 26, 28, 30, 34) * 4:
        p, s, _ = G.generate(9, givens=givens, rng=rng, max_tries=1)
        puzzles.append(p)
        solutions.append(s)
        solvable.append(G.singles_solvable(p))
    assert any(solvable) and not all(solvable)  # both kinds are checked
    batch = task.encode(np.stack(puzzles), np.stack(solutions))
    known = batch["fixed"].clone()
    first = task.single_cells(batch["target"], known, 9)
    assert not (first & known).any() and first.any()
    for _ in range(81):
        new = task.single_cells(batch["target"], known, 9)
        if not new.any():
            break
        known |= new
    assert known.all(-1).tolist() == solvable


def test_solving_rank_is_the_waves_of_singles():
    task = SudokuTask(tiny_cfg().task)
    rng = np.random.default_rng(6)
    puzzles, solutions = zip(*[G.generate(9, givens=g, rng=rng, max_tries=1)[:2] for g in (22, 26, 30, 34) * 3])
    batch = task.encode(np.stack(puzzles), np.stack(solutions))
    target, givens = batch["target"], batch["fixed"]
    rank = task.solving_rank(target, givens, 9)
    assert (rank[givens] == -1).all() and (rank[~givens] >= 0).all()
    for wave in range(int(rank[rank < 81].max()) + 1):  # each wave is what singles fix once the waves before are known
        assert torch.equal(rank == wave, task.single_cells(target, rank < wave, 9))
    assert ((rank < 81).all(-1)).tolist() == [G.singles_solvable(p) for p in puzzles]


def test_solver_order_p_corrupts_the_cells_singles_fill_last():
    from dgft.step import corrupt_batch

    task = SudokuTask(tiny_cfg().task)
    rng = np.random.default_rng(7)
    puzzles, solutions = zip(*[G.generate(9, givens=26, rng=rng, max_tries=1)[:2] for _ in range(8)])
    batch = task.encode(np.stack(puzzles), np.stack(solutions), np.array([True] + [False] * 7))
    ordered = corrupt_batch(batch, tiny_cfg(task={"solver_order_p": 1.0}), torch.Generator().manual_seed(0),
                       task.vocab_size, task)
    plain = corrupt_batch(batch, tiny_cfg(), torch.Generator().manual_seed(0), task.vocab_size, task)
    assert torch.equal(ordered["hit"].sum(-1), plain["hit"].sum(-1))  # as many cells corrupted, other cells
    assert torch.equal(ordered["hit"][0], plain["hit"][0])  # givens corrupted too: left as drawn
    rank = task.solving_rank(batch["target"], batch["fixed"], 9)
    hit, clean = ordered["hit"], ~ordered["hit"] & ~batch["fixed"]
    for row in range(1, 8):
        assert not (hit[row] & batch["fixed"][row]).any()
        if hit[row].any() and clean[row].any():
            assert rank[row][clean[row]].max() <= rank[row][hit[row]].min()
    assert torch.equal(ordered["noisy"][~hit], batch["target"][~hit])
    assert not torch.equal(ordered["hit"], plain["hit"])


def test_wrong_known_p_plants_rule_keeping_mistakes_among_the_known_cells():
    from dgft.step import corrupt_batch

    task = SudokuTask(tiny_cfg().task)
    rng = np.random.default_rng(8)
    puzzles, solutions = zip(*[G.generate(9, givens=26, rng=rng, max_tries=1)[:2] for _ in range(16)])
    batch = task.encode(np.stack(puzzles), np.stack(solutions), np.array([True] + [False] * 15))
    cfg = tiny_cfg(task={"wrong_known_p": 1.0}, noise={"known_in_prompt": True})
    wrong = corrupt_batch(batch, cfg, torch.Generator().manual_seed(0), task.vocab_size, task)
    plain = corrupt_batch(batch, tiny_cfg(noise={"known_in_prompt": True}), torch.Generator().manual_seed(0),
                     task.vocab_size, task)
    hit, target, fixed = wrong["hit"], batch["target"], batch["fixed"]
    assert torch.equal(hit, plain["hit"])  # the same cells corrupted; only clean cells change
    planted = ~hit & (wrong["noisy"] != target)
    assert not planted[0].any()  # givens corrupted too: left alone
    assert not (planted & fixed).any()  # never a given
    assert set(planted[1:].sum(-1).tolist()) <= {0, 1, 2} and planted[1:].sum() >= 10  # 0 where every other digit is held
    known = fixed | ~hit
    index = (wrong["noisy"][..., None] == task.answer_tokens(9)[None]).float().argmax(-1)
    allowed = task.rule_mask(index, known, 9)
    assert allowed.gather(2, index[..., None])[..., 0][planted].all()  # no known peer holds the planted digit
    assert wrong["scored"][planted].all()  # scored, with the true digit as the target
    same = (wrong["prompt_ids"] == plain["prompt_ids"]).all(-1)
    assert same.tolist() == (~planted.any(-1)).tolist()  # listed as known in the prompt: it differs where planted


def test_plant_wrong_leaves_rows_without_a_candidate():
    task = SudokuTask(tiny_cfg().task)
    p, s, _ = G.generate(4, givens=0, rng=np.random.default_rng(2), max_tries=1)
    batch = task.encode(np.stack([p, p]), np.stack([s, s]))
    everything = torch.ones_like(batch["fixed"])
    candidates = torch.stack([everything[0], torch.zeros_like(everything[1])])
    tokens, planted = task.plant_wrong(batch["target"], candidates, everything, 4, torch.Generator().manual_seed(0))
    assert not planted.any()  # a full grid: every other digit is held by a peer
    none_known = torch.zeros_like(everything)
    tokens, planted = task.plant_wrong(batch["target"], candidates, none_known, 4, torch.Generator().manual_seed(0))
    assert planted.sum(-1).tolist() == [1, 0] and not torch.equal(tokens[0], batch["target"][0])
    assert torch.equal(tokens[1], batch["target"][1])


def test_singles_weight_weighs_single_cells_in_the_loss_count():
    from dgft.step import corrupt_batch

    cfg = tiny_cfg(task={"singles_weight": 3.0})
    task = SudokuTask(cfg.task)
    p, s, _ = G.generate(9, givens=30, rng=np.random.default_rng(1), max_tries=1)
    batch = task.encode(p[None], s[None])
    out = corrupt_batch(batch, cfg, torch.Generator().manual_seed(0), task.vocab_size, task)
    known = batch["fixed"] | ~out["hit"]
    singles = task.single_cells(batch["target"], known, 9)
    assert singles.any()
    want = torch.where(singles, 3.0, 1.0) * batch["scored"]
    assert torch.equal(out["weight"], want)
    assert float(out["count"]) == pytest.approx(float(want.sum()))
    flat = corrupt_batch(batch, tiny_cfg(), torch.Generator().manual_seed(0), task.vocab_size, SudokuTask(tiny_cfg().task))
    assert "weight" not in flat and float(flat["count"]) == float(batch["scored"].sum())


@pytest.mark.parametrize("tokens", ["cell", "digit"])
def test_batched_prompts_equal_one_prompt_per_puzzle(tokens):
    from dgft.tasks import left_pad

    task = SudokuTask(tiny_cfg(task={"tokens": tokens}).task)
    rng = np.random.default_rng(8)
    for n in (4, 9):
        puzzles = np.stack([G.generate(n, givens=int(rng.integers(1, n * n)), rng=rng, max_tries=1)[0]
                            for _ in range(9)])
        puzzles[2] = 0  # nothing given
        puzzles[5] = G.random_solution(n, rng)  # everything given
        ids, mask = task.prompts(puzzles)
        want_ids, want_mask = left_pad([task.prompt_ids(p) for p in puzzles], PAD)
        assert torch.equal(ids, want_ids) and torch.equal(mask, want_mask)


def test_corrupted_givens_stay_in_the_known_cells_prompt():
    """With noise.known_in_prompt and corrupt_givens_p, a given noised in the canvas is still listed in the prompt,
    as `free` sampling shows it: the model learns to restore a listed cell from noise."""
    from dgft.step import corrupt_batch

    cfg = tiny_cfg(noise={"known_in_prompt": True})
    task = SudokuTask(cfg.task)
    p, s, _ = G.generate(9, givens=30, rng=np.random.default_rng(2), max_tries=1)
    batch = task.encode(np.stack([p, p]), np.stack([s, s]), corrupt_givens=np.array([True, False]))
    assert not batch["fixed"][0].any() and torch.equal(batch["givens"][0], batch["fixed"][1])
    out = corrupt_batch(batch, cfg, torch.Generator().manual_seed(0), task.vocab_size, task)
    noised_givens = out["hit"][0] & batch["givens"][0]
    assert noised_givens.any() and out["scored"][0][noised_givens].all()
    given_tokens = set(batch["target"][0][batch["givens"][0]].tolist())
    for b in range(2):  # every given is listed, with its digit, whatever the canvas holds
        assert given_tokens <= set(out["prompt_ids"][b][out["prompt_mask"][b].bool()].tolist())


def test_sc_rules_p_feeds_the_first_pass_back_without_the_digits_a_shown_peer_holds(monkeypatch):
    """task.sc_rules_p=1 with self-conditioning on every example: the graded pass's self-conditioning puts no mass
    on a digit that a shown cell (given, or left clean by the noise) holds in the same row, column or box."""
    import dgft.step as T
    from dgft.model import build_tiny

    cfg = tiny_cfg(task={"sc_rules_p": 1.0}, noise={"self_conditioning_p": 1.0, "known_in_prompt": True})
    task = SudokuTask(cfg.task)
    rng = np.random.default_rng(3)
    grids = [G.generate(9, givens=28, rng=rng, max_tries=1) for _ in range(3)]
    batch = task.encode(np.stack([g[0] for g in grids]), np.stack([g[1] for g in grids]))
    gen = torch.Generator().manual_seed(0)
    m = T.corrupt_batch(batch, cfg, gen, task.vocab_size, task)
    forbid = task.rules_forbid(m)
    known = m["fixed"] | ~m["hit"]
    assert forbid.any() and not forbid[known].any()
    assert not (forbid & task.rule_mask(
        (m["target"][..., None] == m["choices"][None]).float().argmax(-1), known, 9)).any()
    seen, real = [], T.denoise
    monkeypatch.setattr(T, "denoise", lambda *a, **k: seen.append(k.get("sc_logits")) or real(*a, **k))
    model = build_tiny(cfg.model, task.vocab_size, seed=0)
    T.batch_loss(model, m, cfg, gen, torch.device("cpu"), task)
    fed = torch.gather(seen[-1].softmax(-1), 2, m["choices"][None].expand(3, 81, 9))
    assert float(fed[forbid].max()) < 1e-6 and float(fed[~forbid].min()) > 0


def test_sc_rules_forbids_what_the_known_cells_show_even_a_planted_wrong_digit():
    """With task.wrong_known_p too, a planted cell shows a wrong digit: its open peers lose that digit from their
    self-conditioning (as sampling with self_conditioning_from=rules removes what the canvas holds), never the true
    one, which would give the mistake away."""
    import dgft.step as T

    cfg = tiny_cfg(task={"sc_rules_p": 1.0, "wrong_known_p": 1.0}, noise={"known_in_prompt": True})
    task = SudokuTask(cfg.task)
    rng = np.random.default_rng(5)
    grids = [G.generate(9, givens=28, rng=rng, max_tries=1) for _ in range(4)]
    batch = task.encode(np.stack([g[0] for g in grids]), np.stack([g[1] for g in grids]))
    m = T.corrupt_batch(batch, cfg, torch.Generator().manual_seed(1), task.vocab_size, task)
    known = m["givens"] | ~m["hit"]
    planted = known & (m["noisy"] != m["target"])
    assert planted.any()
    shown = (m["noisy"][..., None] == m["choices"][None]).float().argmax(-1)
    assert torch.equal(task.rules_forbid(m), ~task.rule_mask(shown, known, 9) & ~known[..., None])


def test_self_conditioning_passes_chain_no_grad_passes_before_the_graded_one(monkeypatch):
    """noise.self_conditioning_passes=3: each batch runs 1 to 3 passes without gradient, each reading the one
    before, then the graded pass reads the last; every chain length occurs."""
    import dgft.step as T
    from dgft.model import build_tiny

    cfg = tiny_cfg(noise={"self_conditioning_p": 1.0, "self_conditioning_passes": 3})
    task = SudokuTask(cfg.task)
    p, s, _ = G.generate(9, givens=28, rng=np.random.default_rng(4), max_tries=1)
    batch = task.encode(p[None].repeat(2, 0), s[None].repeat(2, 0))
    model = build_tiny(cfg.model, task.vocab_size, seed=0)
    gen = torch.Generator().manual_seed(0)
    calls, real = [], T.denoise

    def record(*a, **k):
        out = real(*a, **k)
        calls.append((k.get("sc_logits"), out, torch.is_grad_enabled()))
        return out

    monkeypatch.setattr(T, "denoise", record)
    lengths = set()
    for _ in range(12):
        calls.clear()
        T.batch_loss(model, T.corrupt_batch(batch, cfg, gen, task.vocab_size, task), cfg, gen, torch.device("cpu"), task)
        assert [grad for *_, grad in calls] == [False] * (len(calls) - 1) + [True]
        assert calls[0][0] is None
        for (_, before, _), (fed, _, _) in zip(calls[:-2], calls[1:-1]):
            assert fed is before  # each no-grad pass reads the one before
        assert torch.equal(calls[-1][0], calls[-2][1])  # the graded pass reads the last
        lengths.add(len(calls) - 1)
    assert lengths == {1, 2, 3}


def test_init_attention_starts_heads_as_row_and_column_lookups():
    """model.structured_attention on a one-layer model with the default's heads (4 query heads of 32 dims sharing 2
    key heads): after the init, head 0's logits between cell tokens are far higher for the same row than for
    others, head 1's for the same column; the decoder, which shares the layers, reads the same weights; digit
    tokens are left alone."""
    from dgft.model import attention_layout, build_tiny

    cfg = tiny_cfg(model={"hidden_size": 64, "num_layers": 1, "num_heads": 4, "num_kv_heads": 2, "head_dim": 32})
    task = SudokuTask(cfg.task)
    model = build_tiny(cfg.model, task.vocab_size, seed=0)
    gen = torch.Generator().manual_seed(0)
    emb = model.get_input_embeddings().weight
    with torch.no_grad():
        task.init_embeddings(emb, model.config.get_text_config().initializer_range, gen)
    layout = attention_layout(model)
    assert len(layout["free"]) + len(layout["rotated"]) == layout["head_dim"]
    attn = model.model.encoder.language_model.layers[0].self_attn
    D = layout["head_dim"]

    def margins():
        x = emb.detach()[task.offsets[9] + torch.arange(729)]
        x = x / x.pow(2).mean(-1, keepdim=True).sqrt()
        with torch.no_grad():
            q, k = attn.q_norm(attn.q_proj(x).view(729, -1, D)), attn.k_norm(attn.k_proj(x).view(729, -1, D))
        cells = torch.arange(81).repeat_interleave(9)
        out = []
        for head, unit in ((0, cells // 9), (1, cells % 9)):
            logits, same = q[:, head] @ k[:, 0].T, unit[:, None] == unit[None]
            out.append(float(logits[same].mean() - logits[~same].mean()))
        return out

    before = margins()
    task.init_attention(layout, emb, gen)
    after = margins()
    assert all(abs(m) < 2 for m in before) and all(m > 4 for m in after), (before, after)
    assert model.model.decoder.layers[0].self_attn.q_proj.weight is attn.q_proj.weight
    digit = SudokuTask(tiny_cfg(task={"tokens": "digit"}).task)
    q0 = attn.q_proj.weight.clone()
    digit.init_attention(layout, emb, gen)  # no cells in the vocabulary: nothing to start from
    assert torch.equal(attn.q_proj.weight, q0)


# --- the held-out split shares no puzzle with training, up to augmentation --------------------------
def _row(puzzle, solution):
    return {"size": G.side(solution), "puzzle": G.to_string(puzzle), "solution": G.to_string(solution)}


def _minimal_4x4(count, seed):
    rng = np.random.default_rng(seed)
    return [G.generate(4, givens=0, rng=rng, max_tries=1) for _ in range(count)]


def test_equivalence_key_tells_classes_apart():
    """Augmented copies share the key, and generated minimal 4x4 puzzles fall in more than one class (a constant key
    would keep every held-out puzzle out, or none)."""
    from dgft.tasks.sudoku.task import equivalence_key

    rng = np.random.default_rng(4)
    keys = {equivalence_key(p, s) for p, s, _ in _minimal_4x4(30, seed=4)}
    assert len(keys) > 1
    p, s, order = G.generate(9, givens=0, rng=rng, max_tries=1)
    q, r = G.augment(G.with_givens(p, s, order, 40), s, rng)
    assert equivalence_key(q, r) == equivalence_key(p, s)
    p2, s2, _ = G.generate(9, givens=0, rng=rng, max_tries=1)
    assert equivalence_key(p2, s2) != equivalence_key(p, s)


def test_disjoint_heldout_drops_augmented_copies_of_training_puzzles():
    from dgft.data import disjoint_heldout
    from dgft.tasks.sudoku.task import equivalence_key

    rng = np.random.default_rng(5)
    # 9x9: a training base; held out, the same grid with more givens under a random symmetry, and another grid
    p, s, order = G.generate(9, givens=0, rng=rng, max_tries=1)
    copy9 = _row(*G.augment(G.with_givens(p, s, order, 40), s, rng))
    assert copy9["puzzle"] != G.to_string(p) and copy9["solution"] != G.to_string(s)
    other9 = _row(*G.generate(9, givens=0, rng=rng, max_tries=1)[:2])
    # 4x4: a minimal training puzzle; held out, a symmetric copy of it, and a minimal puzzle of another class
    fours = _minimal_4x4(30, seed=5)
    p4, s4, _ = fours[0]
    copy4 = _row(*G.augment(p4, s4, rng))
    other4 = next(_row(q, r) for q, r, _ in fours if canonical_form(q) != canonical_form(p4))
    train = [_row(p, s), _row(p4, s4)]
    heldout = [copy9, other9, copy4, other4]
    for row in heldout[::2]:  # the copies are no exact repeats: only the key finds them
        assert row["puzzle"] not in {t["puzzle"] for t in train}
    kept, dropped = disjoint_heldout(train, heldout)
    assert kept == [other9, other4] and dropped == 2
    assert equivalence_key(G.from_string(copy4["puzzle"]), G.from_string(copy4["solution"])) == \
        equivalence_key(p4, s4)


def test_build_splits_keeps_heldout_keys_out_of_training(tmp_path):
    from omegaconf import OmegaConf

    from dgft.config import TaskConfig
    from dgft.data import build_splits
    from dgft.tasks.sudoku.task import equivalence_key

    cfg = OmegaConf.structured(TaskConfig(base_puzzles=30, heldout_puzzles=12, cache_dir=str(tmp_path)))
    splits = build_splits(cfg, seed=2, workers=1, log=lambda *_: None)

    def keys(split):
        return [equivalence_key(G.from_string(r["puzzle"]), G.from_string(r["solution"])) for r in split]

    train, heldout = keys(splits["train"]), keys(splits["heldout"])
    for n in (4, 9):  # both sizes are held out, and none of them shares a key with training
        assert sum(k[0] == f"{n}x{n}" for k in heldout) > 0 and sum(k[0] == f"{n}x{n}" for k in train) > 0
    assert not set(heldout) & set(train)


def test_build_splits_drops_a_9x9_heldout_puzzle_that_is_a_training_puzzle_in_disguise(tmp_path, monkeypatch):
    """Random 9x9 grids never collide, so the 9x9 guard is exercised by planting a held-out puzzle that is a training
    base relabelled, transposed and line-swapped: build_splits must drop it (and say so), keeping the others."""
    from omegaconf import OmegaConf

    import dgft.data as D
    from dgft.config import TaskConfig

    real = D._generate

    def planted(n, count, seed, split, blank_fraction, workers, keep=None):
        rows = real(n, count, seed, split, blank_fraction, workers, keep)
        if n == 9 and split == "heldout":
            base = real(9, 1, seed, "train", blank_fraction, workers)[0]
            puzzle, solution = G.augment(G.from_string(base["puzzle"]), G.from_string(base["solution"]),
                                         np.random.default_rng(5))
            rows[0] = {**rows[0], "puzzle": G.to_string(puzzle), "solution": G.to_string(solution)}
        return rows

    monkeypatch.setattr(D, "_generate", planted)
    cfg = OmegaConf.structured(TaskConfig(base_puzzles=20, heldout_puzzles=6, sizes=[9], size_weights=[1.0],
                                          cache_dir=str(tmp_path)))
    logs = []
    splits = D.build_splits(cfg, seed=4, workers=1, log=logs.append)
    assert len(splits["heldout"]) == 5 and any("dropped 1 held-out" in m for m in logs)
    train = {G.invariant(G.from_string(r["solution"])) for r in splits["train"]}
    assert not train & {G.invariant(G.from_string(r["solution"])) for r in splits["heldout"]}
