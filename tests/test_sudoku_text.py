"""Sudoku for a pretrained tokenizer: chat-template prompt, digit canvas, pinning and rules on cell positions."""

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from conftest import CHAT_SPECIALS, CHAT_TEMPLATE, tiny_cfg
from dgft.config import SamplerConfig
from dgft.model import build_tiny
from dgft.sampling import sample
from dgft.tasks.sudoku import grid as G
from dgft.tasks.sudoku.text import SudokuTextTask, TextLayoutError


def chat_tokenizer(split_digits: bool = True):
    """A word-level tokenizer with a Gemma-like chat template; digits one token each (or whole numbers)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = CHAT_SPECIALS + ["\n", " ", ".", "'", ":", ",", "user", "model", "x"] + [str(d) for d in range(10)]
    words += "Solve this Sudoku Blanks are Answer with the completed grid only rows of digits one row per line".split()
    if not split_digits:
        words += [str(i) for i in range(10, 100000)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(dict.fromkeys(words))}, unk_token="[UNK]"))
    pattern = r"<start_of_turn>|<end_of_turn>|\d|\n| |x|[^\s\d.':,x]+|[.':,]" if split_digits else \
        r"<start_of_turn>|<end_of_turn>|\d+|\n| |x|[^\s\d.':,x]+|[.':,]"
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(pattern), behavior="isolated")
    tok.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="[BOS]", eos_token="[EOS]", pad_token="[PAD]",
                                   unk_token="[UNK]", additional_special_tokens=["<start_of_turn>", "<end_of_turn>"])
    fast.chat_template = CHAT_TEMPLATE
    return fast


def puzzles(n=9, count=3, seed=0):
    rng = np.random.default_rng(seed)
    sols = [G.random_solution(n, rng) for _ in range(count)]
    out = []
    for s in sols:
        p = s.copy()
        p[rng.choice(n * n, size=n * n // 2, replace=False)] = 0
        out.append(p)
    return np.stack(out), np.stack(sols)


def task(sizes=(9, 4), canvas=96, tok=None):
    return SudokuTextTask(OmegaConf.create({"tokens": "text", "sizes": list(sizes)}), tok or chat_tokenizer(), canvas)


def test_prompt_goes_through_the_chat_template_and_the_canvas_holds_the_answer():
    t = task()
    p, s = puzzles()
    batch = t.encode(p, s)
    text = t.tokenizer.decode(batch["prompt_ids"][0][batch["prompt_mask"][0].bool()])
    assert text.startswith("<start_of_turn>user\nSolve this 9x9 Sudoku") and text.endswith("<start_of_turn>model\n")
    assert "\n".join(["".join("." if v == 0 else str(v) for v in p[0][r * 9:(r + 1) * 9]) for r in range(9)]) in text
    assert np.array_equal(t.decode(batch["target"], 9), s)
    answer = t.tokenizer.decode(batch["target"][0][:90])
    assert answer.startswith("".join(map(str, s[0][:9])) + "\n") and answer.endswith("<end_of_turn>")
    cells = t.layouts[9]["cells"]
    assert batch["scored"][:, cells].eq(torch.as_tensor(p == 0)).all() and batch["scored"].sum() == (p == 0).sum()
    structure = torch.ones(96, dtype=torch.bool)
    structure[cells] = False
    assert batch["fixed"][:, structure].all()  # newlines, the end token and padding are pinned


def test_a_tokenizer_that_merges_digits_is_refused():
    with pytest.raises(TextLayoutError, match="one token per cell|digit"):
        task(tok=chat_tokenizer(split_digits=False))
    with pytest.raises(TextLayoutError, match="canvas_length"):
        task(canvas=60)


@pytest.mark.parametrize("mode", ["clamped", "rules"])
def test_sampling_keeps_structure_and_givens_and_rules(mode):
    t = task(sizes=(4,), canvas=24)
    cfg = tiny_cfg(model={"canvas_length": 24})
    model = build_tiny(cfg.model, t.vocab_size).eval()
    p, s = puzzles(n=4, count=4, seed=1)
    batch = t.encode(p, s)
    res = sample(model, batch, t, cfg.sampler, mode=mode, generator=torch.Generator().manual_seed(0))
    fixed = batch["fixed"]
    assert torch.equal(res.canvas[fixed], batch["target"][fixed])
    digits = t.decode(res.canvas, 4)
    assert (digits[p != 0] == p[p != 0]).all()
    if mode == "rules":
        for d in digits:
            for unit in G.units(4):
                vals = [v for v in d[list(unit)] if v]
                assert len(vals) == len(set(vals))


def test_free_sampling_keeps_the_layout_that_training_never_noises():
    """Training never noises the layout (newlines, end of turn, padding), so `free` pins it as infill pins its
    context: with vocabulary-wide uniform noise it once started from random tokens there, which the model never
    learnt to restore (and they took acceptances from the cells). A model sure of a digit everywhere keeps it."""
    import dgft.sampling as S

    t = task(sizes=(4,), canvas=24)
    cfg = tiny_cfg(model={"canvas_length": 24})
    model = build_tiny(cfg.model, t.vocab_size).eval()
    p, s = puzzles(n=4, count=2, seed=1)
    batch = t.encode(p, s)
    digit = int(t.layout(4)["digits"][0])

    def denoise(m, cache, canvas, prompt_mask, sc_logits=None):
        logits = torch.zeros(*canvas.shape, t.vocab_size)
        logits[..., digit] = 10.0
        return logits

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(S, "denoise", denoise)
        scfg = OmegaConf.structured(SamplerConfig(steps=24, views=1))
        res = S.sample(model, batch, t, scfg, "free", noise_kind="uniform", support="vocab",
                       generator=torch.Generator().manual_seed(0))
    layout = batch["always_pinned"]
    assert layout.sum() == 2 * (24 - 16) and torch.equal(res.canvas[layout], batch["target"][layout])
    assert (res.canvas[~layout] == digit).all() and t.well_formed(res.canvas, 4).all()


def test_an_answer_whose_structure_was_overwritten_is_not_well_formed():
    """A canvas whose newline or end of turn was overwritten (another sampler's, an edited samples file) is no grid,
    and the evaluation scores it as all blank whatever its cell positions hold."""
    t = task(sizes=(4,), canvas=24)
    p, s = puzzles(n=4, count=2, seed=1)
    canvas = t.encode(p, s)["target"].clone()
    assert t.well_formed(canvas, 4).tolist() == [True, True]
    structure = [i for i in range(24) if i not in set(t.layout(4)["cells"].tolist())]
    canvas[1, structure[0]] = t.layout(4)["digits"][0]  # a digit where a newline belongs
    assert t.well_formed(canvas, 4).tolist() == [True, False]
    assert (t.decode(canvas, 4)[1] > 0).all()  # its cells still read as a full grid: decode alone would score it


def test_free_mode_with_mask_noise_keeps_the_layout_and_never_answers_mask(monkeypatch):
    """tokens=text with absorbing noise: the batch's mask template holds the layout's own tokens (newlines, end of
    turn, padding) beside [MASK] at the cells. `free` must forbid only [MASK], everywhere: a perfect model's answer
    is then the target, layout included (it once forbade the right layout token and allowed [MASK] there)."""
    import dgft.sampling as S

    tok = chat_tokenizer()
    tok.add_special_tokens({"mask_token": "[MASK]"})
    t = task(sizes=(4,), canvas=24, tok=tok)
    cfg = tiny_cfg(model={"canvas_length": 24})
    model = build_tiny(cfg.model, len(tok)).eval()
    p, s = puzzles(n=4, count=2, seed=1)
    batch = t.encode(p, s)
    mask = tok.mask_token_id
    assert (batch["mask_ids"] != mask).any() and batch["absorbing_ids"].tolist() == [mask]

    def denoise(m, cache, canvas, prompt_mask, sc_logits=None):  # sure of the answer, surer still of [MASK]
        logits = torch.nn.functional.one_hot(batch["target"], len(tok)).float() * 10
        logits[..., mask] = 50.0
        return logits

    monkeypatch.setattr(S, "denoise", denoise)
    scfg = OmegaConf.structured(SamplerConfig(steps=24, views=1))
    res = sample(model, batch, t, scfg, "free", noise_kind="mask", generator=torch.Generator().manual_seed(0))
    assert not (res.canvas == mask).any()
    assert torch.equal(res.canvas, batch["target"]) and t.well_formed(res.canvas, 4).all()


def test_text_task_trains_and_evaluates_through_the_cli(tmp_path):
    """task.tokens=text end to end with a locally built chat tokenizer (the pretrained path, minus the weights)."""
    import json

    from dgft.cli import main

    tok_dir = tmp_path / "tok"
    chat_tokenizer().save_pretrained(tok_dir)
    run = tmp_path / "run"
    main(["train", f"hydra.run.dir={run}", f"task.cache_dir={tmp_path / 'cache'}", "task.base_puzzles=20",
          "task.heldout_puzzles=4", "task.tokens=text", f"task.tokenizer={tok_dir}", "task.canvas_length=96",
          "model.canvas_length=96", "trainer.max_steps=2", "trainer.batch_size=4", "trainer.eval_every=1",
          "trainer.eval_puzzles=2",
          "sampler.steps=8", "sampler.views=1", "model.structured_attention=false", "model.hidden_size=32",
          "model.num_layers=1", "model.num_heads=2",
          "model.num_kv_heads=1", "model.head_dim=16", "model.intermediate_size=64", "model.moe_intermediate_size=32"])
    main(["eval", str(run), "limit=2", "baseline=false", "plot=false"])
    with pytest.raises(SystemExit) as err:  # views are laid out by cell: a text run refuses them, naming the key
        main(["eval", str(run), "limit=2", "sampler.views=4"])
    assert err.value.code == 2
    result = json.loads((run / "eval" / "heldout.json").read_text())
    assert result["modes"]["rules"]["rule_violations"] == 0 and result["modes"]["clamped"]["givens_kept"] == 1.0
    # the trainer's periodic check scores the text canvas per cell (its layout positions are not blanks)
    checks = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if "clamped" in line]
    assert [c["step"] for c in checks] == [1, 2] and 0 <= checks[0]["9x9_clamped_cell_acc"] <= 1
    # its export evaluates with the tokenizer it carries, wherever the run's tokenizer went: the same answers
    main(["export", str(run)])
    tok_dir.rename(tmp_path / "moved")
    main(["eval", str(run / "export"), f"data={run / 'data' / 'heldout.csv'}", "limit=2", "plot=false"])
    answers = [[(r["row"], r["answer"]) for r in map(json.loads, (d / "heldout_samples.jsonl").open())]
               for d in (run / "eval", run / "export" / "eval")]
    assert answers[0] == answers[1] and len(answers[0]) == 6


def test_mask_noise_with_a_tokenizer_without_a_mask_token_fails_before_training(tmp_path, capsys):
    """It once failed at the first step, a traceback, after the data and the (pretrained) model had loaded."""
    from dgft.cli import main

    tok_dir = tmp_path / "tok"
    chat_tokenizer().save_pretrained(tok_dir)
    run = tmp_path / "run"
    with pytest.raises(SystemExit) as err:
        main(["train", f"hydra.run.dir={run}", f"task.cache_dir={tmp_path / 'cache'}", "task.base_puzzles=20",
              "task.heldout_puzzles=4", "task.tokens=text", f"task.tokenizer={tok_dir}", "task.canvas_length=96",
              "model.canvas_length=96", "model.structured_attention=false", "sampler.views=1", "noise=mask",
              "trainer.max_steps=2"])
    assert err.value.code == 2
    said = capsys.readouterr().err
    assert "noise.kind=mask" in said and "no mask token" in said and "Traceback" not in said
    assert not (run / "metrics.jsonl").exists() and not (tmp_path / "cache").exists()


def test_text_givens_stay_in_the_prompt_when_corrupt_givens_frees_them():
    """`task.corrupt_givens_p` noises and scores an example's givens; the prompt still lists them, as the cell task
    does (`givens`), so `noise.known_in_prompt` keeps them."""
    t = task(sizes=(4,), canvas=24)
    p, s = puzzles(n=4, count=2, seed=3)
    batch = t.encode(p, s, corrupt_givens=np.array([True, False]))
    cells = t.layouts[4]["cells"]
    given = torch.as_tensor(p != 0)
    assert batch["givens"][:, cells].equal(given) and batch["givens"][:, ~torch.isin(torch.arange(24), cells)].all()
    assert not batch["fixed"][0, cells].any() and batch["fixed"][1, cells].equal(given[1])
    assert batch["scored"][0, cells].all() and batch["scored"][1, cells].equal(~given[1])
    nothing = torch.zeros_like(batch["fixed"])
    ids, _ = t.known_prompt(batch["target"], batch["givens"], batch["target"], nothing, 4)
    assert ids[0].tolist()[-len(t.prompt_ids(p[0])):] == t.prompt_ids(p[0])  # the givens, though freed in the canvas


def test_reprompt_rebuilds_the_chat_prompt_from_the_accepted_cells():
    t = task(sizes=(4,), canvas=24)
    cfg = tiny_cfg(model={"canvas_length": 24})
    model = build_tiny(cfg.model, t.vocab_size).eval()
    p, s = puzzles(n=4, count=3, seed=2)
    batch = t.encode(p, s)
    accepted = torch.zeros_like(batch["fixed"])
    cells = t.layouts[4]["cells"]
    accepted[:, cells[:2]] = True  # the first two cells, whatever they are
    ids, mask = t.known_prompt(batch["target"], batch["fixed"], batch["target"], accepted, 4)
    for b in range(3):
        want = p[b].copy()
        want[:2] = s[b][:2]
        assert ids[b][mask[b].bool()].tolist() == t.prompt_ids(want)
    scfg = OmegaConf.structured(SamplerConfig(steps=16, acceptance="fixed", reprompt=True))
    res = sample(model, batch, t, scfg, "rules", generator=torch.Generator().manual_seed(0))
    assert torch.equal(res.canvas[batch["fixed"]], batch["target"][batch["fixed"]])
    digits = t.decode(res.canvas, 4)
    assert (digits[p != 0] == p[p != 0]).all()


def test_a_size_outside_task_sizes_is_a_config_error_not_a_key_error():
    from dgft.config import ConfigError

    t = task(sizes=(9,))
    p, s = puzzles(n=4, count=2)
    with pytest.raises(ConfigError, match=r"task\.sizes=\[9\]: no 4x4 answer layout"):
        t.encode(p, s)
    with pytest.raises(ConfigError, match="4x4"):
        t.decode(torch.zeros(2, 96, dtype=torch.long), 4)


def test_answers_that_are_not_a_grid_are_counted_not_only_emptied(monkeypatch):
    """An answer whose layout the model overwrote is scored as empty, which breaks no rule: the result counts such
    answers (`malformed`) and the .md names them, so an empty answer's 0 rule violations is not read as a good one."""
    import dgft.tasks.sudoku.evaluate as E
    from dgft.sampling import SampleResult
    from dgft.tasks.sudoku.io import SudokuRecord

    t = task(sizes=(4,), canvas=24)
    p, s = puzzles(n=4, count=2, seed=1)
    recs = [SudokuRecord(p[i], s[i], f"test:{i + 1}") for i in range(2)]

    def overwritten(model, batch, task_, scfg, mode, kind, support, gen, record=False):
        canvas = batch["target"].clone()  # both solved, but the first answer's newline holds a digit
        structure = [i for i in range(24) if i not in set(t.layout(4)["cells"].tolist())]
        canvas[0, structure[0]] = t.layout(4)["digits"][0]
        return SampleResult(canvas, torch.ones(len(canvas)), [], torch.zeros(len(canvas)))

    monkeypatch.setattr(E, "sample", overwritten)
    scfg = OmegaConf.structured(SamplerConfig(steps=8, views=1))
    run_cfg = OmegaConf.create({"noise": {"kind": "uniform", "support": "vocab"}})
    answers, stats = E.run_mode(None, t, recs, scfg, run_cfg, "free", seed=0)
    summary = E.summarise(recs, answers, stats)
    assert summary["malformed"] == 1 and summary["exact"] == 0.5 and summary["rule_violations"] == 0
    parts = E.breakdowns(recs, answers, stats, E.difficulty(recs))  # the groups count theirs too
    for part in ("by_givens", "by_difficulty"):
        assert sum(g["malformed"] for g in parts[part].values()) == 1, parts[part]
    result = {"modes": {"free": {**summary, **parts}}, "skipped_lines": 0, "n": 2, "data": "test"}
    monkeypatch.setattr(E, "provenance_line", lambda result: "")
    assert "Answers that were not a grid" in E.markdown("test", result) and "free 1" in E.markdown("test", result)
