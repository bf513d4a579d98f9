"""Infilling data: the corpus split cached as a `datasets.DatasetDict`, its tokenizer, and random training batches.

`build_splits` reads the sources (`corpus.read_sources`), splits them by module and caches under
`task.cache_dir` a DatasetDict: "train" holds whole files with their function line ranges (about 9 MB for the
standard library), so training batches cut fresh spans every step; "heldout" holds fixed examples, one per
(function, kind), at most `heldout_examples` per kind, drawn with `split_seed`. The cache key covers the
settings and every source file's size and mtime, so an edited corpus is read again. `report.json` beside it
says what was skipped and why (unparsable files by path) and the size of each split.

Middles too long for the canvas are skipped, and counted: `heldout_examples` filters the fixed held-out set,
`InfillBatches` draws again (its `too_long` counter).

Example: `splits = build_splits(cfg.task)`; `task.build_tokenizer()`; `heldout, skipped =
heldout_examples(splits["heldout"], task)`; `batches = InfillBatches(splits["train"], task, cfg.task, 64, seed=0)`;
`next(batches)` -> dict of tensors from `InfillTask.encode`.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections import Counter
from pathlib import Path

import numpy as np

from dgft.cache import cached, ensure_dir, load_splits, publish, save_splits
from dgft.config import ConfigError
from dgft.tasks.infill import corpus as C
from dgft.tasks.infill.task import setting

CORPUS_VERSION = 2  # 2: held-out spans keyed by module name, not path (session 23)
EXAMPLE_KEYS = ("module", "path", "function", "kind", "prefix", "middle", "suffix")
SPAN_KEYS = ("max_lines", "max_span_chars", "context_chars", "max_side_chars")


def _features():
    from datasets import Features, Value

    fn = {"name": Value("string"), "start_line": Value("int32"), "body_start": Value("int32"),
          "end_line": Value("int32")}
    files = Features({"path": Value("string"), "module": Value("string"), "unit": Value("string"),
                      "text": Value("string"), "functions": [fn]})  # a list of structs
    examples = Features({**{k: Value("string") for k in EXAMPLE_KEYS}, "start": Value("int64"),
                         "end": Value("int64")})
    return files, examples


def _signature(sources) -> list:
    """(path, size, mtime) of every file a source stands for: a changed corpus gets a new cache."""
    out = []
    for source in sources:
        path = Path(os.path.expanduser(str(source)))
        if source != "stdlib" and C.is_dataset_dir(path):
            found = sorted(p for p in path.rglob("*") if p.is_file())
        else:
            found = [p for p, _ in C.find_files(str(source))]
        for p in found:
            try:
                st = p.stat()
            except OSError as err:  # a link to nothing, a file removed meanwhile
                raise C.CorpusError(f"{p}: cannot read ({err.strerror or err})") from None
            out.append([str(p), st.st_size, st.st_mtime_ns])
    return out


def cache_path(task_cfg) -> Path:
    sources = list(setting(task_cfg, "sources"))
    fields = {"version": CORPUS_VERSION, "python": sys.version_info[:2], "sources": _signature(sources),
              **{k: setting(task_cfg, k) for k in ("heldout_share", "split_seed", "max_file_bytes", "text_column",
                                                 "unit_column", "heldout_examples", *SPAN_KEYS)},
              "kinds": list(setting(task_cfg, "kinds"))}
    key = hashlib.sha1(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:12]
    return Path(os.path.expanduser(setting(task_cfg, "cache_dir"))) / f"infill-{key}"


def span_settings(task_cfg) -> dict:
    return {k: int(setting(task_cfg, k)) for k in SPAN_KEYS}


# --- the cached splits ----------------------------------------------------------------------------
def build_splits(task_cfg, log=print):
    """The cached DatasetDict {"train": files, "heldout": examples} for these settings, building it if needed."""
    from datasets import Dataset, DatasetDict

    path = cache_path(task_cfg)
    def load():
        json.loads((path / "report.json").read_text())  # written with the splits: a cache without it is torn
        return load_splits(path)

    if (splits := cached(path, load, log)) is not None:
        return splits
    ensure_dir(path.parent)
    sources = list(setting(task_cfg, "sources"))
    log(f"reading the infilling corpus from {', '.join(map(str, sources))} ...")
    files, report = C.read_sources(sources, int(setting(task_cfg, "max_file_bytes")), setting(task_cfg, "text_column"),
                                   setting(task_cfg, "unit_column"))
    log(f"corpus: {report.summary()}")
    if not any(f.functions for f in files):
        raise C.CorpusError(f"{', '.join(map(str, sources))}: no function with a body to cut spans from")
    seed = int(setting(task_cfg, "split_seed"))
    train, heldout, dropped = C.split_by_module(files, seed, float(setting(task_cfg, "heldout_share")))
    examples = _heldout_draw(heldout, seed, list(setting(task_cfg, "kinds")), int(setting(task_cfg, "heldout_examples")),
                             span_settings(task_cfg))
    info = {**report.to_dict(), "train": C.describe(train), "heldout": C.describe(heldout),
            "heldout_functions_dropped_as_copies": dropped,
            "heldout_examples": dict(Counter(e["kind"] for e in examples)),
            "heldout_units": sorted({f.unit for f in heldout})}
    log(f"split by module: train {info['train']}, held-out {info['heldout']} "
        f"({dropped} held-out functions dropped as copies of training ones)")
    if not examples:
        log("held-out: no examples (one module, or heldout_share=0): evaluate on other data")
    file_features, example_features = _features()
    columns = lambda rows, features: {k: [r[k] for r in rows] for k in features}  # noqa: E731 (empty lists too)
    splits = DatasetDict({
        "train": Dataset.from_dict(columns([_file_row(f) for f in train], file_features), features=file_features),
        "heldout": Dataset.from_dict(columns(examples, example_features), features=example_features)})
    def write(tmp: Path) -> None:
        save_splits(splits, tmp, num_shards={k: 1 for k in splits})  # one shard: an empty split loads too
        (tmp / "report.json").write_text(json.dumps(info, indent=1))

    publish(path, write)
    return load_splits(path)


def read_report(task_cfg) -> dict:
    """The report written with the cached splits (what was skipped, split sizes)."""
    return json.loads((cache_path(task_cfg) / "report.json").read_text())


def _file_row(f: C.SourceFile) -> dict:
    return {"path": f.path, "module": f.module, "unit": f.unit, "text": f.text,
            "functions": [{"name": fn.name, "start_line": fn.start_line, "body_start": fn.body_start,
                           "end_line": fn.end_line} for fn in f.functions]}


def source_files(split) -> list[C.SourceFile]:
    """Rows of a "train" split back to SourceFiles."""
    out = []
    for row in split:
        fns = row["functions"]
        if isinstance(fns, dict):  # datasets may hand a Sequence of structs back as a dict of lists
            fns = [dict(zip(fns, vals)) for vals in zip(*fns.values())]
        out.append(C.SourceFile(row["path"], row["module"], row["unit"], row["text"],
                                tuple(C.Function(**fn) for fn in fns)))
    return out


def _heldout_draw(files, seed: int, kinds: list[str], per_kind: int, span_kw: dict) -> list[dict]:
    """One example per (function, kind), then at most per_kind of each kind, chosen with the seed."""
    drawn = C.examples(files, seed, kinds, **span_kw)
    rng = np.random.default_rng([seed, 1])
    out = []
    for kind in kinds:
        of_kind = [e for e in drawn if e["kind"] == kind]
        keep = np.sort(rng.permutation(len(of_kind))[:per_kind])
        out += [of_kind[i] for i in keep]
    return out


def heldout_examples(split, task, log=print) -> tuple[list[dict], Counter]:
    """The held-out examples whose middle fits the task's canvas, and the skipped ones counted by kind."""
    rows = [dict(r) for r in split]
    fit = task.fits(rows) if rows else np.zeros(0, dtype=bool)
    skipped = Counter(r["kind"] for r, ok in zip(rows, fit) if not ok)
    if skipped:
        log(f"held-out: skipped {sum(skipped.values())} of {len(rows)} middles longer than the canvas "
            f"({task.canvas_length} tokens with [EOS]): " + ", ".join(f"{k} {n}" for k, n in sorted(skipped.items())))
    return [r for r, ok in zip(rows, fit) if ok], skipped


