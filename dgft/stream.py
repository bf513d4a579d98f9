"""Load a DiffusionGemma checkpoint shard by shard, tensor by tensor, straight into (4-bit) device memory.

One job: turn a directory of safetensors shards into a model on the GPU without a bf16 copy of the
model anywhere. The skeleton is built on the meta device; each checkpoint tensor is read lazily from its
shard (expert stacks one expert at a time), moved to the device and, for 4-bit slots, quantized there;
tied names (the encoder and decoder share every text weight) get the one tensor. Host memory holds at
most one tensor (one expert for expert stacks); device memory never holds more than one bf16 expert
matrix beyond the 4-bit model.

`random_source` gives the same code path random weights, for measuring the real architecture where the
released weights cannot be downloaded (bench/qlora_memory.py).

Example: `model = load_streaming("/models/diffusiongemma-26B-A4B-it", quantize="nf4", device="cuda")`.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import torch
from torch import nn

from dgft import quant


class StreamLoadError(RuntimeError):
    """The checkpoint does not match the model; the message names the file and tensor."""


def skeleton(config):
    """The model with every weight on the meta device (buffers real, on the CPU)."""
    from accelerate import init_empty_weights
    from transformers import DiffusionGemmaForBlockDiffusion

    with init_empty_weights(include_buffers=False):
        model = DiffusionGemmaForBlockDiffusion(config)
    model.tie_weights()  # post_init skips the encoder/decoder tie on meta weights
    return model


def shard_files(path: Path) -> list[Path]:
    index = path / "model.safetensors.index.json"
    if index.exists():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (ValueError, KeyError) as err:
            raise StreamLoadError(f"{index}: not a safetensors index ({err})") from err
        return [path / name for name in sorted(set(weight_map.values()))]
    single = path / "model.safetensors"
    if single.exists():
        return [single]
    raise StreamLoadError(f"{path}: no model.safetensors or model.safetensors.index.json")


class _Lazy:
    """A safetensors slice that reads one index (one expert) or everything on demand."""

    def __init__(self, handle, name):
        self._slice = handle.get_slice(name)
        self.shape = tuple(self._slice.get_shape())

    def __getitem__(self, item):
        return self._slice[item]

    def get_dtype(self) -> str:
        """safetensors' name of the stored dtype ("BF16", "F32", "I8", ...)."""
        return self._slice.get_dtype()


def iter_checkpoint(path: Path):
    """(shard file, tensor name, lazy source) for every tensor of every shard, one shard open at a time."""
    from safetensors import safe_open

    for file in shard_files(path):
        try:
            handle = safe_open(str(file), framework="pt", device="cpu")
        except Exception as err:  # noqa: BLE001 - missing (OSError) or damaged (SafetensorError): named either way
            raise StreamLoadError(f"{file}: cannot read this shard ({type(err).__name__}: {err})") from None
        with handle:
            for name in handle.keys():
                yield file, name, _Lazy(handle, name)


def _aliases(model) -> dict[str, list[tuple[nn.Module, str]]]:
    """Every name of every parameter -> all (module, attribute) that hold that same parameter."""
    holders = defaultdict(list)
    names = defaultdict(list)
    for module_name, module in model.named_modules(remove_duplicate=False):
        for attr, param in module._parameters.items():
            if param is None:
                continue
            holders[id(param)].append((module, attr))
            names[id(param)].append(f"{module_name}.{attr}" if module_name else attr)
    return {name: holders[key] for key, group in names.items() for name in group}


def _buffers(model) -> dict[str, list[tuple[nn.Module, str]]]:
    """Every name of every buffer -> all (module, key) holding it (a checkpoint may carry buffers)."""
    found = defaultdict(list)
    for module_name, module in model.named_modules(remove_duplicate=False):
        for key, buf in module._buffers.items():
            if buf is not None:
                found[f"{module_name}.{key}" if module_name else key].append((module, key))
    return found


def buffer_names(model) -> set[str]:
    """The checkpoint names of the model's buffers, which `Loader` keeps in the model's own dtype."""
    return set(_buffers(model))


def _is_vision(name: str) -> bool:
    return ".vision_tower." in name or ".embed_vision." in name


