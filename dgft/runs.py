"""A run directory: what `dgft train` writes and what `dgft eval` / `dgft export` read back.

RUN/config.yaml (resolved), RUN/tokenizer/, RUN/model/ (full weights) or RUN/adapter/ + RUN/base/ (LoRA on a
tiny base; a pretrained base is named by model.path), RUN/checkpoints/, RUN/metrics.jsonl, RUN/tb/,
RUN/loss.png, RUN/data/ (the held-out split: heldout.csv for Sudoku, heldout.jsonl.gz for infill), RUN/eval/,
RUN/export/ (RUN/export_step-N/ for a checkpoint), RUN/train.log (what training said), RUN/train_summary.json
(written last: the final weights are of its `steps`), RUN/.train.lock (held while a `dgft train` writes the run),
RUN/.resuming (while a resumed run trains: its final weights are of before the resume).

Example: `model, tokenizer, cfg = load_run("outputs/sudoku/2026-11-27_15-00-00")`.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm


class RunError(RuntimeError):
    """A run directory that is missing something; the message names the path."""


class RunInUse(RunError):
    """A run directory that another run holds: a fresh run refuses it, and nothing in it is touched."""


RESUMING = ".resuming"  # while a resumed run trains: its model/ (adapter/) is of before the resume
RUN_FILES = ("config.yaml", "metrics.jsonl", "checkpoints", "model", "adapter", "train_summary.json")
# what a run's own paths are, files or folders: one of the other kind where training writes is refused up front
# (`refuse_misplaced`), not met as a traceback on resume
RUN_KINDS = {**dict.fromkeys(("config.yaml", "metrics.jsonl", "train_summary.json", "run.json", "train.log",
                              "loss.png"), "file"),
             **dict.fromkeys(("checkpoints", "model", "adapter", "base", "tokenizer", "data", "tb"), "folder")}


def environment(device=None) -> dict:
    """What produced a result: dgft's version and git commit (None outside a checkout; `dirty` when it has
    uncommitted changes), the library versions, the machine (CPU, the GPU when `device` is CUDA) and the time."""
    import datetime
    import platform
    import socket
    import subprocess
    import sys
    from importlib import metadata

    def version(name: str):
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    here = Path(__file__).resolve().parent
    commit = None
    try:
        git = ["git", "-C", str(here.parent)]
        head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        if head.returncode == 0:
            dirty = subprocess.run([*git, "status", "--porcelain", "--", "dgft", "recipes"], capture_output=True,
                                   text=True, timeout=10).stdout.strip()
            commit = head.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):  # no git: the version says what it can
        pass
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        names = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                 if line.startswith("model name")]
        cpu = f"{names[0]} x{len(names)}" if names else cpu
    gpu = None
    if device is not None and torch.device(device).type == "cuda":
        gpu = torch.cuda.get_device_name(torch.device(device))
    return {"dgft": version("dgft"), "dgft_commit": commit, "python": platform.python_version(),
            **{name: version(name) for name in ("torch", "transformers", "peft", "numpy", "hydra-core")},
            "host": socket.gethostname(), "platform": platform.platform(), "cpu": cpu, "gpu": gpu,
            "command": sys.argv[0],  # "dgft train" (the CLI names it so), or the script that called dgft
            "argv": sys.argv[1:], "time": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}


def refuse_used(run_dir: Path, key: str = "hydra.run.dir") -> None:
    """A fresh run must not write into another run's directory (one holding any of RUN_FILES; Hydra's record alone
    does not count): its checkpoints, weights and metrics would mix. `key` names the setting to change."""
    held = [name for name in RUN_FILES if (Path(run_dir) / name).exists()]
    if held == ["config.yaml"] and not (Path(run_dir) / "train_summary.json").exists():  # stopped in its set-up
        raise RunInUse(f"{run_dir} holds a run that has not trained a step (config.yaml alone: it is setting up, or "
                       f"was stopped while it did), so there is nothing to resume; unless a dgft train is running "
                       f"there, remove it (rm -r {run_dir}) to train there again; or give the new run another {key}")
    if held and "train_summary.json" not in held and not _any_checkpoint(Path(run_dir)):  # killed before one
        raise RunInUse(f"{run_dir} holds a run stopped before its first checkpoint ({', '.join(held)}), so there is "
                       f"nothing to resume; unless a dgft train is running there, remove it (rm -r {run_dir}) to train "
                       f"there again; or give the new run another {key}")
    if held:
        raise RunInUse(f"{run_dir} already holds a run ({', '.join(held)}); continue it with `dgft train "
                       f"resume={run_dir}`, or give the new run another {key}")


def _any_checkpoint(run_dir: Path) -> bool:
    """Whether the run holds a checkpoint folder at all, complete or not (a resume names those it cannot use)."""
    from dgft.checkpoint import checkpoints

    return bool(checkpoints(run_dir))


def refuse_misplaced(run_dir: Path) -> None:
    """A RunError naming the first of the run's own paths (RUN_KINDS) that is a folder where training writes a file,
    or a file where it writes a folder (`metrics.jsonl/`: a copy gone wrong, a hand-made folder)."""
    for name, kind in RUN_KINDS.items():
        path = Path(run_dir) / name
        if path.exists() and path.is_dir() != (kind == "folder"):
            raise RunError(f"{path}: a {'file' if kind == 'folder' else 'folder'} where the run keeps its {name} "
                           f"{kind}; move it away (nothing was trained)")


def cannot_make(where: Path) -> str | None:
    """Why no directory can be made at `where` (in its nearest existing ancestor, tried for real: os.access says yes
    to root anywhere, /proc and /sys included); None when one can."""
    import os
    import tempfile

    path = Path(where).absolute()
    while not path.exists():
        path = path.parent
    if not path.is_dir():
        return f"{path} is not a directory"
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".dgft-probe-", dir=path))
    except OSError as err:
        return f"no directory can be made in {path} ({err.strerror or err})"
    return None


def take_lock(path: Path, refused: Callable[[str], Exception]):
    """Open `path` (a file that stays) and lock it without waiting -> the open file, which holds the lock until it is
    closed (a context manager); when another process holds it, `refused(its pid)` is raised. The holder's pid is
    written in the file, for the next one's message."""
    import fcntl
    import os

    lock = open(path, "a+")
    try:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            lock.seek(0)
            raise refused(lock.read().strip() or "unknown") from None
        lock.seek(0)
        lock.truncate()
        lock.write(f"{os.getpid()}\n")
        lock.flush()
    except BaseException:
        lock.close()
        raise
    return lock


