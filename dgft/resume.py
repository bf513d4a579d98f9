"""Checkpoints a run resumes from, and resuming: `save_checkpoint` writes every state a step needs (weights,
optimizer, schedule, random generators, data position), `restore` loads it back; `resume_target` finds the run's
saved config and newest valid checkpoint, refusing changes a resume may not make, `finished` says when nothing is
left to train, and `truncate_metrics` drops what was logged after the checkpoint.
"""

from __future__ import annotations

import json
import pickle
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
             "numpy_rng": _jsonable(np.random.get_state(legacy=False)), "elapsed_s": elapsed_s,
             "settings": trained_settings(cfg)}
    ckpt.save(run_dir, step, model, state, extra, keep_last=cfg.trainer.keep_last)


_ABSENT = object()  # OmegaConf.select's default: a key the saved config does not have


def trained_settings(cfg) -> dict[str, object]:
    """{dotted key: value} of the settings a checkpoint was trained with: what RUN/config.yaml must still say when the
    run resumes from it (`edited_settings`). Those a resume may change are left out, and so is what the run's
    `settings_sha256` leaves out (runs.NOT_THE_MODEL: the sampler, paths that may move)."""
    flat, skip = {}, (*RESUME_MAY_CHANGE, *runs.NOT_THE_MODEL)

    def walk(node, prefix):
        for key, value in node.items():
            path = f"{prefix}{key}"
            if path in skip:
                continue
            if isinstance(value, dict):
                walk(value, f"{path}.")
            else:
                flat[path] = value
    walk(OmegaConf.to_container(cfg, resolve=True), "")
    return flat


def edited_settings(saved, last: Path) -> str | None:
    """What RUN/config.yaml says otherwise than the checkpoint `last` recorded when it was trained (a hand edit:
    the optimizer's state would keep the old learning rate, while other keys would change the training and the
    run's record would name values it was never trained with), or None. Keys one side lacks (a checkpoint of an older
    dgft, a setting added since) are not compared."""
    recorded = ckpt.load_extra(last).get("settings")
    if not isinstance(recorded, dict):
        return None
    now = trained_settings(saved)
    changed = [f"{k}={now[k]!r} (trained with {v!r})" for k, v in recorded.items() if k in now and now[k] != v]
    return ", ".join(changed) if changed else None


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
    last = ckpt.latest_valid(run_dir)
    edited = edited_settings(saved, last) if last is not None else None  # first: the values below are the file's
    if edited:
        raise ConfigError(f"resume={cfg.resume}: {run_dir / 'config.yaml'} says {edited}, but {last.name} was trained "
                          "with the values in brackets: the file was edited since. Put those back (only "
                          f"{', '.join(RESUME_MAY_CHANGE)} may change, given on the command line), or train a new run")

    def refuse(source: Path = run_dir / "config.yaml") -> str:  # the record that says what the run was trained with
        return f" ({source}); a resumed run keeps its config, and only {', '.join(RESUME_MAY_CHANGE)} may change"
    keys = list(dict(_override_keys(overrides)).items())  # a key given twice: its last value is the one in effect
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
    if last is None:
        never = "" if ckpt.checkpoints(run_dir) else (
            " (it has none: it stopped before its first checkpoint was written, "
            + (f"every trainer.ckpt_every={saved.trainer.ckpt_every} steps" if saved.trainer.ckpt_every else
               "trainer.ckpt_every=0: at a stop signal or the end only")
            + f"; remove it, rm -r {run_dir}, and train again)")
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
    try:
        extra = ckpt.load_extra(last)
        step, seconds = int(extra["step"]), float(extra.get("elapsed_s", 0.0))
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise unrestorable(last, err) from err
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
    if (run_dir / runs.RESUMING).exists():  # a resume killed around its final save: saved again, the mark cleared
        return False
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
    try:  # files that check out against the manifest, written so: a bug, or an edit sealed again by hand
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
    except torch.OutOfMemoryError:
        raise  # the machine's limit, not the checkpoint's fault
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, EOFError, RuntimeError,
            pickle.UnpicklingError) as err:  # what a state file or extra.json of the wrong content raises
        raise unrestorable(path, err) from err


def unrestorable(path: Path, err: Exception) -> ckpt.CheckpointError:
    what = f"no {err}" if isinstance(err, KeyError) else f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"
    if "weights_only" in str(err):  # torch's advice to unpickle it whole would run whatever the file holds
        what = f"{ckpt.TRAINER_STATE} is not a file torch loads as plain tensors ({type(err).__name__})"
    return ckpt.CheckpointError(
        f"{path}: its files match its manifest, yet its training state cannot be restored ({what}). Move it "
        f"aside (mv {path} {path.parent / ('unusable-' + path.name)}) and resume from the checkpoint before it")


def truncate_metrics(path: Path, step: int) -> None:
    """Drop metric rows logged after the checkpoint we resume from (they will be logged again), and a last row
    torn by a crash mid-write, said aloud; the file is replaced whole, never left half rewritten."""
    if not path.exists():
        if step:
            say(f"note: {path} is missing: the rows of steps 1-{step} (logged before the checkpoint) are lost; the "
                f"resumed run logs from step {step + 1} on, and its loss curve starts there")
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
