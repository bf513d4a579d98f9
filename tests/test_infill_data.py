"""Infilling data: span round-trip and bounds, module split, dedup, skipped files, errors, tokenizer, tensors."""

import ast
import dataclasses
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from dgft.tasks.infill import corpus as C
from dgft.tasks.infill import data as D
from dgft.tasks.infill import tokenizer as T
from dgft.tasks.infill.task import InfillConfig, InfillTask
from dgft.tasks.sudoku.task import SPECIALS as SUDOKU_SPECIALS

TRICKY = '''\
"""Module docstring."""
import functools


def plain(a, b):
    """Docstring stays context."""
    total = a + b
    # a comment line

    return total


@functools.lru_cache(maxsize=None)
def decorated(n):
    if n < 2:
        return n
    return decorated(n - 1) + decorated(n - 2)


class Box:
    def method(self, x):
        @staticmethod
        def inner(y):
            return y * 2
        return inner(x) + len("héllo wörld ✓ 🙂")

    async def fetch(self):
        await self.other()
        return None

    def one_liner(self): return 1

    def doc_only(self):
        """Nothing to cut."""


def \\
    continued(a,
              b):
    x = [a,
         b]
    return x

\x0c
def after_form_feed():
\treturn "\\x0c"
'''


def unit_source(i: int) -> str:
    return (f"def f{i}(x):\n    y = x + {i}\n    return y * {i}\n\n\n"
            f"class K{i}:\n    def m(self, a):\n        b = a - {i}\n        if b:\n            return b\n"
            f"        return {i}\n")


@pytest.fixture
def tree(tmp_path):
    """A corpus directory: 12 single-file units, a two-file package, the tricky file, a duplicate, a broken file."""
    root = tmp_path / "src"
    root.mkdir()
    for i in range(12):
        (root / f"unit{i}.py").write_text(unit_source(i))
    (root / "pkg").mkdir()
    (root / "pkg" / "__init__.py").write_text(unit_source(100))
    (root / "pkg" / "sub.py").write_text(unit_source(101))
    (root / "tricky.py").write_bytes(TRICKY.replace("\n", "\r\n").encode("utf-8"))  # CRLF is normalised
    (root / "unit0_copy.py").write_text(unit_source(0).replace("\n", "   \n\n"))  # same code, other whitespace
    (root / "broken.py").write_text("def broken(:\n    pass\n")
    (root / "latin.py").write_bytes(b"# -*- coding: utf-8 -*-\nx = '\xff'\n")  # not UTF-8 as declared
    (root / "notes.txt").write_text("not python")
    return root


def _bodies(text: str) -> dict[str, tuple[int, int]]:
    """qualname -> (first body line after the docstring, last line), straight from ast (independent check)."""
    out = {}

    def visit(node, prefix):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                name = prefix + child.name
                body = child.body[1:] if ast.get_docstring(child, clean=False) is not None else child.body
                if body:
                    first = min([body[0].lineno] + [d.lineno for d in getattr(body[0], "decorator_list", [])])
                    out[name] = (first, child.end_lineno)
                visit(child, name + ".<locals>.")
            elif isinstance(child, ast.ClassDef):
                visit(child, prefix + child.name + ".")
            else:
                visit(child, prefix)

    visit(ast.parse(text), "")
    return out


def _check_example(f: C.SourceFile, ex: dict, bodies: dict):
    text = f.text
    assert ex["prefix"] + ex["middle"] + ex["suffix"] == text[ex["start"]:ex["end"]]
    assert ex["middle"].strip()
    a = ex["start"] + len(ex["prefix"])
    b = a + len(ex["middle"])
    first, last = bodies[ex["function"]]
    line_a = text.count("\n", 0, a) + 1
    line_b = text.count("\n", 0, b - 1) + 1 if b > a else line_a
    assert first <= line_a <= line_b <= last, (ex["function"], ex["kind"], line_a, line_b, first, last)
    if ex["kind"] != "random_span":  # whole lines
        assert a == 0 or text[a - 1] == "\n"
        assert ex["middle"].endswith("\n") or b == len(text)
    if ex["kind"] == "line":
        assert ex["middle"].count("\n") <= 1 and not ex["middle"].strip().startswith("#")
    if ex["kind"] == "multi_line":
        assert ex["middle"].count("\n") >= 2 or (ex["middle"].count("\n") == 1 and b == len(text))


