"""The real entry points for code infilling on a tiny model: dgft train recipe=infill -> eval (held-out split and a
HumanEval-Infilling file, tests in the sandbox) -> export, through the CLI, on a corpus of a few files."""

import gzip
import json
from pathlib import Path

import pytest
from safetensors.torch import load_file
from transformers import AutoTokenizer, DiffusionGemmaForBlockDiffusion

from dgft.cli import main
from tests.conftest import SHARED

TINY = ["model.hidden_size=32", "model.num_layers=2", "model.num_heads=2", "model.num_kv_heads=1",
        "model.head_dim=16", "model.intermediate_size=64", "model.moe_intermediate_size=32"]
BENCH = SHARED / "benchmarks" / "infill" / "HumanEval-SingleLineInfilling.jsonl.gz"
PROBLEMS = [  # short middles that fit the tiny canvas, after the benchmark's first problems when it is there
    {"task_id": "test/0", "entry_point": "return1", "prompt": "def return1():\n", "suffix": "1",
     "canonical_solution": "    return ", "test": "def check(candidate):\n    assert candidate() == 1"},
    {"task_id": "test/1", "entry_point": "add", "prompt": "def add(a, b):\n    total = a + b\n",
     "suffix": "", "canonical_solution": "    return total\n",
     "test": "def check(candidate):\n    assert candidate(2, 3) == 5"},
]


def source(i: int) -> str:
    return (f"def f{i}(x):\n    y = x + {i}\n    z = y * {i}\n    return z - 1\n\n\n"
            f"class K{i}:\n    def m(self, a):\n        b = a - {i}\n        if b:\n            return b\n"
            f"        return {i}\n")


def _train(tmp_path, run, *extra):
    corpus = tmp_path / "corpus"
    if not corpus.exists():
        corpus.mkdir()
        for i in range(8):
            (corpus / f"mod{i}.py").write_text(source(i))
    main(["train", "recipe=infill", f"hydra.run.dir={run}", f"task.sources=[{corpus}]",
          f"task.cache_dir={tmp_path / 'cache'}", "task.vocab_size=300", "task.canvas_length=32",
          "task.prompt_tokens=64", "task.heldout_share=0.3", "task.heldout_examples=4", "task.oracle_length_p=0.5",
          "trainer.batch_size=4", "trainer.eval_every=2", "trainer.eval_puzzles=3", "trainer.ckpt_every=2",
          "trainer.log_every=1", "trainer.num_threads=1", "sampler.steps=8", "sampler.batch_size=8", *TINY, *extra])


def _humaneval_file(tmp_path) -> Path:
    """5 problems of HumanEval-SingleLineInfilling (when the file is there) and 2 made-up ones whose middles fit
    the canvas, named like the upstream file."""
    lines = []
    if BENCH.exists():
        with gzip.open(BENCH, "rt", encoding="utf-8") as f:
            lines = [next(f) for _ in range(5)]
    lines += [json.dumps(p) + "\n" for p in PROBLEMS]
    path = tmp_path / "HumanEval-SingleLineInfilling-head.jsonl"
    path.write_text("".join(lines))
    return path


