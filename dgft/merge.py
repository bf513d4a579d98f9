"""Merge a LoRA adapter into a pretrained checkpoint shard by shard (never the whole model in memory).

One job: base safetensors shards + a dgft/peft adapter -> merged bf16 shards with an index that
transformers loads. Each base tensor is read alone, gets W + scale * B @ A (in fp32) when the adapter
targets it, is cast to the output dtype and written with the rest of its shard; host memory holds one
output shard at a time. The encoder and decoder share every text weight and dgft's adapter sits on the
encoder's twin (`dgft.model.attach_lora`), so an adapter entry for `model.encoder.language_model.layers.N.X`
merges into the checkpoint tensor of either twin path, once. An adapter entry that matches no base
tensor is an error (a merge that silently drops part of the adapter would still load).

LoRA on the fused 3-D expert tensors (peft `target_parameters`, `model.lora.target_experts`) merges the same
way, expert by expert: peft stores one (A, B) pair per parameter, A (E*r, in) and B (out, E*r), and expert e's
delta is B[:, r-slice of e] @ A[e's rows] (peft's `ParamWrapper.get_delta_weight`, layout (E, out, in)).

Example: `merge_streaming("/models/dg-26b", "outputs/run/adapter", "/tmp/merged")` (a new or empty directory).
"""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import torch

from dgft.stream import iter_checkpoint, shard_files

ENC, DEC = "model.encoder.language_model.layers.", "model.decoder.layers."


class MergeError(RuntimeError):
    """The adapter and the base do not fit together; the message names the tensor."""


def load_adapter(adapter_dir: Path) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], float, int]:
    """{target: (A, B)}, the scale alpha / r (alpha / sqrt(r) with rsLoRA) and r.

    A target is a module path (its `.weight` gets B @ A; A (r, in), B (out, r)) or, for peft
    `target_parameters`, a parameter path such as `...experts.gate_up_proj` (A (E*r, in), B (out, E*r))."""
    from safetensors.torch import load_file

    adapter_dir = Path(adapter_dir)
    try:
        config = json.loads((adapter_dir / "adapter_config.json").read_text())
        tensors = load_file(str(adapter_dir / "adapter_model.safetensors"))
    except (OSError, ValueError) as err:
        raise MergeError(f"{adapter_dir}: not a readable LoRA adapter ({err})") from err
    patterns = [k for k in ("rank_pattern", "alpha_pattern") if config.get(k)]
    if patterns:  # one scale serves every tensor here; a per-module one would merge wrongly, without a word
        raise MergeError(f"{adapter_dir}/adapter_config.json: {patterns[0]} set (per-module ranks or alphas); the "
                         "streaming merge takes one r and lora_alpha for the whole adapter")
    r, alpha = int(config["r"]), float(config["lora_alpha"])
    scale = alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        m = re.fullmatch(r"(?:base_model\.model\.)?(.+)\.lora_([AB])(?:\.default)?\.weight", key)
        if not m:
            raise MergeError(f"{adapter_dir}/adapter_model.safetensors: unexpected tensor {key}")
        pairs.setdefault(m.group(1), {})[m.group(2)] = value
    broken = [k for k, v in pairs.items() if set(v) != {"A", "B"}]
    if broken:
        raise MergeError(f"{adapter_dir}: LoRA A/B pair incomplete for {broken[0]}")
    lora = {k: (v["A"], v["B"]) for k, v in pairs.items()}
    for key, param in _parameter_keys(config.get("target_parameters") or []).items():
        if key not in lora:
            raise MergeError(f"{adapter_dir}: target_parameters names {param}, but the adapter has no "
                             f"{key}.lora_A/lora_B")
        lora[param] = lora.pop(key)
    return lora, scale, r


def _parameter_keys(targets: list[str]) -> dict[str, str]:
    """peft's adapter key of each `target_parameters` entry -> the parameter path.

    peft wraps the parameters of one module one inside the other, in list order, so the first sits deepest:
    of n parameters of `m`, the k-th (from 0) is saved under `m` + `.base_layer` * (n - 1 - k)."""
    by_module: dict[str, list[str]] = {}
    for target in targets:
        module, _, _ = target.rpartition(".")
        by_module.setdefault(module, []).append(target)
    keys = {}
    for module, params in by_module.items():
        for k, param in enumerate(params):
            keys[module + ".base_layer" * (len(params) - 1 - k)] = param
    return keys


