"""How well a trained Sudoku run completes grids whose known cells are a random subset, against grids whose known
cells are those a singles solver fills first: the states a sampler passes through when it accepts its surest
cell first.

For each share of a puzzle's blanks left open, the same number of blanks is corrupted two ways:
- `random`: a uniformly random subset of the blanks (what training draws by default);
- `solver`: the blanks a singles solver fills last (`SudokuTask.solving_rank`, ties in random order), so the
  known cells are the givens plus what singles fill first.
The known cells are listed in the prompt as `sampler.reprompt` lists accepted ones, the canvas holds uniform noise
on the open cells, and the model runs two self-conditioned decoder passes, as the sampler's second step does. Per
state kind it prints the accuracy of the model's best allowed digit on the open cells (`rules`: no digit a known
peer holds) and how often the open cell it is surest of is right, overall and leaving out naked singles (cells the
rules leave one digit, which any model gets right). The sampler accepts that surest cell each step, so a miss
rate r over ~50 steps loses about 1 - (1 - r)^50 of the puzzles.

Then what `sampler.revise` would do on the same states: one known (non-given) cell per state is given a wrong digit
no known peer holds (`SudokuTask.plant_wrong`, as `task.wrong_known_p` trains), and the script prints how often the
known cell whose digit the model gives the lowest probability is that planted one with probability below the bound
(`caught`), and, on the states without a plant, how often some known cell falls below it (`false alarms`).

    python bench/solver_states.py outputs/sudoku/RUN                       # its generated held-out 9x9 puzzles
    python bench/solver_states.py outputs/sudoku/RUN --data puzzles.csv --puzzles 200 --open 0.9 0.7 0.5
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the dgft beside this script, installed or not

from dgft import noise as N  # noqa: E402
from dgft.model import denoise, encode  # noqa: E402
from dgft.runs import RunError, load_config, load_model  # noqa: E402
from dgft.sampling import doubted  # noqa: E402
from dgft.tasks import get_task  # noqa: E402
from dgft.tasks.sudoku.io import read_puzzles  # noqa: E402


@torch.no_grad()
def answer_logits(model, task, batch: dict, tokens: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
    """(B, L, K) the model's answer logits on a state: canvas `tokens` (B, L), the `known` (B, L) cells listed in the
    prompt with the givens (as `sampler.reprompt` lists accepted ones), two self-conditioned decoder passes."""
    target, givens, choices = batch["target"], batch["fixed"], batch["choices"]
    ids, mask = task.known_prompt(target, givens, tokens, known & ~givens, batch["size"])
    cache = encode(model, ids, mask)
    logits = denoise(model, cache, tokens, mask, sc_logits=denoise(model, cache, tokens, mask))
    return torch.gather(logits, 2, choices[None].expand(*target.shape, -1))


@torch.no_grad()
def state_scores(model, task, batch: dict, hit: torch.Tensor, gen: torch.Generator) -> dict:
    """The model on one set of states: `hit` (B, L) the open (corrupted) cells, the rest known."""
    target, choices, n = batch["target"], batch["choices"], batch["size"]
    known = ~hit
    noisy = torch.where(hit, N.draw(choices, target.shape, gen), target)
    truth = (target[..., None] == choices[None]).float().argmax(-1)  # (B, L) answer index
    allowed = task.rule_mask(truth, known, n)  # no digit a known peer holds
    scores = answer_logits(model, task, batch, noisy, known).masked_fill(~allowed, -torch.inf)
    certainty, pick = scores.softmax(-1).max(-1)
    right = pick == truth
    naked = (allowed.sum(-1) == 1) & hit

    def surest(candidates):  # (right, states): how often the surest of the candidate cells is right
        has = candidates.any(-1)
        best = certainty.masked_fill(~candidates, -1.0).argmax(-1)
        return right.gather(1, best[:, None])[:, 0][has].sum().item(), has.sum().item()

    counts = {"open_right": (right & hit).sum().item(), "open": hit.sum().item()}
    counts["surest_right"], counts["states"] = surest(hit)
    counts["surest_not_naked_right"], counts["states_not_naked"] = surest(hit & ~naked)
    return counts


@torch.no_grad()
def doubt_scores(model, task, batch: dict, hit: torch.Tensor, gen: torch.Generator, bound: float) -> dict:
    """`sampler.revise` on one set of states: with one planted wrong known cell, and without."""
    target, givens, choices, n = batch["target"], batch["fixed"], batch["choices"], batch["size"]
    known = ~hit
    revisable = known & ~givens
    noisy = torch.where(hit, N.draw(choices, target.shape, gen), target)
    wrong, planted = task.plant_wrong(noisy, revisable, known, n, gen)
    counts = {}
    for name, tokens in (("planted", wrong), ("clean", noisy)):
        reopened = doubted(answer_logits(model, task, batch, tokens, known), tokens, revisable, choices, "rules",
                           bound)  # what the sampler would reopen
        if name == "planted":
            rows = planted.any(-1)
            counts["caught"] = (reopened & planted).any(-1)[rows].sum().item()
            counts["planted"] = rows.sum().item()
        else:
            rows = revisable.any(-1)
            counts["false_alarms"], counts["clean"] = reopened.any(-1)[rows].sum().item(), rows.sum().item()
    return counts


def corrupted(kind: str, task, batch: dict, share: float, gen: torch.Generator) -> torch.Tensor:
    """(B, L) bool: `share` of each puzzle's blanks, at random or those a singles solver fills last."""
    target, givens = batch["target"], batch["fixed"]
    count = ((~givens).sum(-1).float() * share).round().long()
    if kind == "solver":
        key = task.solving_key(target, givens, batch["size"], gen)
    else:
        key = torch.rand(target.shape, generator=gen).masked_fill(givens, -torch.inf)
    return N.order_hits(torch.arange(target.shape[1])[None] < count[:, None], key)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", help="a dgft run directory (a Sudoku run with cell or digit tokens)")
    ap.add_argument("--data", help="puzzle file (default: the run's generated held-out split, RUN/data/heldout.csv)")
    ap.add_argument("--puzzles", type=int, default=128, help="9x9 puzzles used, the file's first")
    ap.add_argument("--open", type=float, nargs="+", default=[0.9, 0.7, 0.5, 0.3], help="shares of blanks left open")
    ap.add_argument("--draws", type=int, default=2, help="noise draws per state")
    ap.add_argument("--bound", type=float, default=0.5, help="sampler.revise's bound for the planted-mistake figures")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--out", help="write the figures as JSON here")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        cfg = load_config(args.run)
        task = get_task(cfg.task)
        if not hasattr(task, "solving_rank") or cfg.task.get("tokens") == "text":
            raise SystemExit(f"{args.run}: a Sudoku run with task.tokens=cell or digit is needed")
        model = load_model(args.run, cfg).eval()
    except RunError as err:  # not a run, or a damaged one: named, as dgft eval names it
        print(f"solver_states: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    data = Path(args.data) if args.data else Path(args.run) / "data" / "heldout.csv"
    records = [r for r in read_puzzles(data)[0] if r.puzzle.size == 81][: args.puzzles]
    if not records:
        raise SystemExit(f"{data}: no 9x9 puzzles")
    batch = task.encode(np.stack([r.puzzle for r in records]), np.stack([r.solution for r in records]))
    gen = torch.Generator().manual_seed(args.seed)
    out = {"run": args.run, "data": str(data), "puzzles": len(records), "rows": []}
    print(f"{args.run} on {len(records)} 9x9 puzzles of {data}, {args.draws} noise draws per state")
    print("open share | state  | open cells right | surest open cell right | the same, naked singles left out")
    for share in args.open:
        for kind in ("random", "solver"):
            total: dict = {}
            for _ in range(args.draws):
                hit = corrupted(kind, task, batch, share, gen)
                for key, value in state_scores(model, task, batch, hit, gen).items():
                    total[key] = total.get(key, 0) + value
            row = {"open_share": share, "state": kind, "open_accuracy": ratio(total["open_right"], total["open"]),
                   "surest_right": ratio(total["surest_right"], total["states"]),
                   "surest_not_naked_right": ratio(total["surest_not_naked_right"], total["states_not_naked"]),
                   "states_with_a_non_naked_open_cell": total["states_not_naked"]}
            out["rows"].append(row)
            print(f"{share:10.0%} | {kind:6s} | {pct(row['open_accuracy']):>16s} | {pct(row['surest_right']):>22s} | "
                  f"{pct(row['surest_not_naked_right'])}", flush=True)
    print(f"\nsampler.revise={args.bound} on solver-ordered states with one planted wrong known cell, and without:")
    print("open share | planted cell caught | false alarms on clean states")
    for share in args.open:
        total = {}
        for _ in range(args.draws):
            hit = corrupted("solver", task, batch, share, gen)
            for key, value in doubt_scores(model, task, batch, hit, gen, args.bound).items():
                total[key] = total.get(key, 0) + value
        row = {"open_share": share, "bound": args.bound, "caught": ratio(total["caught"], total["planted"]),
               "false_alarms": ratio(total["false_alarms"], total["clean"]), "states_planted": total["planted"]}
        out.setdefault("doubt", []).append(row)
        print(f"{share:10.0%} | {pct(row['caught']):>19s} | {pct(row['false_alarms'])}", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1))
    return out


def ratio(part, whole):
    """part / whole, or None where there was nothing to count (a share so small that no cell was opened, say)."""
    return part / whole if whole else None


def pct(x) -> str:
    return "n/a" if x is None else f"{x:.1%}"


if __name__ == "__main__":
    main()
