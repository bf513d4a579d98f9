"""Infilling evaluation: `dgft eval RUN [data=FILE] [samples=N] [rerank=true]` -> RUN/eval/<name>.json, <name>.md
and <name>_samples.jsonl (every middle written, with its scores).

Data: a HumanEval-Infilling file (`.jsonl` or `.jsonl.gz`: task_id, entry_point, prompt, suffix,
canonical_solution, test) or, by default, the run's held-out split (RUN/data/heldout.jsonl.gz: spans cut from
modules never trained on; any file of such rows works). Each sampling mode (free, clamped) runs twice: with
the model's own length (it writes [EOS] where it thinks the middle ends) and with the true length given
(`oracle`: [EOS] and the padding after it pinned), so the gap between the two shows. On a HumanEval file the true
middle and an empty one are run too, as a harness's bounds: `reference_passes` (a task whose own middle fails its
tests, listed in `reference_fails` and said on stderr, can never count) and `empty_passes` (what writing nothing
scores, through lines the tests do not catch).

Scores, overall and per span kind: `exact` (the same string), `exact_lines` (equal up to trailing whitespace on each
line and trailing blank lines, what the suffix's first line continues compared as it is: `humaneval.exact_match`),
`compiles` (the window prefix + middle + suffix, or failing that its enclosing function, compiles) and, for HumanEval
files, `pass@1`: the program prompt + middle + suffix + tests run in `dgft.sandbox`, the only place model-written code
runs. With `samples=N` every score is the mean over the N samples and pass@k is the unbiased estimator for k = 1, 10,
100 up to N. `rerank=true` adds a row per mode and length: of the N samples, the first that compiles as above
(Python's `compile()`, which runs nothing), or the first sample when none does. Middles longer than the canvas cannot
be written: they are left out and counted (`too_long`); `pass@1_all` counts them as failures, overall and per kind.
`workers` sandboxed programs run at once; the result keeps the sandbox's isolation and the count of each status
(`sandbox`), the samples file each middle's status. A program the sandbox could not set up stops the evaluation
(humaneval.SandboxError): it ran none of the middle, so it is no failure of the model. tokens/s counts every canvas
position sampled, pinned or not (B x L per batch), as Sudoku's counts every cell. `baseline` and `plot` are Sudoku's
options.
"""

from __future__ import annotations

import json
import re
import sys
import time
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf
from tqdm.auto import tqdm

from dgft import noise as N
from dgft.evaluate import (claim_output, data_file, hold_result, interrupted, made_by, output_name, provenance,
                           provenance_line, trained_model, trained_tokenizer, write_result)
from dgft.sampling import sample
from dgft.sandbox import cannot_isolate
from dgft.tasks.infill import corpus as C
from dgft.tasks.infill import data as D
from dgft.tasks.infill import humaneval as H
from dgft.tasks.infill.task import InfillTask

LENGTHS = ("model", "oracle")  # the model writes [EOS] itself / the true length is pinned
KS = (1, 10, 100)
FILE_KINDS = {"SingleLine": "line", "MultiLine": "multi_line", "RandomSpan": "random_span"}  # upstream file names
ROW_KEYS = ("kind", "prefix", "middle", "suffix")  # what a file of held-out examples must have