def _delta(tensor: torch.Tensor, a: torch.Tensor, b: torch.Tensor, scale: float, where: str, dtype,
           rank: int) -> torch.Tensor:
    """tensor + scale * B @ A in fp32, cast to `dtype`; a 3-D (E, out, in) expert tensor expert by expert. A has
    `rank` rows per expert (the adapter's r): an adapter made for another number of experts is refused, not spread
    over these."""
    if tensor.dim() == 2:
        if tuple(tensor.shape) != (b.shape[0], a.shape[1]) or a.shape[0] != rank:
            raise MergeError(f"{where} has shape {tuple(tensor.shape)}, the adapter gives {(b.shape[0], a.shape[1])} "
                             f"at rank {a.shape[0]} (r={rank})")
        return (tensor.float() + scale * (b.float() @ a.float())).to(dtype)
    experts = tensor.shape[0]
    if tensor.dim() != 3 or a.shape[0] != experts * rank or tuple(tensor.shape[1:]) != (b.shape[0], a.shape[1]) \
            or b.shape[1] != a.shape[0]:
        raise MergeError(f"{where} has shape {tuple(tensor.shape)}; the adapter's A {tuple(a.shape)} and B "
                         f"{tuple(b.shape)} do not fit (E, out, in) experts at r={rank}")
    a3 = a.float().reshape(experts, rank, -1)  # (E, r, in)
    b3 = b.float().reshape(b.shape[0], rank, experts)  # (out, r, E)
    out = torch.empty(tensor.shape, dtype=dtype)
    for e in range(experts):  # one expert's fp32 delta at a time: a 26B layer's would be 2 GB at once
        out[e] = (tensor[e].float() + scale * (b3[:, :, e] @ a3[e])).to(dtype)
    return out


def _twin(path: str) -> str:
    if path.startswith(ENC):
        return DEC + path[len(ENC):]
    if path.startswith(DEC):
        return ENC + path[len(DEC):]
    return path


def _adapter_key(name: str, lora: dict) -> str | None:
    """The adapter entry for checkpoint tensor `name` (a module's `.weight`, or a targeted parameter), if any."""
    for target in (name[: -len(".weight")] if name.endswith(".weight") else None, name):
        if target is not None and (target in lora or _twin(target) in lora):
            return target if target in lora else _twin(target)
    return None


def merge_streaming(base_dir, adapter_dir, out_dir, dtype=None, log=print, weights_of=None) -> dict:
    """Write the merged checkpoint to `out_dir` (shards named as the base's); returns a summary.

    dtype None keeps each tensor's dtype (a bf16 checkpoint stays bf16). `weights_of(name, tensor)`, if given, is
    what the base computed with in place of a checkpoint tensor (a 4-bit base's dequantized weights,
    `dgft.quant.as_trained`), or None where that is the tensor itself."""
    from safetensors.torch import save_file

    base_dir, out_dir = Path(base_dir).expanduser(), Path(out_dir)
    lora, scale, rank = load_adapter(Path(adapter_dir))
    if out_dir.is_dir() and any(out_dir.iterdir()):  # a failed merge would leave new shards among old files
        raise MergeError(f"{out_dir}: not empty; the merge writes a new directory (`dgft export` swaps it in)")
    out_dir.mkdir(parents=True, exist_ok=True)
    used: set[str] = set()
    weight_map, total, merged = {}, 0, 0
    files = shard_files(base_dir)
    current, tensors = None, {}

    def flush():
        if current is not None:
            save_file(tensors, str(out_dir / current.name), metadata={"format": "pt"})

    for file, name, source in iter_checkpoint(base_dir):
        if file != current:
            flush()
            current, tensors = file, {}
            log(f"merging {file.name} ({files.index(file) + 1}/{len(files)})")
        tensor = source[:]
        trained = weights_of(name, tensor) if weights_of is not None else None
        tensor = tensor if trained is None else trained
        key = _adapter_key(name, lora)
        if key is not None:
            if key in used or _twin(key) in used:
                raise MergeError(f"{file.name}: {name}: a second checkpoint tensor for adapter {key}; tied twins "
                                 f"must be stored once")
            a, b = lora[key]
            tensor = _delta(tensor, a, b, scale, f"{file.name}: {name}", dtype or tensor.dtype, rank)
            used.add(key)
            merged += 1
        elif tensor.is_floating_point() and dtype is not None:
            tensor = tensor.to(dtype)
        tensors[name] = tensor.contiguous()
        weight_map[name] = file.name
        total += tensor.numel() * tensor.element_size()
    flush()
    unused = sorted(set(lora) - used)
    if unused:
        raise MergeError(f"{len(unused)} adapter module(s) match no tensor of {base_dir} (first: {unused[0]}); "
                         f"nothing usable was written")
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (out_dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=1))
    for extra in ("config.json", "generation_config.json"):
        if (base_dir / extra).exists():
            shutil.copy2(base_dir / extra, out_dir / extra)
    return {"merged_tensors": merged, "adapter_modules": len(lora), "scale": scale, "bytes": total,
            "shards": len(files)}
