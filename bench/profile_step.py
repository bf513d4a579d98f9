"""Where the time of one dgft training step goes, on the real step: a timing split by phase, then torch.profiler.

Two targets:
- a train recipe (the default): the config is composed from the Hydra overrides given, exactly as `dgft train`
  composes it, and set up as `dgft.train.train` sets it up (task, generated data, batches, model, optimizer, LR
  schedule; nothing is written to a run directory). Its step is `dgft train`'s: next batch + `dgft.step.corrupt_batch` on the
  host, `dgft.step.batch_loss` under autocast, backward, gradient clipping + optimizer + scheduler.
- `--qlora`: the released DiffusionGemma-26B-A4B text architecture at `--depth` layers with random weights, NF4
  base (experts included) and LoRA r16, built and stepped as `bench/qlora_memory.py` does it (prompt 256 +
  canvas 256, batch 1, self-conditioning on every step, gradient checkpointing, paged 8-bit AdamW).

What it measures, after `--warmup` steps:
1. `--steps` steps that wait for the device after each phase: milliseconds of data (host: next batch +
   `corrupt_batch`), forward + loss, backward, optimizer (clip, step, schedule, zero_grad; --qlora: step, zero_grad);
   median over the steps.
2. `--steps` steps as `dgft train` runs them (no wait inside the loop): wall ms per step and tokens/s, and the
   host's own ms per phase ("issue": the time to queue the phase's work; a hidden host-device sync adds its
   wait here). A step that is as long as its issue time is bound by the host, not by the device.
3. torch.profiler (CPU, and CUDA when there) over `--profile-steps` steps: the top ops by self device time (on
   a CPU: self CPU time), kernel time and launches per step, host-device syncs per step (cudaStreamSynchronize,
   aten::item, ... as counted in the profile) and the matmul FLOPs torch counts, as TFLOP/s at the step time of 2.
4. CUDA only: one step in `torch.cuda` sync debug mode, the synchronizing calls counted by source line.

Prints a table as it goes; `--out` writes the JSON summary (rewritten after each part, so a run cut short keeps
what it measured), `--trace` a Chrome trace of the profiled steps (`.json.gz` is compressed).

    # CPU, seconds (the recipe target needs its data: recipe=sudoku generates 2 x 6,000 puzzles once, cached)
    python bench/profile_step.py --steps 3 --warmup 1 recipe=sudoku model=tiny trainer.batch_size=8
    python bench/profile_step.py --qlora --tiny --steps 2
    # GPU (bench/device_session.sh runs both first, with small data for the recipe)
    python bench/profile_step.py --out sudoku.json --trace sudoku.json.gz recipe=sudoku_gpu device=cuda
    python bench/profile_step.py --qlora --depth 2 --out qlora.json --trace qlora.json.gz
"""

from __future__ import annotations

import argparse
import json
import linecache
import os
import statistics
import sys
import time
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch.profiler import ProfilerActivity, profile, record_function, schedule

PHASES = {"data": "data (next batch + corrupt_batch)", "forward": "forward + loss", "backward": "backward",
          "optimizer": "optimizer step"}
SYNC_OPS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize", "cudaMemcpy",
            "aten::item", "aten::_local_scalar_dense")
LAUNCH_OPS = ("cudaLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernel", "cuLaunchKernelEx")
TOP = 25
ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Step:
    """One training step cut into phases. `data()` -> (micro-batches, loss normaliser, tokens), on the host;
    `loss(micro, normaliser)` -> the scalar to backward; `optimizer_step()`; `autocast()` wraps the forward only,
    as `dgft.train` does (a custom autograd Function's backward would otherwise run under it too)."""
    device: torch.device
    data: Callable[[], tuple[list, float, int]]
    loss: Callable[[dict, float], torch.Tensor]
    optimizer_step: Callable[[], None]
    autocast: Callable[[], object]
    info: dict


class Fail(Exception):
    """A setup error worth one line (no CUDA device), not a traceback."""