@contextlib.contextmanager
def writing(run_dir: Path):
    """Hold RUN/.train.lock while training writes the run: a second `dgft train` on the same directory (a resume of
    a run still training, or two runs started into one directory) is refused, naming the process."""
    with take_lock(Path(run_dir) / ".train.lock", lambda holder: RunInUse(
            f"{run_dir}: another `dgft train` (pid {holder}) is writing this run; wait for it to end, or stop it (it "
            "checkpoints on Ctrl-C) before resuming")):
        yield


def held_by(path: Path) -> str | None:
    """The pid written in a lock file `take_lock` holds now (another process's), else None (no such file, or free)."""
    import fcntl

    try:
        with open(path) as f:
            try:
                fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except OSError:
                return f.read().strip() or "unknown"
            fcntl.flock(f, fcntl.LOCK_UN)
    except OSError:  # no lock file: never taken here
        return None
    return None


def training_now(run_dir: Path) -> str | None:
    """The pid of a `dgft train` writing the run now (it holds RUN/.train.lock: `writing`), else None."""
    return held_by(Path(run_dir) / ".train.lock")


def run_dir_for(name: str, resume) -> str:
    """Where a training run writes: a new outputs/<name>/<timestamp>, or (resume=RUN / resume=auto) the run
    being continued; `auto` is the newest unfinished run under outputs/<name>/ with a valid checkpoint."""
    import time

    from dgft.checkpoint import latest_valid

    if resume in (None, "", "None"):
        stamp = f"outputs/{name}/{time.strftime('%Y-%m-%d_%H-%M-%S')}"
        path, number = stamp, 1
        while True:  # made here, not by Hydra later: two runs started in the same second get a directory each
            try:
                Path(path).mkdir(parents=True)
                return path
            except FileExistsError:
                path, number = f"{stamp}_{number}", number + 1
            except OSError as err:
                raise RunError(f"cannot create the run directory {path}: {err.strerror or err}") from err
    if resume != "auto":
        if Path(str(resume)).is_dir():
            refuse_misplaced(Path(str(resume)))  # here, before Hydra opens the run's train.log
        if not (Path(str(resume)) / "config.yaml").is_file():
            raise RunError(f"resume={resume}: no such run (no {Path(str(resume)) / 'config.yaml'})")
        return str(resume)
    runs = [p for p in sorted(Path("outputs", name).glob("20*")) if p.is_dir() and not _ended_by_itself(p)
            and latest_valid(p) is not None]
    if not runs:
        raise RunError(f"resume=auto: no unfinished run with a valid checkpoint under outputs/{name}/ (a finished "
                       f"one continues with resume=RUN trainer.max_steps=N)")
    refuse_misplaced(runs[-1])
    return str(runs[-1])


