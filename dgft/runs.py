"""A run directory: what `dgft train` writes and what `dgft eval` / `dgft export` read back.

RUN/config.yaml (resolved), RUN/tokenizer/, RUN/model/ (full weights) or RUN/adapter/ + RUN/base/ (LoRA on a
tiny base; a pretrained base is named by model.path), RUN/checkpoints/, RUN/metrics.jsonl, RUN/tb/,
RUN/loss.png, RUN/data/ (the held-out split: heldout.csv for Sudoku, heldout.jsonl.gz for infill), RUN/eval/,
RUN/export/.

Example: `model, tokenizer, cfg = load_run("outputs/sudoku/2026-11-27_15-00-00")`.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf


class RunError(RuntimeError):
    """A run directory that is missing something; the message names the path."""


def run_dir_for(name: str, resume) -> str:
    """Where a training run writes: a new outputs/<name>/<timestamp>, or (resume=RUN / resume=auto) the run
    being continued; `auto` is the newest unfinished run under outputs/<name>/ with a valid checkpoint."""
    import time

    from dgft.checkpoint import latest_valid

    if resume in (None, "", "None"):
        return f"outputs/{name}/{time.strftime('%Y-%m-%d_%H-%M-%S')}"
    if resume != "auto":
        if not (Path(str(resume)) / "config.yaml").is_file():
            raise RunError(f"resume={resume}: no such run (no {Path(str(resume)) / 'config.yaml'})")
        return str(resume)
    runs = [p for p in sorted(Path("outputs", name).glob("20*")) if p.is_dir() and not _ended_by_itself(p)
            and latest_valid(p) is not None]
    if not runs:
        raise RunError(f"resume=auto: no unfinished run with a valid checkpoint under outputs/{name}/ (a finished "
                       f"one continues with resume=RUN trainer.max_steps=N)")
    return str(runs[-1])


def _ended_by_itself(run: Path) -> bool:
    """A run that ended by itself (its summary says so: max_steps or its time limit), not one interrupted by a
    signal or killed (no summary): resume=auto passes it over."""
    import json

    try:
        return json.loads((run / "train_summary.json").read_text()).get("stopped_by") in (None, "time_limit")
    except (OSError, ValueError, AttributeError):
        return False


def load_config(run_dir: str | Path):
    path = Path(run_dir) / "config.yaml"
    if not path.exists():
        raise RunError(f"{path}: not found; is {run_dir} a directory written by `dgft train`?")
    try:
        cfg = OmegaConf.load(path)
    except Exception as err:  # yaml's parser errors carry the line
        raise RunError(f"{path}: not a readable config ({type(err).__name__}: {err})") from err
    missing = [k for k in ("name", "task", "model", "noise", "sampler")
               if not isinstance(cfg, DictConfig) or k not in cfg]
    if missing:
        raise RunError(f"{path}: no {', '.join(missing)} key; is it a config written by `dgft train`?")
    return cfg


def checkpoint_dir(run_dir: Path, name: str) -> Path:
    """A checkpoint given as a path, or relative to the run (`checkpoints/step-000500` or `step-000500`), with a
    valid manifest (`dgft eval checkpoint=...`, `dgft export checkpoint=...`)."""
    from dgft import checkpoint as ckpt

    names = [str(name)]
    number = str(name).removeprefix("step-")
    if number.isdigit():  # step-1200 or 1200 for step-001200, the name checkpoints are saved under
        names.append(f"step-{int(number):06d}")
    for candidate in names:
        for path in (Path(candidate), run_dir / candidate, run_dir / "checkpoints" / candidate):
            if path.is_dir():
                if not ckpt.is_valid(path):
                    raise RunError(f"{path}: missing or invalid {ckpt.MANIFEST}; the checkpoint may be torn")
                return path
    kept = [c.name for c in ckpt.checkpoints(run_dir)]
    raise RunError(f"checkpoint={name}: no such directory (also looked in {run_dir / 'checkpoints'}, which holds "
                   + (", ".join(kept) if kept else "none") + "; a run keeps its last trainer.keep_last)")


def load_model(run_dir: str | Path, cfg=None, checkpoint: str | Path | None = None, device="cpu"):
    """The trained model of a run (full weights, or base + adapter, optionally from a checkpoint directory that
    `checkpoint_dir` found and checked)."""
    from transformers import DiffusionGemmaForBlockDiffusion

    from dgft.model import load_adapter, one_expert_path

    run_dir = Path(run_dir)
    cfg = cfg or load_config(run_dir)
    src = Path(checkpoint) if checkpoint else run_dir
    if cfg.model.finetune == "full":
        weights = src if checkpoint else run_dir / "model"
        if not (weights / "config.json").exists():
            raise RunError(f"{weights}: no model weights (config.json); did training finish?")
        with _unreadable(weights):
            model = one_expert_path(DiffusionGemmaForBlockDiffusion.from_pretrained(str(weights),
                                                                                   use_safetensors=True))
    else:
        adapter = src if checkpoint else run_dir / "adapter"
        if not (adapter / "adapter_config.json").exists():
            raise RunError(f"{adapter}: no LoRA adapter (adapter_config.json); did training finish?")
        quantized = cfg.model.get("quantize", "none") == "nf4"
        base = load_base(run_dir, cfg, device=device if quantized else "cpu")
        with _unreadable(adapter):
            model = load_adapter(base, adapter)
    if checkpoint:
        apply_average_(model, checkpoint, cfg)
    return (model if cfg.model.get("quantize", "none") == "nf4" else model.to(device)).eval()


@contextlib.contextmanager
def _unreadable(path: Path):
    """Weights or an adapter that exist but cannot be read (truncated, corrupt JSON): a RunError naming the dir."""
    from safetensors import SafetensorError

    from dgft.model import ModelLoadError

    try:
        yield
    except (RunError, ModelLoadError):
        raise
    except (OSError, ValueError, KeyError, RuntimeError, SafetensorError) as err:  # json's, torch's: the files
        raise RunError(f"{path}: could not load ({type(err).__name__}: {str(err)[:300]}); is the run complete and "
                       f"unmodified?") from err


def keeps_average(cfg) -> bool:
    """Whether a run's checkpoints hold a moving average of its weights beside them (`trainer.ema_decay` > 0)."""
    return float(cfg.trainer.get("ema_decay", 0.0) or 0.0) > 0


