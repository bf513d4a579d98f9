"""Sudoku evaluation: every sampling mode (free, clamped, rules) on the same puzzles, side by side, with an
untrained model of the same config driving the same sampler as the `rules` baseline: the rule masks alone
solve part of a puzzle, and the model's contribution is the difference.

Example: `dgft eval outputs/sudoku/2026-11-27_15-00-00 data=../shared/benchmarks/sudoku/norvig_easy50.csv`
-> RUN/eval/norvig_easy50.json, .md, _samples.jsonl (every answer, one line per puzzle and mode, for paired
comparisons: `python eval/paired.py A_samples.jsonl B_samples.jsonl`) and _denoising.png.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf
from tqdm.auto import tqdm

from dgft import noise as N
from dgft.config import ConfigError
from dgft.evaluate import (claim_output, data_file, hold_result, interrupted, made_by, output_name, provenance,
                           provenance_line, trained_model, write_result)
from dgft.metrics import SudokuAccuracy, aggregate, closest_solution, score_answer
from dgft.sampling import sample
from dgft.tasks import get_task
from dgft.tasks.sudoku import grid as G
from dgft.tasks.sudoku.io import read_puzzles, repeats
from dgft.train import seed_everything


def evaluate_run(cfg, run: Path, run_cfg, scfg, device) -> dict:
    """`dgft eval RUN [data=PATH]` for a Sudoku run or export (`dgft.evaluate` has done the shared setup)."""
    # --- data and model ----------------------------------------------------------------------------
    task = get_task(run_cfg.task)
    data = data_file(cfg, run, "heldout.csv")
    name = output_name(cfg, data.stem)
    recs, skipped = read_puzzles(data, on_error=cfg.on_error, limit=cfg.limit or None)
    for msg in skipped:
        tqdm.write(f"skipped {msg}")
    if again := repeats(recs):
        tqdm.write(f"note: {again}; each is scored")
    check_sizes(recs, run_cfg.task.get("sizes"), data)
    out_dir = run / "eval"
    settings = {"data": str(data), **provenance(cfg, run), "baseline": bool(cfg.baseline),
                **({"batch_by": "givens"} if cfg.batch_by == "givens" else {}),  # absent: by size, as before it was
                "sampler": OmegaConf.to_container(scfg)}
    claim_output(out_dir, name, settings, cfg.overwrite)
    model = trained_model(cfg, run, run_cfg, device)
    with hold_result(out_dir, name, settings, cfg.overwrite) as claim:  # eval/<name>: this one's until written
        # --- sample every mode, then the untrained baseline --------------------------------------------
        result = {"run": str(run), **settings, **interrupted(cfg, run, run_cfg), "n": len(recs),
                  "skipped_lines": len(skipped), "device": str(device), "modes": {}, **made_by(data, device)}
        warm_up(model, task, recs, scfg, run_cfg, cfg.seed)
        picture = None
        kinds = difficulty(recs)
        by_givens = cfg.batch_by == "givens"
        rows = {}  # row name -> (answers, stats)
        for mode in scfg.modes:
            rows[mode] = run_mode(model, task, recs, scfg, run_cfg, mode, cfg.seed, record=(mode == "rules"),
                                  by_givens=by_givens)
            result["modes"][mode] = {**summarise(recs, *rows[mode]), **breakdowns(recs, *rows[mode], kinds)}
            picture = picture or rows[mode][1].get("history")
        if cfg.baseline:
            from dgft.evaluate import untrained_model

            baseline = untrained_model(run_cfg, run, device, dtype=next(model.parameters()).dtype)
            key = "baseline_untrained_rules"
            rows[key] = run_mode(baseline, task, recs, scfg, run_cfg, "rules", cfg.seed, by_givens=by_givens)
            result[key] = {**summarise(recs, *rows[key]), **breakdowns(recs, *rows[key], kinds)}

        # --- write: each file whole; the .json, which names the settings, last ---------------------------
        files = {out_dir / f"{name}_samples.jsonl": samples_text(recs, kinds, rows),
                 out_dir / f"{name}_denoising.png": None}  # None: an earlier evaluation's picture, of settings replaced
        if cfg.plot and picture:
            from dgft.plots import plot_denoising

            rec, frames, accepted = picture  # right and wrong as against the solution the answer heads for
            solution = closest_solution(rec.puzzle, rec.solution, frames[-1])
            files[out_dir / f"{name}_denoising.png"] = lambda tmp: plot_denoising(
                frames, accepted, rec.puzzle, solution, tmp, title=f"{name}: {rec.source}, rules mode")
        files[out_dir / f"{name}.md"] = summary = markdown(name, result)
        files[out_dir / f"{name}.json"] = json.dumps(result, indent=1)
        write_result(claim, out_dir, name, files)
        print(summary)
        return result


def check_sizes(recs, sizes, data) -> None:
    """Every puzzle to evaluate is of a size the run trained on (`task.sizes`; None, as in a config saved before the
    setting existed: any); else a ConfigError naming the size, the data file and task.sizes. A tokens=text run has
    no answer layout for another size, and a tokens=cell or digit run's model has never seen one."""
    if sizes is None:
        return
    trained = [int(n) for n in sizes]
    other = [r for r in recs if G.side(r.puzzle) not in trained]
    if other:
        n = G.side(other[0].puzzle)
        count = sum(G.side(r.puzzle) == n for r in other)
        raise ConfigError(f"{data}: {count} {n}x{n} puzzles (the first at {other[0].source}), but the run was trained "
                          f"with task.sizes={trained}; evaluate it on {' or '.join(f'{k}x{k}' for k in trained)} "
                          "puzzles only")