def final_weights_dir(run: Path) -> Path | None:
    """The run's final weights as training saved them, RUN/model (full) or RUN/adapter (LoRA); None when neither is
    there."""
    return next((Path(run) / d for d in ("model", "adapter") if (Path(run) / d).is_dir()), None)


def summary(run: Path) -> dict | None:
    """RUN/train_summary.json, written when a training session ends (after the final weights); None when there is
    none (still training, killed, or a resume that has not ended) or it cannot be read."""
    import json

    try:
        found = json.loads((Path(run) / "train_summary.json").read_text())
    except (OSError, ValueError):
        return None
    return found if isinstance(found, dict) else None


def _ended_by_itself(run: Path) -> bool:
    """A run that ended by itself (its summary says so: max_steps or its time limit), not one interrupted by a
    signal or killed (no summary): resume=auto passes it over."""
    ended = summary(run)
    return ended is not None and ended.get("stopped_by") in (None, "time_limit")


def stopped_early(run: Path, cfg) -> str | None:
    """A sentence when the run's final weights are those of a training a signal stopped before trainer.max_steps (its
    summary's `stopped_by` and `steps`): before the end of its learning-rate schedule, so not the model its recipe
    trains; or when final weights are there without a summary (written after them: killed between the two, or the
    summary lost), so how far it trained is unknown. Else None: it ran to trainer.max_steps (a signal during the last
    step or the final save changes nothing) or to its time limit, or it has neither weights nor summary, which
    `require_weights` deals with."""
    ended = summary(run)
    if ended is None and final_weights_dir(run) is not None:
        return ("its final weights have no readable train_summary.json beside them (written after them), so whether "
                "its training ran to the end of its schedule is unknown")
    if ended is None or ended.get("stopped_by") in (None, "time_limit"):  # as _ended_by_itself, from one read
        return None
    steps, planned = ended.get("steps"), int(cfg.trainer.max_steps)
    if isinstance(steps, int) and steps >= planned:
        return None
    at = f"at step {steps} of {planned}" if isinstance(steps, int) else f"before step {planned}"
    return f"its training was stopped by {ended.get('stopped_by')} {at}, before its schedule ended"


def note_stopped_early(run: Path, cfg) -> str | None:
    """`stopped_early`'s sentence, also said on stderr with the command that finishes the run (eval and export)."""
    import sys

    early = stopped_early(run, cfg)
    if early:
        print(f"note: {run}: {early} (`dgft train resume={run}` finishes it)", file=sys.stderr)
    return early


