# usage: python gen.py CACHE_DIR [overrides...]  -> builds splits (workers=1), prints counts, cache path, time
import sys, time, json
from dgft.cli import compose_train
from dgft.data import build_splits, cache_key
cache = sys.argv[1]
cfg = compose_train(["recipe=sudoku", f"task.cache_dir={cache}", *sys.argv[2:]])
t = time.time()
s = build_splits(cfg.task, cfg.seed, workers=1)
print(json.dumps({"counts": {k: len(v) for k, v in s.items()}, "key": cache_key(cfg.task, cfg.seed),
                  "seed": cfg.seed, "secs": round(time.time() - t, 1),
                  "task": {k: str(cfg.task[k]) for k in ("sizes", "base_puzzles", "heldout_puzzles", "blank_fraction", "cache_dir")}}))
