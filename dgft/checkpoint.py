"""Checkpoints that a crash never tears: written to a temporary directory, renamed into place, and sealed
by a manifest (step, files, sizes, sha256) written last. A checkpoint without a valid manifest is skipped.

Layout: RUN/checkpoints/step-000500/{model or adapter files, trainer_state.pt, extra.json (step, RNG states, data
position), manifest.json}.
Weights are safetensors; `trainer_state.pt` (optimizer, scheduler) is the only pickle and is loaded with
`weights_only=True`.

Example: `save(run_dir, step, model, {"optimizer": opt.state_dict(), ...}, rng_state)`; `latest_valid(run_dir)`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import warnings
from pathlib import Path

import torch


class Notice(UserWarning):
    """What dgft says of a run's checkpoints while it goes on (one passed over as torn, one removed): the CLI prints
    it as one line, `warning: ...`."""


MANIFEST = "manifest.json"
TRAINER_STATE = "trainer_state.pt"  # optimizer and scheduler: the only pickle, loaded with weights_only=True
EXTRA = "extra.json"  # step, RNG states, data position, elapsed seconds


class CheckpointError(RuntimeError):
    """A checkpoint could not be written; the previous one is intact."""


_HASHED: dict[tuple, str] = {}  # (device, inode, size, mtime_ns, ctime_ns) -> sha256, for this process
SETTLED_NS = 2_000_000_000  # a file changed more recently than this is always read: its times may not show a change


def sha256(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks. A file this process has hashed, unchanged since (same inode,
    size, modification and change times), is not read again: an eval or export checks the same weights against
    train_summary.json, the manifest and its own record (gigabytes for a full fine-tune of a large model). A file's
    times tick coarsely (milliseconds), so one written less than SETTLED_NS ago is not remembered (git's "racily
    clean" files): a change in the same tick would look like none."""
    info = os.stat(path)
    key = (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)
    if key in _HASHED:
        return _HASHED[key]
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    if time.time_ns() - max(info.st_mtime_ns, info.st_ctime_ns) > SETTLED_NS:
        _HASHED[key] = h.hexdigest()
    return h.hexdigest()


ADAPTER_README = """# A dgft LoRA adapter for DiffusionGemmaForBlockDiffusion

DiffusionGemma's encoder and decoder share their weights, so this adapter is saved once, on the encoder's modules,
and serves both. Load it with dgft, which makes the decoder use the same LoRA modules:

    from transformers import DiffusionGemmaForBlockDiffusion
    from dgft.model import load_adapter
    model = load_adapter(DiffusionGemmaForBlockDiffusion.from_pretrained(BASE), "THIS_DIR")

or merge it: `PeftModel.from_pretrained(base, "THIS_DIR").merge_and_unload()` is right (the tied weight is
updated once). **Plain `PeftModel.from_pretrained` without merging adapts the encoder only**: the decoder, which
runs every denoising pass, keeps the base weights, and peft gives no warning.
"""


def save_weights(model, out_dir: Path) -> None:
    """Model or adapter as safetensors (peft models save the adapter only; LoRA on 4-bit experts, which peft
    does not know of, is added to the adapter file under the keys peft gives expert LoRA)."""
    from dgft.model import expert_lora_tensors

    model.save_pretrained(str(out_dir), safe_serialization=True)
    if (Path(out_dir) / "adapter_config.json").exists():  # peft's model card, blank: say how this adapter loads
        (Path(out_dir) / "README.md").write_text(ADAPTER_README)
    experts = expert_lora_tensors(model)
    if experts:
        from safetensors.torch import load_file, save_file

        path = Path(out_dir) / "adapter_model.safetensors"
        tensors = load_file(str(path))
        tensors.update({k: v.cpu().contiguous() for k, v in experts.items()})
        save_file(tensors, str(path), metadata={"format": "pt"})
    readable_as_umask_allows(Path(out_dir))