# --- the two targets ----------------------------------------------------------------------------
def recipe_step(overrides: list[str]) -> Step:
    """`dgft train`'s setup and step for the composed config (`dgft.train.train`, minus the run directory)."""
    from dgft import step as step_
    from dgft import train as T
    from dgft.cli import compose_train
    from dgft.model import count_parameters, torch_dtype, unwrap
    from dgft.optim import make_optimizer
    from dgft.tasks import get_task

    cfg = compose_train(overrides)
    gen = T.seed_everything(cfg.seed)
    if cfg.trainer.num_threads:
        torch.set_num_threads(cfg.trainer.num_threads)
    device = T.pick_device(cfg.device)
    task = get_task(cfg.task)
    task.build_tokenizer()
    dtype = torch_dtype(cfg.model.dtype, device)
    model = T.load_base(cfg, device)  # the order of `dgft train`: pretrained weights, data, then the rest
    splits = task.build_splits(cfg.seed, log=lambda msg: print(msg, flush=True))
    batches = task.train_batches(splits["train"], cfg.trainer.batch_size, cfg.seed)
    model = T.trainable_model(model, cfg, task, device, gen)
    vocab_size = unwrap(model).config.get_text_config().vocab_size
    trainable, total = count_parameters(model)
    params = [p for p in {id(p): p for p in model.parameters()}.values() if p.requires_grad]
    opt = make_optimizer(model.named_parameters(), cfg.trainer, device)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, T.lr_lambda(cfg.trainer))
    model.train()

    def data():
        micro = [step_.corrupt_batch(next(batches), cfg, gen, vocab_size, task) for _ in range(cfg.trainer.grad_accum)]
        n_scored = sum(float(m["count"]) for m in micro) or 1.0
        return micro, n_scored, sum(int(m["tokens"]) for m in micro)

    def loss(m, n_scored):
        loss_sum, extra = step_.batch_loss(model, m, cfg, gen, device, task)
        return loss_sum / n_scored + extra

    def optimizer_step():
        torch.nn.utils.clip_grad_norm_(params, cfg.trainer.max_grad_norm)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)

    info = {"recipe": cfg.name, "overrides": overrides, "parameters": total, "trainable": trainable,
            "batch_size": cfg.trainer.batch_size, "grad_accum": cfg.trainer.grad_accum, "dtype": str(dtype),
            "self_conditioning_p": cfg.noise.self_conditioning_p}
    return Step(device, data, loss, optimizer_step,
                lambda: torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == torch.bfloat16), info)


def qlora_step(depth: int, mode: str, group_size: int, tiny: bool, ar_weight: float) -> Step:
    """bench/qlora_memory.py's model (released architecture, `depth` layers) and step, for one mode."""
    sys.path.insert(0, str(ROOT / "bench"))
    import qlora_memory as qm

    from dgft.model import count_parameters
    from dgft.step import batch_loss

    if tiny:
        qm.DEVICE, qm.DIMS = torch.device("cpu"), qm.TINY
    elif not torch.cuda.is_available():
        raise Fail("--qlora needs a CUDA device (--tiny runs it on the CPU with tiny dimensions)")
    qm.GROUP = group_size
    device = qm.DEVICE
    torch.backends.cuda.matmul.allow_tf32 = True
    quantize = "nf4" if mode == "nf4" else "none"
    print(f"building the released architecture at {depth} layers ({mode}{', tiny dims' if tiny else ''}) ...",
          flush=True)
    model = qm.build(depth, quantize, device)
    model, _, opt = qm.training_setup(model, quantize, device)
    cfg = qm.step_config(ar_weight)
    gen = torch.Generator().manual_seed(0)
    trainable, total = count_parameters(model)

    def data():
        return [qm.step_inputs(device, qm.DIMS["vocab_size"])], 256.0, 512

    def loss(m, canvas):
        loss_sum, extra = batch_loss(model, m, cfg, gen, device)
        return loss_sum / canvas + extra

    def optimizer_step():
        opt.step()
        opt.zero_grad(set_to_none=True)

    info = {"depth": depth, "mode": mode, "group_size": group_size, "tiny": tiny, "ar_weight": ar_weight,
            "parameters": total, "trainable": trainable, "batch_size": 1, "optimizer": type(opt).__name__}
    return Step(device, data, loss, optimizer_step, lambda: torch.autocast(device.type, dtype=torch.bfloat16), info)


# --- running steps ------------------------------------------------------------------------------
def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def run_step(step: Step, wait: bool) -> tuple[dict, int]:
    """One training step -> (seconds per phase, tokens). `wait`: wait for the device at the end of each phase."""
    secs = dict.fromkeys(PHASES, 0.0)
    t = time.perf_counter()

    def lap(phase):
        nonlocal t
        if wait:
            sync(step.device)
        now = time.perf_counter()
        secs[phase] += now - t
        t = now

    with record_function("dgft.data"):
        micro, norm, tokens = step.data()
    lap("data")
    for m in micro:
        with step.autocast():
            with record_function("dgft.forward"):
                loss = step.loss(m, norm)
        lap("forward")
        with record_function("dgft.backward"):
            loss.backward()
        lap("backward")
    with record_function("dgft.optimizer"):
        step.optimizer_step()
    lap("optimizer")
    return secs, tokens