def evaluate_run(cfg, run: Path, run_cfg, scfg, device) -> dict:
    """`dgft eval RUN [data=PATH]` for an infill run or export (`dgft.evaluate` has done the shared setup)."""
    # --- data and model ----------------------------------------------------------------------------
    task = InfillTask(run_cfg.task, tokenizer=trained_tokenizer(run))
    data = data_file(cfg, run, "heldout.jsonl.gz")
    name = output_name(cfg, data.name.removesuffix(".gz").removesuffix(".jsonl"))
    examples, problems = read_examples(data)
    origin = made_by(data, device)  # the file's sha256 as it was read, not hours later after the sampling
    if problems and (why := cannot_isolate(cfg.isolation)):  # before the sampling, which can take hours
        raise H.SandboxError(f"isolation={cfg.isolation}: {why}")
    if cfg.limit:
        examples = examples[: cfg.limit]
    fit = task.fits(examples)
    too_long = Counter(e["kind"] for e, ok in zip(examples, fit) if not ok)
    examples = [e for e, ok in zip(examples, fit) if ok]
    if too_long:
        tqdm.write(left_out(task, too_long))
    out_dir = run / "eval"
    settings = {"data": str(data), **provenance(cfg, run), "samples": cfg.samples, "rerank": bool(cfg.rerank),
                "sampler": OmegaConf.to_container(scfg)}
    claim_output(out_dir, name, settings, cfg.overwrite)
    model = trained_model(cfg, run, run_cfg, device)
    with hold_result(out_dir, name, settings, cfg.overwrite) as claim:  # eval/<name>: this one's until written
        # --- sample every mode with both lengths, then score (tests in the sandbox) --------------------
        chunks = [examples[start:start + scfg.batch_size] for start in range(0, len(examples), scfg.batch_size)]
        own = [task.encode(chunk) for chunk in chunks]  # encoded once for every mode; the oracle's batches, which carry
        # (B, L, vocabulary) masks, one at a time
        written, stats = {}, {}
        for mode in scfg.modes:
            for length in LENGTHS:
                key = f"{mode}/{length}"
                batches = own if length == "model" else (task.encode(chunk, oracle_length=True) for chunk in chunks)
                written[key], stats[key] = sample_middles(
                    model, task, batches, len(examples), scfg, run_cfg, mode,
                    f"{'true' if length == 'oracle' else 'own'} length", cfg.samples, cfg.seed)
        compiled = {key: [[compiles(e, m) for m in ms] for e, ms in zip(examples, rows)]
                    for key, rows in written.items()}
        verdicts, sandbox = (run_tests(problems, examples, written, cfg.workers, cfg.isolation) if problems
                             else (None, None))

        cut = [bool(c) for batch in own for c in batch["prompt_cut"]]  # the prompt is the same at both lengths
        bounds = bounds_of(verdicts, examples)
        result = {"run": str(run), **settings, **interrupted(cfg, run, run_cfg), "n": len(examples),
                  **({"limit_order": "taken in turn by kind"} if cfg.limit and problems is None else {}),
                  "too_long": dict(too_long),
                  "prompt_cut": sum(cut),
                  "prompt_cut_by_kind": dict(Counter(e["kind"] for e, c in zip(examples, cut) if c)),
                  "prompt_tokens": int(task.prompt_tokens),
                  "reference_compiles": (float(np.mean([compiles(e, e["middle"]) for e in examples])) if examples
                                         else None),
                  **bounds,
                  "device": str(device), "humaneval": problems is not None, "sandbox": sandbox, "rows": {},
                  **origin}
        picks = {}
        for key in written:
            passed = _lookup(verdicts, examples, written[key])
            rows = {key: (written[key], compiled[key], passed)}
            if cfg.rerank:
                picks[key] = [next((s for s, ok in enumerate(c) if ok), 0) for c in compiled[key]]
                rows[f"{key}/rerank"] = tuple(_pick(x, picks[key]) if x is not None else None
                                              for x in (written[key], compiled[key], passed))
            for row, (middles, comp, ok) in rows.items():
                result["rows"][row] = {**summarise(examples, middles, comp, ok, sum(too_long.values())),
                                       **stats[key], "by_kind": by_kind(examples, middles, comp, ok, too_long)}

        # --- write ------------------------------------------------------------------------------------
        # each file whole; the .json, which names the settings, last
        summary = markdown(name, result)
        write_result(claim, out_dir, name, {
            out_dir / f"{name}_samples.jsonl":
                lambda tmp: write_samples(tmp, examples, written, compiled, verdicts, picks),
            out_dir / f"{name}.md": summary,
            out_dir / f"{name}.json": json.dumps(result, indent=1)})
        print(summary)
        return result


