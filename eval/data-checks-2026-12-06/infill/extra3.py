import sys, collections, gzip, json
sys.path.insert(0, "/tmp/rev_i")
import numpy as np
from dgft.config import InfillTaskConfig
from dgft.tasks.infill.task import InfillTask
from dgft.tasks.infill import data as D, corpus as C
cfg = InfillTaskConfig(cache_dir="/tmp/rev_i/cache", prompt_tokens=256)
task = InfillTask(cfg); task.build_tokenizer(); tok = task.tokenizer
s = D.build_splits(cfg, log=lambda *a: None)
B = D.InfillBatches(s["train"], task, cfg, 32, seed=0)
raw = B._draw(9000)
n = lambda m: len(tok(m, add_special_tokens=False, split_special_tokens=True)["input_ids"])
for k in C.KINDS:
    xs = [n(r["middle"]) + 1 <= 64 for r in raw if r["kind"] == k]
    print(f"training draws {k}: {len(xs)}, fit canvas 64: {np.mean(xs):.3f}")
P = [json.loads(l) for l in gzip.open("/work/shared/benchmarks/infill/HumanEval-SingleLineInfilling.jsonl.gz", "rt")]
print("HumanEval single-line middles not fitting 64:", sum(n(p["canonical_solution"]) + 1 > 64 for p in P), "of", len(P))
# held-out: (function, kind) pairs that give no example (sample_span -> None), not counted anywhere
import hashlib
files = C.read_sources(["stdlib"])[0]
_, heldf, _ = C.split_by_module(files, 0, 0.1)
none = collections.Counter(); tot = collections.Counter()
for f in heldf:
    tag = int(hashlib.sha1(f.module.encode()).hexdigest()[:8], 16)
    for i, fn in enumerate(f.functions):
        for kind in C.KINDS:
            tot[kind] += 1
            if C.sample_span(f, fn, kind, np.random.default_rng([0, tag, i, C.KINDS.index(kind)])) is None: none[kind] += 1
print("held-out (function, kind) pairs:", dict(tot), "giving no span (silently skipped by corpus.examples):", dict(none))
