"""HumanEval-Infilling: read its files, run candidate middles in the sandbox, count passes, pass@k.

A problem file (`.jsonl` or `.jsonl.gz`) has one JSON object a line with `task_id, entry_point, prompt,
suffix, canonical_solution, test`; a sample file (upstream's `example_samples.jsonl` format) has
`task_id, completion`. A middle passes when this program, upstream's layout, runs to its last line in
`dgft.sandbox` within 3 s (upstream's timeout):

    prompt + middle + suffix + "\\n" + test + "\\n" + f"check({entry_point})"

Example: the problem {"prompt": "def return1():\\n", "suffix": "1", "test": "def check(candidate):\\n
    assert candidate() == 1", "entry_point": "return1", ...} passes the middle "    return " and fails
"    return 1" (it reads `return 11`). Bad lines stop with `file:line: problem`, never a bare traceback.
A program the sandbox could not set up (status `error`: none of it ran) is no verdict on its middle: the
run stops with SandboxError rather than count it as a failure.
"""

from __future__ import annotations

import gzip
import json
import keyword
import math
import zlib
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from dgft.sandbox import run_program

PROBLEM_KEYS = ("task_id", "entry_point", "prompt", "suffix", "canonical_solution", "test")
SAMPLE_KEYS = ("task_id", "completion")
TIMEOUT_S = 3.0  # upstream's per-program timeout


class InfillFileError(ValueError):
    """A problem or sample file cannot be read; the message starts with "file:line:" or "file:"."""


class SandboxError(RuntimeError):
    """Programs the sandbox could not set up (status `error`), so nothing of them ran; the message says how many
    and why."""


@dataclass(frozen=True)
class Problem:
    task_id: str
    entry_point: str
    prompt: str
    suffix: str
    canonical_solution: str
    test: str
    source: str = ""  # "file:line"


@dataclass(frozen=True)
class Sample:
    task_id: str
    completion: str
    source: str = ""  # "file:line"


# --- files -------------------------------------------------------------------------------------------


def read_problems(path: str | Path) -> dict[str, Problem]:
    """task_id -> Problem, in file order. Missing keys, non-string values, duplicate ids: InfillFileError."""
    problems: dict[str, Problem] = {}
    for where, record in _records(path, PROBLEM_KEYS):
        if record["task_id"] in problems:
            raise InfillFileError(f"{where}: task_id {record['task_id']!r} already at "
                                  f"{problems[record['task_id']].source}")
        if not record["entry_point"].isidentifier() or keyword.iskeyword(record["entry_point"]):  # check(entry_point)
            raise InfillFileError(f"{where}: entry_point {record['entry_point']!r} is not a Python name")
        problems[record["task_id"]] = Problem(**{k: record[k] for k in PROBLEM_KEYS}, source=where)
    if not problems:
        raise InfillFileError(f"{path}: no problems")
    return problems


def read_samples(path: str | Path) -> list[Sample]:
    """Samples in file order (several per task_id for pass@k)."""
    samples = [Sample(record["task_id"], record["completion"], where)
               for where, record in _records(path, SAMPLE_KEYS)]
    if not samples:
        raise InfillFileError(f"{path}: no samples")
    return samples


def _records(path, keys):
    """("file:line", object) for each non-blank line, every key in `keys` present and a string, and no string
    value holding a lone surrogate (valid JSON, "\\ud800", but not text a tokenizer or a program can take)."""
    path = Path(path)
    if not (path.name.endswith(".jsonl") or path.name.endswith(".jsonl.gz")):
        raise InfillFileError(f"{path}: expected a .jsonl or .jsonl.gz file")
    opener = gzip.open if path.name.endswith(".gz") else open
    lineno = 0
    try:
        with opener(path, "rb") as f:
            for lineno, raw in enumerate(f, start=1):
                where = f"{path}:{lineno}"
                if lineno == 1 and raw.startswith(b"\x1f\x8b"):
                    raise InfillFileError(f"{path}: gzip-compressed, but not named .jsonl.gz (rename it)")
                try:
                    line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")  # a byte-order mark, dropped
                except UnicodeDecodeError as e:
                    raise InfillFileError(f"{where}: not UTF-8 ({e.reason} at byte {e.start})") from None
                if not line.strip():
                    continue
                try:
                    record = json.loads(line, object_pairs_hook=_unique_keys)
                except _DuplicateKey as e:
                    raise InfillFileError(f"{where}: key {e.args[0]!r} appears twice in one object (which one "
                                          "counts is ambiguous)") from None
                except json.JSONDecodeError as e:
                    raise InfillFileError(f"{where}: bad JSON: {e.msg} at column {e.colno}") from None
                except (ValueError, RecursionError) as e:  # an integer of over 4300 digits, nesting too deep
                    raise InfillFileError(f"{where}: bad JSON: {type(e).__name__}: {str(e)[:120]}") from None
                if not isinstance(record, dict):
                    raise InfillFileError(f"{where}: expected a JSON object, got {type(record).__name__}")
                missing = [k for k in keys if k not in record]
                if missing:
                    raise InfillFileError(f"{where}: missing key{'s' * (len(missing) > 1)} "
                                          + ", ".join(map(repr, missing)))
                for k in keys:
                    if not isinstance(record[k], str):
                        raise InfillFileError(f"{where}: {k!r} must be a string, got {type(record[k]).__name__}")
                for k, v in record.items():
                    at = _surrogate(v) if isinstance(v, str) else None
                    if at is not None:
                        raise InfillFileError(f"{where}: {k!r} holds a lone surrogate (\\u{ord(v[at]):04x} at "
                                              f"character {at}), not valid Unicode text")
                yield where, record
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:
        raise InfillFileError(f"{path}:{lineno + 1}: broken gzip data ({e})") from None
    except OSError as e:
        raise InfillFileError(f"{path}: {e.strerror or e}") from None