# --- spans ----------------------------------------------------------------------------------------
def test_spans_round_trip_and_stay_inside_their_function(tree):
    files, _ = C.read_sources([str(tree)])
    tricky = next(f for f in files if f.path.endswith("tricky.py"))
    assert "\r" not in tricky.text
    names = {fn.name for fn in tricky.functions}
    assert {"plain", "decorated", "Box.method", "Box.method.<locals>.inner", "Box.fetch", "continued",
            "after_form_feed"} <= names
    assert "Box.one_liner" not in names and "Box.doc_only" not in names  # no body lines of their own
    seen_kinds = set()
    for f in files:
        bodies = _bodies(f.text)
        for i, fn in enumerate(f.functions):
            assert (fn.body_start, fn.end_line) == bodies[fn.name]
            for seed in range(8):
                for kind in C.KINDS:
                    ex = C.sample_span(f, fn, kind, np.random.default_rng([seed, i]), context_chars=40,
                                       max_side_chars=60)
                    if ex is not None:
                        _check_example(f, ex, bodies)
                        seen_kinds.add(kind)
    assert seen_kinds == set(C.KINDS)


def test_spans_on_real_stdlib_files():
    files = [(p, r) for p, r in C.find_files("stdlib") if p.name in {"textwrap.py", "shlex.py", "fractions.py",
                                                                      "ast.py", "dataclasses.py"}]
    assert files
    sources, report = C.read_sources([str(p) for p, _ in files])
    assert report.kept == len(files)
    for f in sources:
        bodies = _bodies(f.text)
        for ex in C.examples([f], seed=3):
            _check_example(f, ex, bodies)


def test_window_is_capped_and_deterministic(tree):
    files, _ = C.read_sources([str(tree / "tricky.py")])
    f = files[0]
    fn = next(fn for fn in f.functions if fn.name == "Box.fetch")
    ex = C.sample_span(f, fn, "line", np.random.default_rng(0), context_chars=0, max_side_chars=10_000)
    assert ex["prefix"] + ex["middle"] + ex["suffix"] == \
        "    async def fetch(self):\n        await self.other()\n        return None\n"  # just the function
    capped = C.sample_span(f, fn, "line", np.random.default_rng(0), context_chars=10_000, max_side_chars=30)
    assert len(capped["prefix"]) <= 30 + len(capped["middle"]) and capped["middle"] == ex["middle"]
    again = C.sample_span(f, fn, "line", np.random.default_rng(0), context_chars=10_000, max_side_chars=30)
    assert again == capped
    assert C.examples(files, seed=1) == C.examples(files, seed=1) != C.examples(files, seed=2)
    moved = [dataclasses.replace(f, path="/elsewhere/" + Path(f.path).name) for f in files]  # the same corpus, moved
    assert [{k: v for k, v in e.items() if k != "path"} for e in C.examples(moved, seed=1)] == \
        [{k: v for k, v in e.items() if k != "path"} for e in C.examples(files, seed=1)]


# --- reading, dedup, skips, errors ----------------------------------------------------------------
def test_unparsable_and_duplicate_files_are_skipped_and_counted(tree):
    files, report = C.read_sources([str(tree)])
    paths = {Path(f.path).name for f in files}
    assert "broken.py" not in paths and "latin.py" not in paths and "notes.txt" not in paths
    assert report.found == 18 and report.kept == 15 and report.duplicates == 1
    assert ("unit0.py" in paths) != ("unit0_copy.py" in paths)
    assert len(report.unparsable) == 2
    broken = next(u for u in report.unparsable if "broken.py" in u)
    assert broken.startswith(str(tree / "broken.py")) and "SyntaxError" in broken
    assert any("latin.py" in u and "decode" in u for u in report.unparsable)
    assert "2 do not parse" in report.summary() and "1 duplicates" in report.summary()