def read_yaml(path: Path):
    """A run's YAML record (config.yaml, .hydra/hydra.yaml), or a RunError naming the file and what is wrong (the
    parser's line and column)."""
    try:
        return OmegaConf.load(path)
    except Exception as err:  # yaml's parser errors carry the line
        raise RunError(f"{path}: not a readable config ({type(err).__name__}: {err})") from err


def load_config(run_dir: str | Path):
    path = Path(run_dir) / "config.yaml"
    if not path.exists():
        raise RunError(f"{path}: not found; is {run_dir} a directory written by `dgft train`?")
    cfg = read_yaml(path)
    missing = [k for k in ("name", "task", "model", "noise", "sampler")
               if not isinstance(cfg, DictConfig) or k not in cfg]
    if missing:
        raise RunError(f"{path}: no {', '.join(missing)} key; is it a config written by `dgft train`?")
    from dgft.config import typed_train_config

    return typed_train_config(cfg, source=path)  # a wrong type named here, not where a value is first used


def checkpoint_dir(run_dir: Path, name: str) -> Path:
    """A checkpoint given as a path, or relative to the run (`checkpoints/step-000500` or `step-000500`), with a
    valid manifest (`dgft eval checkpoint=...`, `dgft export checkpoint=...`)."""
    from dgft import checkpoint as ckpt

    names = [str(name)]
    number = str(name).removeprefix("step-")
    if number.isdigit():  # step-1200 or 1200 for step-001200, the name checkpoints are saved under
        names.append(f"step-{int(number):06d}")
    for candidate in names:
        # the run's own checkpoints first: a relative name must not find another run's from the working directory
        for path in (run_dir / "checkpoints" / candidate, run_dir / candidate, Path(candidate)):
            if path.is_dir():
                if path.resolve().parent != (run_dir / "checkpoints").resolve():  # its result and card would say
                    raise RunError(f"checkpoint={name}: {path} is not one of {run_dir}'s checkpoints (in "  # this run
                                   f"{run_dir / 'checkpoints'}); evaluate or export it from the run that saved it")
                if wrong := ckpt.problem(path):
                    raise RunError(f"{path}: {wrong}; the checkpoint may be torn or changed since it was saved")
                return path
    kept = [c.name for c in ckpt.checkpoints(run_dir)]
    raise RunError(f"checkpoint={name}: no such directory (also looked in {run_dir / 'checkpoints'}, which holds "
                   + (", ".join(kept) if kept else "none") + "; a run keeps its last trainer.keep_last)")


def require_final(run_dir: Path, cfg) -> Path:
    """The run's final weights (RUN/model, or RUN/adapter for LoRA), refused while a `dgft train` writes the run
    (`training_now`) and while they are stale: a resumed run
    marks itself (RUN/.resuming) from its first step until it has saved its new final weights and its summary, so
    weights beside the mark are those of before a resume that has not ended (or was killed)."""
    weights = Path(run_dir) / ("model" if cfg.model.finetune == "full" else "adapter")
    if (pid := training_now(run_dir)) is not None:  # its final weights and their record are not whole yet
        raise RunError(f"{run_dir}: a `dgft train` (pid {pid}) is writing this run now; its final weights are read "
                       "once it has ended: wait for it, or use one of its checkpoints (checkpoint=step-N)")
    if weights.is_dir() and (Path(run_dir) / RESUMING).exists():
        raise RunError(f"{weights}: saved before the run was resumed, and the resumed training has not ended "
                       f"({Path(run_dir) / RESUMING}); use one of its checkpoints (checkpoint=step-N), or let the "
                       f"resume finish (`dgft train resume={run_dir}`)")
    return weights


