"""The training recipe: setup -> loop -> save. `dgft train recipe=sudoku` runs `train(cfg)`.

Each step: draw micro-batches, corrupt their canvases (t ~ U(eps, 1)), optionally a no-grad decoder pass
whose logits self-condition the graded pass (probability p per example), cross-entropy on the scored
positions normalised by their count over the whole accumulation window, AdamW (or Muon: dgft.optim), warmup + cosine.
With `trainer.time_limit_min` the cosine follows the time used when that is further along than the steps, so
a run ends at the schedule's floor whatever the device's speed. On CUDA a step waits for the device only when
it logs (batches go through pinned memory, losses stay on the device until then).
"""

from __future__ import annotations

import contextlib
import json
import logging
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
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from dgft import checkpoint as ckpt
from dgft import noise as N
from dgft import runs
from dgft.cache import replace_file
from dgft.config import validate
from dgft.ema import EMA
from dgft.optim import make_optimizer
from dgft.loss import denoising_loss, encoder_ar_loss, loss_count
from dgft.model import (attach_lora, attention_layout, build_tiny, count_parameters, denoise, encode, forbid_answers,
                        load_pretrained, load_quantized, prompt_logits, quantize_tiny_, require_path, torch_dtype,
                        unwrap)
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
    else:
        validate(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    before = {p.name for p in run_dir.iterdir()}
    handlers = _stop_during_setup()  # until the first step, where a signal finishes the step and checkpoints instead
    try:
        with runs.writing(run_dir), _logged_to(run_dir / "train.log"):  # one `dgft train` at a time writes a run
            return _train(cfg, run_dir, overrides)
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


_LOG = logging.getLogger("dgft.train.run")  # the run's own record, RUN/train.log (the console gets tqdm.write)
_LOG.propagate = False


def say(message: str) -> None:
    """A line for the console (above the progress bar) and for the run's train.log."""
    tqdm.write(message)
    _LOG.info(message)


@contextlib.contextmanager
def _logged_to(path: Path):
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("[%(asctime)s] %(message)s"))
    _LOG.addHandler(handler)
    _LOG.setLevel(logging.INFO)
    try:
        yield
    finally:
        _LOG.removeHandler(handler)
        handler.close()


