"""HumanEval-Infilling harness: pass@k, file errors, program layout, and real problems in the sandbox."""

import gzip
import itertools
import json
import math

import pytest

from dgft.tasks.infill.humaneval import (InfillFileError, Problem, Sample, evaluate_samples, exact_match,
                                         pass_at_k, program, read_problems, read_samples)
from tests.conftest import SHARED

BENCH = SHARED / "benchmarks" / "infill"
needs_bench = pytest.mark.skipif(not (BENCH / "HumanEval-SingleLineInfilling.jsonl.gz").exists(),
                                 reason=f"no benchmark files in {BENCH}")
PROBLEM = {"task_id": "test/0", "entry_point": "return1", "prompt": "def return1():\n", "suffix": "1",
           "canonical_solution": "    return ", "test": "def check(candidate):\n    assert candidate() == 1"}


# --- pass@k -----------------------------------------------------------------------------------------


def test_pass_at_k_known_values():
    assert pass_at_k(5, 0, 1) == 0.0
    assert pass_at_k(5, 5, 1) == 1.0 and pass_at_k(5, 5, 5) == 1.0
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)
    assert pass_at_k(5, 2, 2) == pytest.approx(0.7)  # 1 - C(3,2)/C(5,2) = 1 - 3/10
    assert pass_at_k(4, 1, 2) == pytest.approx(0.5)  # 1 - C(3,2)/C(4,2) = 1 - 3/6
    assert pass_at_k(10, 3, 10) == 1.0  # fewer failures than k: some draw always passes
    assert pass_at_k(200, 1, 100) == pytest.approx(0.5)


def test_pass_at_k_matches_the_product_form():
    for n, c, k in itertools.product((1, 2, 7, 20, 100), range(0, 21, 3), (1, 2, 5, 10, 100)):
        if c <= n and k <= n:
            product = 1.0 if n - c < k else 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))
            assert pass_at_k(n, c, k) == pytest.approx(product, abs=1e-12), (n, c, k)


def test_pass_at_k_rejects_impossible_counts():
    for n, c, k in ((5, 6, 1), (5, -1, 1), (5, 1, 6), (5, 1, 0)):
        with pytest.raises(ValueError, match=f"n={n}, c={c}, k={k}"):
            pass_at_k(n, c, k)


# --- files -------------------------------------------------------------------------------------------


def write(path, lines, gz=False):
    data = "\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n"
    if gz:
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(data)
    else:
        path.write_text(data, encoding="utf-8")
    return path


def test_a_byte_order_mark_is_dropped(tmp_path):
    """As puzzle files: an editor's UTF-8 byte-order mark before the first record is not JSON, and is dropped."""
    path = write(tmp_path / "bom.jsonl", [PROBLEM])
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    assert list(read_problems(path)) == ["test/0"]


def test_reads_jsonl_and_gz_skipping_blank_lines(tmp_path):
    second = dict(PROBLEM, task_id="test/1")
    for name, gz in (("p.jsonl", False), ("p.jsonl.gz", True)):
        problems = read_problems(write(tmp_path / name, [PROBLEM, "   ", second], gz=gz))
        assert list(problems) == ["test/0", "test/1"]
        assert problems["test/1"].source == f"{tmp_path / name}:3" and problems["test/0"].prompt == "def return1():\n"