# --- data -----------------------------------------------------------------------------------------
def read_examples(path: Path) -> tuple[list[dict], dict | None]:
    """(examples, HumanEval problems or None) from a HumanEval-Infilling file or a file of held-out examples.

    The first record decides: one with a `task_id` or an `entry_point` makes the file a problem file (then every
    key HumanEval's problems have is required, so a missing one is named as such). Held-out examples are
    taken in turn from each kind (the split lists them kind by kind), so `limit=N` covers every kind. Bad lines
    stop with `file:line: problem` (InfillFileError).
    """
    records = H._records(path, ())
    first = next(records, None)
    records.close()
    if first is None:
        raise H.InfillFileError(f"{path}: no examples")
    if {"task_id", "entry_point", "canonical_solution", "test"} & set(first[1]):  # a key only HumanEval's have
        problems = H.read_problems(path)
        kind = next((k for marker, k in FILE_KINDS.items() if marker in Path(path).name), "humaneval")
        return [{**e, "id": e["path"]} for e in D.humaneval_examples(problems, kind)], problems
    by_kind: dict[str, list] = {}
    for where, row in H._records(path, ROW_KEYS):
        if not isinstance(row["middle"], str) or not row["middle"].strip():
            raise H.InfillFileError(f"{where}: an empty middle: nothing to infill, and writing nothing would score as "
                                    "an exact match")
        if row["kind"] not in C.KINDS:
            raise H.InfillFileError(f"{where}: kind {row['kind']!r}: expected one of {', '.join(C.KINDS)} (results are "
                                    "broken down by it)")
        row["id"] = f"{row.get('path', where)}::{row.get('function', '')}"
        by_kind.setdefault(row["kind"], []).append(row)
    turns = max(map(len, by_kind.values()))
    return [group[i] for i in range(turns) for group in by_kind.values() if i < len(group)], None


# --- sampling -------------------------------------------------------------------------------------
def sample_middles(model, task, batches, count: int, scfg, run_cfg, mode: str, label: str, samples: int, seed: int):
    """N middles per example in one mode, from the `count` examples' encoded `batches` (in order) ->
    ([[str] * N per example], {mean_steps, examples_per_s, tokens_per_s}).

    tokens_per_s: canvas positions sampled (B x L per batch, pinned ones included, as Sudoku counts every cell)
    per second of sampling."""
    out: list[list[str]] = [[] for _ in range(count)]
    steps, seconds, tokens = [], 0.0, 0
    bar = tqdm(total=count * samples, desc=f"eval {mode}, {label}", unit="middle", leave=False)
    start = 0
    for batch in batches:
        rows = range(start, start + len(batch["target"]))
        for k in range(samples):  # example i's sample k: its own generator, seeded by (seed, i, k), in every mode
            gen = N.RowGenerators([N.example_seed(seed, i, k) for i in rows])
            t0 = time.perf_counter()
            res = sample(model, batch, task, scfg, mode, run_cfg.noise.kind, run_cfg.noise.support, gen)
            seconds += time.perf_counter() - t0
            tokens += batch["target"].numel()
            steps += res.steps.tolist()
            for j, text in enumerate(task.decode(res.canvas)):
                out[start + j].append(text)
            bar.update(len(res.steps))
        start += len(batch["target"])
    bar.close()
    seconds = max(seconds, 1e-9)
    return out, {"mean_steps": float(np.mean(steps)) if steps else 0.0,
                 "examples_per_s": count * samples / seconds, "tokens_per_s": tokens / seconds}


