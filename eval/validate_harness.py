"""Validate the HumanEval-Infilling harness and its sandbox on the real files (issue #4).

    nice -n 10 python eval/validate_harness.py                  # about 2 min on 2 CPU cores
    python eval/validate_harness.py --dir PATH --workers 4

Three checks, each printed with its wall time: every canonical solution of
HumanEval-SingleLineInfilling passes (expected 100%); the empty middle (expected to fail nearly
everywhere: the tasks where it passes are listed, since deleting a line can leave a correct function);
upstream's `example_samples.jsonl` on `example_problem.jsonl` (upstream's README: pass@1 0.3, pass@10 1.0).
Exits 1 when the canonical solutions or the examples miss their expected figures.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the dgft beside this script, installed or not

from dgft.tasks.infill.humaneval import (InfillFileError, Sample, evaluate_samples, read_problems,  # noqa: E402
                                         read_samples)

DEFAULT_DIR = Path(__file__).resolve().parents[2] / "shared" / "benchmarks" / "infill"


def timed(label, problems, samples, workers, ks=(1,)):
    start = time.monotonic()
    result = evaluate_samples(problems, samples, ks=ks, workers=workers)
    wall = time.monotonic() - start
    passed = sum(r["passed"] for r in result["results"])
    print(f"\n## {label}\n{passed}/{len(samples)} passed ({passed / len(samples):.2%}); "
          + ", ".join(f"{k} {v:.4f}" for k, v in result.items() if k.startswith("pass@"))
          + f"; statuses {dict(Counter(r['status'] for r in result['results']))}; wall {wall:.1f} s "
          f"({wall / len(samples) * 1000:.0f} ms of wall time per program, {workers} at once)")
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR, help="folder with the benchmark files")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error(f"--workers {args.workers}: must be 1 or more")
    try:
        return _validate(args)
    except InfillFileError as err:  # a missing or unreadable benchmark file: named, no traceback
        print(f"validate_harness: error: {err} (--dir names the folder holding the benchmark files)", file=sys.stderr)
        return 2


def _validate(args) -> int:
    print(f"# harness validation: {platform.node()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
          f"{args.workers} workers")
    ok = True

    problems = read_problems(args.dir / "HumanEval-SingleLineInfilling.jsonl.gz")
    canonical = timed("canonical solutions (expected: all pass)", problems,
                      [Sample(t, p.canonical_solution) for t, p in problems.items()], args.workers)
    print(f"isolation: {canonical['isolation']}")
    for r in canonical["results"]:
        if not r["passed"]:
            ok = False
            print(f"  FAIL {r['task_id']}: {r['status']}: {r['detail']}")

    empty = timed("empty middle (expected: fail)", problems, [Sample(t, "") for t in problems], args.workers)
    for r in empty["results"]:
        if r["passed"]:
            print(f"  passes with an empty middle: {r['task_id']}: {problems[r['task_id']].canonical_solution!r}")

    examples = timed("upstream example_samples.jsonl (expected: pass@1 0.3, pass@10 1.0)",
                     read_problems(args.dir / "example_problem.jsonl"),
                     read_samples(args.dir / "example_samples.jsonl"), args.workers, ks=(1, 10))
    for r in examples["results"]:
        print(f"  {r['source'].rsplit('/', 1)[-1]}: {r['status']}: {r['detail'][:90]}")
    if abs(examples["pass@1"] - 0.3) > 1e-9 or examples["pass@10"] != 1.0:
        ok = False
    print(f"\n{'OK' if ok else 'FAILED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