class Loader:
    """Places named tensors into a meta skeleton; `finish()` checks nothing was left out."""

    def __init__(self, config, quantize: str = "nf4", device="cuda", dtype=torch.bfloat16, vision_device="cpu",
                 group_size: int = 32):
        self.model = skeleton(config)
        self.device = torch.device(device)
        self.dtype = dtype
        self.vision_device = torch.device(vision_device)
        self.slots = quant.make_slots(self.model, self.device, dtype, group_size) if quantize == "nf4" else {}
        self.aliases = _aliases(self.model)
        self.buffers = _buffers(self.model)
        self.filled: dict[tuple, str] = {}  # what each placed tensor filled (a tied twin fills its twin's) -> its name

    def _fill(self, target: tuple, name: str, where: str, same) -> bool:
        """Record that `name` fills `target`; False if a copy filled it already and `same()` says it is equal (a
        tied twin stored twice, alike, as a plain safetensors dump of a state_dict stores it), and a StreamLoadError
        if it is not (which copy would win is the order of the file)."""
        first = self.filled.get(target)
        if first is None:
            self.filled[target] = name
            return True
        if same():
            return False
        twin = "the same tensor twice" if first == name else f"a tied twin of {first}, placed already"
        raise StreamLoadError(f"{where}{name}: {twin}, with other values; encoder and decoder share this weight, so "
                              "the checkpoint must hold one value for it")

    def _same_4bit(self, name: str, source) -> bool:
        """Whether a second copy of a 4-bit weight quantizes to the codes its first copy did (expert by expert)."""
        prefix, _, leaf = name.rpartition(".")
        slot = self.slots[prefix]
        if isinstance(slot, quant.NF4Experts):
            stack = slot.stack(leaf)
            if tuple(source.shape) != tuple(stack.shape):
                return False
            one = quant.NF4Stack(1, *stack.shape[1:], dtype=stack.dtype, device=stack.packed.device)
            for e in range(stack.shape[0]):
                one.set(0, source[e])
                if not all(torch.equal(getattr(one, b)[0], getattr(stack, b)[e])
                           for b in ("packed", "qabsmax", "absmax2", "offset")):
                    return False
            return True
        tensor = source if torch.is_tensor(source) else source[:]
        if tuple(tensor.shape) != (slot.out_features, slot.in_features):
            return False
        have = quant._bnb_functional().dequantize_4bit(slot.weight.data, slot.weight.quant_state)
        return torch.equal(quant.as_trained(self.slots, name, tensor, device=self.device), have.to(torch.bfloat16).cpu())

    def place(self, name: str, source, where: str = "") -> None:
        prefix, _, leaf = name.rpartition(".")
        slot = self.slots.get(prefix)
        if slot is not None and (isinstance(slot, quant.NF4Experts) or leaf == "weight"):  # a 4-bit weight
            if not _floating(source):
                raise StreamLoadError(f"{where}{name}: {_dtype_name(source)} values for a floating-point weight")
            if not self._fill((id(slot), leaf), name, where, same=lambda: self._same_4bit(name, source)):
                return  # a tied twin stored twice, alike: placed already
        try:
            placed = quant.place(self.slots, name, source, self.device)
        except (ValueError, IndexError, KeyError) as err:  # a 4-bit slot's checks (shape; a tensor it has no place
            # for, e.g. an FP8 scale): named, as every mismatch here is
            message = err.args[0] if isinstance(err, KeyError) and err.args else err
            raise StreamLoadError(f"{where}{name}: {message}") from None
        if placed:
            return
        if name in self.buffers:
            tensor = source if torch.is_tensor(source) else source[:]
            module, key = self.buffers[name][0]
            old = module._buffers[key]
            if tuple(old.shape) != tuple(tensor.shape):
                raise StreamLoadError(f"{where}{name}: shape {tuple(tensor.shape)}, model expects {tuple(old.shape)}")
            for module, key in self.buffers[name]:
                module._buffers[key] = tensor.to(module._buffers[key].dtype)
            return
        holders = self.aliases.get(name)
        if holders is None:
            raise StreamLoadError(f"{where}{name}: tensor not in the model (shape {tuple(source.shape)})")
        tensor = source if torch.is_tensor(source) else source[:]
        device = self.vision_device if _is_vision(name) else self.device
        module, attr = holders[0]
        old = module._parameters[attr]
        if old is not None and tuple(old.shape) != tuple(tensor.shape):
            raise StreamLoadError(f"{where}{name}: shape {tuple(tensor.shape)}, model expects {tuple(old.shape)}")
        if old is not None and old.dtype.is_floating_point and not tensor.is_floating_point():
            raise StreamLoadError(f"{where}{name}: {_dtype_name(tensor)} values for a floating-point weight")
        dtype = self.dtype if tensor.is_floating_point() else tensor.dtype
        if not self._fill((id(module), attr), name, where, same=lambda: torch.equal(
                module._parameters[attr], tensor.to(device, dtype))):
            return  # a tied twin stored twice, alike: placed already
        param = nn.Parameter(tensor.to(device, dtype), requires_grad=False)
        for module, attr in holders:
            module._parameters[attr] = param

    def finish(self):
        """Buffers to their devices; error naming any weight that never arrived."""
        missing = sorted({n for n, p in self.model.named_parameters() if p.is_meta})
        experts = {id(m): (prefix, m) for prefix, m in self.slots.items()  # the decoder's name, set last: the one
                   if isinstance(m, quant.NF4Experts)}  # transformers' save_pretrained stores
        for prefix, m in experts.values():
            for stack_name in ("gate_up", "down"):
                stack = getattr(m, stack_name)
                if not bool(stack.filled.all()):
                    missing.append(f"{prefix}.{stack_name}_proj ({int((~stack.filled).sum())} of {stack.shape[0]} "
                                   "experts unfilled)")
        if missing:
            shown = ", ".join(missing[:8]) + (f" and {len(missing) - 8} more" if len(missing) > 8 else "")
            raise StreamLoadError(f"checkpoint lacks {len(missing)} weight(s): {shown}")
        for name, module in self.model.named_modules():
            for key, buf in module._buffers.items():
                if buf is not None and not isinstance(module, quant.NF4Stack):
                    module._buffers[key] = buf.to(self.vision_device if _is_vision(name) else self.device)
        self.model.eval()
        return self.model