def no_weights(run_dir: Path, weights: Path, lora: bool, checkpoint: bool = False) -> str:
    """Why a run's final weights (or a checkpoint's) are missing, and, for final weights, the checkpoints a run
    stopped before its end still has (a crash, a kill): the way on."""
    from dgft.checkpoint import checkpoints, is_valid

    what = "LoRA adapter (adapter_config.json)" if lora else "model weights (config.json)"
    if not checkpoint and summary(run_dir) is not None:  # training ended and wrote them: removed since
        return (f"{weights}: no {what}, though training ended (train_summary.json); "
                f"{'was it' if lora else 'were they'} moved or deleted?")
    steps = [] if checkpoint else [c.name for c in checkpoints(run_dir)
                                   if not c.name.startswith(".") and is_valid(c, verify_hashes=False)]
    if not steps:
        return f"{weights}: no {what}; did training finish?"
    return (f"{weights}: no {what}: training did not finish, and the run has {len(steps)} whole checkpoint(s), the "
            f"last {steps[-1]}; pass checkpoint={steps[-1]} to use it, or finish training with `dgft train "
            f"resume={run_dir}`")


def require_weights(run_dir: Path, cfg, checkpoint: str | Path | None = None) -> Path:
    """The directory `load_model` reads (the final model/ or adapter/, or the checkpoint's), refused with a
    RunError naming it when it holds no weights (a run that never finished) or they are stale (`require_final`)."""
    if not checkpoint:
        require_final(run_dir, cfg)
    src = Path(checkpoint) if checkpoint else None
    if src is not None and not src.is_dir():  # found when the command began: removed since
        raise RunError(f"{src}: no longer there (a training still running keeps only its last trainer.keep_last "
                       "checkpoints); pick a newer one")
    weights = src or Path(run_dir) / ("model" if cfg.model.finetune == "full" else "adapter")
    if not (weights / ("config.json" if cfg.model.finetune == "full" else "adapter_config.json")).exists():
        raise RunError(no_weights(run_dir, weights, cfg.model.finetune == "lora", checkpoint=src is not None))
    ended = {} if checkpoint else summary(run_dir) or {}
    if not checkpoint:
        _as_sealed(weights, ended.get("weights"), "weights", "these are not the weights the run trained")
    trained = ended.get("settings_sha256")
    if isinstance(trained, str) and trained_settings_digest(run_dir) != trained:
        from dgft.config import unknown_settings

        if unknown := unknown_settings(read_yaml(Path(run_dir) / "config.yaml")):  # left out of the model, not the sha
            raise RunError(f"{Path(run_dir) / 'config.yaml'}: changed since training ended (train_summary.json "
                           f"records its settings' sha256): it holds {', '.join(unknown)}, which this version of dgft "
                           "does not know (added by hand?); remove them")
        raise RunError(f"{Path(run_dir) / 'config.yaml'}: its training settings (task, model, noise, trainer, seed) "
                       "changed since training ended (train_summary.json records their sha256); eval and export read "
                       "the run's model from them, so an edited copy would measure or export another model than the "
                       "one trained. Put them back (the sampler's settings and paths such as model.path may change: "
                       "runs.NOT_THE_MODEL)")
    return weights


def heldout_records(data_dir: Path) -> dict:
    """train_summary.json's `heldout`: RUN/data/heldout.*'s size and sha256, and a gzip file's content's sha256 too
    (its header holds a time: the same examples compressed again are another file, and still the split)."""
    from dgft import checkpoint as ckpt

    files = sorted(Path(data_dir).glob("heldout.*"))
    records = ckpt.file_records(Path(data_dir), files)
    for path in files:
        if path.suffix == ".gz":
            records[path.name]["content_sha256"] = _content_sha256(path)
    return records


def _content_sha256(path: Path) -> str:
    """sha256 of a gzip file's content, decompressed (OSError, EOFError or zlib.error when it is not whole gzip)."""
    import gzip
    import hashlib

    return hashlib.sha256(gzip.decompress(path.read_bytes())).hexdigest()