# --- scores ---------------------------------------------------------------------------------------
def compiles(example: dict, middle: str) -> bool:
    """Whether the window prefix + middle + suffix compiles, or failing that its enclosing function does.

    A held-out example is a window cut from a file at arbitrary lines, which rarely compiles whatever the
    middle, so the check falls back to the innermost `def` before the middle (through the last line of its
    body in the suffix): 98% of held-out references compile so, 27% of empty middles. `compile()` parses and
    builds bytecode; it runs none of it.
    """
    text = example["prefix"] + middle + example["suffix"]
    return _compiles(text) or _compiles(enclosing_function(example["prefix"], middle, example["suffix"]))


def enclosing_function(prefix: str, middle: str, suffix: str) -> str:
    """The source from the nearest `def` above the middle that is indented less than the middle's line, to the
    end of its body (the first code line after the middle indented no deeper than the `def`); wrapped in an
    `if True:` block when the `def` is indented. "" when the prefix holds no such `def`."""
    text = prefix + middle + suffix
    head = prefix.rfind("\n") + 1  # where the middle's line starts
    indent = _indent((prefix[head:] + middle + suffix).split("\n", 1)[0])
    start, pos = None, head
    for line in reversed(prefix[:head].splitlines(keepends=True)):
        pos -= len(line)
        if _DEF.match(line) and _indent(line) < indent:
            start, depth = pos, _indent(line)
            break
    if start is None:
        return ""
    after = max(len(prefix) + len(middle) - 1, 0)  # from the middle's last character: the lines after its end
    end = len(text)
    for m in re.finditer(r"\n([^\n]*)", text[after:]):
        line = m.group(1)
        if line.strip() and not line.lstrip().startswith("#") and _indent(line) <= depth:
            end = after + m.start() + 1
            break
    unit = text[start:end]
    return unit if depth == 0 else "if True:\n" + unit


_DEF = re.compile(r"[ \t]*(?:async[ \t]+)?def[ \t]")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" \t"))


def _compiles(source: str) -> bool:
    if not source:
        return False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # SyntaxWarning for odd escapes is not a failure
        try:
            compile(source, "<infill>", "exec", dont_inherit=True)
        except (SyntaxError, ValueError, RecursionError, MemoryError, OverflowError):
            return False
    return True


def run_tests(problems: dict, examples: list[dict], written: dict, workers: int,
              isolation: str = "auto") -> tuple[dict, dict]:
    """({(task_id, middle): status} for every distinct middle written, and each example's true middle and an empty
    one, each run once in the sandbox (`isolation`: dgft.sandbox.run_program's), {programs, statuses: {status:
    count}, isolation}). A program the sandbox could not set up raises humaneval.SandboxError (from
    evaluate_samples)."""
    todo = sorted({(e["id"], m) for rows in written.values() for e, ms in zip(examples, rows) for m in ms}
                  | {(e["id"], m) for e in examples for m in (e["middle"], "")})
    tqdm.write(f"running {len(todo)} distinct programs in the sandbox ({workers} at a time) ...")
    t0 = time.time()
    out = H.evaluate_samples(problems, [H.Sample(t, m) for t, m in todo], ks=(1,), workers=workers,
                             isolation=isolation)
    tqdm.write(f"sandbox: {dict(out['statuses'])} in {time.time() - t0:.0f} s ({out['isolation']})")
    return ({key: r["status"] for key, r in zip(todo, out["results"])},
            {"programs": len(todo), "statuses": out["statuses"], "isolation": out["isolation"]})


def left_out(task: InfillTask, too_long: Counter) -> str:
    """What eval says of the middles it leaves out: how many of each kind, and the room a middle has (the canvas less
    its prefix tokens, [EOS] included)."""
    room = f"{task.canvas_length - task.context} tokens with [EOS]" + (
        f", the canvas's {task.canvas_length} less its {task.context} prefix tokens" if task.context else "")
    return (f"left out {sum(too_long.values())} middles longer than the canvas ({room}): "
            + ", ".join(f"{k} {n}" for k, n in sorted(too_long.items())))


