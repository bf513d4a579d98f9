"""Generated Sudoku data: base puzzles cached as a `datasets.DatasetDict`, and random training batches.

Generation is the slow part (a uniqueness check per removed cell), so it runs once per seed and settings,
in parallel, and is cached under `task.cache_dir`. Each base puzzle keeps its removal order: adding back
the last-removed cells gives puzzles with the same unique solution at any larger number of givens, so one
base yields a whole range of difficulties. Batches then draw a base, a number of givens and a random
symmetry (augmentation), which keeps training data diverse at no generation cost.

The held-out split is generated from other grids and checked against training (exactly for 4x4, by a
symmetry invariant of the solution for 9x9) so it shares no puzzle with training up to augmentation.

Example: `splits = build_splits(cfg.task, seed=0)`; `batches = TrainBatches(splits["train"], task, cfg.task,
batch_size=64, seed=0)`; `next(batches)` -> dict of tensors from `SudokuTask.encode`.
"""

from __future__ import annotations

import hashlib
import json
import math
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from dgft.cache import cached, ensure_dir, load_splits, publish, save_splits
from dgft.config import ConfigError
from dgft.tasks.sudoku import grid as G
from dgft.tasks.sudoku.io import SudokuRecord
from dgft.tasks.sudoku.task import equivalence_key

GENERATOR_VERSION = 2
_CHUNK = 50


def _givens_range(n: int, blank_fraction) -> tuple[int, int]:
    lo, hi = blank_fraction
    L = n * n
    return max(1, round(L * (1 - hi))), max(1, round(L * (1 - lo)))


def _generate_chunk(args) -> list[dict]:
    n, count, seed_seq, split, blank_fraction = args
    rng = np.random.default_rng(seed_seq)
    gmin, gmax = _givens_range(n, blank_fraction)
    rows = []
    for _ in range(count):
        puzzle, solution, order = G.generate(n, givens=gmin, rng=rng, max_tries=1)
        if split == "heldout":
            # 9x9: a fixed puzzle at a random number of givens. 4x4 held-out puzzles stay minimal: a minimal
            # puzzle is reachable from a training base only if that base is equivalent to it (see below).
            if n == 9:
                puzzle = G.with_givens(puzzle, solution, order, int(rng.integers(gmin, gmax + 1)))
            order = np.zeros(0, dtype=np.int64)
        rows.append({"size": n, "puzzle": G.to_string(puzzle), "solution": G.to_string(solution),
                     "order": order.tolist()})
    return rows


def _die_with_parent() -> None:
    """Pool initializer: on Linux a worker is killed when the process that started it dies, so a `dgft train`
    killed while generating leaves no worker behind (each holds a copy of the run's lock)."""
    try:
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: an interrupted run's workers end with their queue
        pass


def _generate(n: int, count: int, seed: int, split: str, blank_fraction, workers: int, keep=None) -> list[dict]:
    """`count` rows accepted by `keep`, generated in seeded rounds (independent of the number of workers); fewer
    when `keep` accepted none of the last 20,000 puzzles made (4x4 settings whose few symmetry classes all fall on the
    other split's side), or after 1000 rounds, whichever comes first (a split whose classes are rare, 1% of the
    puzzles, can end a puzzle or two short at the round cap; `build_splits` says so). The rows are the first of those
    the rounds made before the 20,000 stop existed."""
    tag = {"train": 0, "heldout": 1}[split]
    rows: list[dict] = []
    idle = 0  # puzzles made since `keep` last accepted one
    for round_ in range(1000):
        need = count - len(rows)
        if need <= 0 or idle >= 20_000:
            break
        chunks = math.ceil(need / _CHUNK)
        seeds = np.random.SeedSequence([seed, n, tag, round_]).spawn(chunks)
        jobs = [(n, min(_CHUNK, need - i * _CHUNK), seeds[i], split, tuple(blank_fraction)) for i in range(chunks)]
        if workers > 1 and chunks > 1:
            pool = ProcessPoolExecutor(workers, initializer=_die_with_parent)
            try:
                parts = list(pool.map(_generate_chunk, jobs))
            except BaseException:  # interrupted (a signal, Ctrl-C): the workers go too, at once
                for process in multiprocessing.active_children():  # a worker still starting too
                    process.terminate()
                pool.shutdown(wait=False, cancel_futures=True)
                raise
            pool.shutdown()
        else:
            parts = [_generate_chunk(j) for j in jobs]
        kept = [row for part in parts for row in part if keep is None or keep(row)]
        idle = 0 if kept else idle + need
        rows += kept
    return rows[:count]