def require_heldout(run: Path, path: Path) -> Path:
    """`path`, the run's held-out split (RUN/data/heldout.*, what `dgft eval RUN` reads without data=), refused
    (RunError) when it is not as training wrote it (train_summary.json's `heldout` record): a file cut short by a full
    disk or a copy, or edited, would be scored as if it were the whole split. A missing one is left to the reader,
    which names it; a run without the record (before session 36) is not checked."""
    import zlib

    record = ((summary(run) or {}).get("heldout") or {}).get(path.name)
    if not isinstance(record, dict) or not path.is_file():
        return path
    content = record.get("content_sha256")
    if content is not None:  # compressed again, the same examples are the same split
        try:
            if _content_sha256(path) == content:
                return path
        except (OSError, EOFError, zlib.error):  # gzip.BadGzipFile is an OSError: cut short, or not gzip
            pass
        record = {k: v for k, v in record.items() if k != "content_sha256"}
    _as_sealed(path.parent, {path.name: record}, "heldout", "its figures would not be the run's held-out split's; "
               f"evaluate the file as it is with data={path} name=OTHER, or train again")
    return path


def _as_sealed(path: Path, recorded, key: str, consequence: str) -> None:
    """`path`'s files as `recorded`, train_summary.json's record `key`, lists them (sizes, sha256: the final weights,
    a tiny LoRA run's base), else a RunError naming the first difference and `consequence`; nothing to check without
    the record (a run from before session 35)."""
    if not isinstance(recorded, dict):
        return
    from dgft import checkpoint as ckpt

    try:
        changed = ckpt.mismatch(path, recorded)
    except (KeyError, TypeError, ValueError):
        changed = "its record in train_summary.json is unreadable"
    if changed:
        raise RunError(f"{path}: {changed} (train_summary.json's `{key}` records it as training saved it); "
                       f"{consequence}")


# config.yaml's keys left out of its digest: the sampler's (an export carries them, and they may be edited), where
# things are (a pretrained base or a tokenizer moved to another disk or machine, the data cache) and how the run was
# started or runs (its name, device, threads, resume): none changes what the trained model is
NOT_THE_MODEL = ("sampler", "name", "device", "resume", "model.path", "task.tokenizer", "task.cache_dir",
                 "task.sources", "trainer.num_threads")


def trained_settings_digest(run_dir: Path) -> str:
    """sha256 of RUN/config.yaml's settings but NOT_THE_MODEL's (what the trained model is: task, model, noise,
    trainer, seed), as read back from the file."""
    import hashlib
    import json

    settings = OmegaConf.to_container(read_yaml(Path(run_dir) / "config.yaml"), resolve=True)
    if not isinstance(settings, dict):
        return ""
    for key in NOT_THE_MODEL:
        section, _, leaf = key.rpartition(".")
        node = settings.get(section) if section else settings
        if isinstance(node, dict):
            node.pop(leaf, None)
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()


def load_model(run_dir: str | Path, cfg=None, checkpoint: str | Path | None = None, device="cpu"):
    """The trained model of a run (full weights, or base + adapter, optionally from a checkpoint directory that
    `checkpoint_dir` found and checked)."""
    from transformers import DiffusionGemmaForBlockDiffusion

    from dgft.model import load_adapter, one_expert_path

    run_dir = Path(run_dir)
    cfg = cfg or load_config(run_dir)
    weights = require_weights(run_dir, cfg, checkpoint)
    if cfg.model.finetune == "full":
        with unreadable(weights):
            model = one_expert_path(DiffusionGemmaForBlockDiffusion.from_pretrained(str(weights),
                                                                                   use_safetensors=True))
    else:
        quantized = cfg.model.get("quantize", "none") == "nf4"
        base = load_base(run_dir, cfg, device=device if quantized else "cpu")
        with unreadable(weights):
            model = load_adapter(base, weights)
    if checkpoint and keeps_average(cfg):  # only then has a checkpoint an average to read
        with unreadable(Path(checkpoint)):
            apply_average_(model, checkpoint, cfg)
    return (model if cfg.model.get("quantize", "none") == "nf4" else model.to(device)).eval()


