"""eval/paired.py: the puzzle-by-puzzle comparison of two `dgft eval` samples files."""

import importlib.util
import json
from pathlib import Path

import pytest


def _paired():
    path = Path(__file__).resolve().parent.parent / "eval" / "paired.py"
    spec = importlib.util.spec_from_file_location("eval_paired", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _write(path, exact, puzzles=None, kinds=None):
    puzzles = puzzles or [f"{i:016d}" for i in range(len(exact))]
    kinds = kinds or ["singles"] * len(exact)
    path.write_text("".join(json.dumps({"row": "rules", "index": i, "puzzle": p, "difficulty": k, "exact": e}) + "\n"
                            for i, (p, k, e) in enumerate(zip(puzzles, kinds, exact))))
    return path


def test_sign_test_exact_values():
    paired = _paired()
    assert paired.sign_test(0, 0) == 1.0 and paired.sign_test(3, 3) == 1.0
    assert paired.sign_test(0, 6) == pytest.approx(2 / 64)  # all six differing puzzles favour B
    assert paired.sign_test(9, 1) == pytest.approx(2 * 11 / 1024)


def test_pairs_count_and_pool(tmp_path, capsys):
    paired = _paired()
    a = _write(tmp_path / "a.jsonl", [True, True, False, False, True, False], kinds=["singles"] * 3 + ["harder"] * 3)
    b = _write(tmp_path / "b.jsonl", [True, False, True, True, True, True], kinds=["singles"] * 3 + ["harder"] * 3)
    paired.main([str(a), str(b), str(a), str(b)])
    out = capsys.readouterr().out
    # both 2 (0, 4), only A 1 (1), only B 3 (2, 3, 5), neither 0; pooled over the two pairs: 4 / 2 / 6 / 0
    assert "| 6 | 50.0% | 83.3% | +33.3% | 2 | 1 | 3 | 0 | 0.625 |" in out
    assert "| **pooled** | 12 | 50.0% | 83.3% | +33.3% | 4 | 2 | 6 | 0 |" in out
    assert "|   harder | 3 | 33.3% | 100.0% |" in out


def test_different_puzzles_are_refused(tmp_path):
    paired = _paired()
    a = _write(tmp_path / "a.jsonl", [True, False])
    b = _write(tmp_path / "b.jsonl", [True, False], puzzles=["0" * 16, "1" * 16])
    with pytest.raises(SystemExit, match="not of the same puzzles"):
        paired.main([str(a), str(b)])
    bad = tmp_path / "bad.jsonl"
    bad.write_text(a.read_text().splitlines()[0] + '\nnot json\n')
    with pytest.raises(SystemExit, match="bad.jsonl:2"):
        paired.main([str(bad), str(b)])
    # a line without the fields compared (an infill samples line, say) or with `exact` as text: named, not a
    # KeyError, and "false" is not counted as solved
    bad.write_text('{"row": "rules", "index": 0, "exact": false}\n')
    with pytest.raises(SystemExit, match="bad.jsonl:1: no puzzle, difficulty"):
        paired.main([str(bad), str(b)])
    bad.write_text(a.read_text().replace('"exact": false', '"exact": "false"'))
    with pytest.raises(SystemExit, match="bad.jsonl:2: exact='false'"):
        paired.main([str(bad), str(b)])
    with pytest.raises(SystemExit, match="gone.jsonl: cannot read"):
        paired.main([str(tmp_path / "gone.jsonl"), str(b)])
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes(a.read_bytes() + b"\xe9\n")
    with pytest.raises(SystemExit, match="latin.jsonl:3: not UTF-8"):
        paired.main([str(latin), str(b)])


def test_common_compares_the_shared_puzzles(tmp_path, capsys):
    paired = _paired()
    a = _write(tmp_path / "a.jsonl", [True, False, False, True], puzzles=["a" * 16, "b" * 16, "c" * 16, "d" * 16])
    b = _write(tmp_path / "b.jsonl", [True, True, False], puzzles=["c" * 16, "b" * 16, "e" * 16])  # other order
    paired.main([str(a), str(b), "--common"])
    out = capsys.readouterr().out
    # shared: b (A no, B yes), c (A no, B yes): only B 2
    assert "(common 2; A alone 2, B alone 1) | 2 | 0.0% | 100.0% | +100.0% | 0 | 0 | 2 | 0 |" in out
    c = _write(tmp_path / "c.jsonl", [True], puzzles=["z" * 16])
    with pytest.raises(SystemExit, match="share no puzzle"):
        paired.main([str(a), str(c), "--common"])
    # a puzzle listed twice (easy50 does): matched occurrence by occurrence, first with first, second with second
    twice_a = _write(tmp_path / "twice_a.jsonl", [True, False, True], puzzles=["a" * 16, "b" * 16, "a" * 16])
    twice_b = _write(tmp_path / "twice_b.jsonl", [False, True, True], puzzles=["a" * 16, "a" * 16, "z" * 16])
    paired.main([str(twice_a), str(twice_b), "--common"])
    assert "(common 2; A alone 1, B alone 1) | 2 | 100.0% | 50.0% | -50.0% | 1 | 1 | 0 | 0 |" in capsys.readouterr().out
    joined = tmp_path / "joined.jsonl"  # two files run together: the second's lines would replace the first's
    joined.write_text(a.read_text() + b.read_text())
    with pytest.raises(SystemExit, match=r"joined\.jsonl:5: puzzle index 0 of row 'rules' appears twice"):
        paired.main([str(joined), str(a)])


def test_labels_name_both_runs_and_small_p_values(tmp_path, capsys):
    paired = _paired()
    (tmp_path / "runA" / "eval").mkdir(parents=True)
    (tmp_path / "runB" / "eval").mkdir(parents=True)
    a = _write(tmp_path / "runA" / "eval" / "x_samples.jsonl", [True] * 12)
    b = _write(tmp_path / "runB" / "eval" / "x_samples.jsonl", [False] * 12)
    paired.main([str(a), str(b)])
    out = capsys.readouterr().out
    assert "| runA: x_samples.jsonl / runB: x_samples.jsonl | 12 |" in out and "| < 0.001 |" in out
    paired.main([str(a), str(b)] * 21)  # more pairs than the sign-flip test enumerates: said, not a traceback
    assert "sign-flip test not computed" in capsys.readouterr().out


def test_sign_flip_test_exact_values():
    paired = _paired()
    assert paired.sign_flip_test([0.05] * 5) == pytest.approx(2 / 32)  # only all-plus and all-minus reach it
    assert paired.sign_flip_test([0.05, -0.05]) == 1.0
    assert paired.sign_flip_test([0.0, 0.03, 0.03]) == pytest.approx(4 / 8)  # the zero counts under both signs
    assert paired.sign_flip_test([0.04, 0.01, 0.02]) == pytest.approx(2 / 8)
    with pytest.raises(ValueError, match="too many"):
        paired.sign_flip_test([0.01] * 21)


def test_pair_level_line(tmp_path, capsys):
    paired = _paired()
    a = _write(tmp_path / "a.jsonl", [True, False, False, False])
    b1 = _write(tmp_path / "b1.jsonl", [True, True, False, False])  # +25%
    b2 = _write(tmp_path / "b2.jsonl", [True, True, True, False])  # +50%
    paired.main([str(a), str(b1), str(a), str(b2)])
    out = capsys.readouterr().out
    assert "pair level (2 pairs): B - A per pair +25.0%, +50.0%; mean +37.5% (standard error 12.5%); " \
           "sign-flip test p = 0.500" in out
    paired.main([str(a), str(b1)])
    assert "pair level" not in capsys.readouterr().out
