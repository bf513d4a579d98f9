"""Compare two Sudoku evaluations of the same puzzles, puzzle by puzzle (a paired test).

    python eval/paired.py A_samples.jsonl B_samples.jsonl [A2_samples.jsonl B2_samples.jsonl ...] [--row rules]
                          [--common]

Each file is the `<name>_samples.jsonl` that `dgft eval` writes beside `<name>.json`. A is the setting you have, B
the one you try; give more pairs (one per trained model, say) and they are also pooled. Per pair it prints the
puzzles both solve, only A, only B, neither, and the exact two-sided sign test (McNemar's) on the puzzles where the
two differ: the chance of a split at least this uneven if A and B were equally good. Only the differing puzzles
carry information, so two settings 4 points apart on 200 puzzles can be clearly different or not at all.

With several pairs, each a separate training of A and of B (one per seed, say), a last line tests the setting
rather than the trained models: the mean over the pairs of B - A, its standard error, and the exact sign-flip
(randomisation) test of that mean, the chance, if A and B were equally good, that giving each pair's difference a
random sign yields a mean at least as far from zero. The pooled sign test counts every puzzle as an independent
trial, so it speaks of these trained models; trainings of one setting also differ from each other, and only the
pair-level test carries that noise. It needs several pairs: with n pairs it cannot go below 2 / 2**n.

By default the two files must hold the same puzzles in the same order. With --common they are matched by puzzle
instead and compared on the puzzles both hold (B evaluated on a subset of A's puzzles, say); the line says how many
each file had that the other did not. A puzzle a file lists twice (easy50 does) is matched occurrence by occurrence.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from math import comb
from pathlib import Path


def sign_test(only_a: int, only_b: int) -> float:
    """Exact two-sided binomial test of only_a vs only_b under p = 1/2 (McNemar's exact test)."""
    n, k = only_a + only_b, min(only_a, only_b)
    if n == 0:
        return 1.0
    return min(1.0, 2 * sum(comb(n, i) for i in range(k + 1)) / 2**n)


def sign_flip_test(diffs: list[float]) -> float:
    """Exact two-sided randomisation test that the mean of paired differences is zero: the share of the 2**n sign
    patterns whose |sum| is at least the observed |sum| (a difference of zero counts under both signs)."""
    if len(diffs) > 20:
        raise ValueError(f"sign_flip_test enumerates 2**n patterns; {len(diffs)} pairs is too many")
    observed = abs(sum(diffs)) - 1e-12
    hits = sum(abs(sum(d if mask >> i & 1 else -d for i, d in enumerate(diffs))) >= observed
               for mask in range(2 ** len(diffs)))
    return hits / 2 ** len(diffs)


def p_text(p: float) -> str:
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def pair_level(diffs: list[float]) -> str:
    """The line for the mean over pairs of B - A (fractions), with its standard error and sign-flip p."""
    n = len(diffs)
    mean = sum(diffs) / n
    se = (sum((d - mean) ** 2 for d in diffs) / (n - 1) / n) ** 0.5
    test = f"sign-flip test p = {p_text(sign_flip_test(diffs))}" if n <= 20 else \
        "sign-flip test not computed (it enumerates 2**n sign patterns: at most 20 pairs)"
    return (f"pair level ({n} pairs): B - A per pair {', '.join(f'{d:+.1%}' for d in diffs)}; mean {mean:+.1%} "
            f"(standard error {se:.1%}); {test}")


def read(path: Path, row: str) -> dict[int, dict]:
    """index -> that puzzle's line for `row`; exits with file:line on a bad line."""
    out = {}
    try:
        with open(path, "rb") as f:  # bytes, decoded a line at a time: a bad byte is named with its own line
            for line_no, raw in enumerate(f, 1):
                try:
                    rec = json.loads(raw.decode("utf-8"))
                    if rec["row"] == row:
                        missing = [k for k in ("index", "puzzle", "exact", "difficulty") if k not in rec]
                        if missing:  # an infill samples file, say, or a line cut by hand
                            sys.exit(f"{path}:{line_no}: no {', '.join(missing)}: not a line of a Sudoku eval's "
                                     "samples file")
                        if not isinstance(rec["exact"], bool) or not isinstance(rec["index"], int):
                            sys.exit(f"{path}:{line_no}: exact={rec['exact']!r}, index={rec['index']!r}: expected "
                                     "true or false, and a whole number")
                        if rec["index"] in out:  # two files joined, say: the second would replace the first unseen
                            sys.exit(f"{path}:{line_no}: puzzle index {rec['index']} of row {row!r} appears twice")
                        out[rec["index"]] = rec
                except UnicodeDecodeError as e:
                    sys.exit(f"{path}:{line_no}: not UTF-8 ({e.reason}); a dgft eval samples file is JSON lines")
                except (json.JSONDecodeError, KeyError, TypeError) as e:
                    sys.exit(f"{path}:{line_no}: not a dgft eval samples line ({e})")
    except OSError as e:
        sys.exit(f"{path}: cannot read ({e.strerror or e})")
    if not out:
        sys.exit(f"{path}: no lines for row {row!r} (rows are the eval's modes, or baseline_untrained_rules)")
    return out


def by_puzzle(recs: dict[int, dict]) -> dict[tuple[str, int], dict]:
    """(puzzle string, occurrence) -> its line, in index order: a puzzle listed twice is matched first with first,
    second with second."""
    out, seen = {}, Counter()
    for i in sorted(recs):
        puzzle = recs[i]["puzzle"]
        out[(puzzle, seen[puzzle])] = recs[i]
        seen[puzzle] += 1
    return out


def common(a: dict[str, dict], b: dict[str, dict], where: str) -> tuple[dict, dict, str]:
    """The lines of the puzzles both hold, and a note of how many each file had alone."""
    keys = [k for k in a if k in b]
    if not keys:
        sys.exit(f"{where}: the two evaluations share no puzzle")
    note = f" (common {len(keys)}; A alone {len(a) - len(keys)}, B alone {len(b) - len(keys)})"
    return {k: a[k] for k in keys}, {k: b[k] for k in keys}, note


def compare(a: dict, b: dict, where: str) -> Counter:
    """Counts of both / only_a / only_b / neither, overall and per difficulty (keys like "harder/only_b")."""
    if a.keys() != b.keys() or any(a[i]["puzzle"] != b[i]["puzzle"] for i in a):
        sys.exit(f"{where}: the two evaluations are not of the same puzzles in the same order (--common matches "
                 "by puzzle and compares the puzzles both hold)")
    counts = Counter()
    for i in a:
        ea, eb = a[i]["exact"], b[i]["exact"]
        cell = "both" if ea and eb else "only_a" if ea else "only_b" if eb else "neither"
        counts[cell] += 1
        counts[f"{a[i]['difficulty']}/{cell}"] += 1
    return counts


def size(c: Counter, prefix: str = "") -> int:
    """How many puzzles the counts cover (all, or those of one difficulty with prefix "harder/", say)."""
    return sum(c[prefix + k] for k in ("both", "only_a", "only_b", "neither"))


def line(label: str, c: Counter, prefix: str = "") -> str:
    get = lambda k: c[prefix + k]  # noqa: E731
    n = size(c, prefix)
    if n == 0:
        return ""
    ea, eb = (get("both") + get("only_a")) / n, (get("both") + get("only_b")) / n
    p = sign_test(get("only_a"), get("only_b"))
    return (f"| {label} | {n} | {ea:.1%} | {eb:.1%} | {eb - ea:+.1%} | {get('both')} | {get('only_a')} | "
            f"{get('only_b')} | {get('neither')} | {p_text(p)} |")


def block(label: str, c: Counter, kind_prefix: str = "") -> list[str]:
    """The overall line of `c`, then one line per difficulty."""
    kinds = sorted({key.split("/")[0] for key in c if "/" in key})
    return [line(label, c)] + [line(f"  {kind_prefix}{kind}", c, kind + "/") for kind in kinds]


def source(path: Path) -> str:
    """A samples file named by its run and file: RUN/eval/NAME_samples.jsonl -> "RUN: NAME_samples.jsonl"."""
    run = path.parent.parent.name if path.parent.name == "eval" else path.parent.name
    return f"{run}: {path.name}" if run else path.name


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("files", nargs="+", type=Path, help="A B [A2 B2 ...]: _samples.jsonl files, in pairs")
    ap.add_argument("--row", default="rules", help="the mode to compare (default rules)")
    ap.add_argument("--common", action="store_true", help="match by puzzle; compare the puzzles both files hold")
    args = ap.parse_args(argv)
    if len(args.files) % 2:
        ap.error("give the files in pairs: A B [A2 B2 ...]")
    head = ("| pair | n | A exact | B exact | B - A | both | only A | only B | neither | sign test p |\n"
            "|---|---|---|---|---|---|---|---|---|---|")
    total, lines, diffs = Counter(), [head], []
    for k in range(0, len(args.files), 2):
        fa, fb = args.files[k], args.files[k + 1]
        a, b, note = read(fa, args.row), read(fb, args.row), ""
        if args.common:
            a, b, note = common(by_puzzle(a), by_puzzle(b), f"{fa} / {fb}")
        c = compare(a, b, f"{fa} / {fb}")
        total += c
        diffs.append((c["only_b"] - c["only_a"]) / size(c))
        lines += block(f"{source(fa)} / {source(fb)}{note}", c)
    if len(args.files) > 2:
        lines += block("**pooled**", total, "pooled ")
    print("\n".join(x for x in lines if x))
    if len(diffs) > 1:
        print("\n" + pair_level(diffs))


if __name__ == "__main__":
    main()
