"""Checkpoints a run resumes from, and resuming: `save_checkpoint` writes every state a step needs (weights,
optimizer, schedule, random generators, data position), `restore` loads it back; `resume_target` finds the run's
saved config and newest valid checkpoint, refusing changes a resume may not make, `finished` says when nothing is
left to train, and `truncate_metrics` drops what was logged after the checkpoint.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from dgft import checkpoint as ckpt
from dgft import runs
from dgft.cache import replace_file
from dgft.runs import say

RESUME_MAY_CHANGE = ("trainer.max_steps", "trainer.num_threads", "trainer.time_limit_min", "device",
                     "task.cache_dir")  # where the data are cached: made again from the seed, the same


def save_checkpoint(run_dir, step, model, opt, sched, batches, gen, cfg, elapsed_s: float, ema=None):
    """A resumable checkpoint: the trained weights (not the average), optimizer, schedule, RNGs, data, EMA."""
    state = {"optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "torch_rng": torch.get_rng_state(),
             "gen_rng": gen.get_state(), **({"ema": ema.state_dict()} if ema else {})}
    if torch.cuda.is_available() and torch.cuda.is_initialized():  # e.g. LoRA dropout draws on the GPU
        state["cuda_rng"] = torch.cuda.get_rng_state_all()
    extra = {"step": step, "data": _jsonable(batches.state_dict()), "python_rng": _jsonable(random.getstate()),
             "numpy_rng": _jsonable(np.random.get_state(legacy=False)), "elapsed_s": elapsed_s}
    ckpt.save(run_dir, step, model, state, extra, keep_last=cfg.trainer.keep_last)


_ABSENT = object()  # OmegaConf.select's default: a key the saved config does not have


def resume_target(cfg, run_dir: Path, overrides: Sequence[str] = ()):
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
                               missing="refuse", recorded=_hydra_record(run_dir), may_fill=RESUME_MAY_CHANGE)
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
            has = (f"the run's {key} settings differ" if isinstance(kept, DictConfig)
                   else f"{key} is no setting of the run (a `+key` added it)"
                   if OmegaConf.select(saved, key, default=_ABSENT) is _ABSENT else f"the run has {key}={kept}")
            raise ConfigError(f"resume={cfg.resume}: {item}, but {has}" + refuse())
    last = ckpt.latest_valid(run_dir)
    if last is None:
        never = "" if (run_dir / "checkpoints").is_dir() else (
            f" (it has none: it stopped before its first step; remove it, rm -r {run_dir}, and train again)")
        raise ConfigError(f"resume={cfg.resume}: {run_dir}/checkpoints holds no valid checkpoint{never}")
    return saved, last


def _hydra_record(run_dir: Path):
    """(path, config) of what Hydra composed for the run's first command (RUN/.hydra/config.yaml), where the values
    config.yaml has lost can be read; None when there is none, or it cannot be read."""
    record = run_dir / ".hydra" / "config.yaml"
    try:
        found = runs.read_yaml(record) if record.exists() else None
    except runs.RunError:
        return None
    return (record, found) if isinstance(found, DictConfig) else None


def finished(run_dir: Path, last: Path, cfg) -> bool:
    """True (and says so) when a run to resume has nothing left to train: its newest checkpoint is at
    trainer.max_steps, or past trainer.time_limit_min, and its final weights are saved. The run is left as it is."""
    extra = ckpt.load_extra(last)
    step, seconds = int(extra["step"]), float(extra.get("elapsed_s", 0.0))
    if step > cfg.trainer.max_steps:  # its weights would be saved as the run's end, midway through its schedule
        from dgft.config import ConfigError

        raise ConfigError(f"trainer.max_steps={cfg.trainer.max_steps}: below step {step} of the checkpoint to resume "
                          f"({last}); a resume trains on from there, so give trainer.max_steps >= {step}")
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


def restore(path: Path, model, opt, sched, batches, gen, cfg, ema=None) -> tuple[int, float]:
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
            raise ckpt.CheckpointError(f"{path}: checkpoint does not match the model "
                                       f"({sorted(set(missing) - tied)[:3]} missing, "
                                       f"{sorted(unexpected)[:3]} unexpected)")
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


def truncate_metrics(path: Path, step: int) -> None:
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