def time_steps(step: Step, n: int, wait: bool) -> tuple[list[dict], float, int]:
    """n steps -> (seconds per phase of each, wall seconds of all n, tokens of all n)."""
    sync(step.device)
    t0 = time.perf_counter()
    rows, tokens = [], 0
    for _ in range(n):
        secs, tok = run_step(step, wait)
        rows.append(secs)
        tokens += tok
    sync(step.device)
    return rows, time.perf_counter() - t0, tokens


def timing(step: Step, n: int) -> dict:
    synced, _, _ = time_steps(step, n, wait=True)
    issued, wall, tokens = time_steps(step, n, wait=False)
    med = lambda rows, k: 1e3 * statistics.median(r[k] for r in rows)  # noqa: E731
    return {"steps": n,
            "synced_ms": {k: med(synced, k) for k in PHASES} | {"step": 1e3 * statistics.median(
                sum(r.values()) for r in synced)},
            "issue_ms": {k: med(issued, k) for k in PHASES},
            "step_ms": 1e3 * wall / n, "tokens_per_step": tokens / n, "tokens_per_s": tokens / wall}


def profile_steps(step: Step, n: int, trace: str | None) -> dict:
    """torch.profiler over n steps (after one profiled warm-up step) -> the per-step summary."""
    from torch.autograd import DeviceType

    cuda = step.device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities, schedule=schedule(wait=0, warmup=1, active=n, repeat=1),
                 with_flops=True) as prof:
        for i in range(n + 1):
            run_step(step, wait=False)
            if i == n:  # the last step's kernels end inside the profile
                sync(step.device)
            prof.step()
    if trace:
        prof.export_chrome_trace(trace)
    events = prof.key_averages()
    # ops only: not the phase ranges of run_step, the profiler's step ranges or their device-side copies
    ops = [e for e in events if not (e.key.startswith(("dgft.", "ProfilerStep"))
                                     or getattr(e, "is_user_annotation", False))]
    sort_key = "self_device_time_total" if cuda else "self_cpu_time_total"
    top = sorted((e for e in ops if getattr(e, sort_key) > 0), key=lambda e: getattr(e, sort_key), reverse=True)

    def per(x):
        return x / n

    def count(names):
        return {e.key: per(e.count) for e in ops if e.key in names and e.device_type == DeviceType.CPU}

    syncs = count(SYNC_OPS)
    if cuda and "cudaDeviceSynchronize" in syncs:  # not the one above
        syncs["cudaDeviceSynchronize"] -= 1 / n
    return {
        "steps": n, "sorted_by": "self device time" if cuda else "self CPU time",
        "ops": [{"name": e.key, "calls": per(e.count), "self_device_ms": per(e.self_device_time_total) / 1e3,
                 "self_cpu_ms": per(e.self_cpu_time_total) / 1e3} for e in top[:TOP]],
        "phases_host_ms": {e.key[5:]: per(e.cpu_time_total) / 1e3 for e in events
                           if e.key.startswith("dgft.") and e.device_type == DeviceType.CPU},
        "kernel_ms": per(sum(e.self_device_time_total for e in ops if e.device_type != DeviceType.CPU)) / 1e3,
        "host_op_ms": per(sum(e.self_cpu_time_total for e in ops if e.device_type == DeviceType.CPU)) / 1e3,
        "kernel_launches": sum(count(LAUNCH_OPS).values()),
        "syncs": {k: v for k, v in syncs.items() if v > 0},
        "matmul_flops": per(sum(e.flops or 0 for e in ops)),
    }


