"""Statistics of the infilling corpus, its tokenizer and canvas fit (numbers for eval/RESULTS.md).

    OMP_NUM_THREADS=1 RAYON_NUM_THREADS=1 python eval/infill_corpus_stats.py [CACHE_DIR]   # ~20 s on one core

Builds the default corpus (the standard library) from scratch in CACHE_DIR (default: a fresh temporary
directory), trains the tokenizer, and prints JSON: split sizes, skip counts, examples per kind, the share of
middles that fit canvases of 32/64/128 tokens (held-out set and 3000 training draws), tokens per line, prompt
lengths, and the same for HumanEval-SingleLineInfilling when /work/shared/benchmarks has it.
"""

from __future__ import annotations

import contextlib
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the dgft beside this script, installed or not

from dgft.tasks.infill import data as D  # noqa: E402
from dgft.tasks.infill.task import InfillConfig, InfillTask  # noqa: E402

BENCH = (Path(__file__).resolve().parents[2] / "shared" / "benchmarks" / "infill"
         / "HumanEval-SingleLineInfilling.jsonl.gz")


def fit_shares(task, examples, lengths=(32, 64, 128)) -> dict:
    n = task.middle_tokens(examples) + 1  # with [EOS]
    kinds = np.array([e["kind"] for e in examples])
    out = {}
    for kind in sorted(set(kinds)):
        sel = n[kinds == kind]
        out[kind] = {"n": int(len(sel)), "mean_tokens": round(float(sel.mean()), 1),
                     **{f"fit_{L}": round(float((sel <= L).mean()), 3) for L in lengths}}
    return out


def prompt_lengths(task, examples) -> dict:
    pre = [len(x) for x in task._ids([e["prefix"] for e in examples])]
    suf = [len(x) for x in task._ids([e["suffix"] for e in examples])]
    full = np.array(pre) + np.array(suf) + 4
    return {"mean_prompt_tokens_untruncated": round(float(full.mean()), 1),
            **{f"share_within_{p}": round(float((full <= p).mean()), 3) for p in (256, 384, 512, 768, 1024)}}


def main(cache_dir: str) -> dict:
    cfg = InfillConfig(cache_dir=cache_dir)
    quiet = lambda *_: None  # noqa: E731
    t0 = time.time()
    splits = D.build_splits(cfg, log=quiet)
    build_s = time.time() - t0
    task = InfillTask(cfg)
    t0 = time.time()
    with contextlib.redirect_stdout(sys.stderr):  # its progress line: stdout is the JSON alone
        tok = task.build_tokenizer()
    tok_s = time.time() - t0
    report = D.read_report(cfg)
    files = D.source_files(splits["train"])
    heldout = [dict(r) for r in splits["heldout"]]
    batches = D.InfillBatches(splits["train"], task, cfg, batch_size=64, seed=0)
    draws = batches._draw(3000)
    next(batches)  # its first batch may carry one-time costs
    t0 = time.time()
    for _ in range(5):
        next(batches)
    batch_s = (time.time() - t0) / 5

    lines = [line for f in files for line in f.text.split("\n")]
    code = [line for line in lines if line.strip()]
    ids = task._ids(code)
    n_tok = sum(len(x) for x in ids)
    out = {
        "build_s": round(build_s, 1), "tokenizer_s": round(tok_s, 1), "vocab": len(tok),
        "batch64_s": round(batch_s, 3),
        "corpus": {k: report[k] for k in ("found", "kept", "skipped", "duplicates")},
        "unparsable": len(report["unparsable"]),
        "train": report["train"], "heldout": report["heldout"],
        "heldout_units": report["heldout_units"],
        "heldout_functions_dropped_as_copies": report["heldout_functions_dropped_as_copies"],
        "train_candidates": {"line": sum(len(f.functions) for f in files),
                             "multi_line": sum(fn.end_line > fn.body_start for f in files for fn in f.functions),
                             "random_span": sum(len(f.functions) for f in files)},
        "heldout_examples": dict(Counter(e["kind"] for e in heldout)),
        "tokens_per_nonblank_line": round(n_tok / len(code), 2),
        "chars_per_token": round(sum(len(line) for line in code) / n_tok, 2),
        "fit_heldout": fit_shares(task, heldout), "fit_train_draws": fit_shares(task, draws),
        "prompt_heldout": prompt_lengths(task, heldout),
    }
    if BENCH.exists():
        from dgft.tasks.infill.humaneval import read_problems

        he = D.humaneval_examples(read_problems(BENCH))
        out["humaneval_single_line"] = {"fit": fit_shares(task, he), "prompt": prompt_lengths(task, he)}
    return out


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("cache", nargs="?", help="where the corpus and tokenizer are built (default: a fresh temporary "
                                             "directory)")
    args = ap.parse_args()
    print(json.dumps(main(args.cache or tempfile.mkdtemp(prefix="dgft-infill-")), indent=1))