@pytest.mark.parametrize("lines, message", [
    ([PROBLEM, '{"task_id": "x",'], r"p\.jsonl:2: bad JSON: .* at column"),
    ([PROBLEM, "[1, 2]"], r"p\.jsonl:2: expected a JSON object, got list"),
    ([{k: v for k, v in PROBLEM.items() if k not in ("test", "suffix")}], r"p\.jsonl:1: missing keys 'suffix', 'test'"),
    ([dict(PROBLEM, prompt=3)], r"p\.jsonl:1: 'prompt' must be a string, got int"),
    ([PROBLEM, "", PROBLEM], r"p\.jsonl:3: task_id 'test/0' already at .*p\.jsonl:1"),
    (["", "  "], r"p\.jsonl: no problems"),
    ([PROBLEM, '{"task_id": ' + "9" * 5000 + "}"], r"p\.jsonl:2: bad JSON: ValueError"),
    ([PROBLEM, "[" * 100_000], r"p\.jsonl:2: bad JSON: RecursionError"),
    ([dict(PROBLEM, entry_point="")], r"p\.jsonl:1: entry_point '' is not a Python name"),
    ([dict(PROBLEM, entry_point="f(1)")], r"p\.jsonl:1: entry_point 'f\(1\)' is not a Python name"),
    ([dict(PROBLEM, entry_point="class")], r"p\.jsonl:1: entry_point 'class' is not a Python name"),
    ([PROBLEM, json.dumps(PROBLEM)[:-1] + ', "task_id": "test/9"}'],
     r"p\.jsonl:2: key 'task_id' appears twice in one object"),
])
def test_bad_problem_files_name_file_and_line(tmp_path, lines, message):
    with pytest.raises(InfillFileError, match=message):
        read_problems(write(tmp_path / "p.jsonl", lines))


def test_bad_files_are_named(tmp_path):
    with pytest.raises(InfillFileError, match=r"p\.json: expected a \.jsonl or \.jsonl\.gz file"):
        read_problems(tmp_path / "p.json")
    with pytest.raises(InfillFileError, match=r"gone\.jsonl: No such file"):
        read_problems(tmp_path / "gone.jsonl")
    (tmp_path / "bad.jsonl.gz").write_bytes(b"not gzip at all")
    with pytest.raises(InfillFileError, match=r"bad\.jsonl\.gz:1: broken gzip data"):
        read_problems(tmp_path / "bad.jsonl.gz")
    (tmp_path / "latin.jsonl").write_bytes(json.dumps(PROBLEM).encode() + b"\n\xe9\n")
    with pytest.raises(InfillFileError, match=r"latin\.jsonl:2: not UTF-8"):
        read_problems(tmp_path / "latin.jsonl")
    write(tmp_path / "packed.jsonl.gz", [PROBLEM], gz=True).rename(tmp_path / "packed.jsonl")
    with pytest.raises(InfillFileError, match=r"packed\.jsonl: gzip-compressed, but not named \.jsonl\.gz"):
        read_problems(tmp_path / "packed.jsonl")
    with pytest.raises(InfillFileError, match=r"s\.jsonl:1: missing key 'completion'"):
        read_samples(write(tmp_path / "s.jsonl", [{"task_id": "test/0"}]))


def test_a_lone_surrogate_is_named(tmp_path):
    """Valid JSON ("\\ud800") but no text: refused with file:line and the key, not a TypeError in the tokenizer."""
    from dgft.tasks.infill.evaluate import read_examples

    bad = {**PROBLEM, "task_id": "test/1", "prompt": "s = '\ud800'\n"}
    path = write(tmp_path / "p.jsonl", [PROBLEM, bad])
    assert "\\ud800" in path.read_text()
    with pytest.raises(InfillFileError, match=r"p\.jsonl:2: 'prompt' holds a lone surrogate "
                                              r"\(\\ud800 at character 5\)"):
        read_problems(path)
    row = {"kind": "line", "prefix": "", "middle": "x = '\udfff'\n", "suffix": ""}
    with pytest.raises(InfillFileError, match=r"h\.jsonl:1: 'middle' holds a lone surrogate"):
        read_examples(write(tmp_path / "h.jsonl", [row]))


def test_a_sample_for_an_unknown_task_is_named(tmp_path):
    problems = read_problems(write(tmp_path / "p.jsonl", [PROBLEM]))
    samples = read_samples(write(tmp_path / "s.jsonl", [{"task_id": "test/0", "completion": ""},
                                                        {"task_id": "test/9", "completion": ""}]))
    with pytest.raises(InfillFileError, match=r"s\.jsonl:2: task_id 'test/9' is not a problem"):
        evaluate_samples(problems, samples)


# --- programs ----------------------------------------------------------------------------------------


def test_program_layout_is_upstreams():
    p = Problem(**PROBLEM)
    assert program(p, "    return ") == ("def return1():\n    return 1\n"
                                          "def check(candidate):\n    assert candidate() == 1\ncheck(return1)")


