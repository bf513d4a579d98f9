"""The training recipe: setup -> loop -> save. `dgft train recipe=sudoku` runs `train(cfg)`.

Each step: draw micro-batches, corrupt their canvases (t ~ U(eps, 1)), optionally a no-grad decoder pass
whose logits self-condition the graded pass (probability p per example), cross-entropy on the scored
positions normalised by their count over the whole accumulation window, AdamW (or Muon: dgft.optim), warmup + cosine.
With `trainer.time_limit_min` the cosine follows the time used when that is further along than the steps, so
a run ends at the schedule's floor whatever the device's speed. On CUDA a step waits for the device only when
it logs (batches go through pinned memory, losses stay on the device until then). A step's noise and loss are
`dgft.step`'s; the checkpoints a run resumes from, and resuming, are `dgft.resume`'s.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import shutil
import signal
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf
from tqdm.auto import tqdm

from dgft import checkpoint as ckpt
from dgft import resume
from dgft import runs
from dgft import step as step_
from dgft.cache import replace_file
from dgft.config import unread_in_training, validate
from dgft.ema import EMA
from dgft.model import (attach_lora, attention_layout, build_tiny, count_parameters, load_pretrained, load_quantized,
                        quantize_tiny_, require_path, torch_dtype, unwrap)
from dgft.optim import make_optimizer
from dgft.runs import say
from dgft.tasks import get_task


class OutOfMemory(RuntimeError):
    """The device ran out of memory; the message says which settings reduce memory."""


_KILL_AT_STEP = int(os.environ.get("DGFT_TEST_KILL_AT_STEP", "0") or 0)
_TERM_AT_STEP = int(os.environ.get("DGFT_TEST_TERM_AT_STEP", "0") or 0)


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def pick_device(name: str) -> torch.device:
    """`device=` (auto, cpu, cuda or cuda:N) as a torch device; ConfigError for a name torch would take wrongly."""
    from dgft.config import ConfigError

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    kind, _, index = str(name).partition(":")
    if kind not in ("cpu", "cuda") or (index and (kind == "cpu" or not index.isdigit())):
        raise ConfigError(f"device={name!r}: expected auto, cpu, cuda or cuda:N")
    if kind == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={name}: no CUDA device found")
    if index and int(index) >= torch.cuda.device_count():
        raise ConfigError(f"device={name}: there are {torch.cuda.device_count()} CUDA devices")
    if kind == "cuda":  # fp32 matmuls (evaluation, the parts autocast keeps in fp32) on tensor cores
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    return torch.device(name)


def lr_lambda(tcfg, elapsed_s=lambda: 0.0):
    """Step -> learning-rate factor: linear warmup, then cosine from 1 to min_lr_ratio.

    Progress is the share of the steps after warmup done or, with a time limit, of the time after warmup used
    (`elapsed_s()`, seconds), whichever is larger: a time-limited run reaches the floor when its time is up. The
    warmup's time is estimated as its share of the steps so far at an even pace, so the time-based progress starts
    at 0 when warmup ends (it used to start at warmup's share of the limit, a jump in the rate) and needs no state
    that a resumed run would lose.
    """
    def f(step: int) -> float:
        if step < tcfg.warmup_steps:
            return (step + 1) / tcfg.warmup_steps
        progress = (step - tcfg.warmup_steps) / max(1, tcfg.max_steps - tcfg.warmup_steps)
        if tcfg.time_limit_min:
            used = elapsed_s()
            warmup = used * tcfg.warmup_steps / max(step, 1)
            left = 60 * tcfg.time_limit_min - warmup
            progress = max(progress, (used - warmup) / left if left > 0 else 1.0)
        progress = min(1.0, progress)
        return tcfg.min_lr_ratio + (1 - tcfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return f


def train(cfg, run_dir: str | Path, overrides: Sequence[str] = ()) -> Path | None:
    """Train, writing everything to run_dir -> run_dir, or None when a resume found nothing left to train (the run
    is left as it was). `overrides` are the command line's (with resume=, the keys it may change and those it must
    leave as the run has them)."""
    run_dir = Path(run_dir)
    if cfg.resume:
        run_dir = Path(runs.run_dir_for(cfg.name, cfg.resume))  # the run being continued, whatever hydra.run.dir says
        if why := runs.cannot_make(run_dir):  # read-only: said now, not as a traceback from its first write
            raise runs.RunError(f"resume={cfg.resume}: {why}; a resumed run writes its checkpoints and weights there")
    else:
        validate(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    before = {p.name for p in run_dir.iterdir()}
    handlers = _stop_during_setup()  # until the first step, where a signal finishes the step and checkpoints instead
    try:
        with runs.writing(run_dir), runs.logged_to(run_dir / "train.log"):  # one `dgft train` at a time writes a run
            return _train(cfg, run_dir, overrides)
    except StoppedAgain as err:
        err.run_dir = run_dir  # the run the message names, whatever hydra.run.dir said
        raise
    except Exception as err:
        if not cfg.resume and not isinstance(err, runs.RunInUse):
            _remove_unstarted(run_dir, before)
        raise
    finally:
        for signum, handler in handlers.items():  # the caller's, as they were (None: not set from Python)
            if handler is not None:
                signal.signal(signum, handler)


def _remove_unstarted(run_dir: Path, before: set[str]) -> None:
    """A new run refused before its first step (a missing model path, a bad LoRA target) leaves nothing behind:
    what it wrote is removed, and only that. One that trained (a checkpoint, a metrics row) is kept."""
    metrics = run_dir / "metrics.jsonl"
    if (run_dir / "checkpoints").exists() or (metrics.exists() and metrics.stat().st_size):
        return
    for path in run_dir.iterdir():
        if path.name not in before:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()


def _train(cfg, run_dir: Path, overrides: Sequence[str]) -> Path | None:
    # --- setup -------------------------------------------------------------------------------------
    resume_from = None
    if cfg.resume:
        cfg, resume_from = resume.resume_target(cfg, run_dir, overrides)
        validate(cfg)  # before the nothing-to-train check: trainer.max_steps=-5 is an error, not a finished run
        if resume.finished(run_dir, resume_from, cfg):
            if not (run_dir / "loss.png").exists():  # killed after its summary, before the picture and the link
                _draw_loss(run_dir)
                _link_latest(run_dir)
            return None
    else:
        runs.refuse_used(run_dir)
    gen = seed_everything(cfg.seed)
    if cfg.trainer.num_threads:
        torch.set_num_threads(cfg.trainer.num_threads)
    device = pick_device(cfg.device)
    if resume_from is None:  # a resume records its changes (more steps) when it trains, not if setup fails
        replace_file(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    if cfg.model.name != "tiny":
        require_path(cfg.model.path)  # before the task reads a tokenizer from it
    task = get_task(cfg.task)
    tokenizer = task.build_tokenizer()
    if cfg.noise.kind == "mask" and tokenizer.mask_token_id is None:  # before the model loads, not at the first step
        from dgft.config import ConfigError

        raise ConfigError(f"noise.kind=mask: the task's tokenizer ({cfg.task.get('tokenizer') or 'built by the task'}) "
                          "has no mask token for absorbing noise to write; use noise=uniform or a tokenizer with one")
    _save_or_match(run_dir / "tokenizer", lambda d: tokenizer.save_pretrained(str(d)), "tokenizer",
                   resumed=resume_from is not None)

    dtype = torch_dtype(cfg.model.dtype, device)
    model = load_base(cfg, device)  # pretrained weights first: a missing checkpoint fails in seconds
    if model is not None:
        check_vocabulary(task, cfg, unwrap(model).config.get_text_config().vocab_size)

    splits = task.build_splits(cfg.seed, log=say)
    _save_or_match(run_dir / "data", lambda d: task.write_heldout(splits["heldout"], d), "held-out split",
                   resumed=resume_from is not None)
    batches = task.train_batches(splits["train"], cfg.trainer.batch_size, cfg.seed)
    eval_batch = task.eval_batches(splits["heldout"], cfg.trainer.eval_puzzles)
    checked = sum(len(b["target"]) for b in eval_batch) if cfg.trainer.eval_every else None
    if checked is not None and checked < cfg.trainer.eval_puzzles * max(len(cfg.task.get("sizes") or [1]), 1):
        say(f"periodic checks: {checked} held-out examples in all, fewer than trainer.eval_puzzles="
            f"{cfg.trainer.eval_puzzles}" + (" per size" if cfg.task.name == "sudoku" else "") + " (all there are)")

    model = trainable_model(model, cfg, task, device, gen, base_dir=run_dir / "base")
    vocab_size = unwrap(model).config.get_text_config().vocab_size
    trainable, total = count_parameters(model)
    params = [p for p in {id(p): p for p in model.parameters()}.values() if p.requires_grad]
    opt = make_optimizer(model.named_parameters(), cfg.trainer, device)
    ema = EMA(params, cfg.trainer.ema_decay) if cfg.trainer.ema_decay else None
    averaged = ema.applied if ema else contextlib.nullcontext  # the weights evaluated and saved
    clock = {"start": time.time(), "before": 0.0}  # training seconds: this session's, plus those before a resume
    elapsed_s = lambda: clock["before"] + time.time() - clock["start"]  # noqa: E731
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg.trainer, elapsed_s))
    start_step = 0
    if resume_from is not None:
        start_step, clock["before"] = resume.restore(resume_from, model, opt, sched, batches, gen, cfg, ema)
        # the next step's rate by this schedule: with trainer.max_steps (or time_limit_min) extended, the checkpoint's
        # is the old schedule's (a run at its floor took one more step there, then jumped); with nothing extended and
        # no time limit, the checkpoint's float (a time-limited rate follows the clock)
        for group, base, rate in zip(opt.param_groups, sched.base_lrs, sched.lr_lambdas):
            group["lr"] = base * rate(sched.last_epoch)  # as sched.step() sets it
        sched._last_lr = [group["lr"] for group in opt.param_groups]  # what get_last_lr() reads
        resume.truncate_metrics(run_dir / "metrics.jsonl", start_step)
        say(f"resumed from {resume_from} (step {start_step})")
        before = runs.last_session(run_dir).get("threads")
        if before and before != torch.get_num_threads():
            say(f"note: {torch.get_num_threads()} threads, where the session before ran on {before}: sums round "
                "otherwise, so the run will not be bitwise the one an uninterrupted session makes")

    from torch.utils.tensorboard import SummaryWriter

    # a resumed run's events past its checkpoint are dropped, as metrics.jsonl's rows are
    writer = SummaryWriter(str(run_dir / "tb"), purge_step=start_step + 1 if start_step else None)
    metrics = open(run_dir / "metrics.jsonl", "a")
    _write_run_info(run_dir, cfg, trainable, total, device, start_step, dtype)
    say(f"run dir: {run_dir}\nmodel: {total / 1e6:.2f}M parameters ({trainable / 1e6:.2f}M trained), "
        f"device {device}, dtype {dtype}")
    if cfg.trainer.warmup_steps >= cfg.trainer.max_steps:
        say(f"note: trainer.warmup_steps={cfg.trainer.warmup_steps} >= trainer.max_steps={cfg.trainer.max_steps}: "
            "the learning rate never leaves its warmup (a smoke test; for a model, raise max_steps)")
    for line in unread_in_training(cfg):
        say(f"note: {line}")

    stop = {"signal": None}
    _install_signal_handlers(stop)
    over_time = lambda: bool(cfg.trainer.time_limit_min) and elapsed_s() > 60 * cfg.trainer.time_limit_min  # noqa: E731

    # --- loop --------------------------------------------------------------------------------------
    model.train()
    t0 = time.time()
    clock["start"] = t0
    # tokens/s over each logging window, without the periodic evaluation's and the checkpoints' time
    window = {"start": time.perf_counter(), "tokens": 0, "paused": 0.0}
    eval_gen = torch.Generator().manual_seed(cfg.seed)  # the checks never draw from training's generator
    bar = tqdm(total=cfg.trainer.max_steps, initial=start_step, desc="train", unit="step", dynamic_ncols=True)
    step = saved_step = start_step  # saved_step: the newest checkpoint's step
    last = start_step if over_time() else cfg.trainer.max_steps  # a resumed run whose time is up trains no step
    if last > start_step and resume_from is not None:  # its final weights are stale until it ends: marked so
        (run_dir / runs.RESUMING).write_text(f"{start_step}\n")
        (run_dir / "train_summary.json").unlink(missing_ok=True)
        replace_file(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    for step in range(start_step + 1, last + 1):
        micro = [step_.corrupt_batch(next(batches), cfg, gen, vocab_size, task) for _ in range(cfg.trainer.grad_accum)]
        n_scored = sum(float(m["count"]) for m in micro) or 1.0
        loss_total = torch.zeros((), dtype=torch.float64, device=device)  # read back only when logged
        ar_total = torch.zeros((), dtype=torch.float64, device=device)
        for m in micro:
            try:
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
                    loss_sum, extra = step_.batch_loss(model, m, cfg, gen, device, task)
                # the denoising sum over the window's scored tokens; the encoder's AR term (a per-micro-batch
                # mean) averaged over the window, so grad_accum does not multiply its weight
                (loss_sum / n_scored + extra / len(micro)).backward()
            except torch.OutOfMemoryError as err:
                raise OutOfMemory(
                    f"out of {device.type} memory at step {step} (batch {cfg.trainer.batch_size}). Lower "
                    f"trainer.batch_size (and raise trainer.grad_accum to keep the effective batch), set "
                    f"model.gradient_checkpointing=true, noise.self_conditioning_p=0 (a model from scratch also "
                    f"sampler.self_conditioning=false sampler.passes=1), model.finetune=lora, or "
                    f"model.quantize=nf4.") from err
            loss_total += loss_sum.detach()
            ar_total += extra.detach() / len(micro)
            window["tokens"] += int(m["tokens"])
        grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.trainer.max_grad_norm)
        lr_used = sched.get_last_lr()  # the rates this step took (after sched.step() they are the next one's)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if ema:
            ema.update()

        loss = loss_total / n_scored
        if step == _KILL_AT_STEP:  # fault injection for the test suite: die as a SIGKILL would
            os.kill(os.getpid(), signal.SIGKILL)
        if step == _TERM_AT_STEP:  # and a SIGTERM that arrives during this step
            os.kill(os.getpid(), signal.SIGTERM)
        bar.update(1)
        stopping = (stop["signal"] or over_time()) and step < last  # a signal during the last step stops nothing
        final = step == last or stopping  # the last step is always logged, and checked unless interrupted
        if step % cfg.trainer.log_every == 0 or step == 1 or final:
            loss = float(loss)
            now = time.perf_counter()
            tok_s = window["tokens"] / max(now - window["start"] - window["paused"], 1e-9)
            window.update(start=now, tokens=0, paused=0.0)
            bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{tok_s:,.0f}")
            row = {"step": step, "loss": loss, "lr": lr_used[0], "grad_norm": float(grad_norm),
                   "tokens_per_s": tok_s, "elapsed_s": elapsed_s()}
            if cfg.trainer.optimizer == "muon":  # the matrices' rate (trainer.muon_lr), the last group's
                row["muon_lr"] = lr_used[-1]
            if cfg.noise.encoder_ar_weight > 0:  # the weighted AR term, which `loss` (denoising) leaves out
                row["encoder_ar_loss"] = float(ar_total)
            metrics.write(json.dumps(row) + "\n")
            metrics.flush()
            for k in ("loss", "lr", "muon_lr", "grad_norm", "tokens_per_s", "encoder_ar_loss"):
                if k in row:
                    writer.add_scalar(f"train/{k}", row[k], step)
        paused = time.perf_counter()
        interrupted = stopping and stop["signal"]  # the final check is skipped only for a signal before the end
        if cfg.trainer.eval_every and (step % cfg.trainer.eval_every == 0 or (final and not interrupted)):
            with averaged():
                row = {"step": step, **task.quick_eval(model, eval_batch, cfg, eval_gen.manual_seed(cfg.seed))}
            metrics.write(json.dumps(row) + "\n")
            metrics.flush()  # before the checkpoint of this step: a resumed run does not log it again
            for k, v in row.items():
                if k != "step":
                    writer.add_scalar(f"heldout/{k}", v, step)
            say(f"step {step}: held-out " + ", ".join(f"{k} {v:.3f}" for k, v in row.items() if k != "step"))
            model.train()
        if cfg.trainer.ckpt_every and step % cfg.trainer.ckpt_every == 0 and step < cfg.trainer.max_steps:
            resume.save_checkpoint(run_dir, step, model, opt, sched, batches, gen, cfg, elapsed_s(), ema)
            saved_step = step
        window["paused"] += time.perf_counter() - paused
        if stopping:
            why = f"signal {stop['signal']}" if stop["signal"] else f"time limit {cfg.trainer.time_limit_min} min"
            say(f"stopping at step {step} ({why})")
            if not stop["signal"] and step <= cfg.trainer.warmup_steps:  # the cosine never began
                say(f"note: the time limit came during warmup (step {step} of trainer.warmup_steps="
                    f"{cfg.trainer.warmup_steps}): the run ends at its warmup rate, not annealed; give a longer "
                    "trainer.time_limit_min or fewer trainer.warmup_steps")
            break
    bar.close()

    # --- save --------------------------------------------------------------------------------------
    loss = float(loss) if step > start_step else _logged_loss(run_dir / "metrics.jsonl", step)
    if step != saved_step or not (run_dir / "checkpoints" / f"step-{step:06d}").is_dir():
        resume.save_checkpoint(run_dir, step, model, opt, sched, batches, gen, cfg, elapsed_s(), ema)
    out = run_dir / ("adapter" if cfg.model.finetune == "lora" else "model")
    try:
        with averaged():
            ckpt.save_weights(model, out)
        if cfg.model.finetune == "full":
            model.generation_config.save_pretrained(str(out))
    except Exception as err:  # a full disk: OSError, or safetensors' own error
        mend = "once there is space" if isinstance(err, OSError) else "once that is mended"
        raise ckpt.CheckpointError(
            f"could not save the final weights to {out}: {getattr(err, 'strerror', None) or err}. Checkpoint "
            f"step-{step:06d} is intact: {mend}, `dgft train resume={run_dir}` saves them") from err
    writer.close()
    metrics.close()
    early = step < cfg.trainer.max_steps  # a signal during the last step or the final save stops nothing
    summary = {"steps": step, "train_seconds": round(elapsed_s(), 1),  # all sessions of the run
               "session_seconds": round(time.time() - t0, 1), "final_loss": loss,
               "stopped_by": (stop["signal"] or "time_limit") if early else None,
               "weights": ckpt.file_records(out, ckpt.model_files(out)),  # both checked when the weights load
               **({"base": ckpt.file_records(run_dir / "base", ckpt.model_files(run_dir / "base"))}
                  if (run_dir / "base").is_dir() else {}),  # a tiny LoRA run's base, checked when it loads
               "settings_sha256": runs.trained_settings_digest(run_dir),
               "heldout": runs.heldout_records(run_dir / "data")}
    if isinstance(getattr(batches, "counts", None), dict):  # infill: spans drawn, and those redrawn (all sessions)
        summary["data_counts"] = dict(batches.counts)
        say("training spans: " + ", ".join(f"{k} {v}" for k, v in batches.counts.items()))
    try:
        replace_file(run_dir / "train_summary.json", json.dumps(summary, indent=1))
    except OSError as err:
        raise ckpt.CheckpointError(
            f"could not write {run_dir / 'train_summary.json'}: {err.strerror or err}. The final weights and "
            f"checkpoint step-{step:06d} are saved: once there is space, `dgft train resume={run_dir}` ends the "
            "run") from err
    (run_dir / runs.RESUMING).unlink(missing_ok=True)
    _draw_loss(run_dir)
    _link_latest(run_dir)
    say(f"done: {step} steps in {summary['train_seconds']} s; weights in {out}")
    if stop["signal"] and early:
        say(f"interrupted: resume with `dgft train resume={run_dir}`")
    return run_dir


def _draw_loss(run_dir: Path) -> None:
    """RUN/loss.png, whole or not at all (a resume that finds none draws it); a picture that cannot be written (a full
    disk) is said, and the training, whose weights and summary are saved, still ends as it should."""
    from dgft.plots import plot_loss

    try:
        replace_file(run_dir / "loss.png", lambda tmp: plot_loss(run_dir / "metrics.jsonl", tmp))
    except OSError as err:
        say(f"warning: could not draw {run_dir / 'loss.png'} ({err.strerror or err}); the training is saved, and "
            f"`dgft train resume={run_dir}` draws it once there is space")


def _logged_loss(path: Path, step: int) -> float | None:
    """The training loss metrics.jsonl logged at `step` (a resume that had no step left to train), else None."""
    with contextlib.suppress(OSError):
        for line in reversed(path.read_text().splitlines()):
            with contextlib.suppress(ValueError):
                row = json.loads(line)
                if isinstance(row, dict) and row.get("step") == step and "loss" in row:
                    return float(row["loss"])
    return None


# --- the model ----------------------------------------------------------------------------------
def load_base(cfg, device):
    """A pretrained model's weights (4-bit with `model.quantize=nf4`, streamed onto the device); None for tiny."""
    if cfg.model.name == "tiny":
        return None
    if cfg.model.quantize == "nf4":  # streamed shard by shard into 4-bit weights on the device
        return load_quantized(cfg.model.path, device, cfg.model.quant_group_size)
    dtype = torch_dtype(cfg.model.dtype, device)
    return load_pretrained(cfg.model.path, dtype=dtype, trust_remote_code=cfg.model.trust_remote_code)


