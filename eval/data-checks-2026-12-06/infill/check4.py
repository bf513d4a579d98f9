"""Claim 4: same splits and spans for a seed, wherever the corpus lies; fresh builds, other hash seeds."""
import os, sys, shutil, json, subprocess, collections
sys.path.insert(0, "/tmp/rev_i")
from dgft.config import InfillTaskConfig
from dgft.tasks.infill import corpus as C
from dgft.tasks.infill.data import build_splits, cache_path
STD = C.stdlib_dir()
rels = [os.path.relpath(p, STD) for p, _ in C.find_files("stdlib")]
roots = ["/tmp/rev_i_work/copyA/lib/python3.11", "/tmp/rev_i_work/copyB/some/other/place/pylib"]
for root in roots:
    shutil.rmtree(root.split("/copy")[0] + "/copy" + root.split("/copy")[1].split("/")[0], ignore_errors=True)
    for rel in rels:
        os.makedirs(os.path.dirname(os.path.join(root, rel)), exist_ok=True)
        shutil.copy(os.path.join(STD, rel), os.path.join(root, rel))   # copy: new mtimes too
def build(sources, cache, seed=0, log=lambda *a: None):
    cfg = InfillTaskConfig(cache_dir=cache, sources=sources, split_seed=seed, prompt_tokens=256)
    shutil.rmtree(cache, ignore_errors=True)
    s = build_splits(cfg, log=log)
    tr = [(r["module"], r["unit"], r["text"], json.dumps(r["functions"], sort_keys=True)) for r in s["train"]]
    he = [tuple((k, r[k]) for k in sorted(r) if k != "path") for r in s["heldout"]]
    return tr, he, [r["path"] for r in s["heldout"]], json.loads((cache_path(cfg) / "report.json").read_text())
base = build(["stdlib"], "/tmp/rev_i_work/c0")
again = build(["stdlib"], "/tmp/rev_i_work/c0b")
A = build([roots[0]], "/tmp/rev_i_work/cA")
Bb = build([roots[1]], "/tmp/rev_i_work/cB")
s1 = build(["stdlib"], "/tmp/rev_i_work/c1", seed=1)
print("train files:", len(base[0]), "held-out examples:", len(base[1]))
print("stdlib build twice identical (train, held-out):", base[0] == again[0], base[1] == again[1])
print("copy A vs copy B (different absolute paths) identical:", A[0] == Bb[0], A[1] == Bb[1], "| paths differ:", A[2][:1], Bb[2][:1])
print("copy A vs stdlib identical:", A[0] == base[0], A[1] == base[1])
print("reports equal (A,B):", {k: A[3][k] == Bb[3][k] for k in A[3]})
print("split_seed=1 differs:", s1[0] != base[0], s1[1] != base[1], "held-out units seed1:", s1[3]["heldout_units"])
json.dump({"base_units": base[3]["heldout_units"]}, open("/tmp/rev_i_work/units.json", "w"))
# training draws through InfillBatches from copy A vs copy B
from dgft.tasks.infill.task import InfillTask
from dgft.tasks.infill import data as D
outs = []
for root, cache in ((roots[0], "/tmp/rev_i_work/cA"), (roots[1], "/tmp/rev_i_work/cB")):
    cfg = InfillTaskConfig(cache_dir=cache, sources=[root], prompt_tokens=256)
    task = InfillTask(cfg); task.build_tokenizer()
    b = D.InfillBatches(build_splits(cfg, log=lambda *a: None)["train"], task, cfg, 32, seed=0)
    e = [next(b) for _ in range(5)]
    outs.append((task.tokenizer.get_vocab(), [(x["prompt_ids"].tolist(), x["target"].tolist()) for x in e], b._draw(500)))
print("tokenizers equal:", outs[0][0] == outs[1][0], "| 5 training batches equal:", outs[0][1] == outs[1][1],
      "| next 500 raw spans equal (path dropped):",
      [{k: v for k, v in r.items() if k != "path"} for r in outs[0][2]] == [{k: v for k, v in r.items() if k != "path"} for r in outs[1][2]])
