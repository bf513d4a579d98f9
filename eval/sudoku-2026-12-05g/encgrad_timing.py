"""Step time of recipe=sudoku with and without the encoder's gradient, alternated in one process (session 27):
python eval/sudoku-2026-12-05g/encgrad_timing.py"""
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import profile_step as P
from dgft import train as T
orig = T.encode
FLAG = {"detach": False}
def enc(*a, **k):
    if FLAG["detach"]:
        with torch.no_grad():
            return orig(*a, **k)
    return orig(*a, **k)
T.encode = enc
s = P.recipe_step(["recipe=sudoku"])
for _ in range(3): P.run_step(s, wait=False)
res = {False: [], True: []}
for rep in range(5):
    for d in (False, True):
        FLAG["detach"] = d
        P.run_step(s, wait=False)
        _, wall, _ = P.time_steps(s, 12, wait=False)
        res[d].append(1e3 * wall / 12)
for k, v in res.items():
    print("detach" if k else "full  ", " ".join(f"{x:.0f}" for x in v), "median", f"{statistics.median(v):.0f}")
