"""Near-duplicate held-out functions: share of their 3-line shingles (normalised code lines) present in training."""
import ast, warnings, collections
from common import *
train, held = load()
sh = set()
for r in train:
    c = norm_code_lines(r["text"])
    sh.update(tuple(c[i:i+3]) for i in range(len(c) - 2))
rows = list(held)
seen = {}
for r in rows:
    key = (r["path"], r["function"])
    if key in seen: continue
    t = open(r["path"], encoding="utf-8").read()
    a = r["start"] + len(r["prefix"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore"); tree = ast.parse(t)
    ls = [0]
    for l in t.split("\n"): ls.append(ls[-1] + len(l) + 1)
    inner = [(ls[n.lineno-1], ls[n.end_lineno]) for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and ls[n.lineno-1] <= a < ls[n.end_lineno]]
    lo, hi = min(inner, key=lambda f: f[1]-f[0])
    c = norm_code_lines(t[lo:hi]); s = [tuple(c[i:i+3]) for i in range(len(c) - 2)]
    seen[key] = (sum(x in sh for x in s) / len(s)) if s else None
vals = [v for v in seen.values() if v is not None]
print("held-out functions with examples:", len(seen), "with >=3 code lines:", len(vals))
for th in (0.5, 0.8, 1.0):
    k = [key for key, v in seen.items() if v is not None and v >= th]
    print(f"  share of 3-line shingles in training >= {th}: {len(k)} functions, {sum(1 for r in rows if (r['path'], r['function']) in set(k))} examples")
for key, v in sorted(seen.items(), key=lambda kv: -(kv[1] or 0))[:12]:
    print("   ", round(v, 2), key[0].split("python3.11/")[1], key[1])