def warm_up(model, task, recs, scfg, run_cfg, seed: int) -> None:
    """One untimed `free` pass over the first puzzle, so that one-off start-up costs (a GPU's context and kernels,
    the allocator's first blocks) are not charged to the first mode's puzzles/s."""
    if recs:
        r = recs[0]
        sample(model, task.encode(r.puzzle[None], r.solution[None]), task, OmegaConf.merge(scfg, {"views": 1}),
               "free", run_cfg.noise.kind, run_cfg.noise.support, seed_everything(seed))


def run_mode(model, task, recs, scfg, run_cfg, mode: str, seed: int, record: bool = False, by_givens: bool = False,
             label: str = "eval"):
    """Sample answers for all records in one mode, batching same-size puzzles (`by_givens`: puzzles of one size and
    one number of givens, each group timed on its own). -> (answers, stats); stats["groups"] maps a group's
    `givens_key` to its (seconds, canvas positions) when `by_givens`. Puzzle i draws its noise from its own
    generator, seeded by (seed, i): the same in every mode and batch. `label` starts the progress bar's name."""
    answers: list = [None] * len(recs)
    steps, revisions = np.zeros(len(recs)), np.zeros(len(recs))
    malformed = np.zeros(len(recs), dtype=bool)  # a text answer whose layout the model overwrote: scored empty
    history, elapsed, cells, done = None, 0.0, 0, 0
    batches = defaultdict(list)  # group -> the indices of its puzzles, groups in order of first appearance
    for i, r in enumerate(recs):
        batches[givens_key(r) if by_givens else len(r.puzzle)].append(i)
    groups = {}
    bar = tqdm(total=len(recs), desc=f"{label} {mode}", unit="puzzle", leave=False)
    for group, idx_all in batches.items():
        group_s, group_cells = 0.0, 0
        for start in range(0, len(idx_all), scfg.batch_size):
            idx = idx_all[start:start + scfg.batch_size]
            puzzles = np.stack([recs[i].puzzle for i in idx])
            solutions = np.stack([recs[i].solution for i in idx])
            batch = task.encode(puzzles, solutions)
            gen = N.RowGenerators([N.example_seed(seed, i) for i in idx])
            t0 = time.perf_counter()
            res = sample(model, batch, task, scfg, mode, run_cfg.noise.kind, run_cfg.noise.support, gen,
                         record=record and history is None)
            group_s += time.perf_counter() - t0
            group_cells += res.canvas.numel()  # canvas positions: the cells, or a text answer's every token
            digits = task.decode(res.canvas, batch["size"])
            bad = np.zeros(len(idx), dtype=bool)
            if hasattr(task, "well_formed"):  # a text answer whose structure was overwritten is not a grid
                bad = ~task.well_formed(res.canvas, batch["size"])
                digits[bad] = 0
            for j, i in enumerate(idx):
                answers[i], malformed[i] = digits[j], bad[j]
                steps[i], revisions[i] = int(res.steps[j]), int(res.revisions[j])
            if res.history:
                n = batch["size"]
                accepted = [task.at_cells(a, n)[0].numpy() for _, a in res.history]
                frames = [task.decode(c, n)[0] * a for (c, _), a in zip(res.history, accepted)]
                while len(frames) > max(1, int(res.steps[0])) and np.array_equal(frames[-1], frames[-2]) and \
                        np.array_equal(accepted[-1], accepted[-2]):  # the batch stepped on for slower puzzles
                    frames, accepted = frames[:-1], accepted[:-1]  # (not below its own steps: a stall is shown)
                history = (recs[idx[0]], frames, accepted)
            done += len(idx)
            bar.update(len(idx))
            bar.set_postfix(puzzles_s=f"{done / max(elapsed + group_s, 1e-9):.2f}")
        elapsed, cells = elapsed + group_s, cells + group_cells
        if by_givens:
            groups[group] = (group_s, group_cells)
    bar.close()
    return answers, {"steps": steps, "revisions": revisions, "seconds": elapsed, "cells": cells, "history": history,
                     "groups": groups, "malformed": malformed}