def test_exact_match_keeps_indentation():
    assert exact_match("    x = 1  \n\n", "    x = 1\n")
    assert not exact_match("  x = 1\n", "    x = 1\n")
    assert not exact_match("x = 2\n", "x = 1\n")


def test_exact_match_needs_the_line_break_that_ends_the_line():
    """Without its line break the middle joins the suffix's first line in the program: no match, and no program."""
    problem = Problem("HumanEval/0", "f", "def f(x):\n", "    return x\n", "    x += 1\n", "def check(f):\n    pass\n")
    assert not exact_match("    x += 1", problem.canonical_solution)  # the program reads "    x += 1    return x"
    assert exact_match("    x += 1  \r\n\n", problem.canonical_solution)
    assert not exact_match("    x += 1\n    ", problem.canonical_solution)  # "        return x": indented
    assert exact_match("", "\n") and exact_match("x =", "x =") and not exact_match("x =\n", "x =")


def test_upstream_examples_score_thirty_percent(tmp_path):
    """Upstream's self-test (`example_samples.jsonl`, written out here): pass@1 0.3, pass@10 1.0, hostile
    completions (rm -rf, sleep, input) end with a verdict."""
    completions = ["    import subprocess\n    subprocess.check_output('rm -rf tmp')",
                   "    import time\n    time.sleep(10)\n    return 1", "    return input('enter a number')",
                   "    return 1", "  return 1", "\treturn 1", "    import time\n    time.sleep(10)\n    return ",
                   "    return ", "  return ", "\treturn "]
    problems = {"test/0": Problem(**PROBLEM)}
    result = evaluate_samples(problems, [Sample("test/0", c) for c in completions], timeout_s=1.5)
    assert result["pass@1"] == pytest.approx(0.3) and result["pass@10"] == 1.0 and "pass@100" not in result
    assert [r["status"] for r in result["results"]] == ["failed", "timeout"] + ["failed"] * 4 + ["timeout"] + \
        ["passed"] * 3
    assert result["per_task"] == {"test/0": {"n": 10, "c": 3}} and result["missing"] == []
    assert result["exact_match"] == pytest.approx(0.1)  # "    return " itself


def test_a_sandbox_that_cannot_be_set_up_stops_the_run(monkeypatch):
    """Status `error` (none of the program ran) is no failure of the middle: the run stops, saying how many and why."""
    from dgft.sandbox import Verdict
    from dgft.tasks.infill import humaneval as H

    def fake_run(source, **_):
        broken = "return 11" in source  # the middles that end in 1
        return Verdict(status="error" if broken else "passed", returncode=125, stdout="", stderr="",
                       stdout_truncated=False, stderr_truncated=False, wall_s=0.0, completed=not broken,
                       detail="sandbox set-up failed: unshare(): Operation not permitted" if broken else "",
                       isolation="none hook" if broken else "namespaces uid hook", pgid=0, uid=None)

    monkeypatch.setattr(H, "run_program", fake_run)
    problems = {"test/0": Problem(**PROBLEM)}
    samples = [Sample("test/0", "    return "), Sample("test/0", "    return 1"), Sample("test/0", "\treturn 1")]
    with pytest.raises(H.SandboxError, match=r"^2 of 3 programs could not be run: .*none of their code ran.*"
                                             r"unshare\(\): Operation not permitted \(2x\)"):
        H.evaluate_samples(problems, samples)
    assert H.evaluate_samples(problems, samples[:1])["isolation"] == "namespaces uid hook"