def _train(cfg, run_dir: Path, overrides: Sequence[str]) -> Path | None:
    # --- setup -------------------------------------------------------------------------------------
    resume_from = None
    if cfg.resume:
        cfg, resume_from = _resume_target(cfg, run_dir, overrides)
        validate(cfg)  # before the nothing-to-train check: trainer.max_steps=-5 is an error, not a finished run
        if _finished(run_dir, resume_from, cfg):
            return None
    else:
        runs.refuse_used(run_dir)
    gen = seed_everything(cfg.seed)
    if cfg.trainer.num_threads:
        torch.set_num_threads(cfg.trainer.num_threads)
    device = pick_device(cfg.device)
    if resume_from is None:  # a resume records its changes (more steps) when it trains, not if setup fails
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    if cfg.model.name != "tiny":
        require_path(cfg.model.path)  # before the task reads a tokenizer from it
    task = get_task(cfg.task)
    tokenizer = task.build_tokenizer()
    if cfg.noise.kind == "mask" and tokenizer.mask_token_id is None:  # before the model loads, not at the first step
        from dgft.config import ConfigError

        raise ConfigError(f"noise.kind=mask: the task's tokenizer ({cfg.task.get('tokenizer') or 'built by the task'}) "
                          "has no mask token for absorbing noise to write; use noise=uniform or a tokenizer with one")
    tokenizer.save_pretrained(str(run_dir / "tokenizer"))

    dtype = torch_dtype(cfg.model.dtype, device)
    model = load_base(cfg, device)  # pretrained weights first: a missing checkpoint fails in seconds
    if model is not None:
        check_vocabulary(task, cfg, unwrap(model).config.get_text_config().vocab_size)

    splits = task.build_splits(cfg.seed, log=say)
    (run_dir / "data").mkdir(exist_ok=True)
    task.write_heldout(splits["heldout"], run_dir / "data")
    batches = task.train_batches(splits["train"], cfg.trainer.batch_size, cfg.seed)
    eval_batch = task.eval_batches(splits["heldout"], cfg.trainer.eval_puzzles)

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
        start_step, clock["before"] = _restore(resume_from, model, opt, sched, batches, gen, cfg, ema)
        _truncate_metrics(run_dir / "metrics.jsonl", start_step)
        say(f"resumed from {resume_from} (step {start_step})")
        before = _last_session(run_dir).get("threads")
        if before and before != torch.get_num_threads():
            say(f"note: {torch.get_num_threads()} threads, where the session before ran on {before}: sums round "
                "otherwise, so the run will not be bitwise the one an uninterrupted session makes")

    from torch.utils.tensorboard import SummaryWriter

    # a resumed run's events past its checkpoint are dropped, as metrics.jsonl's rows are
    writer = SummaryWriter(str(run_dir / "tb"), purge_step=start_step + 1 if start_step else None)
    metrics = open(run_dir / "metrics.jsonl", "a")
    _write_run_info(run_dir, cfg, trainable, total, device, start_step)
    say(f"run dir: {run_dir}\nmodel: {total / 1e6:.2f}M parameters ({trainable / 1e6:.2f}M trained), "
        f"device {device}, dtype {dtype}")
    if cfg.trainer.warmup_steps >= cfg.trainer.max_steps:
        say(f"note: trainer.warmup_steps={cfg.trainer.warmup_steps} >= trainer.max_steps={cfg.trainer.max_steps}: "
            "the learning rate never leaves its warmup (a smoke test; for a model, raise max_steps)")

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
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    for step in range(start_step + 1, last + 1):
        micro = [_corrupt(next(batches), cfg, gen, vocab_size, task) for _ in range(cfg.trainer.grad_accum)]
        n_scored = sum(float(m["count"]) for m in micro) or 1.0
        loss_total = torch.zeros((), dtype=torch.float64, device=device)  # read back only when logged
        ar_total = torch.zeros((), dtype=torch.float64, device=device)
        for m in micro:
            try:
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
                    loss_sum, extra = _loss(model, m, cfg, gen, device, task)
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
            _checkpoint(run_dir, step, model, opt, sched, batches, gen, cfg, elapsed_s(), ema)
            saved_step = step
        window["paused"] += time.perf_counter() - paused
        if stopping:
            why = f"signal {stop['signal']}" if stop["signal"] else f"time limit {cfg.trainer.time_limit_min} min"
            say(f"stopping at step {step} ({why})")
            break
    bar.close()

    # --- save --------------------------------------------------------------------------------------
    loss = float(loss) if step > start_step else _logged_loss(run_dir / "metrics.jsonl", step)
    if step != saved_step or not (run_dir / "checkpoints" / f"step-{step:06d}").is_dir():
        _checkpoint(run_dir, step, model, opt, sched, batches, gen, cfg, elapsed_s(), ema)
    out = run_dir / ("adapter" if cfg.model.finetune == "lora" else "model")
    with averaged():
        ckpt.save_weights(model, out)
    if cfg.model.finetune == "full":
        model.generation_config.save_pretrained(str(out))
    writer.close()
    metrics.close()
    early = step < cfg.trainer.max_steps  # a signal during the last step or the final save stops nothing
    summary = {"steps": step, "train_seconds": round(elapsed_s(), 1),  # all sessions of the run
               "session_seconds": round(time.time() - t0, 1), "final_loss": loss,
               "stopped_by": (stop["signal"] or "time_limit") if early else None}
    if isinstance(getattr(batches, "counts", None), dict):  # infill: spans drawn, and those redrawn (all sessions)
        summary["data_counts"] = dict(batches.counts)
        say("training spans: " + ", ".join(f"{k} {v}" for k, v in batches.counts.items()))
    (run_dir / "train_summary.json").write_text(json.dumps(summary, indent=1))
    (run_dir / runs.RESUMING).unlink(missing_ok=True)
    from dgft.plots import plot_loss

    plot_loss(run_dir / "metrics.jsonl", run_dir / "loss.png")
    _link_latest(run_dir)
    say(f"done: {step} steps in {summary['train_seconds']} s; weights in {out}")
    if stop["signal"] and early:
        say(f"interrupted: resume with `dgft train resume={run_dir}`")
    return run_dir


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
    refused. A pretrained tokenizer (task.tokenizer) is the model's own and is not checked here: tokenizers often
    count a few added tokens that the embeddings leave out or pad past."""
    from dgft.config import ConfigError

    if cfg.task.get("tokenizer") or task.vocab_size == model_vocab:
        return
    what = f"task.tokens={cfg.task.tokens}" if "tokens" in cfg.task else "the task's BPE"
    hint = ("a pretrained DiffusionGemma reads text through its own tokenizer: recipe=sudoku_lora "
            "model.path=MODEL_DIR (task.tokens=text)" if cfg.task.name == "sudoku"
            else "set task.tokenizer to the model's directory")
    raise ConfigError(f"model.path={cfg.model.path}: the model's vocabulary has {model_vocab} tokens and the task's "
                      f"({what}, built by dgft) {task.vocab_size}, so the model would read other tokens than it "
                      f"learnt; {hint}")


# --- pieces of a step -----------------------------------------------------------------------------
def _corrupt(batch: dict, cfg, gen, vocab_size: int, task=None) -> dict:
    """Add noise level t, the corrupted canvas and the counts to a batch.

    `count` is what the loss is normalised by: the scored positions, or their summed weight when the batch
    weighs positions (`weight`, (B, L) float, from the batch or from the task's `position_weight` of the
    positions the model is shown). With `noise.known_in_prompt` the positions the noise left alone
    are also written into the prompt (the task's `known_prompt`), as `sampler.reprompt` does with accepted ones.
    """
    target, scored = batch["target"], batch["scored"]
    givens = batch.get("givens", batch["fixed"])  # in the prompt always, even where corrupt_givens_p noised them
    t = N.sample_t(target.shape[0], cfg.noise.eps, gen, power=cfg.noise.t_power)
    support = batch["choices"] if cfg.noise.support == "answer" else vocab_size
    noisy, hit = N.corrupt(cfg.noise.kind, target, t, ~batch["fixed"], support, N.mask_ids(cfg.noise.kind, batch), gen)
    order_p = float(cfg.task.get("solver_order_p", 0.0))
    if order_p > 0:
        noisy, hit = _solver_ordered(batch, noisy, hit, order_p, cfg, gen, support, task)
    wrong_p = float(cfg.task.get("wrong_known_p", 0.0))
    if wrong_p > 0:
        noisy = _wrong_known(batch, noisy, hit, wrong_p, gen, task)
    weigh = getattr(task, "position_weight", None)  # a task's own weighting, given what the model is shown
    if weigh is not None and "weight" not in batch:
        weight = weigh(target, givens | ~hit, batch["size"])
        batch = batch if weight is None else {**batch, "weight": weight * scored}
    count = loss_count(scored, hit, cfg.noise.kind, cfg.noise.loss_weight, batch.get("weight"))
    if cfg.noise.known_in_prompt:
        batch = {**batch}
        batch["prompt_ids"], batch["prompt_mask"] = task.known_prompt(target, givens, noisy, ~hit & ~givens,
                                                                      batch["size"])
    tokens = batch["prompt_mask"].sum() + target.numel()
    return {**batch, "t": t, "noisy": noisy, "hit": hit, "count": count, "tokens": tokens}


def _drawn_with_clean_givens(batch: dict, p: float, gen) -> torch.Tensor:
    """(B,) bool: each example drawn with probability p, among those whose givens the noise leaves clean (not
    freed by `task.corrupt_givens_p`)."""
    fixed = batch["fixed"]
    return (torch.rand(fixed.shape[0], generator=gen) < p) & (fixed == batch.get("givens", fixed)).all(-1)


def _solver_ordered(batch: dict, noisy, hit, p: float, cfg, gen, support, task):
    """`task.solver_order_p`: in that share of examples (those whose givens stay clean), the same number of
    corrupted cells, moved onto the cells a solver fills last (the task's `solving_rank`, ties in random order),
    so the clean ones are what it fills first: the states a sampler passes through, accepting its surest cell
    first. Uniform random subsets of clean cells are far easier to complete than these (eval/RESULTS.md)."""
    target, fixed = batch["target"], batch["fixed"]
    rows = _drawn_with_clean_givens(batch, p, gen)
    if not rows.any():
        return noisy, hit
    moved = N.order_hits(hit[rows], task.solving_key(target[rows], fixed[rows], batch["size"], gen))
    ones = torch.ones(int(rows.sum()))
    noisy, hit = noisy.clone(), hit.clone()
    noisy[rows], _ = N.corrupt(cfg.noise.kind, target[rows], ones, moved, support, N.mask_ids(cfg.noise.kind, batch),
                               gen)
    hit[rows] = moved
    return noisy, hit


def _wrong_known(batch: dict, noisy, hit, p: float, gen, task):
    """`task.wrong_known_p`: in that share of examples (those whose givens stay clean), one or two of the blank
    cells the noise left clean (shown as known, in the prompt too with `noise.known_in_prompt`) get a wrong digit
    no known peer holds (the task's `plant_wrong`), and are still scored with the true one: what a sampler's
    mistaken acceptance looks like, so the model learns to doubt it rather than build on it (`sampler.revise`)."""
    target, givens = batch["target"], batch.get("givens", batch["fixed"])
    rows = _drawn_with_clean_givens(batch, p, gen)
    if not rows.any():
        return noisy
    known = givens | ~hit
    second = torch.rand(target.shape[0], generator=gen) < 0.5
    planted = torch.zeros_like(hit)
    for candidates in (rows, rows & second):
        allowed = candidates[:, None] & ~hit & ~givens & ~planted & batch["scored"]
        noisy, new = task.plant_wrong(noisy, allowed, known, batch["size"], gen)
        planted |= new
    return noisy


def _to(x: torch.Tensor, device) -> torch.Tensor:
    """Host tensor -> device; to CUDA through pinned memory, so the copy does not wait for the device."""
    if device.type != "cuda":
        return x.to(device)
    return x.pin_memory().to(device, non_blocking=True)


def _loss(model, m: dict, cfg, gen, device, task=None):
    """Summed denoising loss of one micro-batch, plus the (already normalised) encoder AR term."""
    ids, mask = _to(m["prompt_ids"], device), _to(m["prompt_mask"], device)
    noisy = _to(m["noisy"], device)
    want_hidden = cfg.noise.encoder_ar_weight > 0
    enc = encode(model, ids, mask, return_hidden=want_hidden)
    cache, hidden = enc if want_hidden else (enc, None)
    sc_logits = sc_mask = None
    if cfg.noise.self_conditioning_p > 0:
        drawn = torch.rand(noisy.shape[0], generator=gen) < cfg.noise.self_conditioning_p  # on the host: no sync
        if drawn.any():
            # The first pass runs only for the examples that use it; the others get zero logits (masked anyway).
            sc_mask, idx = _to(drawn, device), _to(drawn.nonzero()[:, 0], device)
            with torch.no_grad():
                sub_cache, passes = _select_cache(cache, idx), int(cfg.noise.get("self_conditioning_passes", 1))
                sub = denoise(model, sub_cache, noisy[idx], mask[idx])
                for _ in range(int(torch.randint(passes, (1,), generator=gen)) if passes > 1 else 0):
                    sub = denoise(model, sub_cache, noisy[idx], mask[idx], sc_logits=sub)
                sc_logits = torch.zeros(noisy.shape + (sub.shape[-1],), dtype=sub.dtype, device=device)
                sc_logits[idx] = sub
            rules_p = float(cfg.task.get("sc_rules_p", 0.0))
            if rules_p > 0:  # these examples' first pass is fed back without the digits a shown peer holds
                rows = drawn & (torch.rand(noisy.shape[0], generator=gen) < rules_p)
                forbid = task.rules_forbid(m) & rows[:, None, None]
                sc_logits = forbid_answers(sc_logits, _to(m["choices"], device), _to(forbid, device))
    logits = denoise(model, cache, noisy, mask, sc_logits=sc_logits, sc_mask=sc_mask)
    weight = _to(m["weight"], device) if "weight" in m else None
    loss_sum, _ = denoising_loss(logits, _to(m["target"], device), _to(m["scored"], device), _to(m["hit"], device),
                                 cfg.noise.kind, _to(m["t"], device), cfg.noise.loss_weight, weight)
    extra = torch.zeros((), device=device)
    if want_hidden:
        ar_sum, ar_n = encoder_ar_loss(prompt_logits(model, hidden), ids, mask)
        extra = cfg.noise.encoder_ar_weight * ar_sum / ar_n.clamp_min(1)
    return loss_sum, extra


def _select_cache(cache, idx):
    """A copy of an encoder KV cache restricted to the batch rows `idx` (the original is untouched)."""
    import copy

    sub = copy.copy(cache)
    sub.layers = [copy.copy(layer) for layer in cache.layers]
    for layer in sub.layers:
        layer.keys, layer.values = layer.keys[idx], layer.values[idx]
    return sub


def _checkpoint(run_dir, step, model, opt, sched, batches, gen, cfg, elapsed_s: float, ema=None):
    """A resumable checkpoint: the trained weights (not the average), optimizer, schedule, RNGs, data, EMA."""
    state = {"optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "torch_rng": torch.get_rng_state(),
             "gen_rng": gen.get_state(), **({"ema": ema.state_dict()} if ema else {})}
    if torch.cuda.is_available() and torch.cuda.is_initialized():  # e.g. LoRA dropout draws on the GPU
        state["cuda_rng"] = torch.cuda.get_rng_state_all()
    extra = {"step": step, "data": _jsonable(batches.state_dict()), "python_rng": _jsonable(random.getstate()),
             "numpy_rng": _jsonable(np.random.get_state(legacy=False)), "elapsed_s": elapsed_s}
    ckpt.save(run_dir, step, model, state, extra, keep_last=cfg.trainer.keep_last)


RESUME_MAY_CHANGE = ("trainer.max_steps", "trainer.num_threads", "trainer.time_limit_min", "device",
                     "task.cache_dir")  # where the data are cached: made again from the seed, the same


def _resume_target(cfg, run_dir: Path, overrides: Sequence[str] = ()):
    """(saved config of the run, its newest valid checkpoint); resume=auto picks the newest resumable run.

    The run continues with its saved config. An override of a key in RESUME_MAY_CHANGE (e.g. more
    trainer.max_steps) replaces the saved value; an override that gives any other key a value the run does not
    have is refused, naming it, rather than ignored.
    """
    from dgft.config import ConfigError

    if not (run_dir / "config.yaml").exists():
        raise ConfigError(f"resume={cfg.resume}: {run_dir} holds no config.yaml; nothing to resume")
    from dgft.config import typed_train_config

    saved = typed_train_config(runs.read_yaml(run_dir / "config.yaml"), source=run_dir / "config.yaml",
                               missing="refuse")
    saved.resume = cfg.resume
    def refuse(source: Path = run_dir / "config.yaml") -> str:  # the record that says what the run was trained with
        return f" ({source}); a resumed run keeps its config, and only {', '.join(RESUME_MAY_CHANGE)} may change"
    keys = _override_keys(overrides)
    for key, _ in keys:  # first the keys that may change, so a group given too (trainer=cpu) compares with them
        if key in RESUME_MAY_CHANGE:
            OmegaConf.update(saved, key, OmegaConf.select(cfg, key))
    for key, item in keys:
        if key in RESUME_MAY_CHANGE:
            continue
        given, kept = OmegaConf.select(cfg, key), OmegaConf.select(saved, key)
        if "." not in key and key not in cfg:  # a config group with no node of its own (recipe=X)
            was = _run_choice(run_dir, key, saved)
            if item.split("=", 1)[1] != was:
                source = run_dir / ".hydra" / "hydra.yaml"  # where Hydra recorded the group's choice, if it did
                source = source if source.exists() else run_dir / "config.yaml"
                raise ConfigError(f"resume={cfg.resume}: {item}, but the run was trained with "
                                  + (f"{key}={was}" if was is not None else f"a {key} it does not record")
                                  + refuse(source))
        elif key != "resume" and _plain(given) != _plain(kept):
            has = f"the run's {key} settings differ" if isinstance(kept, DictConfig) else f"the run has {key}={kept}"
            raise ConfigError(f"resume={cfg.resume}: {item}, but {has}" + refuse())
    last = ckpt.latest_valid(run_dir)
    if last is None:
        raise ConfigError(f"resume={cfg.resume}: {run_dir}/checkpoints holds no valid checkpoint")
    return saved, last


def _finished(run_dir: Path, last: Path, cfg) -> bool:
    """True (and says so) when a run to resume has nothing left to train: its newest checkpoint is at
    trainer.max_steps, or past trainer.time_limit_min, and its final weights are saved. The run is left as it is."""
    extra = ckpt.load_extra(last)
    step, seconds = int(extra["step"]), float(extra.get("elapsed_s", 0.0))
    limit = cfg.trainer.time_limit_min
    if step >= cfg.trainer.max_steps:
        why, key = f"step {step} of trainer.max_steps={cfg.trainer.max_steps}", "trainer.max_steps"
    elif limit and seconds > 60 * limit:
        why, key = f"{seconds / 60:.1f} min of trainer.time_limit_min={limit}", "trainer.time_limit_min"
    else:
        return False
    saved = (runs.summary(run_dir) or {}).get("steps") == step  # written after the final weights, of that step
    if not saved or not (run_dir / ("adapter" if cfg.model.finetune == "lora" else "model")).is_dir():
        return False  # stopped between its last checkpoint and its weights (or killed when resumed): saved again
    say(f"{run_dir}: nothing to train, the run is at {why} and its weights are saved; to train on, raise "
        f"it: `dgft train resume={run_dir} {key}=...`")
    return True


def _run_choice(run_dir: Path, group: str, saved):
    """The option a run was trained with for a config group: as Hydra recorded it (RUN/.hydra/hydra.yaml), else,
    for `recipe`, the name the recipe gives the run; None when neither says."""
    path = run_dir / ".hydra" / "hydra.yaml"
    if path.exists():
        choices = OmegaConf.select(runs.read_yaml(path), "hydra.runtime.choices", default=None) or {}
        if group in choices:
            return choices[group]
    return saved.get("name") if group == "recipe" else None


def _plain(value):
    return OmegaConf.to_container(value, resolve=True) if isinstance(value, DictConfig) else value


def _override_keys(overrides: Sequence[str]) -> list[tuple[str, str]]:
    """(config key, the override as typed) for each Hydra override that sets a key (`+key=v` and `++key=v` too);
    a group choice (`noise=mask`) names a key whose value is a node; hydra.* are not in the config."""
    keys = []
    for item in overrides:
        key = item.split("=", 1)[0].lstrip("+~")
        if "=" in item and "@" not in key and not key.startswith("hydra."):
            keys.append((key, item))
    return keys


def _restore(path: Path, model, opt, sched, batches, gen, cfg, ema=None) -> tuple[int, float]:
    """Load weights, optimizer, scheduler, every RNG and the data position from a checkpoint.

    -> (step, training seconds before it), the seconds counting against trainer.time_limit_min.
    """
    from safetensors.torch import load_file

    if cfg.model.finetune == "lora":
        from peft import set_peft_model_state_dict

        from dgft.model import expert_lora_tensors, load_expert_lora

        set_peft_model_state_dict(model, load_file(str(path / "adapter_model.safetensors")))
        if expert_lora_tensors(model):  # LoRA on 4-bit experts: dgft's own, which peft does not load
            load_expert_lora(model, path)
    else:
        state = {}
        for f in sorted(path.glob("*.safetensors")):
            state.update(load_file(str(f)))
        missing, unexpected = model.load_state_dict(state, strict=False)
        tied = {k for k in missing if "encoder" in k or k == "lm_head.weight"}
        if set(missing) - tied or unexpected:
            raise ckpt.CheckpointError(f"{path}: checkpoint does not match the model ({sorted(set(missing) - tied)[:3]} "
                                       f"missing, {sorted(unexpected)[:3]} unexpected)")
        model.tie_weights()
    state = ckpt.load_trainer_state(path)
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    if ema:
        ema.load_state_dict(state["ema"])
    torch.set_rng_state(state["torch_rng"])
    if "cuda_rng" in state and torch.cuda.is_available() and torch.cuda.device_count() == len(state["cuda_rng"]):
        torch.cuda.set_rng_state_all(state["cuda_rng"])  # another GPU count (or none): their draws start afresh
    gen.set_state(state["gen_rng"])
    extra = ckpt.load_extra(path)
    batches.load_state_dict(extra["data"])
    version, internal, gauss = extra["python_rng"]
    random.setstate((version, tuple(internal), gauss))
    np.random.set_state(extra["numpy_rng"])
    return int(extra["step"]), float(extra.get("elapsed_s", 0.0))


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop metric rows logged after the checkpoint we resume from (they will be logged again), and a last row
    torn by a crash mid-write, said aloud; the file is replaced whole, never left half rewritten."""
    if not path.exists():
        return
    keep = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            say(f"{path}:{number}: not a JSON row (torn by the crash?); dropped")
            continue
        at = row.get("step", 0) if isinstance(row, dict) else None
        if not isinstance(at, int) or isinstance(at, bool):
            say(f"{path}:{number}: not a metrics row (an object with a whole-number step); dropped: {line[:80]}")
            continue
        if at <= step:
            keep.append(line)
    replace_file(path, "".join(line + "\n" for line in keep))


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


def _install_signal_handlers(stop: dict) -> None:
    def handler(signum, frame):
        if stop["signal"]:  # second signal: stop now
            raise KeyboardInterrupt
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


def _last_session(run_dir: Path) -> dict:
    """RUN/run.json's record of the latest `dgft train` that wrote the run ({} when unreadable)."""
    with contextlib.suppress(ValueError, OSError, TypeError, AttributeError):
        info = json.loads((run_dir / "run.json").read_text())
        return (info.get("sessions") or [info])[-1]
    return {}


def _write_run_info(run_dir: Path, cfg, trainable: int, total: int, device, start_step: int = 0) -> None:
    """RUN/run.json: what the run is and what made it. Its top level is the latest session's; `sessions` keeps one
    record per `dgft train` that wrote the run (a resume adds one), each with the step it started from."""
    path = run_dir / "run.json"
    sessions = []
    if start_step and path.exists():
        with contextlib.suppress(ValueError, OSError):
            sessions = json.loads(path.read_text()).get("sessions", [])
    session = {**runs.environment(device), "device": str(device), "threads": torch.get_num_threads(),
               "start_step": start_step}
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
    (run_dir / "run.json").write_text(json.dumps(info, indent=1))
