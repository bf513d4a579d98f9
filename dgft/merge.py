"""Merge a LoRA adapter into a pretrained checkpoint shard by shard (never the whole model in memory).

One job: base safetensors shards + a dgft/peft adapter -> merged bf16 shards with an index that
transformers loads. Each base tensor is read alone, gets W + scale * B @ A (in fp32) when the adapter
targets it, is cast to the output dtype and written with the rest of its shard; host memory holds one
output shard at a time. The encoder and decoder share every text weight and dgft's adapter sits on the
encoder's twin (`dgft.model.attach_lora`), so an adapter entry for `model.encoder.language_model.layers.N.X`
merges into the checkpoint tensor of either twin path, once. An adapter entry that matches no base
tensor is an error (a merge that silently drops part of the adapter would still load).

Example: `merge_streaming("/models/dg-26b", "outputs/run/adapter", "outputs/run/export")`.
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


def load_adapter(adapter_dir: Path) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], float]:
    """{module path: (A (r, in), B (out, r))} and the scale alpha / r (alpha / sqrt(r) with rsLoRA)."""
    from safetensors.torch import load_file

    adapter_dir = Path(adapter_dir)
    try:
        config = json.loads((adapter_dir / "adapter_config.json").read_text())
        tensors = load_file(str(adapter_dir / "adapter_model.safetensors"))
    except (OSError, ValueError) as err:
        raise MergeError(f"{adapter_dir}: not a readable LoRA adapter ({err})") from err
    if config.get("target_parameters"):
        raise MergeError(f"{adapter_dir}/adapter_config.json: LoRA on expert parameters (target_parameters) is not "
                         f"supported by the streaming merge yet; train without model.lora.target_experts")
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
    return {k: (v["A"], v["B"]) for k, v in pairs.items()}, scale


def _twin(path: str) -> str:
    if path.startswith(ENC):
        return DEC + path[len(ENC):]
    if path.startswith(DEC):
        return ENC + path[len(DEC):]
    return path


def merge_streaming(base_dir, adapter_dir, out_dir, dtype=None, log=print) -> dict:
    """Write the merged checkpoint to `out_dir` (shards named as the base's); returns a summary.

    dtype None keeps each tensor's dtype (a bf16 checkpoint stays bf16)."""
    from safetensors.torch import save_file

    base_dir, out_dir = Path(base_dir).expanduser(), Path(out_dir)
    lora, scale = load_adapter(Path(adapter_dir))
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
        module = name[: -len(".weight")] if name.endswith(".weight") else None
        key = module if module in lora else _twin(module) if module and _twin(module) in lora else None
        if key is not None:
            if key in used or _twin(key) in used:
                raise MergeError(f"{file.name}: {name}: a second checkpoint tensor for adapter {key}; tied twins "
                                 f"must be stored once")
            a, b = lora[key]
            if tuple(tensor.shape) != (b.shape[0], a.shape[1]):
                raise MergeError(f"{file.name}: {name} has shape {tuple(tensor.shape)}, adapter {key} gives "
                                 f"{(b.shape[0], a.shape[1])}")
            tensor = (tensor.float() + scale * (b.float() @ a.float())).to(dtype or tensor.dtype)
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