def apply_average_(model, checkpoint: str | Path, cfg) -> bool:
    """Put a checkpoint's moving average of the weights into `model`, loaded from that checkpoint.

    A checkpoint holds the weights as they train (a resume needs them) and, with `trainer.ema_decay`, their
    average beside them; the run's model (RUN/model, RUN/adapter) is the average, and so is what the trainer
    evaluates. The average lists the trainable parameters in the order training listed them: every parameter of a
    full fine-tune, the LoRA weights of a LoRA run. -> whether there was an average to apply.
    """
    from dgft import checkpoint as ckpt

    shadow = (ckpt.load_trainer_state(Path(checkpoint)).get("ema") or {}).get("shadow")
    if shadow is None:
        return False
    if cfg.model.finetune == "full":
        params = list(model.parameters())
    else:
        params = [p for name, p in model.named_parameters() if "lora_" in name]
    shapes = [tuple(p.shape) for p in params], [tuple(s.shape) for s in shadow]
    if shapes[0] != shapes[1]:
        raise RunError(f"{checkpoint}: its moving average holds {len(shadow)} tensors that do not match the "
                       f"model's {len(params)} trainable ones; was it saved by another version of dgft?")
    with torch.no_grad():
        for p, s in zip(params, shadow):
            p.copy_(s.to(p.device, p.dtype))
    return True


def load_base(run_dir: str | Path, cfg, device="cpu"):
    """The frozen base a LoRA run trained on (4-bit, on `device`, if the run trained on a 4-bit base)."""
    from transformers import DiffusionGemmaForBlockDiffusion

    from dgft.model import load_pretrained, load_quantized, one_expert_path, quantize_tiny_

    quantized = cfg.model.get("quantize", "none") == "nf4"
    group = cfg.model.get("quant_group_size", 32)
    if cfg.model.name == "tiny":
        base = one_expert_path(DiffusionGemmaForBlockDiffusion.from_pretrained(str(Path(run_dir) / "base"),
                                                                               use_safetensors=True))
        return quantize_tiny_(base, device, group) if quantized else base
    if quantized:
        return load_quantized(cfg.model.path, device, group)
    return load_pretrained(cfg.model.path, dtype=torch.bfloat16, trust_remote_code=cfg.model.trust_remote_code)


def load_tokenizer(run_dir: str | Path):
    from transformers import AutoTokenizer

    path = Path(run_dir) / "tokenizer"
    if not path.exists():
        raise RunError(f"{path}: no tokenizer saved in this run")
    return AutoTokenizer.from_pretrained(str(path))
