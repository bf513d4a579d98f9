"""The training recipe: setup -> loop -> save. `dgft train recipe=sudoku` runs `train(cfg)`.

Each step: draw micro-batches, corrupt their canvases (t ~ U(eps, 1)), optionally a no-grad decoder pass
whose logits self-condition the graded pass (probability p per example), cross-entropy on the scored
positions normalised by their count over the whole accumulation window, AdamW with warmup + cosine.
"""

from __future__ import annotations

import json
import math
import os
import random
import signal
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf
from tqdm.auto import tqdm

from dgft import checkpoint as ckpt
from dgft import noise as N
from dgft.config import validate
from dgft.data import TrainBatches, build_splits, records
from dgft.loss import denoising_loss, encoder_ar_loss
from dgft.model import (attach_lora, build_tiny, count_parameters, denoise, encode, load_pretrained, prompt_logits,
                        torch_dtype)
from dgft.tasks import get_task
from dgft.tasks.sudoku.io import write_puzzles
from dgft.tasks.sudoku.task import MASK


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        from dgft.config import ConfigError

        raise ConfigError("device=cuda: no CUDA device found")
    return torch.device(name)


def lr_lambda(tcfg):
    def f(step: int) -> float:
        if step < tcfg.warmup_steps:
            return (step + 1) / tcfg.warmup_steps
        progress = min(1.0, (step - tcfg.warmup_steps) / max(1, tcfg.max_steps - tcfg.warmup_steps))
        return tcfg.min_lr_ratio + (1 - tcfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return f


def train(cfg, run_dir: str | Path) -> Path:
    # --- setup -------------------------------------------------------------------------------------
    validate(cfg)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    gen = seed_everything(cfg.seed)
    if cfg.trainer.num_threads:
        torch.set_num_threads(cfg.trainer.num_threads)
    device = pick_device(cfg.device)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    task = get_task(cfg.task)
    tokenizer = task.build_tokenizer()
    tokenizer.save_pretrained(str(run_dir / "tokenizer"))

    splits = build_splits(cfg.task, cfg.seed, log=tqdm.write)
    (run_dir / "data").mkdir(exist_ok=True)
    write_puzzles(run_dir / "data" / "heldout.csv", records(splits["heldout"]))
    batches = TrainBatches(splits["train"], task, cfg.task, cfg.trainer.batch_size, cfg.seed)
    eval_batch = _eval_batch(task, splits["heldout"], cfg.trainer.eval_puzzles)

    dtype = torch_dtype(cfg.model.dtype, device)
    if cfg.model.name == "tiny":
        model = build_tiny(cfg.model, task.vocab_size, seed=cfg.seed)
        if cfg.model.structured_init:
            task.init_embeddings(model.get_input_embeddings().weight, model.config.initializer_range, gen)
        if cfg.model.finetune == "lora":
            model.save_pretrained(str(run_dir / "base"))
    else:
        model = load_pretrained(cfg.model.path, dtype=dtype, trust_remote_code=cfg.model.trust_remote_code)
    if cfg.model.finetune == "lora":
        model = attach_lora(model, cfg.model.lora)
    model.to(device)
    if cfg.model.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    trainable, total = count_parameters(model)
    params = [p for p in {id(p): p for p in model.parameters()}.values() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.trainer.lr, weight_decay=cfg.trainer.weight_decay, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg.trainer))

    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(run_dir / "tb"))
    metrics = open(run_dir / "metrics.jsonl", "a")
    _write_run_info(run_dir, cfg, trainable, total, device)
    tqdm.write(f"run dir: {run_dir}\nmodel: {total / 1e6:.2f}M parameters ({trainable / 1e6:.2f}M trained), "
               f"device {device}, dtype {dtype}")

    stop = {"signal": None}
    _install_signal_handlers(stop)

    # --- loop --------------------------------------------------------------------------------------
    model.train()
    t0, tokens_seen, step = time.time(), 0, 0
    bar = tqdm(total=cfg.trainer.max_steps, desc="train", unit="step", dynamic_ncols=True)
    for step in range(1, cfg.trainer.max_steps + 1):
        micro = [_corrupt(next(batches), cfg, gen) for _ in range(cfg.trainer.grad_accum)]
        n_scored = sum(float(m["count"]) for m in micro) or 1.0
        loss_total = 0.0
        for m in micro:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
                loss_sum, extra = _loss(model, m, cfg, gen, device)
            (loss_sum / n_scored + extra).backward()
            loss_total += float(loss_sum)
            tokens_seen += int(m["tokens"])
        grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.trainer.max_grad_norm)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)

        loss = loss_total / n_scored
        elapsed = time.time() - t0
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{tokens_seen / elapsed:,.0f}")
        if step % cfg.trainer.log_every == 0 or step == 1:
            row = {"step": step, "loss": loss, "lr": sched.get_last_lr()[0], "grad_norm": float(grad_norm),
                   "tokens_per_s": tokens_seen / elapsed, "elapsed_s": elapsed}
            metrics.write(json.dumps(row) + "\n")
            metrics.flush()
            for k in ("loss", "lr", "grad_norm", "tokens_per_s"):
                writer.add_scalar(f"train/{k}", row[k], step)
        if cfg.trainer.eval_every and step % cfg.trainer.eval_every == 0:
            row = {"step": step, **quick_eval(model, eval_batch, task, cfg, gen)}
            metrics.write(json.dumps(row) + "\n")
            for k, v in row.items():
                if k != "step":
                    writer.add_scalar(f"heldout/{k}", v, step)
            tqdm.write(f"step {step}: held-out " + ", ".join(f"{k} {v:.3f}" for k, v in row.items() if k != "step"))
            model.train()
        if cfg.trainer.ckpt_every and step % cfg.trainer.ckpt_every == 0 and step < cfg.trainer.max_steps:
            _checkpoint(run_dir, step, model, opt, sched, batches, gen, cfg)
        over_time = cfg.trainer.time_limit_min and elapsed > 60 * cfg.trainer.time_limit_min
        if stop["signal"] or over_time:
            why = f"signal {stop['signal']}" if stop["signal"] else f"time limit {cfg.trainer.time_limit_min} min"
            tqdm.write(f"stopping at step {step} ({why})")
            break
    bar.close()

    # --- save --------------------------------------------------------------------------------------
    _checkpoint(run_dir, step, model, opt, sched, batches, gen, cfg)
    out = run_dir / ("adapter" if cfg.model.finetune == "lora" else "model")
    ckpt.save_weights(model, out)
    if cfg.model.finetune == "full":
        model.generation_config.save_pretrained(str(out))
    writer.close()
    metrics.close()
    summary = {"steps": step, "train_seconds": round(time.time() - t0, 1), "final_loss": loss,
               "stopped_by": stop["signal"] or ("time_limit" if step < cfg.trainer.max_steps else None)}
    (run_dir / "train_summary.json").write_text(json.dumps(summary, indent=1))
    from dgft.plots import plot_loss

    plot_loss(run_dir / "metrics.jsonl", run_dir / "loss.png")
    _link_latest(run_dir)
    tqdm.write(f"done: {step} steps in {summary['train_seconds']} s; weights in {out}")
    if stop["signal"]:
        tqdm.write(f"interrupted: resume with `dgft train resume={run_dir}`")
    return run_dir