def test_stdlib_rules():
    found = [p for p, _ in C.find_files("stdlib")]
    root = C.stdlib_dir()
    rel = [p.relative_to(root) for p in found]
    assert not any(set(r.parts[:-1]) & C.STDLIB_SKIP_DIRS for r in rel)
    assert not any(r.name.startswith("test_") for r in rel)
    assert root / "textwrap.py" in found and root / "json" / "decoder.py" in found
    assert C._check(b"# Auto-generated by Tools/x.py\nx = 1\n", 10_000)[0] == "generated"
    assert C._check(b'"""Parser for tables generated by pgen."""\n', 10_000)[0] is None
    assert C._check(b"x = 1\n" * 100, 50)[0] == "too large"


def test_clear_errors_name_the_path(tmp_path, monkeypatch):
    with pytest.raises(C.CorpusError, match=re.escape(f"{tmp_path / 'nope'}: no such file")):
        C.read_sources([str(tmp_path / "nope")])
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "a.txt").write_text("x")
    with pytest.raises(C.CorpusError, match=re.escape(f"{tmp_path / 'empty'}: no .py files")):
        C.read_sources([str(tmp_path / "empty")])
    bad = tmp_path / "bad_dataset"
    bad.mkdir()
    (bad / "dataset_info.json").write_text("{not json")
    with pytest.raises(C.CorpusError, match=re.escape(f"{bad}: not a dataset")):
        C.read_sources([str(bad)])
    locked = tmp_path / "locked.py"
    locked.write_text("x = 1\n")
    real = Path.read_bytes

    def deny(self):
        if self == locked:
            raise PermissionError(13, "Permission denied")
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", deny)
    with pytest.raises(C.CorpusError, match=re.escape(f"{locked}: cannot read (Permission denied)")):
        C.read_sources([str(locked)])


def test_a_dangling_link_and_a_file_name_that_is_not_utf8(tmp_path):
    """A link to nothing is an error naming it (also where the cache key is made); a file whose name is not UTF-8
    cannot name a module, so it is listed as unusable, its bytes escaped, and the rest is read."""
    import os

    proj = tmp_path / "proj"
    proj.mkdir()
    for i in range(3):
        (proj / f"m{i}.py").write_text(unit_source(i))
    odd = os.path.join(os.fsencode(proj), b"n\xffme.py")
    with open(odd, "w") as f:
        f.write(unit_source(7))
    files, report = C.read_sources([str(proj)])
    assert len(files) == 3 and report.found == 4
    assert report.unparsable == [f"{proj}/n\\xffme.py: cannot name a module: its file name is not UTF-8"]
    (proj / "gone.py").symlink_to(tmp_path / "nowhere.py")
    cfg = InfillConfig(sources=[str(proj)], cache_dir=str(tmp_path / "cache"))
    with pytest.raises(C.CorpusError, match=re.escape(f"{proj / 'gone.py'}: cannot read (No such file")):
        D.build_splits(cfg, log=lambda line: None)


def test_links_to_folders_in_a_corpus_are_counted_not_silently_passed_over(tmp_path):
    """os.walk does not follow a link to a folder (one to a parent would loop): its files were left out without a
    word. They are still not read, but the report counts and names the links."""
    proj, elsewhere = tmp_path / "proj", tmp_path / "vendor"
    proj.mkdir()
    elsewhere.mkdir()
    (proj / "m0.py").write_text(unit_source(0))
    (elsewhere / "m1.py").write_text(unit_source(1))
    (proj / "vendor").symlink_to(elsewhere, target_is_directory=True)
    files, report = C.read_sources([str(proj)])
    assert len(files) == 1 and report.unfollowed == [str(proj / "vendor")]
    assert "1 link to a folder not followed (first: " in report.summary()
    assert report.to_dict()["unfollowed"] == 1 and report.to_dict()["unfollowed_first"] == [str(proj / "vendor")]
    (proj / "m0.py").unlink()  # its only files behind the link: named in the refusal
    with pytest.raises(C.CorpusError, match=re.escape(f"{proj}: no .py files under it (links to folders are not "
                                                      f"followed: {proj / 'vendor'}")):
        C.read_sources([str(proj)])


