import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from profile_step import recipe_step, run_step
from torch.profiler import profile, ProfilerActivity
step = recipe_step(["recipe=sudoku"] + sys.argv[1:])
for _ in range(3): run_step(step, wait=False)
with profile(activities=[ProfilerActivity.CPU], record_shapes=True, with_stack=False) as prof:
    for _ in range(2): run_step(step, wait=False)
ev = prof.key_averages(group_by_input_shape=True)
rows = sorted(ev, key=lambda e: e.self_cpu_time_total, reverse=True)[:30]
for e in rows:
    print(f"{e.count//2:6d} {e.self_cpu_time_total/2e3:8.2f} ms  {e.key:40s} {str(e.input_shapes)[:110]}")