def _floating(source) -> bool:
    """Whether a tensor or a lazy source (a safetensors slice: get_dtype) holds floating-point values."""
    if torch.is_tensor(source):
        return source.is_floating_point()
    return source.get_dtype().startswith(("F", "BF")) if hasattr(source, "get_dtype") else True  # random_source


def _dtype_name(source) -> str:
    return str(source.dtype).removeprefix("torch.") if torch.is_tensor(source) else source.get_dtype()


def config_errors() -> tuple[type[Exception], ...]:
    """What reading a config.json transformers cannot use raises: OSError, ValueError, and (huggingface_hub 1.x) its
    strict dataclass checks (`num_hidden_layers` against `layer_types`), which are neither."""
    try:
        from huggingface_hub.errors import StrictDataclassError
    except ImportError:  # a huggingface_hub before strict dataclasses
        return (OSError, ValueError)
    return (OSError, ValueError, StrictDataclassError)


def load_streaming(path, quantize: str = "nf4", device="cuda", dtype=torch.bfloat16, group_size: int = 32):
    """A DiffusionGemma from a local checkpoint dir, streamed shard by shard (4-bit if quantize="nf4")."""
    from transformers import DiffusionGemmaConfig

    path = Path(path).expanduser()
    try:
        config = DiffusionGemmaConfig.from_pretrained(str(path))
    except config_errors() as err:
        raise StreamLoadError(f"{path}: no readable DiffusionGemma config.json ({err})") from err
    loader = Loader(config, quantize, device, dtype, group_size=group_size)
    for file, name, source in iter_checkpoint(path):
        loader.place(name, source, where=f"{file.name}: ")
    return loader.finish()


def random_source(shape, device, generator=None, std: float = 0.02, dtype=torch.bfloat16):
    """Random weights created directly on `device`; expert stacks are generated one expert at a time."""

    class _Random:
        def __init__(self):
            self.shape = tuple(shape)

        def __getitem__(self, item):
            sub = self.shape[1:] if isinstance(item, int) else self.shape
            return torch.randn(sub, device=device, generator=generator, dtype=dtype).mul_(std)

    return _Random()