def test_eval_records_each_status_and_the_isolation(tmp_path):
    """`dgft eval` on HumanEval: the status of every middle in _samples.jsonl, the counts and isolation in the
    result (real sandbox runs: one middle passes, one fails)."""
    from dgft.tasks.infill import evaluate as E

    problems = {"test/0": Problem(**PROBLEM)}
    examples = [{"id": "test/0", "kind": "line", "middle": "    return "}]
    written = {"free/model": [["    return ", "    return 1"]], "free/oracle": [["    return ", "    return "]]}
    verdicts, box = E.run_tests(problems, examples, written, workers=2)
    # the two middles written (the first is also the true one) and an empty middle, each run once
    assert box["programs"] == 3 and box["statuses"] == {"passed": 1, "failed": 2} and "hook" in box["isolation"]
    assert E.bounds_of(verdicts, examples) == {"reference_passes": 1.0, "reference_fails": [], "empty_passes": 0.0}
    compiled = {key: [[True, True]] for key in written}
    E.write_samples(tmp_path / "s.jsonl", examples, written, compiled, verdicts, {})
    rows = [json.loads(line) for line in (tmp_path / "s.jsonl").read_text().splitlines()]
    assert [(r["passed"], r["status"]) for r in rows] == [(True, "passed"), (False, "failed"),
                                                        (True, "passed"), (True, "passed")]
    assert all(r["reference"] == examples[r["index"]]["middle"] for r in rows)  # each line judged alone


def test_a_task_whose_true_middle_fails_is_listed_and_said(capsys):
    """A problem file can hold a task no middle passes (its canonical solution fails its tests): the result lists
    it and says so, instead of counting it silently as the model's failure; an empty middle's score is beside it."""
    from dgft.tasks.infill import evaluate as E

    broken = dict(PROBLEM, task_id="test/1", canonical_solution="    return None  # ")
    problems = {"test/0": Problem(**PROBLEM), "test/1": Problem(**broken)}
    examples = [{"id": "test/0", "kind": "line", "middle": "    return "},
                {"id": "test/1", "kind": "line", "middle": broken["canonical_solution"]}]
    verdicts, _ = E.run_tests(problems, examples, {"free/model": [["    return "], ["    return "]]}, workers=2)
    bounds = E.bounds_of(verdicts, examples)
    assert bounds == {"reference_passes": 0.5, "reference_fails": ["test/1"], "empty_passes": 0.0}
    assert "1 of 2 tasks fail their tests with their own true middle (first: test/1, failed)" in capsys.readouterr().err
    result = {"humaneval": True, "samples": 1, "n": 2, "too_long": {}, "reference_compiles": 1.0, "data": "d",
              "sampler": {"temperature": 0.0}, "run": "r", "seed": 0, "limit": 0, "rows": {}, **bounds}
    assert "passes its tests in 50.0% (1 fail: test/1); an empty middle passes in 0.0%" in E.markdown("x", result)


def test_each_kinds_pass_at_1_all_counts_its_left_out_middles():
    from dgft.tasks.infill.evaluate import by_kind

    examples = [{"kind": "line", "middle": "a"}, {"kind": "line", "middle": "b"}, {"kind": "multi_line", "middle": "c"}]
    out = by_kind(examples, [["a"], ["x"], ["c"]], [[True]] * 3, [[True], [False], [True]],
                  {"line": 2, "random_span": 1})
    assert out["line"]["pass@1"] == 0.5 and out["line"]["pass@1_all"] == 0.25  # 1 pass of 2 written + 2 left out
    assert out["multi_line"]["pass@1_all"] == 1.0
    assert out["random_span"]["n"] == 0 and out["random_span"]["pass@1_all"] == 0.0  # every middle left out
    assert out["random_span"]["pass@1"] is None and out["random_span"]["exact"] is None  # n/a, not 0%