# --- tokenizer ------------------------------------------------------------------------------------
def corpus_tokenizer(task_cfg, log=print):
    """The byte-level BPE trained on the training split's files, cached beside the splits."""
    from transformers import PreTrainedTokenizerFast

    from dgft.tasks.infill.tokenizer import train_tokenizer

    vocab_size = int(setting(task_cfg, "vocab_size"))
    path = cache_path(task_cfg) / f"tokenizer-{vocab_size}"
    if (path / "tokenizer.json").exists():
        return PreTrainedTokenizerFast.from_pretrained(str(path))
    splits = build_splits(task_cfg, log)
    log(f"training a byte-level BPE ({vocab_size} tokens) on {len(splits['train'])} training files ...")
    tok = train_tokenizer(splits["train"]["text"], vocab_size=vocab_size)
    publish(path, lambda tmp: tok.save_pretrained(str(tmp)))
    return tok


# --- training batches -----------------------------------------------------------------------------
class InfillBatches:
    """Endless training batches: each example a fresh span of a drawn kind from a uniformly drawn function.

    The kind is drawn with `kind_weights`; a span whose middle does not fit the canvas is drawn again and
    counted in `too_long`. The state is one numpy Generator (and the counters), so `state_dict()` /
    `load_state_dict()` resume the exact sequence.
    """

    def __init__(self, split, task, task_cfg, batch_size: int, seed: int):
        self.task, self.batch_size = task, batch_size
        self.files = source_files(split)
        self.kinds = list(setting(task_cfg, "kinds"))
        # per kind, the (file, function) pairs that can give one: multi_line needs two body lines
        self.index = {kind: np.array([(i, j) for i, f in enumerate(self.files) for j, fn in enumerate(f.functions)
                                      if kind != "multi_line" or fn.end_line > fn.body_start],
                                     dtype=np.int64).reshape(-1, 2) for kind in self.kinds}
        for kind, index in self.index.items():
            if not len(index):
                raise C.CorpusError(f"training split: no function to cut a {kind} span from")
        w = np.asarray(setting(task_cfg, "kind_weights"), dtype=float)
        if len(w) != len(self.kinds) or (w < 0).any() or w.sum() <= 0:
            raise ValueError(f"task.kind_weights={list(w)}: one non-negative weight per kind {self.kinds}")
        self.weights = w / w.sum()
        self.oracle_p = float(setting(task_cfg, "oracle_length_p"))
        self.span_kw = span_settings(task_cfg)
        self.rng = np.random.default_rng([seed, 11])
        self.counts = {"drawn": 0, "too_long": 0, "no_span": 0}

    def __iter__(self):
        return self

    def _draw(self, n: int) -> list[dict]:
        out = []
        for _ in range(n):
            kind = self.kinds[int(self.rng.choice(len(self.kinds), p=self.weights))]
            i, j = self.index[kind][self.rng.integers(len(self.index[kind]))]
            f = self.files[i]
            ex = C.sample_span(f, f.functions[j], kind, self.rng, **self.span_kw)
            self.counts["drawn"] += 1
            if ex is None:
                self.counts["no_span"] += 1
            else:
                out.append(ex)
        return out

    def __next__(self) -> dict:
        batch: list[dict] = []
        for _ in range(100):
            cands = self._draw(self.batch_size - len(batch))
            fit = self.task.fits(cands) if cands else []
            self.counts["too_long"] += int(len(cands) - np.sum(fit))
            batch += [e for e, ok in zip(cands, fit) if ok]
            if len(batch) >= self.batch_size:
                break
        else:
            raise ConfigError(f"task.canvas_length={self.task.canvas_length}: no span fits the canvas after 100 draws "
                              "per example; raise task.canvas_length")
        oracle = self.rng.random(self.batch_size) < self.oracle_p
        return self.task.encode(batch, oracle)

    def state_dict(self) -> dict:
        return {"rng": self.rng.bit_generator.state, "counts": dict(self.counts)}

    def load_state_dict(self, state: dict) -> None:
        self.rng.bit_generator.state = state["rng"]
        self.counts = dict(state.get("counts", self.counts))


# --- other examples -------------------------------------------------------------------------------
def humaneval_examples(problems, kind: str = "line") -> list[dict]:
    """HumanEval-Infilling problems (humaneval.read_problems) as examples: prompt/canonical_solution/suffix.

    `kind` names the benchmark file's shape: "line" (SingleLine), "multi_line", "random_span".
    """
    return [{"module": "humaneval", "path": p.task_id, "function": p.entry_point, "kind": kind,
             "prefix": p.prompt, "middle": p.canonical_solution, "suffix": p.suffix} for p in problems.values()]
