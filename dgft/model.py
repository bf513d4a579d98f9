"""Build or load a DiffusionGemma, attach LoRA, and run its two halves.

One job: hand the rest of dgft a `DiffusionGemmaForBlockDiffusion` (optionally LoRA-wrapped) and two calls
that hide transformers' API drift: `encode` (prompt -> KV cache) and `denoise` (cache + canvas -> logits).

Example: `model = build_tiny(cfg.model, vocab_size=812)` gives a 4-layer random-init model whose
`denoise(model, encode(model, ids, mask), canvas, mask)` returns (B, L, V) logits.
"""

from __future__ import annotations

import inspect
import math
import os
import re
import warnings
from pathlib import Path

import torch
from transformers import DiffusionGemmaConfig, DiffusionGemmaForBlockDiffusion

try:
    from transformers.models.diffusion_gemma import DiffusionGemmaGenerationConfig
except ImportError:  # pragma: no cover - older layouts
    from transformers.models.diffusion_gemma.generation_diffusion_gemma import DiffusionGemmaGenerationConfig

from dgft.tasks.sudoku.task import BOI, BOS, EOI, EOS, IMG, PAD

# LoRA goes on the encoder's copy of each tied layer weight (the name peft saves it under, see attach_lora)
ENCODER_LAYERS = "model.encoder.language_model.layers"
LORA_TARGETS = r"model\.encoder\.language_model\.layers\.\d+\.(?:self_attn|mlp)\.(?:{names})"


class ModelLoadError(RuntimeError):
    """The model cannot be loaded; the message says what to do."""


# --- build / load ---------------------------------------------------------------------------------
def tiny_config(mcfg, vocab_size: int) -> DiffusionGemmaConfig:
    """A small DiffusionGemma config (real class, few layers) for a task vocabulary."""
    from transformers.models.gemma4 import Gemma4VisionConfig

    vision = Gemma4VisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                                num_key_value_heads=1, head_dim=8, position_embedding_size=16)
    text = dict(
        vocab_size=vocab_size, hidden_size=mcfg.hidden_size, intermediate_size=mcfg.intermediate_size,
        num_hidden_layers=mcfg.num_layers, num_attention_heads=mcfg.num_heads, num_key_value_heads=mcfg.num_kv_heads,
        head_dim=mcfg.head_dim, global_head_dim=mcfg.head_dim, num_experts=mcfg.num_experts,
        top_k_experts=mcfg.top_k_experts, moe_intermediate_size=mcfg.moe_intermediate_size,
        layer_types=["full_attention"] * mcfg.num_layers, sliding_window=512, max_position_embeddings=1024,
        pad_token_id=PAD, eos_token_id=EOS, bos_token_id=BOS,
    )
    return DiffusionGemmaConfig(text_config=text, vision_config=vision, canvas_length=mcfg.canvas_length,
                                image_token_id=IMG, boi_token_id=BOI, eoi_token_id=EOI)


def build_tiny(mcfg, vocab_size: int, seed: int = 0) -> DiffusionGemmaForBlockDiffusion:
    torch.manual_seed(seed)
    model = DiffusionGemmaForBlockDiffusion(tiny_config(mcfg, vocab_size))
    model.generation_config = DiffusionGemmaGenerationConfig(bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD)
    return one_expert_path(model)


def attention_layout(model) -> dict:
    """Where a text layer's attention heads live, for initialising them by hand (`model.structured_attention`).

    -> {"layers": [(q_proj weight (heads*D, H), k_proj weight (kv_heads*D, H))] of the encoder's text layers (the
    decoder shares them), "head_dim": D, "groups": query heads per key/value head, "free": the head dims that rotary
    embeddings leave alone in full-attention layers (dim pairs i, i + D/2 with frequency 0; proportional RoPE
    rotates only a share), "rotated": the others}. In full-attention layers the values are the keys' projection
    (there is no v_proj), so what a key carries is also what the head reads.
    """
    text = model.model.encoder.language_model
    cfg = model.config.get_text_config()
    if any(layer.self_attn.v_proj is not None for layer in text.layers):
        raise ValueError("model.structured_attention: every layer must be full attention (values = keys); "
                         f"layer_types={cfg.layer_types}")
    inv_freq = getattr(text.rotary_emb, "full_attention_inv_freq")
    half = cfg.head_dim // 2
    free, rotated = torch.nonzero(inv_freq == 0)[:, 0], torch.nonzero(inv_freq != 0)[:, 0]
    return {"layers": [(layer.self_attn.q_proj.weight, layer.self_attn.k_proj.weight) for layer in text.layers],
            "head_dim": cfg.head_dim, "groups": cfg.num_attention_heads // cfg.num_key_value_heads,
            "free": torch.cat([free, free + half]), "rotated": torch.cat([rotated, rotated + half])}