def test_the_report_counts_left_out_examples_at_every_k_and_says_n_a_without_examples():
    from dgft.tasks.infill.evaluate import markdown, summarise

    examples = [{"kind": "line", "middle": "a"}, {"kind": "line", "middle": "b"}]
    passed = [[True] * 9 + [False], [False] * 10]
    row = summarise(examples, [["a"] * 10, ["x"] * 10], [[True] * 10] * 2, passed, left_out=2)
    assert row["pass@10_all"] == row["pass@10"] / 2 and row["pass@1_all"] == row["pass@1"] / 2
    empty = summarise([], [], [], [], left_out=3)
    assert empty["pass@1"] is None and empty["pass@1_all"] == 0.0 and empty["compiles"] is None
    result = {"humaneval": True, "samples": 10, "n": 2, "too_long": {"line": 2}, "reference_compiles": None,
              "data": "d", "sampler": {"temperature": 0.8}, "run": "r", "seed": 0, "limit": 0,
              "prompt_cut": 1, "prompt_tokens": 256,
              "rows": {"clamped/model": {**row, "mean_steps": 4.0, "tokens_per_s": 10.0,
                                         "by_kind": {"line": row}},
                       "free/model": {**empty, "mean_steps": 0.0, "tokens_per_s": 0.0, "by_kind": {}}}}
    text = markdown("x", result)
    assert "pass@1_all" in text and "pass@10_all" in text and "1 prompts cut to prompt_tokens=256" in text
    free = next(line for line in text.splitlines() if line.startswith("| free"))
    assert "n/a" in free and "0.0%" in free  # n/a where nothing was written, 0% where left-out ones count
    assert "compiles in" not in text  # no reference figure without examples


@needs_bench
def test_canonical_solutions_pass_and_empty_middles_fail():
    problems = dict(itertools.islice(read_problems(BENCH / "HumanEval-SingleLineInfilling.jsonl.gz").items(), 5))
    canonical = [Sample(t, p.canonical_solution) for t, p in problems.items()]
    empty = [Sample(t, "") for t in problems]
    result = evaluate_samples(problems, canonical + empty, ks=(1, 2))
    assert [r["passed"] for r in result["results"]] == [True] * 5 + [False] * 5
    assert result["pass@1"] == pytest.approx(0.5) and result["pass@2"] == 1.0


def test_a_problem_file_missing_a_key_on_its_first_line_is_named_as_one(tmp_path):
    """The first record names the format by its task_id: a missing `test` is named, not the held-out file's keys."""
    from dgft.tasks.infill.evaluate import read_examples

    row = {k: v for k, v in PROBLEM.items() if k != "test"}
    with pytest.raises(InfillFileError, match=r"h\.jsonl:1: missing key 'test'$"):
        read_examples(write(tmp_path / "h.jsonl", [row, PROBLEM]))


def test_reports_of_a_held_out_limit_a_problem_line_without_its_ids_and_no_program_run(tmp_path):
    """Found by a session-37 probe: `limit=5` on the held-out split takes rows in turn by kind, while the .md said
    "the first 5 of the file"; a HumanEval line without task_id and entry_point was named by the held-out format's
    keys; a result whose every middle was left out printed "0 distinct programs, ; isolation: ."; 1 of 5 tasks
    failing gave reference_passes 0.19999999999999996."""
    from dgft.evaluate import _how_much
    from dgft.tasks.infill import evaluate as E

    assert _how_much({"limit": 5, "n": 5, "limit_order": "taken in turn by kind"}) == \
        "the first 5 (taken in turn by kind)"
    assert _how_much({"limit": 5, "n": 5}) == "the first 5"
    nameless = {k: v for k, v in PROBLEM.items() if k not in ("task_id", "entry_point")}
    with pytest.raises(InfillFileError, match=r"h\.jsonl:1: missing key"):
        try:
            E.read_examples(write(tmp_path / "h.jsonl", [nameless]))
        except InfillFileError as err:
            assert "task_id" in str(err) and "'kind'" not in str(err), err
            raise
    examples = [{"id": f"t/{i}", "kind": "line", "middle": "m"} for i in range(5)]
    verdicts = {(e["id"], m): "passed" if (e["id"] == "t/0" and m == "m") else "failed"
                for e in examples for m in ("m", "")}
    assert E.bounds_of(verdicts, examples)["reference_passes"] == 0.2
    result = {"humaneval": True, "samples": 1, "n": 0, "too_long": {"line": 2}, "reference_compiles": None,
              "data": "d", "sampler": {"temperature": 0.0}, "run": "r", "seed": 0, "limit": 2, "rows": {},
              "sandbox": {"programs": 0, "statuses": {}, "isolation": ""}}
    text = E.markdown("x", result)
    assert "no program ran (every middle was left out)" in text and "isolation: ." not in text