def givens_key(rec) -> str:
    """The group of `by_givens` breakdowns a puzzle falls in: grid size and number of givens, like "9x9/30"."""
    n = G.side(rec.puzzle)
    return f"{n}x{n}/{rec.givens}"


def samples_text(recs, kinds, rows: dict) -> str:
    """One JSON line per puzzle and row (mode, or the untrained baseline): where the puzzle came from, the puzzle,
    its listed solution, its difficulty, the answer, its scores and the steps taken. Two evaluations of the same
    file line up by `index`, so they can be compared puzzle by puzzle (`eval/paired.py`)."""
    lines = []
    for row, (answers, stats) in rows.items():
        for i, (r, a, kind, score) in enumerate(zip(recs, answers, kinds, scores_of(recs, answers, stats))):
            rec = {"row": row, "index": i, "source": r.source, "puzzle": G.to_string(r.puzzle),
                   "solution": G.to_string(r.solution), "difficulty": kind, "answer": G.to_string(a),
                   **score, "malformed": bool(stats.get("malformed", [False] * len(recs))[i]),
                   "steps": int(stats["steps"][i])}
            lines.append(json.dumps(rec) + "\n")
    return "".join(lines)


def scores_of(recs, answers, stats: dict) -> list[dict]:
    """Each puzzle's `score_answer`, computed once per row and kept in its `stats` (the breakdowns and the samples
    file read them again; a wrong answer's score runs a solver, `closest_solution`)."""
    if "scores" not in stats:
        stats["scores"] = [score_answer(r.puzzle, r.solution, a) for r, a in zip(recs, answers)]
    return stats["scores"]


def summarise(recs, answers, stats) -> dict:
    metric = SudokuAccuracy()
    out = metric.compute(predictions=[G.to_string(a) for a in answers],
                         references=[G.to_string(r.solution) for r in recs],
                         puzzles=[G.to_string(r.puzzle) for r in recs])
    # dgft's answers reach the metric as grids: a text answer that was not one was emptied (run_mode), and counted
    out["malformed"] = int(np.sum(stats.get("malformed", 0)))
    secs = max(stats["seconds"], 1e-9)
    return {**out, "mean_steps": float(stats["steps"].mean()) if len(recs) else 0.0,
            "mean_revisions": float(stats["revisions"].mean()) if len(recs) else 0.0,
            "puzzles_per_s": len(recs) / secs, "tokens_per_s": stats["cells"] / secs}


def breakdowns(recs, answers, stats, kinds) -> dict:
    """The scores and mean steps per group of puzzles, and per number of givens their puzzles/s and tokens/s when
    each such group was sampled in batches of its own (`batch_by=givens`; with mixed batches speed is not split)."""
    size = [f"{G.side(r.puzzle)}x{G.side(r.puzzle)}" for r in recs]
    scores = scores_of(recs, answers, stats)
    malformed = stats.get("malformed", np.zeros(len(recs), dtype=bool))
    by_givens = grouped(scores, stats["steps"], [givens_key(r) for r in recs], numeric=True, malformed=malformed)
    for key, (secs, cells) in stats.get("groups", {}).items():
        secs = max(secs, 1e-9)
        by_givens[key] |= {"puzzles_per_s": by_givens[key]["n"] / secs, "tokens_per_s": cells / secs}
    return {"by_givens": by_givens,
            "by_difficulty": grouped(scores, stats["steps"], [f"{s}/{k}" for s, k in zip(size, kinds)],
                                     malformed=malformed)}


