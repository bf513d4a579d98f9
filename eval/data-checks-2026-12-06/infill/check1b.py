"""Claim 1 (content): held-out examples whose enclosing function, or middle with 2 lines of context, occurs in training."""
import ast, os, collections, warnings, bisect
from common import *
train, held = load()
tr_rows = list(train); he_rows = list(held)
train_code = "\n" + "\n".join("\n".join(norm_code_lines(r["text"])) for r in tr_rows) + "\n"
train_ws = " ".join(ws(r["text"]) for r in tr_rows)
texts = {}
def fns(path):
    if path not in texts:
        t = open(path, encoding="utf-8").read()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore"); tree = ast.parse(t)
        ls = [0]
        for l in t.split("\n"): ls.append(ls[-1] + len(l) + 1)
        out = []
        for n in ast.walk(tree):
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)):
                out.append((ls[n.lineno - 1], ls[n.end_lineno], n.name))
        texts[path] = (t, out)
    return texts[path]
fn_leak = collections.Counter(); ctx_leak = collections.Counter(); n = collections.Counter(); ex_fn = []; ex_ctx = []
for r in he_rows:
    t, out = fns(r["path"])
    a = r["start"] + len(r["prefix"]); b = a + len(r["middle"])
    inner = [f for f in out if f[0] <= a and b <= f[1]]
    f = min(inner, key=lambda f: f[1] - f[0])
    code = norm_code_lines(t[f[0]:f[1]])
    n[r["kind"]] += 1
    if len(code) >= 3 and "\n" + "\n".join(code) + "\n" in train_code:
        fn_leak[r["kind"]] += 1; ex_fn.append((r["path"].split("python3.11/")[1], r["function"], r["kind"]))
    # middle + 2 lines of real context each side (from the file, whole lines)
    la = t.rfind("\n", 0, a) + 1
    lines_before = t[:la].split("\n")[:-1]
    lb = t.find("\n", b - 1 if r["middle"].endswith("\n") else b)
    lb = len(t) if lb < 0 else lb
    after = t[lb + 1:].split("\n")
    pre2 = [l for l in lines_before if l.strip()][-2:]; post2 = [l for l in after if l.strip()][:2]
    snippet = ws("\n".join(pre2) + "\n" + t[la:lb] + "\n" + "\n".join(post2))
    if snippet in train_ws:
        ctx_leak[r["kind"]] += 1; ex_ctx.append((r["path"].split("python3.11/")[1], r["function"], r["kind"], snippet[:150]))
print("held-out examples:", dict(n))
print("enclosing function (>=3 code lines) verbatim (normalised) in training:", dict(fn_leak), sum(fn_leak.values()))
for e in ex_fn: print("   ", e)
print("middle's lines +-2 non-blank lines (ws-normalised) found in training text:", dict(ctx_leak), sum(ctx_leak.values()))
for e in ex_ctx[:60]: print("   ", e)