# --- pieces of a step -----------------------------------------------------------------------------
def _corrupt(batch: dict, cfg, gen) -> dict:
    """Add noise level t, the corrupted canvas and the counts to a batch."""
    target, scored = batch["target"], batch["scored"]
    t = N.sample_t(target.shape[0], cfg.noise.eps, gen)
    support = batch["choices"] if cfg.noise.support == "answer" else None
    if support is None:
        support = int(cfg.get("_vocab_size", 0)) or int(target.max()) + 1
    noisy, hit = N.corrupt(cfg.noise.kind, target, t, ~batch["fixed"], support, MASK, gen)
    positions = scored if cfg.noise.kind == "uniform" else scored & hit
    tokens = batch["prompt_mask"].sum() + target.numel()
    return {**batch, "t": t, "noisy": noisy, "hit": hit, "count": positions.sum(), "tokens": tokens}


def _loss(model, m: dict, cfg, gen, device):
    """Summed denoising loss of one micro-batch, plus the (already normalised) encoder AR term."""
    ids, mask = m["prompt_ids"].to(device), m["prompt_mask"].to(device)
    noisy = m["noisy"].to(device)
    want_hidden = cfg.noise.encoder_ar_weight > 0
    enc = encode(model, ids, mask, return_hidden=want_hidden)
    cache, hidden = enc if want_hidden else (enc, None)
    sc_logits = sc_mask = None
    if cfg.noise.self_conditioning_p > 0:
        sc_mask = (torch.rand(noisy.shape[0], generator=gen) < cfg.noise.self_conditioning_p).to(device)
        if sc_mask.any():
            with torch.no_grad():
                sc_logits = denoise(model, cache, noisy, mask).detach()
        else:
            sc_mask = None
    logits = denoise(model, cache, noisy, mask, sc_logits=sc_logits, sc_mask=sc_mask)
    loss_sum, _ = denoising_loss(logits, m["target"].to(device), m["scored"].to(device), m["hit"].to(device),
                                 cfg.noise.kind, m["t"].to(device), cfg.noise.loss_weight)
    extra = torch.zeros((), device=device)
    if want_hidden:
        ar_sum, ar_n = encoder_ar_loss(prompt_logits(model, hidden), ids, mask)
        extra = cfg.noise.encoder_ar_weight * ar_sum / ar_n.clamp_min(1)
    return loss_sum, extra