def trainable_model(model, cfg, task, device, gen, base_dir=None):
    """The model as it trains: the tiny one built (None in), LoRA attached, placed, checkpointing on.

    A tiny LoRA run's initial weights are saved to `base_dir` (the adapter's base) when given.
    """
    if cfg.model.name == "tiny":
        model = build_tiny(cfg.model, task.vocab_size, seed=cfg.seed)
        if cfg.model.structured_init:
            task.init_embeddings(model.get_input_embeddings().weight, model.config.initializer_range, gen)
        if cfg.model.get("structured_attention", False) and hasattr(task, "init_attention"):
            task.init_attention(attention_layout(model), model.get_input_embeddings().weight, gen)
        if cfg.model.finetune == "lora" and base_dir is not None:
            keep_base(model, Path(base_dir))
        if cfg.model.quantize == "nf4":
            model = quantize_tiny_(model, device, cfg.model.quant_group_size)
    if cfg.model.finetune == "lora":
        model = attach_lora(model, cfg.model.lora)
    if cfg.model.quantize == "none":  # a 4-bit model is placed by its loader (a vision tower stays on the host)
        model.to(device)
    if cfg.model.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


def keep_base(model, base_dir: Path) -> None:
    """A tiny LoRA run's base (its initial weights, frozen): written once, atomically, readable as the umask allows.

    A resumed run reads it back into `model`, so the adapter goes on training on the base saved beside it, the one
    eval and export read, even if the seed rebuilt other weights here (another machine, another torch)."""
    from transformers import DiffusionGemmaForBlockDiffusion

    if base_dir.exists():
        try:
            saved = DiffusionGemmaForBlockDiffusion.from_pretrained(str(base_dir), use_safetensors=True)
            model.load_state_dict(saved.state_dict())
        except Exception as err:  # noqa: BLE001 (a torn or foreign file: safetensors, transformers, torch errors)
            raise runs.RunError(f"{base_dir}: the run's LoRA base cannot be read back ({type(err).__name__}: "
                                f"{str(err).splitlines()[0] if str(err) else ''})") from err
        return
    tmp = base_dir.with_name(f".tmp-{base_dir.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp))
    ckpt.readable_as_umask_allows(tmp)
    tmp.rename(base_dir)


def check_vocabulary(task, cfg, model_vocab: int) -> None:
    """A pretrained model reads the task's token ids. A vocabulary the task builds (Sudoku's cell or digit tokens,
    infill's BPE) is the right one only for a model trained on it (a dgft export of such a run): another size is
    refused. A pretrained tokenizer (task.tokenizer) is the model's own, and its size may differ (tokenizers often
    count a few added tokens that the embeddings leave out or pad past): only ids past the embeddings that text or
    an answer can hold are refused (`check_pretrained_tokenizer`)."""
    from dgft.config import ConfigError

    if cfg.task.get("tokenizer"):
        check_pretrained_tokenizer(task, model_vocab, mask_noise=cfg.noise.kind == "mask")
        return
    if task.vocab_size == model_vocab:
        return
    what = f"task.tokens={cfg.task.tokens}" if "tokens" in cfg.task else "the task's BPE"
    hint = ("a pretrained DiffusionGemma reads text through its own tokenizer: recipe=sudoku_lora "
            "model.path=MODEL_DIR (task.tokens=text)" if cfg.task.name == "sudoku"
            else "set task.tokenizer to the model's directory")
    raise ConfigError(f"model.path={cfg.model.path}: the model's vocabulary has {model_vocab} tokens and the task's "
                      f"({what}, built by dgft) {task.vocab_size}, so the model would read other tokens than it "
                      f"learnt; {hint}")


def check_pretrained_tokenizer(task, model_vocab: int, mask_noise: bool = False) -> None:
    """A pretrained tokenizer may count more tokens than the model has embeddings (added special tokens past them,
    as some releases have): harmless while no id past them reaches the model: read from text, an answer's token,
    the prompt's frame (the chat template's tokens, FIM markers), or the mask token of absorbing noise. A
    ConfigError naming the first such token otherwise (a tokenizer that is not the model's, or tokens added to it)."""
    from dgft.config import ConfigError

    tok = getattr(task, "tokenizer", None)
    if tok is None or len(tok) <= model_vocab:
        return
    special = set(tok.all_special_ids) | {i for i, added in tok.added_tokens_decoder.items() if added.special}
    used = {getattr(task, a, None) for a in ("pad", "end", "pad_id", "end_id")}  # the answer's own
    used |= set((getattr(task, "markers", None) or {}).values())  # FIM markers
    used |= {i for part in getattr(task, "frame", ()) for i in part}  # the prompt's frame around the code
    if mask_noise:
        used.add(tok.mask_token_id)
    if getattr(tok, "chat_template", None):  # the template's own tokens frame every prompt
        with contextlib.suppress(Exception):  # a template that does not render is the task's to name
            text = tok.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False,
                                           add_generation_prompt=True)
            used |= set(tok(text, add_special_tokens=False)["input_ids"])
    past = [i for i in range(model_vocab, len(tok)) if i not in special or i in used]
    if past:
        first = tok.convert_ids_to_tokens(past[0])
        raise ConfigError(f"task.tokenizer: {len(past)} of its tokens that reach the model (text, answers, the "
                          f"prompt's frame) are past the model's {model_vocab} embeddings (model.path), the first "
                          f"{first!r} (id {past[0]}): is it the model's own tokenizer?")


