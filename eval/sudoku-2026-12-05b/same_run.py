"""Are two trainings the same run, and do two evaluations give the same answers?

    python eval/sudoku-2026-12-05b/same_run.py metrics A/metrics.jsonl B/metrics.jsonl
    python eval/sudoku-2026-12-05b/same_run.py answers A_samples.jsonl B_samples.jsonl

`metrics`: how many of the training losses logged at the same steps are equal to the last bit, and each run's
seconds per step over windows of 400 steps (the `elapsed_s` of its rows). `answers`: per row (mode, or the untrained
baseline), how many puzzles got the same answer, and the indices, exact flags and blank cells right of those that
did not.
"""

import json
import sys


def rows(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def metrics(a, b):
    la, lb = ({r["step"]: r for r in rows(p) if "loss" in r} for p in (a, b))
    common = sorted(la.keys() & lb.keys())
    same = sum(la[s]["loss"] == lb[s]["loss"] for s in common)
    print(f"losses equal to the last bit at {same} of {len(common)} common logged steps "
          f"(first {common[0]}, last {common[-1]}; final {la[common[-1]]['loss']!r} vs {lb[common[-1]]['loss']!r})")
    for name, logged in ((a, la), (b, lb)):
        steps = sorted(logged)
        marks = [s for s in steps if s % 400 == 0 or s == steps[0]]
        rates = [f"{(logged[y]['elapsed_s'] - logged[x]['elapsed_s']) / (y - x):.3f}" for x, y in zip(marks, marks[1:])]
        print(f"{name}: s/step per 400 steps: {' '.join(rates)}; in the loop {logged[steps[-1]]['elapsed_s']:.0f} s")


def answers(a, b):
    ra, rb = ({(r["row"], r["index"]): r for r in rows(p)} for p in (a, b))
    for row in dict.fromkeys(k[0] for k in ra):
        keys = [k for k in ra if k[0] == row and k in rb]
        diff = [k for k in keys if ra[k]["answer"] != rb[k]["answer"]]
        print(f"{row}: {len(keys) - len(diff)} of {len(keys)} answers the same"
              + "".join(f"; #{k[1]}: exact {ra[k]['exact']}/{rb[k]['exact']}, "
                        f"right {ra[k]['blanks_right']}/{rb[k]['blanks_right']}" for k in diff[:6])
              + (f" (+{len(diff) - 6} more)" if len(diff) > 6 else ""))


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] not in ("metrics", "answers"):
        sys.exit(__doc__)
    (metrics if sys.argv[1] == "metrics" else answers)(sys.argv[2], sys.argv[3])