def _umask() -> int:
    """The process's umask, read without setting it where Linux shows it (setting it races with other threads)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    umask = os.umask(0)
    os.umask(umask)
    return umask


def readable_as_umask_allows(directory: Path) -> None:
    """Give the .safetensors files under `directory` the mode a file written with open() gets (0o666 less the
    umask). safetensors 0.8 writes them through a temporary file of mode 0o600 (safetensors issue #782), so weights
    handed to others, or read by another user of the machine, would be unreadable to them."""
    umask = _umask()
    for path in Path(directory).rglob("*.safetensors"):
        if path.is_file() and not path.is_symlink():
            path.chmod(0o666 & ~umask)


def save(run_dir: Path, step: int, model, trainer_state: dict, extra: dict, keep_last: int = 2) -> Path:
    """Write checkpoint `step-XXXXXX` atomically, then prune to the last `keep_last` valid ones."""
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:06d}"
    tmp, old = root / f".tmp-step-{step:06d}", root / f".old-step-{step:06d}"
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        save_weights(model, tmp)
        torch.save(trainer_state, tmp / TRAINER_STATE)
        (tmp / EXTRA).write_text(json.dumps(extra))
        files = file_records(tmp, [p for p in sorted(tmp.iterdir()) if p.is_file()])
        (tmp / MANIFEST).write_text(json.dumps({"step": step, "files": files}, indent=1))  # written last
        _fsync_dir(tmp)
        if final.exists():  # the same step saved again: the old copy goes only once the new one is in place
            os.replace(final, old)
        os.replace(tmp, final)
        _fsync_dir(root)
    except Exception as err:  # a full disk reaches here as OSError, or as safetensors' or torch's own error
        try:  # torch's own words for a full disk name no disk ("unexpected pos ..."): the free space does (before the
            free = f" ({shutil.disk_usage(root).free / 2**20:.0f} MiB free there)"  # partial checkpoint is removed)
        except OSError:
            free = ""
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists() and not final.exists():
            os.replace(old, final)
        previous = latest_valid(run_dir)
        raise CheckpointError(
            f"could not write checkpoint step {step} to {final}: {getattr(err, 'strerror', None) or err}{free}. "
            + (f"The previous checkpoint {previous} is intact; resume with `dgft train resume={run_dir}` "
               f"once there is space." if previous else "No earlier checkpoint exists.")) from err
    shutil.rmtree(old, ignore_errors=True)
    prune(root, keep_last)
    return final


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def weight_hashes(directory: Path) -> dict[str, str]:
    """{file name: sha256} of the weight files (*.safetensors) `from_pretrained` reads from `directory`: what an
    evaluation records of the weights it measured."""
    return {p.name: sha256(p) for p in sorted(Path(directory).glob("*.safetensors"))}


def model_files(directory: Path) -> list[Path]:
    """The files that make a saved model or adapter what it is (weights and JSON configs, not its README)."""
    return sorted(p for p in Path(directory).iterdir() if p.is_file() and p.suffix in (".safetensors", ".json"))


def file_records(root: Path, files) -> dict[str, dict]:
    """{path relative to root: {bytes, sha256}} of `files`: what a manifest (a checkpoint's, an export's) records."""
    return {Path(p).relative_to(root).as_posix(): {"bytes": Path(p).stat().st_size, "sha256": sha256(Path(p))}
            for p in files}


def mismatch(root: Path, records: dict, verify_hashes: bool = True) -> str | None:
    """None if every file `records` (file_records' form) lists is under `root` with its size and, with
    `verify_hashes`, its sha256; else the first difference, in a few words. Sizes are checked first: a missing or
    truncated file is found without hashing anything."""
    for name, meta in records.items():
        path = Path(root) / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != int(meta["bytes"]):
            return f"{name} has {path.stat().st_size} bytes, the record says {meta['bytes']}"
    if verify_hashes:
        for name, meta in records.items():
            if sha256(Path(root) / name) != meta["sha256"]:
                return f"{name} changed since it was recorded (sha256 differs)"
    return None


def problem(ckpt: Path, verify_hashes: bool = True) -> str | None:
    """None for a checkpoint whose manifest checks out; else what is wrong, in a few words (no manifest, or the
    first file that differs from it)."""
    try:
        manifest = json.loads((ckpt / MANIFEST).read_text())
        records = manifest["files"]
        unlisted = sorted({p.name for p in Path(ckpt).iterdir() if p.is_file() and not p.name.startswith(".")}
                          - set(records) - {MANIFEST})  # a copy's .DS_Store or .nfs* file is none of its own
        if unlisted or not records:  # a manifest written last lists every file saved before it
            return f"{MANIFEST} does not list {', '.join(unlisted) or 'any file'}"
        wrong = mismatch(ckpt, records, verify_hashes)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return f"missing or invalid {MANIFEST}"
    number = Path(ckpt).name.rpartition("step-")[2]
    if wrong is None and number.isdigit():  # a resume trains on from the step its files say: the name's
        try:
            extra = json.loads((ckpt / EXTRA).read_text()).get("step", int(number)) if EXTRA in records else int(number)
        except (OSError, ValueError, AttributeError):
            return f"{EXTRA} is not a JSON object"
        if manifest.get("step", int(number)) != int(number) or extra != int(number):  # one without: restore names it
            return (f"its name says step {int(number)}, its {MANIFEST} {manifest.get('step')} and its {EXTRA} "
                    f"{extra}")
    return wrong


def is_valid(ckpt: Path, verify_hashes: bool = True) -> bool:
    return problem(ckpt, verify_hashes) is None


def by_step(name: str) -> tuple[int, str]:
    """Sort key of a checkpoint's name: its step as a number, so step-1000000 (seven digits) comes after step-999999;
    a name with no number after "step-" sorts first."""
    number = name.removeprefix("step-")
    return (int(number) if number.isdigit() else -1, name)


def checkpoints(run_dir: Path) -> list[Path]:
    """Checkpoint dirs of a run, oldest first (valid or not)."""
    root = Path(run_dir) / "checkpoints"
    found = {p.name: p for p in root.glob("step-*") if p.is_dir()}  # step-000001.tar: not a checkpoint
    for p in root.glob(".old-step-*"):  # a crash between moving a step saved again aside and its new copy's rename
        found.setdefault(p.name[len(".old-"):], p)
    return [found[name] for name in sorted(found, key=by_step)]


def latest_valid(run_dir: Path) -> Path | None:
    """Newest checkpoint whose manifest checks out; invalid newer ones are reported and skipped."""
    for ckpt in reversed(checkpoints(run_dir)):
        wrong = problem(ckpt)
        if wrong is None:
            return ckpt
        warnings.warn(f"{ckpt}: {wrong}; using an earlier checkpoint", Notice, stacklevel=2)
    return None


def prune(root: Path, keep_last: int) -> None:
    """Delete all but the newest `keep_last` valid checkpoints (never the newest valid one), the invalid ones
    older than the oldest kept (torn or damaged: a resume skipped them, said so, and trained past them) and the
    `.tmp-step-*` folders a killed run left half-written, each said.
    Only folders named as dgft names them (step-<digits>): a copy the user named step-best is theirs."""
    found = sorted((c for c in root.glob("step-*") if c.is_dir() and not c.is_symlink()  # step-best, step-9.tar:
                    and c.name.removeprefix("step-").isdigit()), key=lambda c: by_step(c.name))  # not dgft's
    valid = [c for c in found if is_valid(c, verify_hashes=False)]
    kept = valid[max(len(valid) - max(keep_last, 1), 0):]
    for old in valid[: len(valid) - len(kept)]:
        shutil.rmtree(old, ignore_errors=True)
    for old in (c for c in found if kept and c not in valid and by_step(c.name) < by_step(kept[0].name)):
        warnings.warn(f"{old}: {problem(old, verify_hashes=False)}; removed, as checkpoints before the kept "
                      f"{kept[0].name} are", Notice, stacklevel=2)
        shutil.rmtree(old, ignore_errors=True)
    for left in root.glob(".tmp-step-*"):  # half-written by a killed run (this one's own was renamed into place)
        if left.is_dir() and not left.is_symlink() and left.name.removeprefix(".tmp-step-").isdigit():
            warnings.warn(f"{left}: a checkpoint a killed run left half-written; removed", Notice, stacklevel=2)
            shutil.rmtree(left, ignore_errors=True)


def load_trainer_state(ckpt: Path) -> dict:
    return torch.load(ckpt / TRAINER_STATE, map_location="cpu", weights_only=True)


def load_extra(ckpt: Path) -> dict:
    return json.loads((ckpt / EXTRA).read_text())