# --- the experts block of a one-expert model ------------------------------------------------------
ONE_EXPERT = "dgft_one_expert"


def _one_expert_forward(self, hidden_states, top_k_index, top_k_weights):
    """`DiffusionGemmaTextExperts.forward` when there is one expert: every token's every pick is expert 0, so
    the block is that expert's gated MLP scaled by the summed routing weights. Same result as transformers'
    grouped_mm path, without its sort, gather, scatter and two host-device syncs per call."""
    import torch.nn.functional as F

    gate, up = F.linear(hidden_states, self.gate_up_proj[0]).chunk(2, dim=-1)
    out = F.linear(self.act_fn(gate) * up, self.down_proj[0])
    return out * top_k_weights.sum(-1, keepdim=True).to(out.dtype)


def one_expert_path(model):
    """Give a one-expert model (dgft's from-scratch configs) the plain experts path above; others unchanged.

    The choice lives in the loaded config only (transformers does not save an experts implementation), so an
    exported model loads anywhere with transformers' own default. Measured: 7-9% off a CPU training step of
    recipe=sudoku (eval/RESULTS.md); on CUDA it removes 96 of a sudoku_gpu step's host-device syncs.
    """
    if model.config.get_text_config().num_experts != 1:
        return model
    from transformers.integrations.moe import ALL_EXPERTS_FUNCTIONS

    if ONE_EXPERT not in ALL_EXPERTS_FUNCTIONS:
        ALL_EXPERTS_FUNCTIONS.register(ONE_EXPERT, _one_expert_forward)
    model.set_experts_implementation(ONE_EXPERT)
    return model


def require_path(path) -> None:
    """model.path written as a local path (./, /, ~, or with more than one '/') that is not there: a ModelLoadError
    saying what to pass, before anything else (the tokenizer of a text task is read from it too)."""
    if path is None:
        raise ModelLoadError("model.path is not set: pass model.path=/local/dir holding the checkpoint (safetensors, "
                             "config.json, tokenizer), or a hub id where a hub is reachable")
    path = str(path)
    local = Path(os.path.expanduser(path))
    if not local.exists() and (path.startswith((".", "/", "~")) or os.sep in path.strip("/").split("/", 1)[-1]):
        raise ModelLoadError(f"model.path={path!r}: no such directory; pass model.path=/local/dir holding the "
                             "checkpoint (safetensors, config.json, tokenizer)")
    if local.exists() and not local.is_dir():
        raise ModelLoadError(f"model.path={path!r}: a file; pass the directory holding the checkpoint (safetensors, "
                             "config.json, tokenizer)")
    if (why := hub_unreachable(path)) is not None:
        raise ModelLoadError(f"model.path={path!r}: {why}; pass model.path=/local/dir holding the checkpoint "
                             "(safetensors, config.json, tokenizer)")
    kind = _model_type(local / "config.json")
    if kind is not None and kind != "diffusion_gemma":  # transformers would fail deep inside, naming none of it
        raise ModelLoadError(f"model.path={path!r}: its config.json is a {kind!r} model, not DiffusionGemma "
                             "(model_type 'diffusion_gemma')")


PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")


def hub_unreachable(repo_id: str, timeout_s: float = 3.0) -> str | None:
    """Why a hub id cannot be read from here, said in seconds (a connection tried for `timeout_s`, after a name
    lookup the system bounds): transformers would retry for about a minute before failing. None when it may be
    read: a local path, a repo the hub cache knows (any of its model or tokenizer files), a proxy (the hub's client
    goes through it; a direct connection says nothing), or a hub that answers a connection."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants, try_to_load_from_cache

    if Path(os.path.expanduser(str(repo_id))).exists():
        return None
    try:
        for name in ("config.json", "tokenizer_config.json", "tokenizer.json"):
            if try_to_load_from_cache(str(repo_id), name) is not None:
                return None  # cached (or known absent there: the repo was read before), as transformers reads it
    except ValueError:  # not a hub id either: the loader names it
        return None
    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set and the hub cache holds no copy"
    if any(os.environ.get(name) for name in PROXY_VARIABLES):
        return None
    url = urlparse(constants.ENDPOINT)
    if not url.hostname:  # an endpoint without a scheme: the hub's client names it
        return None
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)),
                                 timeout=timeout_s).close()
    except OSError as err:
        return f"no local directory, no copy in the hub cache, and the hub ({url.hostname}) cannot be reached ({err})"
    return None


def _model_type(config: Path) -> str | None:
    """config.json's model_type; None when there is no such file, or it does not say (loading names the problem)."""
    import json

    try:
        found = json.loads(config.read_text()).get("model_type")
    except (OSError, ValueError, AttributeError):
        return None
    return found if isinstance(found, str) else None


