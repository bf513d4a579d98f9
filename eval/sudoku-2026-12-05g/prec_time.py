import statistics, sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import profile_step as P
s = P.recipe_step(["recipe=sudoku"] + sys.argv[1:])
for _ in range(3): P.run_step(s, wait=False)
res = {"ieee": [], "bf16": []}
for rep in range(5):
    for prec in res:
        torch.backends.mkldnn.matmul.fp32_precision = prec
        P.run_step(s, wait=False)
        _, wall, _ = P.time_steps(s, 12, wait=False)
        res[prec].append(1e3 * wall / 12)
for k, v in res.items():
    print(k, " ".join(f"{x:.0f}" for x in v), "median", f"{statistics.median(v):.0f}")