def sync_sites(step: Step) -> list[dict]:
    """One step in torch.cuda's sync debug mode: each synchronizing call, counted by the line that made it."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            run_step(step, wait=False)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    sites = Counter((w.filename, w.lineno) for w in caught if "synchroniz" in str(w.message))
    return [{"where": f"{_short(f)}:{line}", "count": c, "code": linecache.getline(f, line).strip()}
            for (f, line), c in sites.most_common()]


def _short(path: str) -> str:
    for marker in ("site-packages/", str(ROOT) + "/"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path


# --- report -------------------------------------------------------------------------------------
def print_timing(t: dict) -> None:
    print(f"\nstep phases, ms (median of {t['steps']} steps)   synced    issue")
    for k, label in PHASES.items():
        print(f"  {label:<38}{t['synced_ms'][k]:>8.1f} {t['issue_ms'][k]:>8.1f}")
    print(f"  {'step':<38}{t['synced_ms']['step']:>8.1f}")
    print("  synced: each phase waits for the device; issue: the host's own time, no waiting (a hidden sync adds "
          "its wait)")
    print(f"as `dgft train` runs it (no wait inside the loop): {t['step_ms']:.1f} ms per step, "
          f"{t['tokens_per_step']:,.0f} tokens per step, {t['tokens_per_s']:,.0f} tokens/s", flush=True)


def print_profile(p: dict, step_ms: float, cuda: bool) -> None:
    print(f"\ntop {len(p['ops'])} ops by {p['sorted_by']}, per step ({p['steps']} profiled steps):")
    print(f"  {'calls':>7}" + (f" {'self dev ms':>11}" if cuda else "") + f" {'self cpu ms':>11}  op")
    for o in p["ops"]:
        name = o["name"] if len(o["name"]) <= 90 else o["name"][:87] + "..."
        dev = f" {o['self_device_ms']:>11.2f}" if cuda else ""
        print(f"  {o['calls']:>7.0f}{dev} {o['self_cpu_ms']:>11.2f}  {name}")
    flops = p["matmul_flops"]
    line = f"per step: host time in ops {p['host_op_ms']:.1f} ms"
    if cuda:
        line += (f", kernel time {p['kernel_ms']:.1f} ms ({100 * p['kernel_ms'] / step_ms:.0f}% of the "
                 f"{step_ms:.1f} ms step), {p['kernel_launches']:,.0f} kernel launches")
    if flops:
        line += f", matmul FLOPs {flops:.3g} -> {flops / step_ms / 1e9:.2f} TFLOP/s at the step time"
    print(line)
    print("host time inside each phase while profiled (ms): "
          + ", ".join(f"{k} {v:.1f}" for k, v in p["phases_host_ms"].items()))
    syncs = ", ".join(f"{k} {v:g}" for k, v in p["syncs"].items()) or "none seen"
    print(f"host-device syncs per step ({'profile' if cuda else 'CPU: scalar reads only'}): {syncs}", flush=True)


def print_sites(sites: list[dict]) -> None:
    print(f"\nsynchronizing calls in one step (torch.cuda sync debug mode): {sum(s['count'] for s in sites)}")
    for s in sites[:15]:
        print(f"  {s['count']:>5}  {s['where']}  {s['code'][:80]}")
    sys.stdout.flush()


# --- main ---------------------------------------------------------------------------------------
def _count(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: not a whole number") from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"{text}: must be 0 or more")
    return n


def _unwritable(path: Path) -> str | None:
    """Why `path` cannot be written, tried for real (root's os.access says yes to /proc); None when it can. A file
    the try creates is removed again."""
    existed = path.exists()
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND))
    except OSError as err:
        return err.strerror or str(err)
    if not existed:
        path.unlink()
    return None


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 epilog="recipe target: Hydra overrides of `dgft train` follow the options, "
                                        "e.g. recipe=sudoku_gpu trainer.batch_size=512")
    ap.add_argument("overrides", nargs="*", help="key=value overrides of the train config (recipe target)")
    ap.add_argument("--qlora", action="store_true", help="profile bench/qlora_memory.py's step instead")
    ap.add_argument("--depth", type=int, default=2, help="--qlora: layers of the released architecture")
    ap.add_argument("--mode", choices=["nf4", "bf16"], default="nf4", help="--qlora: the base weights")
    ap.add_argument("--group-size", type=int, default=32, help="--qlora: experts dequantized at once (nf4)")
    ap.add_argument("--ar-weight", type=float, default=0.0, help="--qlora: encoder AR co-loss weight")
    ap.add_argument("--tiny", action="store_true", help="--qlora: tiny dims on the CPU (checks the script)")
    ap.add_argument("--warmup", type=_count, default=3, help="untimed steps first")
    ap.add_argument("--steps", type=_count, default=10, help="timed steps, twice (synced, then as train runs)")
    ap.add_argument("--profile-steps", type=_count, default=2, help="steps under torch.profiler (0: none)")
    ap.add_argument("--no-sync-sites", action="store_true", help="skip the sync debug mode step (CUDA)")
    ap.add_argument("--out", help="write the JSON summary here")
    ap.add_argument("--trace", help="write a Chrome trace of the profiled steps here (.json or .json.gz)")
    args = ap.parse_args(argv)
    if args.qlora and args.overrides:
        ap.error(f"--qlora takes no config overrides (got {' '.join(args.overrides)})")
    if not args.qlora and (args.tiny or args.depth != 2 or args.mode != "nf4"):
        ap.error("--tiny, --depth and --mode go with --qlora")
    bad = [o for o in args.overrides if "=" not in o]
    if bad:
        ap.error(f"overrides are key=value: {' '.join(bad)}")
    if args.depth < 1 or args.group_size < 1:
        ap.error("--depth and --group-size must be 1 or more")
    if args.steps < 1:
        ap.error("--steps must be 1 or more")
    for path in (args.out, args.trace):
        if path and not Path(path).absolute().parent.is_dir():
            ap.error(f"{path}: its directory does not exist")
        if path and (why := _unwritable(Path(path))):  # now, not after minutes of measuring
            ap.error(f"{path}: cannot be written ({why})")
    if args.trace and not args.profile_steps:
        ap.error("--trace needs --profile-steps 1 or more")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    result = {"target": "qlora" if args.qlora else "recipe", "argv": list(sys.argv[1:] if argv is None else argv),
              "torch": torch.__version__}

    def save():
        if args.out:
            Path(args.out).write_text(json.dumps(result, indent=1))

    if str(ROOT) not in sys.path:  # profile the dgft next to this script, installed or not
        sys.path.insert(0, str(ROOT))
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from dgft.cli import _known_errors

    t0 = time.time()
    try:
        if args.qlora:
            step = qlora_step(args.depth, args.mode, args.group_size, args.tiny, args.ar_weight)
        else:
            step = recipe_step(args.overrides)
    except (Fail, HydraException, OmegaConfBaseException, *_known_errors()) as err:  # bad override, no device
        why = f" ({str(err.__cause__).splitlines()[0]})" if err.__cause__ and str(err.__cause__) else ""
        print(f"profile_step: error: {str(err).strip()}{why}", file=sys.stderr)
        sys.exit(2)
    cuda = step.device.type == "cuda"
    result["device"] = torch.cuda.get_device_name(step.device) if cuda else f"cpu ({torch.get_num_threads()} threads)"
    result["setup"] = dict(step.info, setup_s=round(time.time() - t0, 1))
    print(f"profile_step: {result['target']} on {result['device']}, torch {torch.__version__}: "
          + ", ".join(f"{k} {v}" for k, v in step.info.items() if k != "overrides")
          + f"; setup {result['setup']['setup_s']} s", flush=True)
    save()
    try:
        print(f"{args.warmup} warm-up steps, then {args.steps} timed steps twice", flush=True)
        for _ in range(args.warmup):
            run_step(step, wait=True)
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        result["timing"] = timing(step, args.steps)
        if cuda:
            result["peak_gib"] = torch.cuda.max_memory_allocated() / 1024**3
        print_timing(result["timing"])
        if cuda:
            print(f"peak memory {result['peak_gib']:.2f} GiB")
        save()
        if args.profile_steps:
            print(f"\nprofiling {args.profile_steps} steps (+1 warm-up) ...", flush=True)
            result["profile"] = prof = profile_steps(step, args.profile_steps, args.trace)
            prof["kernel_share_of_step"] = prof["kernel_ms"] / result["timing"]["step_ms"]
            prof["matmul_tflops_at_step_time"] = prof["matmul_flops"] / result["timing"]["step_ms"] / 1e9
            print_profile(result["profile"], result["timing"]["step_ms"], cuda)
            save()
        if cuda and not args.no_sync_sites:
            result["sync_sites"] = sync_sites(step)
            print_sites(result["sync_sites"])
            save()
    except torch.OutOfMemoryError:
        print(f"profile_step: error: out of {step.device.type} memory ({step.info}); lower the batch size",
              file=sys.stderr)
        save()
        sys.exit(2)
    print(f"\ndone in {time.time() - t0:.0f} s" + (f"; wrote {args.out}" if args.out else "")
          + (f", {args.trace}" if args.trace else ""), flush=True)
    return result


if __name__ == "__main__":
    main()