def load_pretrained(path: str, dtype=None, trust_remote_code: bool = False) -> DiffusionGemmaForBlockDiffusion:
    """Load weights from a local dir or hub id; a clear error when they are not there."""
    from dgft.stream import config_errors

    require_path(path)
    local = Path(os.path.expanduser(path))
    try:
        return DiffusionGemmaForBlockDiffusion.from_pretrained(
            str(local) if local.exists() else path, dtype=dtype, trust_remote_code=trust_remote_code,
            use_safetensors=True,
        )
    except config_errors() as err:
        raise ModelLoadError(
            f"model.path={path!r}: could not load DiffusionGemma weights ({type(err).__name__}: "
            f"{str(err).splitlines()[0]}). Download the checkpoint where a hub is reachable and pass its local "
            f"directory as model.path=/path/to/diffusiongemma-26B-A4B-it."
        ) from err


def local_checkpoint(path: str) -> Path:
    """A local checkpoint dir for `path` (a dir, or a hub id fetched into the hub cache when a hub is reachable)."""
    local = Path(os.path.expanduser(path))
    if local.is_dir():
        return local
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(path, allow_patterns=["*.json", "*.safetensors", "tokenizer*"]))
    except Exception as err:  # offline, unknown id, gated: all mean "no weights here"
        raise ModelLoadError(
            f"model.path={path!r}: not a local directory, and fetching it failed ({type(err).__name__}: "
            f"{str(err).splitlines()[0][:200] if str(err) else ''}). Download the checkpoint where a hub is reachable "
            f"and pass its local directory as model.path=/path/to/diffusiongemma-26B-A4B-it.") from err


def load_quantized(path: str, device, group_size: int = 32):
    """A pretrained DiffusionGemma streamed shard by shard into 4-bit (NF4) weights on `device`, frozen."""
    from dgft.quant import freeze_base_
    from dgft.stream import StreamLoadError, load_streaming

    local = local_checkpoint(path)
    try:
        model = load_streaming(local, quantize="nf4", device=device, group_size=group_size)
    except StreamLoadError as err:
        raise ModelLoadError(f"model.path={path!r}: {err}") from err
    freeze_base_(model)
    return model


def quantize_tiny_(model, device, group_size: int = 32):
    """The embedded model in 4 bits (tests and CPU runs of the QLoRA path): weights moved, then quantized."""
    from dgft.quant import freeze_base_, quantize_model_

    model.to(device)
    for p in model.parameters():  # weights to bf16; buffers (rotary frequencies) keep their precision
        p.data = p.data.to(torch.bfloat16)
    quantize_model_(model, group_size)
    freeze_base_(model)
    return model


def torch_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "fp32":
        return torch.float32
    if name == "bf16":
        return torch.bfloat16
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


# --- LoRA -----------------------------------------------------------------------------------------
def attach_lora(model, lcfg):
    """LoRA on the text layers' projections, one adapter per tied weight, used by encoder and decoder alike.

    peft would otherwise wrap the encoder and decoder copies of each tied weight separately, and a merge
    would then add two deltas to one tensor. So peft wraps only the encoder's copy and the decoder's twin
    points at the same wrapped module. The encoder's side is the one peft sees: it comes first in
    `named_modules()`, so the adapter is saved under encoder names, and loading (`PeftModel.from_pretrained`
    with the saved target list, then `share_adapters_with_encoder`) finds its weights under the same names.

    On a 4-bit base, `target_experts` puts dgft's `LoraNF4Experts` on the experts (peft cannot wrap them) and
    records the same `target_parameters` in the adapter's config, under the names peft uses, so the adapter
    loads onto a bf16 base with peft alike.
    """
    from peft import LoraConfig, get_peft_model

    from dgft.quant import add_expert_lora_

    names = "|".join(lcfg.target_modules)
    experts, nf4_experts = [], False
    if lcfg.target_experts:
        n_layers = len(model.get_submodule(ENCODER_LAYERS))
        experts = [f"{ENCODER_LAYERS}.{i}.experts.{p}" for i in range(n_layers) for p in ("gate_up_proj", "down_proj")]
        nf4_experts = _has_nf4_experts(model)
        if nf4_experts:
            add_expert_lora_(model, lcfg.r, lcfg.alpha)
    config = LoraConfig(r=lcfg.r, lora_alpha=lcfg.alpha, lora_dropout=lcfg.dropout,
                        target_modules=LORA_TARGETS.format(names=names),
                        target_parameters=None if nf4_experts else experts or None)
    from dgft.config import ConfigError

    core = model
    try:
        model = get_peft_model(model, config)
    except ValueError as err:  # peft: no module matched the targets
        raise ConfigError(f"model.lora.target_modules={list(lcfg.target_modules)}: no text-layer module of this "
                          f"model matches ({str(err).splitlines()[0][:200]})") from err
    if share_adapters_with_encoder(core) == 0:
        raise ConfigError(f"model.lora.target_modules={list(lcfg.target_modules)}: no text-layer module matches")
    if nf4_experts:  # peft trains only the adapters it made itself, and records the targets of its own
        for name, param in model.named_parameters():
            if ".experts." in name and "lora_" in name:
                param.requires_grad_(True)
        model.peft_config["default"].target_parameters = experts
    return model


