"""Session 19's record: `dgft eval` with every acceptance logged -- the certainty of the surest open cell (the
sampler's averaged, rules-masked probability) and whether the digit accepted there is the solution's.

    DIAG_OUT=log.json python eval/sudoku-2026-12-05/certainty_log.py eval RUN data=PUZZLES.csv ...  # dgft eval args
    python eval/sudoku-2026-12-05/certainty_log.py --summary log.json

It wraps three of the sampler's functions from outside (the sampler is unchanged) and writes one JSON line per
puzzle and step: {b, step, top, count, right, clean_before} (clean_before: no wrong digit accepted before this step).
One batch of puzzles: `b` is the row in it (sampler.batch_size must cover the file).
"""

import json
import os
import sys

import torch


def summary(path: str) -> None:
    with open(path) as f:
        log = json.load(f)
    decided = [r for r in log if r["clean_before"] and r["count"] > 0]
    first_wrong = [r for r in decided if not r["right"]]
    right = [r["top"] for r in decided if r["right"]]
    puzzles = len({r["b"] for r in log})
    waits = sum(1 for r in log if r["clean_before"] and r["count"] == 0)
    print(f"{path}: {puzzles} puzzles, {len(decided)} acceptances before any mistake, {waits} steps that accepted "
          f"nothing; first mistakes: {len(first_wrong)}, at certainty "
          + ", ".join(f"{r['top']:.3f}" for r in sorted(first_wrong, key=lambda r: r["top"])))
    for bound in (0.9, 0.95, 0.99, 0.999):
        below = sum(t < bound for t in right)
        print(f"  below {bound}: {sum(r['top'] < bound for r in first_wrong)} first mistakes, {below} right "
              f"acceptances ({below / puzzles:.2f} a puzzle)")


def logged_eval(argv: list[str]) -> None:
    import dgft.sampling as S
    import dgft.tasks.sudoku.evaluate as E
    from dgft.cli import main

    log, state = [], {}
    sample, accept_count, accept = S.sample, S.accept_count, S._accept

    def logged_sample(model, batch, *a, **k):
        state.update(target=batch["target"], ok=torch.ones(batch["target"].shape[0], dtype=torch.bool), step=0)
        return sample(model, batch, *a, **k)

    def logged_count(score, open_, *a, **k):
        order, count = accept_count(score, open_, *a, **k)  # order: open positions first, surest first
        pos = order[:, 0]
        state.update(top=score.gather(1, pos[:, None])[:, 0], pos=pos)
        return order, count

    def logged_accept(order, count, open_, tokens, canvas, *a, **k):
        new = accept(order, count, open_, tokens, canvas, *a, **k)
        target, pos = state["target"], state["pos"][:, None]
        right = tokens.gather(1, pos)[:, 0] == target.gather(1, pos)[:, 0]
        for b in range(target.shape[0]):
            if open_[b].any():
                log.append({"b": b, "step": state["step"], "top": float(state["top"][b]), "count": int(count[b]),
                            "right": bool(right[b]), "clean_before": bool(state["ok"][b])})
        state["ok"] &= ~(new & (tokens != target)).any(-1)
        state["step"] += 1
        return new

    S.accept_count, S._accept, E.sample = logged_count, logged_accept, logged_sample
    try:
        main(argv)
    finally:
        with open(os.environ.get("DIAG_OUT", "certainty_log.json"), "w") as f:
            json.dump(log, f)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--summary"]:
        for p in sys.argv[2:]:
            summary(p)
    else:
        logged_eval(sys.argv[1:])