def bounds_of(verdicts: dict | None, examples: list[dict]) -> dict:
    """What the true middles and empty ones score ({} without tests): `reference_passes`, `reference_fails` (the
    tasks whose own middle fails, said on stderr: no middle can pass them) and `empty_passes`."""
    if verdicts is None or not examples:
        return {}
    status = [verdicts[(e["id"], e["middle"])] for e in examples]
    fails = [(e["id"], s) for e, s in zip(examples, status) if s != "passed"]
    if fails:
        tqdm.write(f"warning: {len(fails)} of {len(examples)} tasks fail their tests with their own true middle "
                   f"(first: {fails[0][0]}, {fails[0][1]}); no middle can pass them", file=sys.stderr)
    return {"reference_passes": (len(examples) - len(fails)) / len(examples), "reference_fails": [t for t, _ in fails],
            "empty_passes": float(np.mean([verdicts[(e["id"], "")] == "passed" for e in examples]))}


def _lookup(verdicts, examples, rows):
    if verdicts is None:
        return None
    return [[verdicts[(e["id"], m)] == "passed" for m in ms] for e, ms in zip(examples, rows)]


def _pick(rows: list[list], picks: list[int]) -> list[list]:
    return [[r[s]] for r, s in zip(rows, picks)]


def summarise(examples, middles, compiled, passed, left_out: int = 0) -> dict:
    """Means over examples (and their samples): n, exact, exact_lines, compiles, pass@k (when tests ran; each k
    up to the samples per example), pass@1_all (the `left_out` examples counted as failures)."""
    n = len(examples)
    out = {"n": n,
           "exact": _mean([[m == e["middle"] for m in ms] for e, ms in zip(examples, middles)]),
           "exact_lines": _mean([[H.exact_match(m, e["middle"]) for m in ms] for e, ms in zip(examples, middles)]),
           "compiles": _mean(compiled)}
    if passed is not None:
        count = len(passed[0]) if passed else 1
        for k in KS:
            if k <= count:
                value = float(np.mean([H.pass_at_k(count, sum(p), k) for p in passed])) if passed else None
                out[f"pass@{k}"] = value
                # the left-out examples counted as failures (c = 0: pass@k 0), over every example of the file
                out[f"pass@{k}_all"] = (value or 0.0) * n / (n + left_out) if n + left_out else None
    return out


def by_kind(examples, middles, compiled, passed, too_long: dict | None = None) -> dict:
    """summarise() per span kind, each kind's left-out middles (`too_long`: {kind: count}) in its pass@1_all; a
    kind whose every middle was left out gets a row with n = 0."""
    too_long = too_long or {}
    out = {}
    for kind in sorted({e["kind"] for e in examples} | set(too_long)):
        idx = [i for i, e in enumerate(examples) if e["kind"] == kind]
        sub = lambda rows: None if rows is None else [rows[i] for i in idx]  # noqa: E731
        out[kind] = summarise(sub(examples), sub(middles), sub(compiled), sub(passed), too_long.get(kind, 0))
    return out


def _mean(rows: list[list[bool]]) -> float | None:
    return float(np.mean([np.mean(r) for r in rows])) if rows else None  # no examples: n/a, not 0%


