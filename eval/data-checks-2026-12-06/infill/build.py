import time, json, sys
sys.path.insert(0, "/tmp/rev_i")
from dgft.config import InfillTaskConfig
from dgft.tasks.infill.data import build_splits, cache_path
cfg = InfillTaskConfig(cache_dir="/tmp/rev_i/cache", prompt_tokens=256)
t=time.time()
s = build_splits(cfg)
print(s, time.time()-t)
print(cache_path(cfg))
