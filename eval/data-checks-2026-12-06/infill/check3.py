"""Claim 3: reassembly, span kinds, length limits; training spans drawn through dgft's InfillBatches."""
import ast, warnings, collections, sys, time
sys.path.insert(0, "/tmp/rev_i")
from common import *
import numpy as np
from dgft.config import InfillTaskConfig
from dgft.tasks.infill.task import InfillTask
from dgft.tasks.infill import data as D
cfg = InfillTaskConfig(cache_dir="/tmp/rev_i/cache", prompt_tokens=256)   # recipe=infill: prompt_tokens 256
task = InfillTask(cfg); t = time.time(); task.build_tokenizer(); print("tokenizer", round(time.time() - t, 1), "s")
train, held = load()
disk = {}
def ftext(path):
    if path not in disk:
        disk[path] = open(path, "rb").read().decode("utf-8").replace("\r\n", "\n").replace("\r", "\n").lstrip("\ufeff")
    return disk[path]
bodies = {}
def body_ranges(path):
    """(name, body_lo, body_hi, fn_lo, fn_hi) char ranges for every def: body after docstring."""
    if path not in bodies:
        t = ftext(path); ls = [0]
        for l in t.split("\n"): ls.append(ls[-1] + len(l) + 1)
        ls = [min(x, len(t)) for x in ls]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore"); tree = ast.parse(t)
        out = []
        for n in ast.walk(tree):
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)):
                b = n.body
                if isinstance(b[0], ast.Expr) and isinstance(b[0].value, ast.Constant) and isinstance(b[0].value.value, str): b = b[1:]
                if not b: continue
                first = min([b[0].lineno] + [d.lineno for d in getattr(b[0], "decorator_list", [])])
                fl = min([n.lineno] + [d.lineno for d in n.decorator_list])
                out.append((n.name, ls[first - 1], ls[n.end_lineno], ls[fl - 1], ls[n.end_lineno]))
        bodies[path] = (out, ls)
    return bodies[path]
def check(r, problems, stats):
    t = ftext(r["path"]); k = r["kind"]; m = r["middle"]
    a = r["start"] + len(r["prefix"]); b = a + len(m)
    if r["prefix"] + m + r["suffix"] != t[r["start"]:r["end"]]: problems["reassembly"] += 1
    if r["end"] - r["start"] != len(r["prefix"]) + len(m) + len(r["suffix"]): problems["length"] += 1
    defs, ls = body_ranges(r["path"])
    cont = [d for d in defs if d[1] <= a and b <= d[2] and d[0] == r["function"].split(".")[-1]]
    if not cont: problems["not inside the named function's body (after docstring)"] += 1
    if not m.strip(): problems["blank middle"] += 1
    line_start = a == 0 or t[a - 1] == "\n"; line_end = m.endswith("\n") or b == len(t)
    nl = m.count("\n") + (0 if m.endswith("\n") else 1)
    if k == "line":
        s = m.strip()
        if not (line_start and line_end and nl == 1): problems["line: not one whole line"] += 1
        if s.startswith("#"): problems["line: comment-only"] += 1
    elif k == "multi_line":
        if not (line_start and line_end): problems["multi_line: not whole lines"] += 1
        if not 2 <= nl <= 8: problems["multi_line: not 2..8 lines"] += 1
        stats["multi_lines"][nl] += 1
    elif k == "random_span":
        if not 1 <= len(m) <= 128: problems["random_span: not 1..128 chars"] += 1
    else: problems["unknown kind " + k] += 1
    # window: at line boundaries, prefix/suffix <= 2000 chars (unless the middle's own line forces more)
    if not (r["start"] == 0 or t[r["start"] - 1] == "\n"): problems["window start not at a line start"] += 1
    if not (r["end"] == len(t) or t[r["end"] - 1] == "\n"): problems["window end not at a line end"] += 1
    if len(r["prefix"]) > 2000: stats["prefix>2000"] += 1
    if len(r["suffix"]) > 2000: stats["suffix>2000"] += 1
    if cont:
        fl, fh = min(c[3] for c in cont), max(c[4] for c in cont)
        if r["start"] < fl - 1000 and r["start"] < t.rfind("\n", 0, fl - 1000) + 1: stats["window starts >1000 chars before def"] += 1
hp, hs = collections.Counter(), collections.Counter(); hs["multi_lines"] = collections.Counter()
rows = [dict(r) for r in held]
for r in rows: check(r, hp, hs)
print("HELD-OUT", len(rows), "examples; kinds", dict(collections.Counter(r["kind"] for r in rows)))
print("  problems:", dict(hp) or "none"); print("  stats:", dict(hs))
# canvas filter on the held-out set (own count: tokens of the middle + [EOS] <= 64)
tok = task.tokenizer
ntok = [len(tok(r["middle"], add_special_tokens=False, split_special_tokens=True)["input_ids"]) for r in rows]
too = collections.Counter(r["kind"] for r, n in zip(rows, ntok) if n + 1 > 64)
kept, skipped = D.heldout_examples(held, task, log=lambda s: print("  dgft says:", s))
print("  my count of middles > 63 tokens:", dict(too), "| dgft's skipped:", dict(skipped), "| kept", len(kept))
# TRAINING: dgft's own batch source, raw draws then encoded batches
B = D.InfillBatches(train, task, cfg, 32, seed=0)
tp, ts = collections.Counter(), collections.Counter(); ts["multi_lines"] = collections.Counter()
raw = B._draw(6000)
for r in raw: check(r, tp, ts)
print("TRAINING raw draws:", B.counts, "kinds", dict(collections.Counter(r["kind"] for r in raw)))
print("  problems:", dict(tp) or "none"); print("  stats:", dict(ts))
tr_mods = {r["module"].split(".")[0] for r in raw}
print("  units drawn:", len(tr_mods), "| any held-out unit:", sorted(tr_mods & {r["module"].split(".")[0] for r in rows}))
B = D.InfillBatches(train, task, cfg, 32, seed=0)
maxp = 0; maxlen = 0; cut = 0; n = 0
for _ in range(60):
    enc = B.__next__()
    maxp = max(maxp, enc["prompt_ids"].shape[1]); n += enc["target"].shape[0]
    maxlen = max(maxlen, int(enc["lengths"].max())); cut += int(enc["prompt_cut"].sum())
print(f"  60 batches: {n} examples, widest prompt {maxp} tokens (limit 256), longest middle {maxlen} tokens (+[EOS] <= 64), "
      f"prompts cut {cut}; counters {B.counts}")