# --- reports --------------------------------------------------------------------------------------
def markdown(name: str, result: dict) -> str:
    """The rows as a table (one line per mode, length and pick), then per span kind when there are several."""
    tests = result["humaneval"]
    ks = [f"pass@{k}" for k in KS if k <= result["samples"]] if tests else []
    left = sum(result["too_long"].values())
    ks += [f"{k}_all" for k in ks] if left else []  # left-out examples counted as failures
    main, kinds = [], []
    for key, m in result["rows"].items():
        mode, length, *rerank = key.split("/")
        pick = "rerank" if rerank else ("sample" if result["samples"] == 1 else f"{result['samples']} samples")
        main.append([mode, length, pick, m["n"], *_percent(m, ["exact", "exact_lines", "compiles", *ks]),
                     f"{m['mean_steps']:.1f}" if m["n"] else "n/a", f"{m['tokens_per_s']:.0f}" if m["n"] else "n/a"])
        for kind, k in m["by_kind"].items():
            kinds.append([mode, length, pick, kind, k["n"], *_percent(k, ["exact", "exact_lines", "compiles"]
                                                                     + ["pass@1"] * tests)])
    reference = result["reference_compiles"]
    note = (f"; {left} left out, longer than the canvas" if left else "") + \
        (f"; the true middle compiles in {reference:.1%}" if reference is not None else "")
    if "reference_passes" in result:
        fails = result["reference_fails"]
        note += (f", passes its tests in {result['reference_passes']:.1%}"
                 + (f" ({len(fails)} fail: {', '.join(fails[:5])}{' ...' * (len(fails) > 5)})" if fails else "")
                 + f"; an empty middle passes in {result['empty_passes']:.1%}")
    if result.get("prompt_cut"):
        note += f"; {result['prompt_cut']} prompts cut to prompt_tokens={result['prompt_tokens']}"
    rerank = "; `rerank`: the first sample whose window, or failing that its enclosing function, compiles" if any(
        k.endswith("/rerank") for k in result["rows"]) else ""
    text = (f"### {name} ({result['n']} examples{note}; {result['data']})\n\n{provenance_line(result)}"
            f"length `model`: the model ends the middle with [EOS]; `oracle`: the true length is given. "
            f"{result['samples']} sample(s) per example at temperature {result['sampler'].get('temperature')}"
            f"{rerank}.\n\n"
            + _table(["mode", "length", "pick", "n", "exact", "exact (lines)", "compiles", *ks, "mean steps",
                      "tokens/s"], main))
    box = result.get("sandbox")
    if box and not box["programs"]:
        text += "\nSandbox: no program ran (every middle was left out).\n"
    elif box:
        text += (f"\nSandbox: {box['programs']} distinct programs, "
                 + ", ".join(f"{n} {status}" for status, n in sorted(box["statuses"].items()))
                 + f"; isolation: {box['isolation']}.\n")
    if len({row[3] for row in kinds}) > 1:
        text += "\nBy span kind:\n\n" + _table(["mode", "length", "pick", "kind", "n", "exact", "exact (lines)",
                                                  "compiles"] + ["pass@1"] * tests, kinds)
    return text


def _percent(m: dict, keys: list[str]) -> list[str]:
    # a rerank row has one pick: no pass@10; no examples: n/a
    return ["-" if k not in m else "n/a" if m[k] is None else f"{m[k]:.1%}" for k in keys]


def _table(head: list[str], rows: list[list]) -> str:
    lines = [head, ["---"] * len(head), *rows]
    return "".join("| " + " | ".join(map(str, line)) + " |\n" for line in lines)


def write_samples(path: Path, examples, written, compiled, verdicts, picks) -> None:
    """One JSON line per middle written: row, the example's index in the evaluation, id and kind, sample index,
    the middle, the reference middle and the scores (`passed` and the sandbox's `status` when tests ran, else
    None): each line can be judged alone."""
    with open(path, "w", encoding="utf-8") as f:
        for key, rows in written.items():
            for i, (e, ms) in enumerate(zip(examples, rows)):
                for s, m in enumerate(ms):
                    rec = {"row": key, "index": i, "id": e["id"], "kind": e["kind"], "sample": s, "middle": m,
                           "reference": e["middle"], "exact": m == e["middle"], "compiles": compiled[key][i][s],
                           "passed": verdicts[(e["id"], m)] == "passed" if verdicts is not None else None,
                           "status": verdicts[(e["id"], m)] if verdicts is not None else None,
                           "reranked": picks[key][i] == s if key in picks else None}
                    f.write(json.dumps(rec) + "\n")