def test_saved_dataset_source(tmp_path):
    from datasets import Dataset

    rows = [{"content": unit_source(i), "repo_name": f"repo{i % 3}", "path": f"m{i}.py"} for i in range(6)]
    rows.append({"content": "def broken(:\n", "repo_name": "repo0", "path": "bad.py"})
    Dataset.from_list(rows).save_to_disk(str(tmp_path / "ds"))
    files, report = C.read_sources([str(tmp_path / "ds")])
    assert len(files) == 6 and len(report.unparsable) == 1 and report.unparsable[0].startswith(f"{tmp_path / 'ds'}#6")
    assert {f.unit for f in files} == {"repo0", "repo1", "repo2"} and files[0].module == "m0.py"
    with pytest.raises(C.CorpusError, match="no text column"):
        C.read_sources([str(tmp_path / "ds")], text_column="body")
    from datasets import DatasetDict

    mixed = DatasetDict(train=Dataset.from_list(rows[:3]),
                        test=Dataset.from_list([{"text": r["content"], "path": r["path"]} for r in rows[3:]]))
    mixed.save_to_disk(str(tmp_path / "mixed"))
    with pytest.raises(C.CorpusError, match=re.escape(f"{tmp_path / 'mixed'}: its splits have different columns "
                                                      "(test: path, text; train: content, path, repo_name)")):
        C.read_sources([str(tmp_path / "mixed")])


# --- split ----------------------------------------------------------------------------------------
def test_split_keeps_units_apart_and_drops_copied_functions(tree):
    (tree / "copy_of_f3.py").write_text("def f3(x):\n    y = x + 3\n    return y * 3\n")
    files, _ = C.read_sources([str(tree)])
    train, heldout, dropped = C.split_by_module(files, seed=0, heldout_share=0.3)
    assert train and heldout and len(train) + len(heldout) == len(files)
    assert not {f.unit for f in train} & {f.unit for f in heldout}
    assert {f.module for f in files if f.unit == "pkg"} == {"pkg", "pkg.sub"}
    assert len({f.unit == "pkg" for f in train}) == 1 or len({f.unit == "pkg" for f in heldout}) == 1
    assert [f.path for f in C.split_by_module(files, seed=0, heldout_share=0.3)[1]] == [f.path for f in heldout]
    sides = [{f.unit for f in C.split_by_module(files, seed=s, heldout_share=0.3)[1]} for s in range(8)]
    assert len({frozenset(u) for u in sides}) > 1  # the seed moves the split
    # a held-out function that copies a training one is dropped (and counted)
    for seed in range(50):
        train, heldout, dropped = C.split_by_module(files, seed=seed, heldout_share=0.3)
        if {f.unit for f in heldout} >= {"copy_of_f3"} and "unit3" in {f.unit for f in train}:
            break
    else:
        pytest.fail("no seed puts the copy in held-out and its original in training")
    assert dropped >= 1
    copy = next(f for f in heldout if f.unit == "copy_of_f3")
    assert copy.functions == ()
    train_hashes = {C.function_hash(f, fn) for f in train for fn in f.functions}
    assert not any(C.function_hash(f, fn) in train_hashes for f in heldout for fn in f.functions)


# --- tokenizer ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tok():
    texts = [unit_source(i) for i in range(20)] + [TRICKY] * 3
    return T.train_tokenizer(texts, vocab_size=400)


def test_tokenizer_layout_and_exact_round_trip(tok, tmp_path):
    assert T.SPECIALS[:9] == SUDOKU_SPECIALS[:9]
    assert [tok.convert_tokens_to_ids(s) for s in T.SPECIALS] == list(range(len(T.SPECIALS)))
    assert (tok.pad_token_id, tok.eos_token_id, tok.bos_token_id) == (T.PAD, T.EOS, T.BOS)
    samples = [TRICKY, "x = '[PAD]' + \"[EOS]\"  # [MID]\n", "\tif a:\r\n\t\treturn  b  \n", "s = '日本語 ✓ 🙂 é'\n",
               "   \n\n\x0c\n", ""]
    tok.save_pretrained(str(tmp_path / "tok"))
    from transformers import PreTrainedTokenizerFast

    loaded = PreTrainedTokenizerFast.from_pretrained(str(tmp_path / "tok"))
    for t in (tok, loaded):
        for s in samples:
            ids = t.encode(s, add_special_tokens=False)
            assert t.decode(ids) == s
            assert not set(ids) & set(range(len(T.SPECIALS)))  # specials never come from text
    assert T.train_tokenizer([TRICKY] * 3, vocab_size=300).get_vocab() == \
        T.train_tokenizer([TRICKY] * 3, vocab_size=300).get_vocab()  # deterministic
    with pytest.raises(ValueError, match="vocab_size"):
        T.train_tokenizer(["x"], vocab_size=100)