class Interrupted(runs.RunError):
    """A signal before the first step: nothing was trained, and a new run's directory is left as it was. `signum`:
    the signal's number (`dgft train` exits with 128 + it, as after a signal during training)."""

    def __init__(self, message: str, signum: int = 0):
        super().__init__(message)
        self.signum = signum


def _stop_during_setup() -> dict:
    """SIGINT or SIGTERM while the data are generated or the model loads raises Interrupted, so the run's lock is
    released, a new run's files are removed and the data workers stop (SIGTERM used to end the process there and
    then, leaving them holding the lock) -> the handlers it replaced, by signal."""
    def handler(signum, frame):
        raise Interrupted(f"{signal.Signals(signum).name} before the first step: nothing was trained", signum)
    return _on_stop_signals(handler)


def _on_stop_signals(handler) -> dict:
    """`handler` for SIGINT and SIGTERM -> the handlers it replaced, by signal (none outside the main thread)."""
    replaced = {}
    for s in (signal.SIGINT, signal.SIGTERM):
        try:
            replaced[s] = signal.signal(s, handler)
        except ValueError:  # not in the main thread
            pass
    return replaced


class StoppedAgain(KeyboardInterrupt):
    """A second stop signal during training: stop now, without a checkpoint; `signum` is the second signal's."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _install_signal_handlers(stop: dict) -> None:
    def handler(signum, frame):
        if stop["signal"]:  # second signal: stop now
            raise StoppedAgain(signum)
        stop["signal"] = signal.Signals(signum).name
        tqdm.write(f"{stop['signal']}: finishing this step and writing a checkpoint (again to abort)")
    _on_stop_signals(handler)


def _link_latest(run_dir: Path) -> None:
    """outputs/<name>/latest -> the run whose training session ended last, so `dgft eval outputs/sudoku/latest`
    works; to the run itself when it was reached through the link (`resume=outputs/sudoku/latest`), never to the
    link. With `hydra.run.dir` elsewhere, a `latest` beside the run that dgft did not make (a file, a folder, a link
    out of the folder or to something not a run) is left as it is."""
    run_dir = run_dir.resolve()
    link = run_dir.parent / "latest"
    try:
        if link.is_symlink():
            target = os.readlink(link)
            sibling = run_dir.parent / target
            if os.sep in target or (sibling.exists() and not (sibling / "run.json").is_file()):
                return  # not a link dgft wrote: those name a run beside it
            link.unlink()
        if not link.exists():
            link.symlink_to(run_dir.name, target_is_directory=True)
    except OSError:
        pass


def _save_or_match(target: Path, write, what: str, resumed: bool) -> None:
    """`write(target)` for a new run. A resume writes into a temporary folder instead and refuses (ConfigError) when
    what it made differs from the run's own: its data (an infill corpus, task.sources) changed since it started,
    and its weights would be paired with another tokenizer, or its held-out split change mid-run. Compared as
    content: a tokenizer by its vocabulary, a gzip file decompressed (its header holds a time)."""
    import gzip
    import tempfile

    if not resumed or not target.is_dir():
        target.mkdir(exist_ok=True)
        write(target)
        return
    made = Path(tempfile.mkdtemp(prefix=".resume-check-", dir=target.parent))
    try:
        write(made)
        for path in sorted(made.iterdir()):
            kept = target / path.name
            if not kept.is_file():
                shutil.copy2(path, kept)  # a file an older run lacks: added
                continue
            if path.name == "tokenizer.json":
                from tokenizers import Tokenizer

                same = Tokenizer.from_file(str(path)).get_vocab() == Tokenizer.from_file(str(kept)).get_vocab()
            elif path.suffix == ".gz":
                same = gzip.decompress(path.read_bytes()) == gzip.decompress(kept.read_bytes())
            else:
                same = path.suffix == ".json" or path.read_bytes() == kept.read_bytes()  # configs: by the vocabulary
            if not same:
                from dgft.config import ConfigError

                raise ConfigError(f"resume: the {what} made now differs from the run's own ({kept}): that file "
                                  "was edited, or the data it comes from (task.sources, or dgft's generator) changed "
                                  "since the run started; resume with both as they were, or train a new run")
    finally:
        shutil.rmtree(made, ignore_errors=True)


def _write_run_info(run_dir: Path, cfg, trainable: int, total: int, device, start_step: int = 0,
                    dtype: torch.dtype = torch.float32) -> None:
    """RUN/run.json: what the run is and what made it. Its top level is the latest session's; `sessions` keeps one
    record per `dgft train` that wrote the run (a resume adds one), each with the step it started from."""
    path = run_dir / "run.json"
    sessions = []
    if start_step and path.exists():
        try:
            sessions = json.loads(path.read_text()).get("sessions", [])
            if not isinstance(sessions, list):
                raise TypeError(f"`sessions` is a {type(sessions).__name__}")
        except (ValueError, OSError, TypeError, AttributeError) as err:  # edited or torn: kept aside, not lost
            kept = path.with_name(f"run.json.unreadable-{time.strftime('%Y%m%d-%H%M%S')}")
            path.replace(kept)
            say(f"{path}: not a record dgft can extend ({type(err).__name__}: {err}); kept as {kept.name}, and a "
                "new record starts with this session")
            sessions = []
    session = {**runs.environment(device), "device": str(device), "dtype": str(dtype).removeprefix("torch."),
               "threads": torch.get_num_threads(), "start_step": start_step}
    info = {"recipe": cfg.name, "parameters": total, "trainable_parameters": trainable, **session,
            "sessions": [*sessions, session],
            "layout": {"config.yaml": "resolved config", ".hydra/": "Hydra's record of each command (overrides)",
                       "tokenizer/": "task tokenizer", "model/ or adapter/": "final weights",
                       "base/": "a LoRA run's tiny base weights", "checkpoints/": "resumable checkpoints",
                       "metrics.jsonl": "training and held-out metrics", "tb/": "TensorBoard events",
                       "loss.png": "loss curve", "train.log": "what training said",
                       "train_summary.json": "steps, seconds and final loss (written last); infill: spans drawn and redrawn",
                       "data/": "the held-out split (Sudoku: heldout.csv; infill: heldout.jsonl.gz)",
                       "eval/": "dgft eval results", "export/": "dgft export's standalone model"}}
    replace_file(run_dir / "run.json", json.dumps(info, indent=1))