def test_infill_train_eval_export(tmp_path):
    run = tmp_path / "run"
    _train(tmp_path, run, "trainer.max_steps=4")
    for name in ("config.yaml", "tokenizer/tokenizer.json", "metrics.jsonl", "loss.png", "data/heldout.jsonl.gz",
                 "run.json", "train_summary.json", "model/model.safetensors"):
        assert (run / name).exists(), name
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert any("loss" in r for r in rows) and any("clamped_exact" in r and "clamped_token_acc" in r for r in rows)
    counts = json.loads((run / "train_summary.json").read_text())["data_counts"]  # spans redrawn: said, not silent
    assert set(counts) == {"drawn", "too_long", "no_span"} and counts["drawn"] >= 4 * 4  # 4 steps of 4
    from dgft.plots import heldout_series  # loss.png's held-out curves: infill's keys too, not only Sudoku's

    assert "clamped_exact" in heldout_series(rows) and "clamped_token_acc" not in heldout_series(rows)
    assert heldout_series([{"step": 5, "9x9_clamped_exact": 0.5, "loss": 1.0}]) == {"9x9_clamped_exact": [(5, 0.5)]}

    # the run's held-out split: both modes, each with the model's own length and the true one
    main(["eval", str(run), "limit=6"])
    result = json.loads((run / "eval" / "heldout.json").read_text())
    assert set(result["rows"]) == {"free/model", "free/oracle", "clamped/model", "clamped/oracle"}
    assert 0 < result["n"] <= 6 and not result["humaneval"] and result["sandbox"] is None
    assert "reference_passes" not in result  # no tests to run
    for row in result["rows"].values():
        assert {"n", "exact", "exact_lines", "compiles", "mean_steps", "tokens_per_s", "by_kind"} <= set(row)
        assert "pass@1" not in row
    assert (run / "eval" / "heldout.md").exists()

    # a HumanEval-Infilling file, 2 samples per problem at temperature > 0, with the compile rerank
    data = _humaneval_file(tmp_path)
    main(["eval", str(run), f"data={data}", "samples=2", "sampler.temperature=0.7", "rerank=true"])
    result = json.loads((run / "eval" / "HumanEval-SingleLineInfilling-head.json").read_text())
    assert result["humaneval"] and result["n"] + sum(result["too_long"].values()) == len(data.read_text().splitlines())
    assert result["n"] > 0  # else every check below passes on nothing
    assert result["reference_compiles"] == 1.0
    assert result["reference_passes"] == 1.0 and result["reference_fails"] == [] and 0 <= result["empty_passes"] < 1
    assert {"clamped/oracle", "clamped/oracle/rerank", "free/model/rerank"} <= set(result["rows"])
    for key, row in result["rows"].items():
        assert {"pass@1", "pass@1_all", "exact", "compiles"} <= set(row) and "pass@10" not in row
        assert list(row["by_kind"]) == ["line"]
        assert row["by_kind"]["line"]["pass@1_all"] == pytest.approx(row["pass@1_all"])  # one kind: the same left out
    box = result["sandbox"]  # every distinct program ran, none with a sandbox error (that would have stopped eval)
    assert box["isolation"] and sum(box["statuses"].values()) == box["programs"] and "error" not in box["statuses"]
    assert "isolation: " in (run / "eval" / "HumanEval-SingleLineInfilling-head.md").read_text()
    samples = [json.loads(line) for line in
               (run / "eval" / "HumanEval-SingleLineInfilling-head_samples.jsonl").read_text().splitlines()]
    assert len(samples) == 4 * 2 * result["n"] and all(isinstance(s["passed"], bool) for s in samples)
    assert all(s["passed"] == (s["status"] == "passed") and s["status"] in box["statuses"] for s in samples)
    reranked = {(s["row"], s["id"]): s["sample"] for s in samples if s["reranked"]}  # the first that compiles
    for s in samples:
        if s["compiles"] and s["sample"] == 0:
            assert reranked[(s["row"], s["id"])] == 0

    main(["export", str(run)])
    model = DiffusionGemmaForBlockDiffusion.from_pretrained(str(run / "export"))
    assert model.config.canvas_length == 32
    assert len(AutoTokenizer.from_pretrained(str(run / "export"))) == model.config.get_text_config().vocab_size
    # the export evaluates as its run did (its own tokenizer and sampler settings): the same middles, the same figures
    main(["eval", str(run / "export"), f"data={run / 'data' / 'heldout.jsonl.gz'}", "limit=6"])
    theirs = json.loads((run / "eval" / "heldout.json").read_text())
    mine = json.loads((run / "export" / "eval" / "heldout.json").read_text())
    figures = ("n", "exact", "exact_lines", "compiles", "mean_steps")
    assert {k: {f: r[f] for f in figures} for k, r in mine["rows"].items()} == \
        {k: {f: r[f] for f in figures} for k, r in theirs["rows"].items()}
    middles = [[(r["row"], r["id"], r["middle"]) for r in map(json.loads, (d / "heldout_samples.jsonl").open())]
               for d in (run / "eval", run / "export" / "eval")]
    assert middles[0] == middles[1] and mine["export"]["step"] == 4