def heldout_class(row: dict, seed: int, share: float = 0.2) -> bool:
    """4x4 only: whether a puzzle's symmetry class is reserved for held-out (about `share` of classes).

    There are only a few dozen classes of minimal 4x4 puzzles, so a random held-out draw would repeat
    training classes; reserving classes keeps the two apart exactly.
    """
    key = equivalence_key(G.from_string(row["puzzle"]), G.from_string(row["solution"]))
    return hashlib.sha1(f"{seed}:{key}".encode()).digest()[0] < 256 * share


def cache_key(task_cfg, seed: int) -> str:
    fields = {"seed": seed, "sizes": list(task_cfg.sizes), "base": task_cfg.base_puzzles,
              "heldout": task_cfg.heldout_puzzles, "blank_fraction": list(task_cfg.blank_fraction),
              "version": GENERATOR_VERSION}
    return hashlib.sha1(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:12]


def build_splits(task_cfg, seed: int, workers: int | None = None, log=print):
    """The cached DatasetDict {"train", "heldout"} for these settings, generating it if needed."""
    from datasets import Dataset, DatasetDict

    path = Path(os.path.expanduser(task_cfg.cache_dir)) / f"sudoku-{cache_key(task_cfg, seed)}"
    if (splits := cached(path, lambda: load_splits(path), log, "generating")) is not None:
        return splits
    ensure_dir(path.parent)
    workers = workers or min(os.cpu_count() or 1, 4)
    train, heldout = [], []
    for n in task_cfg.sizes:
        log(f"generating {task_cfg.base_puzzles} + {task_cfg.heldout_puzzles} {n}x{n} puzzles (seed {seed}) ...")
        keep_train = (lambda r: not heldout_class(r, seed)) if n == 4 else None
        keep_heldout = (lambda r: heldout_class(r, seed)) if n == 4 else None
        train += _generate(n, task_cfg.base_puzzles, seed, "train", task_cfg.blank_fraction, workers, keep_train)
        heldout += _generate(n, task_cfg.heldout_puzzles, seed, "heldout", task_cfg.blank_fraction, workers,
                             keep_heldout)
    heldout, dropped = disjoint_heldout(train, heldout)
    if dropped:
        log(f"dropped {dropped} held-out puzzles equivalent to a training puzzle")
    for n in task_cfg.sizes:  # a split without a size trains or checks nothing of it: said before anything is cached
        made = {name: sum(r["size"] == n for r in rows) for name, rows in (("training", train), ("held-out", heldout))}
        asked = {"training": task_cfg.base_puzzles, "held-out": task_cfg.heldout_puzzles}
        givens = sorted({sum(c != "0" for c in r["puzzle"]) for r in train + heldout if r["size"] == n})
        got = (f"{givens[0]}-{givens[-1]} givens" if len(givens) > 1 else f"{givens[0]} givens") if givens else \
            "none made"
        for name, count in made.items():
            if count == 0:
                raise ConfigError(f"task.blank_fraction={list(task_cfg.blank_fraction)}, seed={seed}: no {n}x{n} "
                                  f"puzzle for the {name} split ({got}). Minimal {n}x{n} puzzles fall in few symmetry "
                                  "classes (fewer with more givens), and a class belongs to one split; give a wider "
                                  "task.blank_fraction, another seed, or task.sizes without it")
            if count < asked[name]:
                log(f"warning: {count} {n}x{n} {name} puzzles of the {asked[name]} asked: no more were made for that "
                    f"split with task.blank_fraction={list(task_cfg.blank_fraction)} and seed {seed} ({got})")
        low, high = _givens_range(n, task_cfg.blank_fraction)
        if givens and (givens[0] > high or givens[-1] < low):
            log(f"note: {n}x{n} puzzles have {got}, outside the {low}-{high} that task.blank_fraction asks: a puzzle "
                "keeps at least its base's minimal givens")
    splits = DatasetDict({"train": Dataset.from_list(train), "heldout": Dataset.from_list(heldout)})
    publish(path, lambda tmp: save_splits(splits, tmp))
    return load_splits(path)


