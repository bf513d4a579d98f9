"""HumanEval-Infilling harness: pass@k, file errors, program layout, and real problems in the sandbox."""

import gzip
import itertools
import json
import math
from pathlib import Path

import pytest

from dgft.tasks.infill.humaneval import (InfillFileError, Problem, Sample, evaluate_samples, exact_match,
                                         pass_at_k, program, read_problems, read_samples)

BENCH = Path(__file__).resolve().parents[2] / "shared" / "benchmarks" / "infill"
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
    with pytest.raises(InfillFileError, match=r"s\.jsonl:1: missing key 'completion'"):
        read_samples(write(tmp_path / "s.jsonl", [{"task_id": "test/0"}]))


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


@needs_bench
def test_canonical_solutions_pass_and_empty_middles_fail():
    problems = dict(itertools.islice(read_problems(BENCH / "HumanEval-SingleLineInfilling.jsonl.gz").items(), 5))
    canonical = [Sample(t, p.canonical_solution) for t, p in problems.items()]
    empty = [Sample(t, "") for t in problems]
    result = evaluate_samples(problems, canonical + empty, ks=(1, 2))
    assert [r["passed"] for r in result["results"]] == [True] * 5 + [False] * 5
    assert result["pass@1"] == pytest.approx(0.5) and result["pass@2"] == 1.0
