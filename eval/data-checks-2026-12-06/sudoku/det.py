# claim 4: same seed -> same data on a fresh cache; second call reads the cache (no generation); other seed differs
import sys, time, os, shutil, hashlib, json
from dgft.cli import compose_train
from dgft.data import build_splits, cache_key
base = "/tmp/rev_h_work/det"
shutil.rmtree(base, ignore_errors=True)
ov = ["task.base_puzzles=150", "task.heldout_puzzles=60"]
def digest(s):
    h = hashlib.sha256()
    for k in ("train", "heldout"):
        for r in s[k]: h.update(json.dumps(r, sort_keys=True).encode())
    return h.hexdigest()[:16]
def run(cache, extra=(), workers=1):
    cfg = compose_train(["recipe=sudoku", f"task.cache_dir={cache}", *ov, *extra])
    logs = []
    t = time.time(); s = build_splits(cfg.task, cfg.seed, workers=workers, log=logs.append)
    return digest(s), round(time.time()-t, 1), logs, cache_key(cfg.task, cfg.seed), {k: len(v) for k, v in s.items()}
a = run(f"{base}/A"); print("A fresh", a)
a2 = run(f"{base}/A"); print("A again (cached)", a2)
b = run(f"{base}/B"); print("B fresh", b)
c = run(f"{base}/C", workers=2); print("C fresh workers=2", c)
d = run(f"{base}/D", ["seed=1"]); print("D seed=1", d)
print("same seed same data:", a[0] == b[0] == c[0] == a2[0], "| seed 1 differs:", d[0] != a[0])
print(sorted(os.listdir(f"{base}/A")), sorted(os.listdir(f"{base}/A/" + os.listdir(f"{base}/A")[0])))