# --- task tensors ---------------------------------------------------------------------------------
def _examples(n=6, seed=0):
    f = C.SourceFile("tricky.py", "tricky", "tricky", TRICKY, tuple(C.find_functions(TRICKY)))
    exs = C.examples([f], seed)
    return exs[:n] + [{"prefix": "", "middle": "pass\n", "suffix": "", "kind": "line"}]


def test_encode_decode_round_trip_and_layout(tok):
    task = InfillTask(InfillConfig(canvas_length=48, prompt_tokens=40), tokenizer=tok)
    exs = [e for e in _examples(12) if task.fits([e])[0]]
    batch = task.encode(exs)
    B, L = batch["target"].shape
    assert (B, L) == (len(exs), 48) and batch["choices"].shape[0] == 48
    assert task.decode(batch["target"]) == [e["middle"] for e in exs]
    for b, e in enumerate(exs):
        n = int(batch["lengths"][b])
        assert batch["target"][b, n] == T.EOS and (batch["target"][b, n + 1:] == T.PAD).all()
        assert batch["scored"][b].sum() == n + 1 and not batch["fixed"][b].any()
        assert torch.allclose(batch["weight"][b, n + 1:], torch.tensor(task.pad_weight))
        ids = batch["prompt_ids"][b][batch["prompt_mask"][b].bool()].tolist()
        assert len(ids) <= 40 and ids[:2] == [T.BOS, T.PRE] and ids[-1] == T.MID and ids.count(T.SUF) == 1
        pre = tok.encode(e["prefix"], add_special_tokens=False)
        kept = ids[2:ids.index(T.SUF)]
        assert kept == pre[len(pre) - len(kept):]  # the prefix is cut from the left
        suf = tok.encode(e["suffix"], add_special_tokens=False)
        got = ids[ids.index(T.SUF) + 1:-1]
        assert got == suf[:len(got)]  # the suffix from the right
        assert len(kept) + len(got) == min(len(pre) + len(suf), 36)
        assert bool(batch["prompt_cut"][b]) == (len(kept) < len(pre) or len(got) < len(suf))  # the eval counts them
    assert (batch["prompt_mask"][:, 0] == 0).any() or (batch["prompt_mask"] == 1).all()  # left-padded
    # free-mode noise decodes to text; an [EOS] ends the middle early; no [EOS] reads the whole canvas
    canvas = batch["target"].clone()
    canvas[0, 0] = T.EOS
    assert task.decode(canvas)[0] == ""
    canvas[1, :] = T.PAD
    assert task.decode(canvas)[1] == ""


def test_oracle_length_pins_the_end_and_canvas_prefix(tok):
    task = InfillTask(InfillConfig(canvas_length=48, canvas_prefix_tokens=5), tokenizer=tok)
    exs = [e for e in _examples(6) if task.fits([e])[0]]
    batch = task.encode(exs, oracle_length=[b % 2 == 0 for b in range(len(exs))])
    assert task.decode(batch["target"]) == [e["middle"] for e in exs]
    for b, e in enumerate(exs):
        n = int(batch["lengths"][b])
        assert batch["fixed"][b, :5].all() and not batch["scored"][b, :5].any()
        if b % 2 == 0:
            assert batch["fixed"][b, 5 + n:].all() and not batch["fixed"][b, 5:5 + n].any()
            assert batch["target"][b, 5 + n] == T.EOS and batch["scored"][b].sum() == n
            assert (batch["weight"][b, 5 + n:] == 0).all()
        else:
            assert not batch["fixed"][b, 5:].any() and batch["scored"][b].sum() == n + 1
        tail = tok.encode(e["prefix"], add_special_tokens=False)[-5:]
        assert batch["target"][b, 5 - len(tail):5].tolist() == tail