def difficulty(recs) -> list[str]:
    """Per puzzle: "singles" (naked and hidden singles alone solve it, as they do most of easy50) or "harder"
    (needs more, or has several solutions), so easy puzzles can be judged on held-out data."""
    return ["singles" if G.singles_solvable(r.puzzle) else "harder" for r in recs]


def grouped(scores: list[dict], steps, keys: list[str], numeric: bool = False, malformed=None) -> dict:
    """The scores (`dgft.metrics.aggregate` of each puzzle's `score_answer`) and mean steps of the puzzles under each
    key, and how many of their answers were `malformed` (per puzzle, when given), keys sorted by grid size and then by
    name (by number when `numeric`: "9x9/30" is 30 givens)."""
    groups = defaultdict(list)
    for i, key in enumerate(keys):
        groups[key].append(i)

    def order(key):
        size, rest = key.split("/")
        return int(size.split("x")[0]), int(rest) if numeric else rest

    return {key: {**aggregate([scores[i] for i in groups[key]]),
                  "mean_steps": float(np.mean([steps[i] for i in groups[key]])),
                  **({} if malformed is None else {"malformed": int(sum(bool(malformed[i]) for i in groups[key]))})}
            for key in sorted(groups, key=order)}


def markdown(name: str, result: dict) -> str:
    head = "| mode | n | exact | cell acc | givens kept | rule viol./puzzle | mean steps | puzzles/s | tokens/s |"
    rows = [head, "|" + "---|" * 9]
    entries = list(result["modes"].items())
    if "baseline_untrained_rules" in result:
        entries.append(("rules, untrained baseline", result["baseline_untrained_rules"]))
    for mode, m in entries:
        cell = "n/a" if m["cell_accuracy"] is None else f"{m['cell_accuracy']:.1%}"  # no blank cells to score
        kept = "n/a" if m["givens_kept"] is None else f"{m['givens_kept']:.1%}"  # no givens to keep
        rows.append(f"| {mode} | {m['n']} | {m['exact']:.1%} | {cell} | {kept} | "
                    f"{m['rule_violations']:.2f} | {m['mean_steps']:.1f} | {m['puzzles_per_s']:.2f} | "
                    f"{m['tokens_per_s']:.0f} |")
    kinds = sorted({k for _, m in entries for k in m.get("by_difficulty", {})})
    if kinds:
        rows += ["", "Exact by difficulty (singles: naked and hidden singles alone solve it):", "",
                 "| mode | " + " | ".join(f"{k} (n={entries[0][1]['by_difficulty'][k]['n']})" for k in kinds) + " |",
                 "|" + "---|" * (len(kinds) + 1)]
        rows += [f"| {mode} | " + " | ".join(f"{m['by_difficulty'][k]['exact']:.1%}" for k in kinds) + " |"
                 for mode, m in entries]
    timed = [(mode, m["by_givens"]) for mode, m in entries
             if any("puzzles_per_s" in g for g in m.get("by_givens", {}).values())]
    if timed:  # batch_by=givens: every number of givens was sampled (and timed) in batches of its own
        keys = list(timed[0][1])
        rows += ["", "By number of givens (batches of one number of givens each): exact, mean steps, puzzles/s, "
                 "tokens/s:", "",
                 "| givens | n | " + " | ".join(mode for mode, _ in timed) + " |", "|" + "---|" * (len(timed) + 2)]
        rows += [f"| {k} | {timed[0][1][k]['n']} | " + " | ".join(
            f"{g[k]['exact']:.1%}, {g[k]['mean_steps']:.1f}, {g[k]['puzzles_per_s']:.2f}, {g[k]['tokens_per_s']:.0f}"
            for _, g in timed) + " |"
            for k in keys]
    broken = [f"{mode} {m['malformed']}" for mode, m in entries if m.get("malformed")]
    if broken:
        rows += ["", "Answers that were not a grid (the model overwrote the text's layout; scored as empty, so they "
                 "break no rule): " + ", ".join(broken) + "."]
    revised = [f"{mode} {m['mean_revisions']:.2f}" for mode, m in entries if m.get("mean_revisions")]
    if revised:
        rows += ["", "Acceptances the model took back per puzzle (sampler.revise): " + ", ".join(revised) + "."]
    skipped = f", {result['skipped_lines']} bad lines skipped" if result["skipped_lines"] else ""
    return (f"### {name} ({result['n']} puzzles{skipped}; {result['data']})\n\n{provenance_line(result)}"
            + "\n".join(rows) + "\n")