@contextlib.contextmanager
def unreadable(path: Path):
    """Weights or an adapter that exist but cannot be read (truncated, corrupt JSON): a RunError naming the dir."""
    from safetensors import SafetensorError

    from dgft.model import ModelLoadError
    from dgft.stream import config_errors

    try:
        yield
    except (RunError, ModelLoadError):
        raise
    except (KeyError, RuntimeError, SafetensorError, TypeError, AttributeError,
            *config_errors()) as err:  # json's, torch's, safetensors', transformers' (an edited config.json): the files
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
        path = Path(run_dir) / "base"
        if not (path / "config.json").is_file():
            raise RunError(f"{path}: no base weights (config.json) for this LoRA run; the run wrote them when it "
                           "started, so it is incomplete or was changed")
        _as_sealed(path, (summary(run_dir) or {}).get("base"), "base", "the adapter was trained on the base as it was")
        with unreadable(path):
            base = one_expert_path(DiffusionGemmaForBlockDiffusion.from_pretrained(str(path), use_safetensors=True))
        return quantize_tiny_(base, device, group) if quantized else base
    if quantized:
        return load_quantized(cfg.model.path, device, group)
    return load_pretrained(cfg.model.path, dtype=trained_dtype(run_dir, cfg),
                           trust_remote_code=cfg.model.trust_remote_code)


def trained_dtype(run_dir: str | Path, cfg) -> torch.dtype:
    """The dtype training loaded a pretrained base in, so that evaluation and export use the model that trained:
    `model.dtype`, or for `auto` what the run's last training session chose (run.json: its dtype, or for a run
    recorded before dgft wrote one, bf16 on a CUDA device and fp32 elsewhere)."""
    if cfg.model.dtype in ("fp32", "bf16"):
        return {"fp32": torch.float32, "bf16": torch.bfloat16}[cfg.model.dtype]
    last = last_session(run_dir)
    if last.get("dtype") in ("float32", "bfloat16"):
        return getattr(torch, last["dtype"])
    return torch.bfloat16 if str(last.get("device", "")).startswith("cuda") else torch.float32


def last_session(run_dir: str | Path) -> dict:
    """RUN/run.json's record of the latest `dgft train` that wrote the run ({} when unreadable)."""
    import json

    with contextlib.suppress(ValueError, OSError, TypeError, AttributeError):
        info = json.loads((Path(run_dir) / "run.json").read_text())
        last = (info.get("sessions") or [info])[-1]
        return last if isinstance(last, dict) else {}
    return {}


def load_tokenizer(run_dir: str | Path):
    from transformers import AutoTokenizer

    path = Path(run_dir) / "tokenizer"
    if not path.exists():
        raise RunError(f"{path}: no tokenizer saved in this run")
    return AutoTokenizer.from_pretrained(str(path))


def real_run_dir(run: Path) -> Path:
    """The run a path names, links followed (`outputs/sudoku/latest` moves on with the next training; what an
    evaluation or an export records must not): relative to the working directory when inside it, else absolute."""
    import os

    real = run.resolve()
    if real == run.absolute():
        return run
    try:
        return Path(os.path.relpath(real)) if real.is_relative_to(Path.cwd()) else real
    except ValueError:  # another drive
        return real


# --- what training says ------------------------------------------------------------------------
_LOG = logging.getLogger("dgft.train.run")  # the run's own record, RUN/train.log (the console gets tqdm.write)
_LOG.propagate = False


def say(message: str) -> None:
    """A line for the console (above the progress bar) and for the run's train.log."""
    tqdm.write(message)
    _LOG.info(message)


@contextlib.contextmanager
def logged_to(path: Path):
    """`say` also writes to `path` (RUN/train.log) while this holds."""
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("[%(asctime)s] %(message)s"))
    _LOG.addHandler(handler)
    _LOG.setLevel(logging.INFO)
    try:
        yield
    finally:
        _LOG.removeHandler(handler)
        handler.close()