def test_too_long_middles_are_refused_and_counted(tok):
    task = InfillTask(InfillConfig(canvas_length=6), tokenizer=tok)
    long = {"prefix": "", "middle": "value = compute(a, b, c) + other(d)\n", "suffix": "", "kind": "line"}
    short = {"prefix": "", "middle": "x\n", "suffix": "", "kind": "line"}
    assert task.fits([long, short]).tolist() == [False, True]
    with pytest.raises(ValueError, match="does not fit canvas_length=6"):
        task.encode([long])
    from collections import Counter

    from dgft.tasks.infill.evaluate import left_out
    # eval says the room a middle has: the canvas less its prefix tokens (it said the whole canvas's 48)
    prefixed = InfillTask(InfillConfig(canvas_length=48, canvas_prefix_tokens=5), tokenizer=tok)
    said = left_out(prefixed, Counter({"line": 2, "random_span": 1}))
    assert said == ("left out 3 middles longer than the canvas (43 tokens with [EOS], the canvas's 48 less its 5 "
                    "prefix tokens): line 2, random_span 1")
    assert "(6 tokens with [EOS]):" in left_out(task, Counter({"line": 1}))


# --- cached splits and batches --------------------------------------------------------------------
def test_build_splits_batches_and_resume(tree, tmp_path, monkeypatch):
    cfg = InfillConfig(sources=[str(tree)], cache_dir=str(tmp_path / "cache"), heldout_share=0.3, canvas_length=32,
                       prompt_tokens=64, vocab_size=400, oracle_length_p=0.5)
    logs = []
    splits = D.build_splits(cfg, log=logs.append)
    assert any("2 do not parse" in line for line in logs)
    report = D.read_report(cfg)
    assert report["duplicates"] == 1 and len(report["unparsable"]) == 2
    assert D.build_splits(cfg, log=logs.append)["heldout"][:] == splits["heldout"][:]  # from the cache
    train_units = set(splits["train"]["unit"])
    assert not train_units & set(report["heldout_units"])
    assert set(splits["heldout"]["kind"]) == set(C.KINDS)
    files = D.source_files(splits["train"])
    assert all(isinstance(fn, C.Function) for f in files for fn in f.functions)
    task = InfillTask(cfg)
    task.build_tokenizer()
    assert task.vocab_size == len(task.tokenizer) <= 400  # a tiny corpus has fewer merges to make
    heldout, skipped = D.heldout_examples(splits["heldout"], task, log=logs.append)
    assert len(heldout) + sum(skipped.values()) == len(splits["heldout"])
    batches = D.InfillBatches(splits["train"], task, cfg, batch_size=8, seed=0)
    first = [next(batches) for _ in range(2)]
    state = batches.state_dict()
    later = next(batches)
    again = D.InfillBatches(splits["train"], task, cfg, batch_size=8, seed=0)
    assert torch.equal(next(again)["target"], first[0]["target"])
    again.load_state_dict(state)
    assert torch.equal(next(again)["target"], later["target"])
    assert batches.counts["drawn"] >= 24
    assert task.decode(later["target"])  # decodes
    from dgft.config import ConfigError  # a canvas no span fits: the config error, naming the key

    monkeypatch.setattr(task, "fits", lambda examples: np.zeros(len(examples), dtype=bool))
    with pytest.raises(ConfigError, match=r"^task\.canvas_length=32: no span fits"):
        next(D.InfillBatches(splits["train"], task, cfg, batch_size=2, seed=0))