class _DuplicateKey(ValueError):
    """A JSON object with a key twice (json.loads keeps the last silently)."""


def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
    seen = set()
    for key, _ in pairs:
        if key in seen:
            raise _DuplicateKey(key)
        seen.add(key)
    return dict(pairs)


def _surrogate(text: str) -> int | None:
    """Index of the first lone surrogate in `text` (JSON's \\ud800 escapes decode to them), or None."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        return e.start
    return None


# --- scoring -----------------------------------------------------------------------------------------


def program(problem: Problem, middle: str) -> str:
    """The program that checks `middle` (upstream's layout)."""
    return problem.prompt + middle + problem.suffix + "\n" + problem.test + "\n" + f"check({problem.entry_point})"


def exact_match(middle: str, canonical: str) -> bool:
    """Equal up to trailing whitespace on each whole line and trailing blank lines (indentation counts). What follows
    the middle's last line break is compared as it is: `program` joins it onto the suffix's first line, so
    `"return x"` for `"return x\\n"` is no match, nor is `"return x\\n    "` (they seldom even compile)."""
    def norm(text):
        *lines, joined = text.split("\n")  # whole lines, then the part the suffix's first line continues
        lines = [line.rstrip() for line in lines]
        while lines and not lines[-1]:
            lines.pop()
        return lines, joined
    return norm(middle) == norm(canonical)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c pass: 1 - C(n-c, k) / C(n, k) (Chen et al. 2021)."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass_at_k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def evaluate_samples(problems: dict[str, Problem], samples: list[Sample], ks=(1, 10, 100), workers: int = 2,
                     timeout_s: float = TIMEOUT_S, **sandbox) -> dict:
    """Run every sample in the sandbox, `workers` at a time -> summary and per-sample results.

    Threads are enough for the pool: each sample runs in its own sandboxed process, the thread only waits.
    pass@k is the mean over attempted tasks, reported for each k that every attempted task has n >= k
    (as upstream); `missing` lists problems without a sample (none are scored for them). A sample the sandbox
    could not set up (status `error`) ran none of its code, so it is neither a pass nor a failure: any such
    sample stops the run with SandboxError, naming how many and the set-up failures.
    """
    for s in samples:
        if s.task_id not in problems:
            raise InfillFileError(f"{s.source or 'sample'}: task_id {s.task_id!r} is not a problem of this set")

    def run(s):
        return run_program(program(problems[s.task_id], s.completion), timeout_s=timeout_s, **sandbox)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        verdicts = list(pool.map(run, samples))
    errors = Counter(v.detail for v in verdicts if v.status == "error")
    if errors:
        raise SandboxError(f"{sum(errors.values())} of {len(samples)} programs could not be run: the sandbox could "
                           "not be set up, so none of their code ran (they are not scored as failures); "
                           + "; ".join(f"{detail} ({n}x)" for detail, n in errors.most_common(3)))
    results = [{"task_id": s.task_id, "source": s.source, "status": v.status, "passed": v.passed,
                "detail": v.detail, "exact": exact_match(s.completion, problems[s.task_id].canonical_solution),
                "wall_s": round(v.wall_s, 3)} for s, v in zip(samples, verdicts)]
    n, c = Counter(), Counter()
    for r in results:
        n[r["task_id"]] += 1
        c[r["task_id"]] += r["passed"]
    pass_k = {f"pass@{k}": sum(pass_at_k(n[t], c[t], k) for t in n) / len(n)
              for k in ks if n and all(n[t] >= k for t in n)}
    return {"samples": len(samples), "tasks": len(n), **pass_k,
            "exact_match": sum(r["exact"] for r in results) / max(1, len(results)),
            "statuses": dict(Counter(r["status"] for r in results)),
            "missing": [t for t in problems if t not in n],
            "per_task": {t: {"n": n[t], "c": c[t]} for t in n}, "results": results,
            "isolation": ", ".join(sorted({v.isolation for v in verdicts} - {"not run"}))}