def load_adapter(base, adapter_dir):
    """`PeftModel.from_pretrained` for dgft's adapters, then `share_adapters_with_encoder`. On a 4-bit base,
    expert LoRA (`target_parameters`) goes into `LoraNF4Experts`, loaded from the file by dgft (peft does not
    know these modules); on a bf16 base peft wraps the expert parameters itself."""
    from peft import LoraConfig, PeftModel

    from dgft.quant import add_expert_lora_

    config = LoraConfig.from_pretrained(str(adapter_dir))
    nf4_experts = bool(config.target_parameters) and _has_nf4_experts(base)
    if nf4_experts:
        add_expert_lora_(base, config.r, config.lora_alpha)
        config.target_parameters = None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = PeftModel.from_pretrained(base, str(adapter_dir), config=config)
    for w in caught:  # peft lists the expert LoRA as missing: it is loaded just below
        keys = re.findall(r"'([^']+)'", str(w.message))
        if not (nf4_experts and "missing adapter keys" in str(w.message) and all(".experts." in k for k in keys)):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    share_adapters_with_encoder(model.base_model.model)
    if nf4_experts:
        load_expert_lora(model, adapter_dir)
    return model


def _has_nf4_experts(model) -> bool:
    """Whether the text layers' experts are 4-bit `NF4Experts` (which peft's `target_parameters` cannot wrap)."""
    from dgft.quant import NF4Experts

    return isinstance(model.get_submodule(f"{ENCODER_LAYERS}.0.experts"), NF4Experts)


def expert_lora_tensors(model) -> dict[str, torch.Tensor]:
    """The `LoraNF4Experts` tensors of a peft model, under the keys peft saves expert LoRA with (the encoder's
    path; the decoder's twin is the same module). peft saves only the adapters it made itself, so dgft's
    `checkpoint.save_weights` adds these to the adapter file."""
    from dgft.quant import LoraNF4Experts

    tensors = {}
    for name, module in model.named_modules():  # a shared module is yielded once, at its first (encoder) path
        if isinstance(module, LoraNF4Experts):
            for leaf, param in module.named_parameters():
                if "lora_" in leaf:
                    tensors[f"{name}.{leaf}".replace(".default.", ".")] = param.detach()
    return tensors


def load_expert_lora(model, adapter_dir) -> None:
    """Copy the adapter file's expert LoRA into the model's `LoraNF4Experts` (peft loads only its own adapters);
    one the file lacks is an error, not a silently untrained expert."""
    from safetensors.torch import load_file

    path = Path(adapter_dir) / "adapter_model.safetensors"
    saved = load_file(str(path))
    with torch.no_grad():
        for key, param in expert_lora_tensors(model).items():
            if key not in saved or saved[key].shape != param.shape:
                raise ModelLoadError(f"{path}: expert LoRA tensor {key} "
                                     f"{'missing' if key not in saved else f'has shape {tuple(saved[key].shape)}'}; "
                                     f"the model expects {tuple(param.shape)}")
            param.copy_(saved[key])


def _pairs(core):
    """(encoder layer, decoder layer) module pairs of a DiffusionGemmaForBlockDiffusion."""
    enc = core.model.encoder.language_model.layers
    dec = core.model.decoder.layers
    return zip(enc, dec)