# --- the tensors through the real model, noise, loss and sampler ----------------------------------
def test_batches_run_through_noise_model_loss_and_sampler(tok):
    from conftest import tiny_cfg
    from dgft import noise as N
    from dgft.loss import denoising_loss
    from dgft.model import build_tiny, denoise, encode
    from dgft.sampling import sample

    cfg = tiny_cfg(model={"canvas_length": 24}, sampler={"steps": 4})
    task = InfillTask(InfillConfig(canvas_length=24, prompt_tokens=48), tokenizer=tok)
    exs = [e for e in _examples(12) if task.fits([e])[0]][:4]
    batch = task.encode(exs, oracle_length=[True, False, True, False][:len(exs)])
    model = build_tiny(cfg.model, task.vocab_size, seed=0)
    gen = torch.Generator().manual_seed(0)
    t = N.sample_t(len(exs), 1e-3, gen)
    noisy, hit = N.corrupt("uniform", batch["target"], t, ~batch["fixed"], batch["choices"], T.MASK, gen)
    assert (noisy[batch["fixed"]] == batch["target"][batch["fixed"]]).all()
    logits = denoise(model, encode(model, batch["prompt_ids"], batch["prompt_mask"]), noisy, batch["prompt_mask"])
    assert logits.shape == (len(exs), 24, task.vocab_size)
    loss_sum, n = denoising_loss(logits, batch["target"], batch["scored"], hit)
    assert torch.isfinite(loss_sum) and n == batch["scored"].sum()
    model.eval()
    res = sample(model, batch, task, cfg.sampler, mode="clamped", generator=gen)
    pinned = batch["fixed"]
    assert (res.canvas[pinned] == batch["target"][pinned]).all()  # the oracle's end stays where it was put
    assert all(isinstance(s, str) for s in task.decode(res.canvas))
    for b in range(0, len(exs), 2):  # the true length given: no [PAD] or [EOS] before it, ordinary tokens only
        assert (res.canvas[b, :int(batch["lengths"][b])] >= len(T.SPECIALS)).all()
    free = sample(model, batch, task, cfg.sampler, mode="free", generator=gen)
    assert len(task.decode(free.canvas)) == len(exs)
    assert (free.canvas[pinned] == batch["target"][pinned]).all()  # the given length is context: kept in free too
    with pytest.raises(ValueError, match="no rules"):
        sample(model, batch, task, cfg.sampler, mode="rules", generator=gen)


def test_one_package_is_split_by_module_and_one_file_is_all_training(tmp_path):
    pkg = tmp_path / "proj" / "pkg"
    pkg.mkdir(parents=True)
    for i in range(10):
        (pkg / f"m{i}.py").write_text(unit_source(i))
    files, _ = C.read_sources([str(tmp_path / "proj")])
    assert {f.unit for f in files} == {"pkg"}
    train, heldout, _ = C.split_by_module(files, seed=0, heldout_share=0.2)
    assert train and heldout and not {f.module for f in train} & {f.module for f in heldout}
    one, _ = C.read_sources([str(pkg / "m0.py")])
    train, heldout, _ = C.split_by_module(one, seed=0, heldout_share=0.5)
    assert len(train) == 1 and heldout == []
    cfg = InfillConfig(sources=[str(pkg / "m0.py")], cache_dir=str(tmp_path / "cache"))
    logs = []
    splits = D.build_splits(cfg, log=logs.append)
    assert len(splits["heldout"]) == 0 and any("no examples" in line for line in logs)


def test_score_and_decode_of_foreign_ids(tok):
    task = InfillTask(InfillConfig(canvas_length=16), tokenizer=tok)
    exs = [{"middle": "    x = 1\n", "kind": "line"}, {"middle": "a b", "kind": "random_span"}]
    s = task.score(["    x = 1  \n", "a b"], exs)
    assert s["exact"] == 0.5 and s["exact_lines"] == 1.0 and s["line_exact"] == 0.0 and s["random_span_exact"] == 1.0
    canvas = torch.full((1, 16), T.PAD)
    ids = tok.encode("x = 1", add_special_tokens=False)
    canvas[0, :len(ids) + 2] = torch.tensor(ids + [len(tok) + 5, T.EOS])  # an id past the tokenizer is dropped
    assert task.decode(canvas) == ["x = 1"]


def test_compile_check_falls_back_to_the_enclosing_function(tmp_path):
    from dgft.tasks.infill.evaluate import compiles, enclosing_function

    window = {"prefix": "    def m(self, a):\n        b = a - 1\n", "suffix": "\n    def n(self):\n        return 2\n"}
    assert compiles(window, "        return b\n")  # the window starts indented: only its function compiles
    assert enclosing_function(window["prefix"], "        return b\n", window["suffix"]) == \
        "if True:\n    def m(self, a):\n        b = a - 1\n        return b\n\n"
    assert not compiles(window, "        return (b\n") and not compiles(window, "    return b\n  x\n")
    program = {"prefix": "def f(x):\n    y = [x,\n", "suffix": "         1]\n    return y\n\nprint(f(1))\n"}
    assert compiles(program, "         x + 1,\n") and not compiles(program, "         x +,\n")
    ran = tmp_path / "ran"  # a valid program whose every line would leave this file: compiled, never run
    effects = {"prefix": "import os\n", "suffix": f"open({str(ran)!r}, 'w').write('x')\n"}
    assert compiles(effects, f"os.system('touch {ran}')\n") and not ran.exists()