def test_infill_resume_is_bitwise_identical(tmp_path, capsys):
    """A run stopped at step 2 and resumed to step 4 ends with the weights of a straight 4-step run (the warmup
    spans all 4 steps, so the schedule does not depend on max_steps)."""
    _train(tmp_path, tmp_path / "straight", "trainer.max_steps=4", "trainer.warmup_steps=10")
    _train(tmp_path, tmp_path / "split", "trainer.max_steps=2", "trainer.warmup_steps=10")
    with pytest.raises(SystemExit):  # the recipe Hydra recorded in split/.hydra is infill
        main(["train", "recipe=sudoku", f"resume={tmp_path / 'split'}", f"hydra.run.dir={tmp_path / 'other'}"])
    assert "recipe=sudoku, but the run was trained with recipe=infill" in capsys.readouterr().err
    _train(tmp_path, tmp_path / "ignored", "trainer.max_steps=4", f"resume={tmp_path / 'split'}")
    a = load_file(str(tmp_path / "straight" / "model" / "model.safetensors"))
    b = load_file(str(tmp_path / "split" / "model" / "model.safetensors"))
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)


def test_infill_eval_errors_name_the_option(tmp_path, capsys):
    run = tmp_path / "run"
    _train(tmp_path, run, "trainer.max_steps=1", "trainer.eval_every=0")
    for args, key in ((["rerank=true"], "rerank"), (["sampler.modes=[rules]"], "sampler.modes")):
        with pytest.raises(SystemExit) as err:
            main(["eval", str(run), *args])
        assert err.value.code == 2 and key in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(PROBLEMS[0]) + "\n{not json\n")
    with pytest.raises(SystemExit) as err:
        main(["eval", str(run), f"data={bad}"])
    assert err.value.code == 2 and "bad.jsonl:2" in capsys.readouterr().err


def test_a_resume_after_the_corpus_changed_is_refused(tmp_path, capsys):
    """The tokenizer (a BPE trained on the corpus) and the held-out split come from task.sources: made again from an
    edited corpus on resume, they would pair the weights with other token ids and change the held-out split
    mid-run. Refused, naming the run's file; the run keeps its own."""
    run = tmp_path / "run"
    _train(tmp_path, run, "trainer.max_steps=2")
    tokenizer = (run / "tokenizer" / "tokenizer.json").read_bytes()
    corpus = tmp_path / "corpus"
    for i in range(8):
        (corpus / f"mod{i}.py").write_text(source(i).replace("return", "yield") + f"\n\ndef extra{i}(q):\n"
                                                                                   f"    return q * {i}\n")
    with pytest.raises(SystemExit) as err:
        _train(tmp_path, run, "trainer.max_steps=4", f"resume={run}")
    assert err.value.code == 2
    assert "resume: the tokenizer made now differs from the run's own" in capsys.readouterr().err
    assert (run / "tokenizer" / "tokenizer.json").read_bytes() == tokenizer
    assert not list(run.glob(".resume-check-*"))


def test_held_out_rows_with_an_empty_middle_or_an_unknown_kind_are_named(tmp_path):
    from dgft.tasks.infill.evaluate import read_examples
    from dgft.tasks.infill.humaneval import InfillFileError

    row = {"kind": "line", "prefix": "def f():\n", "middle": "    return 1\n", "suffix": ""}
    for bad, message in (({"middle": ""}, "an empty middle"), ({"kind": "Line"}, "kind 'Line': expected one of")):
        path = tmp_path / "rows.jsonl"
        path.write_text(json.dumps(row) + "\n" + json.dumps({**row, **bad}) + "\n")
        with pytest.raises(InfillFileError, match=rf"rows.jsonl:2: {message}"):
            read_examples(path)


def test_corpus_files_that_are_not_regular_files_are_never_read(tmp_path):
    """A FIFO would block the reader; /dev/zero behind a .py link would fill memory; a file over max_file_bytes is
    skipped by its size, unread. Each is counted."""
    import os

    from dgft.tasks.infill.corpus import read_sources

    corpus = tmp_path / "c"
    corpus.mkdir()
    (corpus / "good.py").write_text(source(1))
    os.mkfifo(corpus / "pipe.py")
    (corpus / "zero.py").symlink_to("/dev/zero")
    (corpus / "big.py").write_text(source(2) * 200)
    files, report = read_sources([str(corpus)], max_file_bytes=2000)
    assert [f.path.rsplit("/", 1)[-1] for f in files] == ["good.py"]
    assert report.skipped == {"not a regular file": 2, "too large": 1}