def _wrappers(layer):
    """(path, module) of the outermost peft tuner layers inside `layer` (a wrapper may wrap another wrapper)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    found = []
    for name, module in layer.named_modules():
        if isinstance(module, BaseTunerLayer) and not any(name.startswith(f"{outer}.") for outer, _ in found):
            found.append((name, module))
    return found


def _put(layer, name: str, module) -> None:
    parent_name, _, leaf = name.rpartition(".")
    setattr(layer.get_submodule(parent_name) if parent_name else layer, leaf, module)


def share_adapters_with_encoder(core) -> int:
    """Make each decoder layer use its encoder twin's LoRA-wrapped submodules, so one adapter serves both.

    Call after `get_peft_model` or `PeftModel.from_pretrained` (which wrap only the encoder's copies).
    Returns how many modules are shared.
    """
    count = 0
    for enc_layer, dec_layer in _pairs(core):
        for name, module in _wrappers(enc_layer):
            _put(dec_layer, name, module)
            count += 1
    return count


def retie_encoder(core) -> int:
    """After `merge_and_unload()`: put the plain (merged) module back at both twin paths. Returns how many.

    peft unloads a shared wrapper once, at the first path `named_modules()` yields for it (the encoder's), so
    the decoder keeps a merged wrapper and the state dict would still hold LoRA keys. A wrapper that is not
    merged would lose its adapter here, so that is an error. Either path may hold the leftover wrapper.
    """
    count = 0
    for enc_layer, dec_layer in _pairs(core):
        for layer in (dec_layer, enc_layer):
            for name, module in _wrappers(layer):
                if not module.merged:
                    raise ValueError(f"{name}: LoRA wrapper not merged; call merge_and_unload() first")
                plain = module.get_base_layer()
                _put(enc_layer, name, plain)
                _put(dec_layer, name, plain)
                count += 1
    return count


def unwrap(model):
    """The DiffusionGemmaForBlockDiffusion inside a peft wrapper (or the model itself)."""
    base = getattr(model, "base_model", None)
    if base is not None and hasattr(base, "model") and isinstance(base.model, DiffusionGemmaForBlockDiffusion):
        return base.model
    return model


# --- forward halves -------------------------------------------------------------------------------
def _cache_kw(module) -> str:
    params = inspect.signature(module.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def encode(model, prompt_ids, prompt_mask, return_hidden: bool = False):
    """Run the causal encoder over the prompt (B, P) -> KV cache (and last hidden state if asked)."""
    core = unwrap(model)
    out = core.model.encoder(input_ids=prompt_ids, attention_mask=prompt_mask, use_cache=True)
    cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
    return (cache, out.last_hidden_state) if return_hidden else cache


def denoise(model, cache, canvas, prompt_mask, sc_logits=None, sc_mask=None):
    """Decoder pass: canvas (B, L) reading the prompt cache -> logits (B, L, V) (float32, soft-capped)."""
    core = unwrap(model)
    decoder_mask = torch.cat([prompt_mask, torch.ones_like(canvas)], dim=1)
    kwargs = {_cache_kw(core): cache}
    out = core(decoder_input_ids=canvas, decoder_attention_mask=decoder_mask, self_conditioning_logits=sc_logits,
               self_conditioning_mask=sc_mask, **kwargs)
    return out.logits


def forbid_answers(logits, choices, forbid):
    """Self-conditioning input without some answers: logits (B, L, V), choices (L, K) each position's answer tokens,
    forbid (B, L, K) bool -> logits with the forbidden answers at -1e4 (no mass after the softmax the model's
    self-conditioning block takes). A position whose every answer is forbidden keeps its logits."""
    B, L, K = forbid.shape
    forbid = forbid & ~forbid.all(-1, keepdim=True)
    index = choices[None].expand(B, L, K)
    picked = torch.gather(logits, 2, index).masked_fill(forbid, -1e4)
    return logits.scatter(2, index, picked)


def prompt_logits(model, hidden):
    """LM-head logits of encoder hidden states (B, P, H) -> (B, P, V), soft-capped like the decoder's."""
    core = unwrap(model)
    logits = core.lm_head(hidden).float()
    cap = core.final_logit_softcapping
    return torch.tanh(logits / cap) * cap if cap else logits


def count_parameters(model) -> tuple[int, int]:
    """(trainable, total) unique parameters; 4-bit weights count as the weights they hold, not their packed bytes
    (a bitsandbytes Params4bit holds two per byte; NF4 experts are buffers of an NF4Stack)."""
    from dgft.quant import NF4Stack

    params = {id(p): p for p in model.parameters()}.values()

    def held(p) -> int:
        shape = getattr(getattr(p, "quant_state", None), "shape", None)
        return torch.Size(shape).numel() if shape is not None else p.numel()

    stacks = sum(math.prod(m.shape) for m in model.modules() if isinstance(m, NF4Stack))
    return sum(p.numel() for p in params if p.requires_grad), sum(held(p) for p in params) + stacks
