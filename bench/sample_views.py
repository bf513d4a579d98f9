"""What stacking the sampler's views into one model call (`sampler.view_batch`) buys, per sampling step.

`sampler.views=V` reads each puzzle in V symmetric forms per step. `sampler.view_batch=1` runs one encoder and one
decoder call per view; `0` stacks all V along the batch, one call each. The model is the composed recipe's
(`recipe=sudoku` unless overridden), built untrained: a step's cost does not depend on the weights. The puzzles
are generated here (9x9 at `--givens`, seeded), never a benchmark file.

After one untimed step with each value, for each `--view-batch` value, alternated `--repeats` times: `sample()` in
`rules` mode with `sampler.steps = --steps` (with `acceptance=fixed`, every step makes the same calls as in a full
run), timed as a whole, and reported as seconds per step: the call's time over `--steps`, so its fixed costs (the
first encoding, the set-up) are spread over few steps and the figure falls as `--steps` grows; the ratio to the
first value is what to read. The canvases must be equal for every value (the same decisions); the script exits 1 if
they are not. On CUDA it also reports peak memory.

    python bench/sample_views.py                                  # CPU: batch 64, 16 views, view_batch 1 and 0
    python bench/sample_views.py --device cuda --batch 512 recipe=sudoku_gpu
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent


def setup(overrides: list[str], device: str):
    from dgft.cli import compose_train
    from dgft.model import build_tiny
    from dgft.tasks import get_task

    cfg = compose_train(["recipe=sudoku", *overrides])
    task = get_task(cfg.task)
    task.build_tokenizer()
    model = build_tiny(cfg.model, task.vocab_size, seed=0)  # random weights: the step's cost is the same
    return cfg, task, model.to(device).eval()


def puzzles(task, count: int, givens: int, seed: int = 0) -> dict:
    from dgft.tasks.sudoku import grid as G

    rng = np.random.default_rng(seed)
    made = [G.generate(9, givens=givens, rng=rng, max_tries=1) for _ in range(count)]
    return task.encode(np.stack([p for p, _, _ in made]), np.stack([s for _, s, _ in made]))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--views", type=int, default=16)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--givens", type=int, default=25)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--view-batch", type=int, nargs="+", default=[1, 0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--out", help="write the figures as JSON here")
    ap.add_argument("overrides", nargs="*", help="Hydra overrides of the train config (after recipe=sudoku)")
    args = ap.parse_args(argv)
    bad = [o for o in args.overrides if "=" not in o]
    if bad:
        ap.error(f"overrides are key=value: {' '.join(bad)}")
    if min(args.batch, args.views, args.steps, args.repeats) < 1 or min(args.view_batch) < 0:
        ap.error("--batch, --views, --steps and --repeats must be 1 or more, --view-batch 0 or more")
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device here")
    if str(ROOT) not in sys.path:  # the dgft next to this script, installed or not
        sys.path.insert(0, str(ROOT))
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from dgft.cli import _known_errors
    from dgft.sampling import sample

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        cfg, task, model = setup(args.overrides, args.device)
    except (HydraException, OmegaConfBaseException, *_known_errors()) as err:  # a bad override
        ap.error(str(err).strip())
    batch = puzzles(task, args.batch, args.givens)
    print(f"device {args.device}, {torch.get_num_threads()} threads, batch {args.batch}, {args.views} views, "
          f"passes {cfg.sampler.passes}, {args.steps} steps, model hidden {cfg.model.hidden_size} x "
          f"{cfg.model.num_layers} layers", flush=True)
    def settings(vb: int, steps: int):
        return OmegaConf.merge(cfg.sampler, {"views": args.views, "view_batch": vb, "steps": steps,
                                             "acceptance": "fixed"})

    for vb in args.view_batch:  # warm-up: first calls allocate and pick kernels
        sample(model, batch, task, settings(vb, 1), "rules", generator=torch.Generator().manual_seed(0))
    seconds = {vb: [] for vb in args.view_batch}
    canvases, peaks = {}, {}
    for r in range(args.repeats):
        for vb in args.view_batch:
            scfg = settings(vb, args.steps)
            if args.device == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
            res = sample(model, batch, task, scfg, "rules", generator=torch.Generator().manual_seed(0))
            if args.device == "cuda":
                torch.cuda.synchronize()
                peaks[vb] = torch.cuda.max_memory_allocated() / 2**30
            seconds[vb].append((time.perf_counter() - t0) / args.steps)
            canvases.setdefault(vb, res.canvas.cpu())
            print(f"  repeat {r + 1}, view_batch {vb}: {seconds[vb][-1]:.3f} s/step"
                  + (f", peak {peaks[vb]:.2f} GiB" if vb in peaks else ""), flush=True)
    first = args.view_batch[0]
    same = all(torch.equal(canvases[vb], canvases[first]) for vb in args.view_batch)
    rows = {vb: {"s_per_step": min(seconds[vb]), "all": seconds[vb], "ratio_to_first": min(seconds[vb]) /
                 min(seconds[first]), **({"peak_gib": peaks[vb]} if vb in peaks else {})} for vb in args.view_batch}
    print("view_batch | s/step (best) | vs first | runs")
    for vb, row in rows.items():
        print(f"{vb} | {row['s_per_step']:.3f} | {row['ratio_to_first']:.2f}x | "
              + ", ".join(f"{s:.3f}" for s in row["all"]))
    print("same canvases for every view_batch:", same)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"args": vars(args), "rows": {str(k): v for k, v in rows.items()}, "same": same}, f, indent=1)
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