def _eval_batch(task, heldout, count: int) -> list[dict]:
    """A few fixed held-out batches (one per size) for periodic evaluation."""
    from dgft.tasks.sudoku import grid as G

    out = []
    for n in sorted(set(heldout["size"])):
        rows = [r for r in heldout if r["size"] == n][:count]
        if rows:
            p = np.stack([G.from_string(r["puzzle"]) for r in rows])
            s = np.stack([G.from_string(r["solution"]) for r in rows])
            out.append(task.encode(p, s))
    return out


@torch.no_grad()
def quick_eval(model, batches: list[dict], task, cfg, gen) -> dict:
    """Clamped-mode exact and blank-cell accuracy on a few held-out puzzles per size."""
    from dgft.sampling import sample

    model.eval()
    out = {}
    for b in batches:
        n = b["size"]
        res = sample(model, b, task, cfg.sampler, mode="clamped", noise_kind=cfg.noise.kind,
                     support=cfg.noise.support, generator=gen)
        pred = task.decode(res.canvas, n)
        sol = task.decode(b["target"], n)
        blanks = ~b["fixed"].numpy()
        out[f"{n}x{n}_clamped_cell_acc"] = float(((pred == sol) & blanks).sum() / max(blanks.sum(), 1))
        out[f"{n}x{n}_clamped_exact"] = float((pred == sol).all(-1).mean())
    return out


def _checkpoint(run_dir, step, model, opt, sched, batches, gen, cfg):
    state = {"optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "torch_rng": torch.get_rng_state(),
             "gen_rng": gen.get_state()}
    extra = {"step": step, "data": _jsonable(batches.state_dict()), "python_rng": repr(random.getstate()),
             "numpy_rng": _jsonable(np.random.get_state(legacy=False))}
    ckpt.save(run_dir, step, model, state, extra, keep_last=cfg.trainer.keep_last)


def _jsonable(obj):
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def _install_signal_handlers(stop: dict) -> None:
    def handler(signum, frame):
        if stop["signal"]:  # second signal: stop now
            raise KeyboardInterrupt
        stop["signal"] = signal.Signals(signum).name
        tqdm.write(f"{stop['signal']}: finishing this step and writing a checkpoint (again to abort)")
    for s in (signal.SIGINT, signal.SIGTERM):
        try:
            signal.signal(s, handler)
        except ValueError:  # not in the main thread
            pass


def _link_latest(run_dir: Path) -> None:
    """outputs/<name>/latest -> the newest run, so `dgft eval outputs/sudoku/latest` works."""
    link = run_dir.parent / "latest"
    try:
        if link.is_symlink():
            link.unlink()
        if not link.exists():
            link.symlink_to(run_dir.name, target_is_directory=True)
    except OSError:
        pass


def _write_run_info(run_dir: Path, cfg, trainable: int, total: int, device) -> None:
    import transformers

    info = {"recipe": cfg.name, "parameters": total, "trainable_parameters": trainable, "device": str(device),
            "torch": torch.__version__, "transformers": transformers.__version__, "threads": torch.get_num_threads(),
            "layout": {"config.yaml": "resolved config", "tokenizer/": "task tokenizer",
                       "model/ or adapter/": "final weights", "checkpoints/": "resumable checkpoints",
                       "metrics.jsonl": "training and held-out metrics", "tb/": "TensorBoard events",
                       "loss.png": "loss curve", "data/heldout.csv": "held-out puzzles", "eval/": "dgft eval results"}}
    (run_dir / "run.json").write_text(json.dumps(info, indent=1))
