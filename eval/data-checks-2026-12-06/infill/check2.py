"""Claim 2: HumanEval-SingleLineInfilling problems vs the training corpus (whitespace-normalised substring search)."""
import gzip, json, ast, collections, warnings
from common import *
train, held = load()
train_ws = " " + " ".join(ws(r["text"]) for r in train) + " "
held_ws = " " + " ".join(ws(r["prefix"] + r["middle"] + r["suffix"]) for r in held) + " "
P = [json.loads(l) for l in gzip.open("/work/shared/benchmarks/infill/HumanEval-SingleLineInfilling.jsonl.gz", "rt")]
print("tasks:", len(P), "problems:", len({p["task_id"].split("/")[1] for p in P}))
def found(s): return (" " + s + " ") in train_ws or (s in train_ws)
# (a) per problem: the original prompt (signature+docstring), the full solution body (after the docstring)
full = {}
for p in P:
    full.setdefault(p["task_id"].rsplit("/", 1)[0], p["prompt"] + p["canonical_solution"] + p["suffix"])
body_hits, prompt_hits, nbody = [], [], 0
for tid, src in full.items():
    ep = next(q["entry_point"] for q in P if q["task_id"].startswith(tid + "/"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore"); tree = ast.parse(src)
    fn = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == ep)
    lines = src.split("\n")
    doc_end = fn.body[0].end_lineno if isinstance(fn.body[0], ast.Expr) and isinstance(getattr(fn.body[0], "value", None), ast.Constant) else fn.lineno
    prompt = "\n".join(lines[:doc_end])
    body = "\n".join(lines[doc_end:fn.end_lineno])
    if ws(prompt) in train_ws: prompt_hits.append(tid)
    if len([l for l in body.split("\n") if l.strip()]) >= 3:
        nbody += 1
        if ws(body) in train_ws: body_hits.append(tid)
    # also each helper function / whole program
print(f"(a) original prompts (signature+docstring) found: {len(prompt_hits)}/{len(full)} {prompt_hits}")
print(f"(a) solution bodies with >=3 non-blank lines: {nbody}; found: {len(body_hits)} {body_hits}")
# (b) per task: the middle line with 1 and with 2 non-blank lines either side
hit1, hit2, mid_only, heldhit1 = [], [], 0, []
for p in P:
    pre = [l for l in p["prompt"].split("\n") if l.strip()]
    suf = [l for l in p["suffix"].split("\n") if l.strip()]
    m = p["canonical_solution"]
    if ws(m) in train_ws: mid_only += 1
    s1 = ws("\n".join(pre[-1:] + [m] + suf[:1]))
    s2 = ws("\n".join(pre[-2:] + [m] + suf[:2]))
    if s1 in train_ws: hit1.append((p["task_id"], s1))
    if s2 in train_ws: hit2.append((p["task_id"], s2))
    if s1 in held_ws: heldhit1.append(p["task_id"])
print(f"(b) middle alone (ws-normalised) occurs in training text: {mid_only}/{len(P)} (context-free, informational)")
print(f"(b) middle +-1 non-blank line found: {len(hit1)}/{len(P)}")
for h in hit1: print("    ", h)
print(f"(b) middle +-2 non-blank lines found: {len(hit2)}/{len(P)}")
for h in hit2: print("    ", h)
print(f"    (held-out windows, +-1: {len(heldhit1)} {heldhit1})")