def disjoint_heldout(train: list[dict], heldout: list[dict]) -> tuple[list[dict], int]:
    """Held-out rows whose puzzle is not equivalent (up to augmentation) to any training puzzle.

    9x9: training puzzles are their base's grid at any number of givens, so the solution grid's invariant
    stands for all of them. 4x4: held-out puzzles are minimal, and a training chain (a base plus givens
    added back) passes through a minimal puzzle only if its base is equivalent to it, so comparing exact
    canonical forms of the bases suffices.
    """
    seen = {equivalence_key(G.from_string(r["puzzle"]), G.from_string(r["solution"])) for r in train}
    kept = [r for r in heldout
            if equivalence_key(G.from_string(r["puzzle"]), G.from_string(r["solution"])) not in seen]
    return kept, len(heldout) - len(kept)


def records(split) -> list[SudokuRecord]:
    """Rows of a generated split as SudokuRecords (for evaluation)."""
    return [SudokuRecord(puzzle=G.from_string(r["puzzle"]), solution=G.from_string(r["solution"]),
                         source=f"heldout:{i + 1}") for i, r in enumerate(split)]


class TrainBatches:
    """Endless random training batches; all examples of a batch share one grid size.

    A batch is drawn and augmented in whole-batch numpy operations (no Python loop over puzzles): at batch 512
    the per-puzzle loop cost 128 ms of a 577 ms GPU step (eval/RESULTS.md).

    The state is one numpy Generator, so `state_dict()`/`load_state_dict()` resume the exact sequence.
    """

    def __init__(self, split, task, task_cfg, batch_size: int, seed: int):
        self.task, self.batch_size = task, batch_size
        # plain values, not the config: attribute access on an OmegaConf node costs as much as an augmentation
        self.augment, self.corrupt_givens_p = bool(task_cfg.augment), float(task_cfg.corrupt_givens_p)
        self.blank_fraction = tuple(task_cfg.blank_fraction)
        self.rng = np.random.default_rng([seed, 7])
        self.sizes = list(task_cfg.sizes)
        w = np.asarray(task_cfg.size_weights, dtype=float)
        self.weights = w / w.sum()
        self.pool = {}
        # the columns read whole, split here: `Dataset.filter` would write index files into the published cache,
        # which its record does not cover and datasets reuses (an edit of them changed the training data unseen)
        columns = split[:]  # every column as one list, read in one go (row by row they are slow)
        sizes, all_puzzles, all_solutions, all_orders = (columns[k] for k in ("size", "puzzle", "solution", "order"))
        for n in self.sizes:
            rows = [i for i, size in enumerate(sizes) if size == n]
            orders = np.full((len(rows), n * n), -1, dtype=np.int64)
            for j, i in enumerate(rows):
                orders[j, :len(all_orders[i])] = all_orders[i]
            self.pool[n] = (np.stack([G.from_string(all_puzzles[i]) for i in rows]),
                            np.stack([G.from_string(all_solutions[i]) for i in rows]), orders)

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        n = int(self.rng.choice(self.sizes, p=self.weights))
        puzzles, solutions, orders = self.pool[n]
        gmin, gmax = _givens_range(n, self.blank_fraction)
        pick = self.rng.integers(0, len(puzzles), self.batch_size)
        givens = self.rng.integers(gmin, gmax + 1, self.batch_size)
        p, s = G.with_givens_batch(puzzles[pick], solutions[pick], orders[pick], givens), solutions[pick]
        if self.augment:
            p, s = G.augment_batch(p, s, self.rng)
        corrupt = self.rng.random(self.batch_size) < self.corrupt_givens_p
        return self.task.encode(p, s, corrupt)

    def state_dict(self) -> dict:
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        self.rng.bit_generator.state = state["rng"]
