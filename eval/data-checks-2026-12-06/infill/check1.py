"""Claim 1: held-out modules never trained on (names, file content, function content, near-dup)."""
import ast, os, sys, collections, warnings
from common import *
train, held = load()
tr_rows = list(train); he_rows = list(held)
held_units = sorted({r["module"].split(".")[0] for r in he_rows})
print("held-out units (from examples):", len(held_units), held_units)
# my own walk of the whole stdlib dir, every .py (no dgft skip rules)
allpy = {}
for dp, dns, fns in os.walk(STDLIB):
    for fn in fns:
        if fn.endswith(".py"):
            p = os.path.join(dp, fn)
            allpy[os.path.relpath(p, STDLIB)] = p
print("all .py under stdlib dir:", len(allpy))
def top(rel): return rel.split(os.sep)[0].removesuffix(".py")
def read(p):
    b = open(p, "rb").read()
    try: t = b.decode("utf-8")
    except UnicodeDecodeError: t = b.decode("latin-1")
    return t.replace("\r\n", "\n").replace("\r", "\n").lstrip("\ufeff")
byhash = collections.defaultdict(list)
for rel, p in allpy.items():
    byhash["\n".join(norm_lines(read(p)))].append(rel)
# 1a: names
bad_name = []; bad_path = []; mismatch = []; dup_leak = []
for r in tr_rows:
    rel = os.path.relpath(r["path"], STDLIB)
    if r["unit"] in held_units or r["module"].split(".")[0] in held_units: bad_name.append(r["module"])
    if top(rel) in held_units: bad_path.append(rel)
    if read(r["path"]) != r["text"]: mismatch.append(rel)
    others = [o for o in byhash["\n".join(norm_lines(r["text"]))] if o != rel]
    if any(top(o) in held_units for o in others): dup_leak.append((rel, others))
print("train rows:", len(tr_rows), "| unit/module in held-out:", len(bad_name), "| path under held-out pkg:", len(bad_path),
      "| text != file on disk:", len(mismatch), mismatch[:5], "| same normalised text also under a held-out name:", dup_leak)
# files with identical normalised content anywhere in stdlib (all .py)
dups = [v for v in byhash.values() if len(v) > 1 and len("".join(v))]
print("groups of identical (normalised) .py files anywhere in stdlib:", len(dups))
for v in dups: print("   ", v if len(v) < 6 else v[:6] + ["..."])
# 1b: functions of held-out files that occur in training files (normalised code lines, contiguous)
train_code = "\n" + "\n".join("\n".join(norm_code_lines(r["text"])) for r in tr_rows) + "\n"
held_files = sorted({r["path"] for r in he_rows})
held_all = [p for rel, p in allpy.items() if top(rel) in held_units and "/test" not in p]
print("held-out files in examples:", len(held_files), "| stdlib files under held-out units:", len(held_all))
def functions(text):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore"); tree = ast.parse(text)
    lines = text.split("\n")
    for n in ast.walk(tree):
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield n.name, n.lineno, n.end_lineno, "\n".join(lines[n.lineno - 1:n.end_lineno])
hits = []; nfn = 0
for p in held_files:
    t = read(p)
    for name, a, b, src in functions(t):
        code = norm_code_lines(src)
        if len(code) < 3: continue
        nfn += 1
        if "\n" + "\n".join(code) + "\n" in train_code: hits.append((os.path.relpath(p, STDLIB), name, a, len(code)))
print(f"held-out functions (>=3 code lines) checked: {nfn}; whole function found verbatim (normalised) in training text: {len(hits)}")
for h in hits[:40]: print("   ", h)
# are those functions still producing held-out examples?
exfn = collections.Counter((os.path.relpath(r["path"], STDLIB), r["function"].split(".")[-1]) for r in he_rows)
still = [(h, exfn[(h[0], h[1])]) for h in hits if exfn[(h[0], h[1])]]
print("of these, functions that still have held-out examples:", len(still), still[:40])
import pickle; pickle.dump(hits, open("/tmp/rev_i_work/fn_hits.pkl", "wb"))
