"""4-bit NF4 base weights for DiffusionGemma, the fused 3-D MoE experts included.

One job: hold a frozen DiffusionGemma's large weights in 4 bits and compute with them without ever
materialising a whole layer's experts in bf16.

Two kinds of 4-bit module replace the bf16 ones inside each text layer. The encoder and decoder are
the same weights, so each replacement is ONE module object placed at both twin paths:

- `nn.Linear` projections (attention, dense MLP) -> bitsandbytes `Linear4bit` (NF4, double-quantised
  absmax, blocks of 64). peft puts LoRA on these natively.
- `DiffusionGemmaTextExperts` (fused `gate_up_proj` (E, 2I, H) and `down_proj` (E, H, I)) -> `NF4Experts`.
  bitsandbytes' parametrization can quantize a 3-D parameter, but it dequantizes the whole tensor on
  every access and autograd keeps that bf16 copy until backward (measured: 63.6 GiB at 30 layers, worse
  than bf16 LoRA; ../shared/DIFFUSIONGEMMA-NOTES.md). `NF4Experts` stores each expert as its own NF4
  block run (a per-expert layout, so an expert or a group of experts dequantizes on its own, and the
  streaming loader can quantize one expert at a time), and its autograd function dequantizes
  `group_size` experts at a time, in forward and again in backward, saving only the layer's input.
  The expert matmuls use `grouped_mm` over the tokens routed to the group (a loop on devices without it).

Memory of the experts: 4 bits per weight + 8-bit absmax per 64 weights + fp32 absmax per 256 absmax
(about 4.13 bits per weight), i.e. ~3.9x smaller than bf16.

Example: `quantize_model_(model)` turns a bf16 model's text layers 4-bit in place;
`load_streaming(path, device="cuda")` builds one from safetensors shards without a bf16 copy.
"""

from __future__ import annotations

import torch
from torch import nn

BLOCK = 64  # weights per absmax (bitsandbytes' NF4 block)
NESTED_BLOCK = 256  # absmax values per second-level scale (double quantisation)
LINEAR_NAMES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _bnb_functional():
    import bitsandbytes.functional as F

    return F


# --- one stack of experts: E matrices of (out, in), each quantized on its own ------------------------
class NF4Stack(nn.Module):
    """E weight matrices (out, in) in NF4, expert by expert, with double-quantised absmax.

    Buffers (E rows each): `packed` (E, out*in/2) uint8 codes; `qabsmax` (E, m_pad) uint8 8-bit absmax;
    `absmax2` (E, m_pad/256) fp32 scales of those; `offset` (E,) fp32 mean absmax. `code` is the
    8-bit dynamic map (same for every expert).
    """

    def __init__(self, num: int, out_features: int, in_features: int, dtype=torch.bfloat16, device=None):
        super().__init__()
        numel = out_features * in_features
        if numel % BLOCK:
            raise ValueError(f"expert matrix {out_features}x{in_features}: size must be a multiple of {BLOCK}")
        self.shape = (num, out_features, in_features)
        self.dtype = dtype
        self.blocks = numel // BLOCK
        self.blocks_padded = -(-self.blocks // NESTED_BLOCK) * NESTED_BLOCK
        kw = dict(device=device)
        self.register_buffer("packed", torch.zeros(num, numel // 2, dtype=torch.uint8, **kw), persistent=False)
        self.register_buffer("qabsmax", torch.zeros(num, self.blocks_padded, dtype=torch.uint8, **kw),
                             persistent=False)
        self.register_buffer("absmax2", torch.zeros(num, self.blocks_padded // NESTED_BLOCK, dtype=torch.float32,
                                                    **kw), persistent=False)
        self.register_buffer("offset", torch.zeros(num, dtype=torch.float32, **kw), persistent=False)
        self.register_buffer("code", torch.zeros(256, dtype=torch.float32, **kw), persistent=False)
        self.filled = torch.zeros(num, dtype=torch.bool)  # host-side: which experts were written

    def set(self, index: int, weight: torch.Tensor) -> None:
        """Quantize one expert's (out, in) weight into row `index` (the weight is moved to this device)."""
        F = _bnb_functional()
        if tuple(weight.shape) != self.shape[1:]:
            raise ValueError(f"expert {index}: weight shape {tuple(weight.shape)}, expected {self.shape[1:]}")
        # flat: bitsandbytes' CPU kernels mis-handle 2-D shapes whose rows are not a multiple of the block
        weight = weight.to(self.packed.device, self.dtype).reshape(-1)
        packed, state = F.quantize_4bit(weight, blocksize=BLOCK, quant_type="nf4", compress_statistics=False)
        absmax = state.absmax.float()
        offset = absmax.mean()
        padded = torch.zeros(self.blocks_padded, dtype=torch.float32, device=absmax.device)
        padded[: self.blocks] = absmax - offset
        qabsmax, state2 = F.quantize_blockwise(padded, blocksize=NESTED_BLOCK)
        self.packed[index] = packed.view(-1)
        self.qabsmax[index] = qabsmax.view(-1)
        self.absmax2[index] = state2.absmax.view(-1).float()
        self.offset[index] = offset
        self.code.copy_(state2.code)
        self.filled[index] = True

    def dequantize(self, start: int, stop: int) -> torch.Tensor:
        """Experts [start, stop) as a (stop - start, out, in) tensor in the compute dtype."""
        F = _bnb_functional()
        count = stop - start
        absmax = F.dequantize_blockwise(self.qabsmax[start:stop].reshape(-1), absmax=self.absmax2[start:stop].reshape(-1),
                                        code=self.code, blocksize=NESTED_BLOCK)
        absmax = (absmax.view(count, self.blocks_padded)[:, : self.blocks] + self.offset[start:stop, None]).reshape(-1)
        state = F.QuantState(absmax=absmax.contiguous(), shape=torch.Size((count * self.blocks * BLOCK,)),
                             blocksize=BLOCK, quant_type="nf4", dtype=self.dtype)
        return F.dequantize_4bit(self.packed[start:stop].reshape(-1, 1), state).view(count, *self.shape[1:])

    def nbytes(self) -> int:
        return sum(b.numel() * b.element_size() for b in (self.packed, self.qabsmax, self.absmax2, self.offset))


# --- grouped matmul over sorted tokens ------------------------------------------------------------
def _grouped_mm_fn():
    return getattr(torch.nn.functional, "grouped_mm", None) or getattr(torch, "_grouped_mm", None)


def grouped_matmul(x: torch.Tensor, weight: torch.Tensor, counts: list[int], offs: torch.Tensor | None = None
                   ) -> torch.Tensor:
    """Rows of `x` (sorted by group, `counts[g]` rows each) times weight[g] (G, in, out) -> (rows, out).

    `offs`: the groups' cumulative row ends as int32 on x's device, when the caller has them there; built from
    `counts` otherwise, a host-to-device copy that waits for the device (112 such waits per QLoRA step at 2
    layers, eval/RESULTS.md).
    """
    fn = _grouped_mm_fn()
    if fn is not None and x.dtype == torch.bfloat16 and weight.dtype == torch.bfloat16 and x.shape[0] > 0:
        if offs is None:
            offs = torch.tensor(counts, device=x.device, dtype=torch.int32).cumsum(0, dtype=torch.int32)
        return fn(x, weight, offs=offs)
    pieces, start = [], 0
    for g, n in enumerate(counts):
        pieces.append(x[start:start + n] @ weight[g])
        start += n
    return torch.cat(pieces) if pieces else x.new_zeros(0, weight.shape[-1])


def _expert_groups(counts: list[int], group_size: int, device_counts: torch.Tensor):
    """(first expert, last expert + 1, first row, row count, grouped_mm offsets on the device) of each group
    that has routed tokens. `device_counts`: `counts` as an int32 tensor on the device."""
    row = 0
    for first in range(0, len(counts), group_size):
        last = min(first + group_size, len(counts))
        n = sum(counts[first:last])
        if n:
            yield first, last, row, n, device_counts[first:last].cumsum(0, dtype=torch.int32)
        row += n


class _NF4ExpertsFunction(torch.autograd.Function):
    """out[t] = sum_k w[t,k] * down_e(act(gate_e(x_t)) * up_e(x_t)), e = index[t,k]; weights frozen 4-bit.

    Saves only the inputs; backward dequantizes each group again and recomputes its activations, so
    no more than one group of bf16 experts is alive at any time, forward or backward. The backward
    matmuls are written out (dz = gy W_down, dx = dh W_gate_up): no autograd through grouped_mm.
    """

    @staticmethod
    def forward(ctx, hidden, weights, index, experts):
        order, tokens, counts, device_counts = experts.route(index)
        x = hidden[tokens]
        y = experts.expert_outputs(x, counts, device_counts)  # (S, H), sorted by expert
        out = _unsort_sum(y.float() * weights.reshape(-1)[order, None].float(), order, index.shape)
        ctx.save_for_backward(hidden, weights, index, order, device_counts)
        ctx.experts, ctx.counts = experts, counts  # backward reuses the routing: no second host sync
        return out.to(hidden.dtype)

    @staticmethod
    def backward(ctx, grad_out):
        hidden, weights, index, order, device_counts = ctx.saved_tensors
        experts, counts = ctx.experts, ctx.counts
        tokens = order // index.shape[1]
        x = hidden[tokens]
        w = weights.reshape(-1)[order]
        g = grad_out[tokens]
        dx = torch.zeros_like(x)
        dw = torch.zeros(x.shape[0], dtype=torch.float32, device=x.device)
        for first, last, row, n, offs in _expert_groups(counts, experts.group_size, device_counts):
            rows = slice(row, row + n)
            group_counts = counts[first:last]
            gate_up = experts.gate_up.dequantize(first, last)  # (G, 2I, H)
            down = experts.down.dequantize(first, last)  # (G, H, I)
            xg = x[rows].to(gate_up.dtype)
            gate, up = grouped_matmul(xg, gate_up.transpose(-2, -1), group_counts, offs).chunk(2, dim=-1)
            with torch.enable_grad():  # only the elementwise activation goes through autograd
                gate = gate.detach().requires_grad_(True)
                act = experts.act_fn(gate)
            z = act.detach() * up
            y = grouped_matmul(z, down.transpose(-2, -1), group_counts, offs)
            dw[rows] = (g[rows].float() * y.float()).sum(-1)
            dz = grouped_matmul((g[rows].float() * w[rows, None].float()).to(down.dtype), down, group_counts, offs)
            (d_gate,) = torch.autograd.grad(act, gate, dz * up)
            dh = torch.cat([d_gate, dz * act.detach()], dim=-1)
            dx[rows] = grouped_matmul(dh.to(gate_up.dtype), gate_up, group_counts, offs).to(dx.dtype)
            del gate_up, down
        d_hidden = _unsort_sum(dx.float(), order, index.shape).to(hidden.dtype)
        d_weights = torch.empty_like(dw)
        d_weights[order] = dw
        return d_hidden, d_weights.view(index.shape).to(weights.dtype), None, None


def _unsort_sum(sorted_rows: torch.Tensor, order: torch.Tensor, index_shape) -> torch.Tensor:
    """Put rows sorted by expert back in (token, k) order and sum over k (deterministic, no atomics)."""
    tokens, k = index_shape
    unsorted = torch.empty_like(sorted_rows)
    unsorted[order] = sorted_rows
    return unsorted.view(tokens, k, -1).sum(1)


class NF4Experts(nn.Module):
    """Drop-in for `DiffusionGemmaTextExperts` with 4-bit weights; same forward signature."""

    def __init__(self, num_experts: int, hidden_dim: int, intermediate_dim: int, act_fn, dtype=torch.bfloat16,
                 device=None, group_size: int = 32):
        super().__init__()
        self.num_experts = num_experts
        self.hidden_dim = hidden_dim
        self.intermediate_dim = intermediate_dim
        self.act_fn = act_fn
        self.group_size = group_size
        self.gate_up = NF4Stack(num_experts, 2 * intermediate_dim, hidden_dim, dtype, device)
        self.down = NF4Stack(num_experts, hidden_dim, intermediate_dim, dtype, device)

    @classmethod
    def like(cls, experts, device=None, dtype=torch.bfloat16, group_size: int = 32) -> "NF4Experts":
        """An empty NF4Experts with the shapes of a `DiffusionGemmaTextExperts` (which may be on meta)."""
        return cls(experts.num_experts, experts.hidden_dim, experts.intermediate_dim, experts.act_fn, dtype,
                   device, group_size)

    def stack(self, name: str) -> NF4Stack:
        """The stack that holds the checkpoint tensor `name` ("gate_up_proj" or "down_proj")."""
        if name == "gate_up_proj":
            return self.gate_up
        if name == "down_proj":
            return self.down
        raise KeyError(f"not an expert weight of the model (expected gate_up_proj or down_proj), shape "
                       f"{tuple(self.gate_up.shape)} or {tuple(self.down.shape)}")

    def route(self, index: torch.Tensor):
        """Sort the (token, k) assignments by expert -> (order, token of each, counts as a host list, counts as
        int32 on the device). The host list is a routing's one wait for the device: it slices the groups."""
        flat = index.reshape(-1)
        order = torch.argsort(flat, stable=True)
        device_counts = torch.bincount(flat, minlength=self.num_experts)
        return order, order // index.shape[1], device_counts.tolist(), device_counts.to(torch.int32)

    def mlp(self, x, gate_up, down, counts, offs=None):
        """Gated MLP of a group of experts over its sorted rows (weights (G, out, in), compute dtype)."""
        h = grouped_matmul(x.to(gate_up.dtype), gate_up.transpose(-2, -1), counts, offs)
        gate, up = h.chunk(2, dim=-1)
        return grouped_matmul(self.act_fn(gate) * up, down.transpose(-2, -1), counts, offs)

    @torch.no_grad()
    def expert_outputs(self, x, counts, device_counts):
        out = torch.empty(x.shape[0], self.hidden_dim, dtype=self.gate_up.dtype, device=x.device)
        for first, last, row, n, offs in _expert_groups(counts, self.group_size, device_counts):
            gate_up = self.gate_up.dequantize(first, last)
            down = self.down.dequantize(first, last)
            out[row:row + n] = self.mlp(x[row:row + n], gate_up, down, counts[first:last], offs)
            del gate_up, down
        return out

    def forward(self, hidden_states, top_k_index, top_k_weights):
        return _NF4ExpertsFunction.apply(hidden_states, top_k_weights, top_k_index, self)

    def nbytes(self) -> int:
        return self.gate_up.nbytes() + self.down.nbytes()

    def extra_repr(self) -> str:
        return (f"experts={self.num_experts}, hidden={self.hidden_dim}, intermediate={self.intermediate_dim}, "
                f"nf4, group_size={self.group_size}")


# --- LoRA on the 4-bit experts --------------------------------------------------------------------
class _NF4Matmul(torch.autograd.Function):
    """Rows of x sorted by expert (`counts[e]` rows each) times their expert's frozen 4-bit W_e (out, in) ->
    (rows, out). Forward and backward each dequantize `group_size` experts at a time; no weight gradient."""

    @staticmethod
    def forward(ctx, x, stack, counts, device_counts, group_size):
        out = torch.empty(x.shape[0], stack.shape[1], dtype=stack.dtype, device=x.device)
        for first, last, row, n, offs in _expert_groups(counts, group_size, device_counts):
            w = stack.dequantize(first, last)  # (G, out, in)
            out[row:row + n] = grouped_matmul(x[row:row + n].to(w.dtype), w.transpose(-2, -1), counts[first:last],
                                              offs)
        ctx.stack, ctx.counts, ctx.group_size, ctx.in_dtype = stack, counts, group_size, x.dtype
        ctx.save_for_backward(device_counts)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        (device_counts,) = ctx.saved_tensors
        dx = torch.empty(grad_out.shape[0], ctx.stack.shape[2], dtype=ctx.in_dtype, device=grad_out.device)
        for first, last, row, n, offs in _expert_groups(ctx.counts, ctx.group_size, device_counts):
            w = ctx.stack.dequantize(first, last)
            dx[row:row + n] = grouped_matmul(grad_out[row:row + n].to(w.dtype), w, ctx.counts[first:last],
                                             offs).to(dx.dtype)
        return dx, None, None, None, None


def _factors(experts: int, rank: int, in_features: int, out_features: int, device=None):
    """One expert tensor's LoRA pair as peft's `target_parameters` stores it: A (E*r, in), B (out, E*r), under
    peft's `lora_A.default` / `lora_B.default` names. A starts random and B at zero (peft's default init), so a
    new adapter leaves the model unchanged."""
    a = nn.Linear(in_features, experts * rank, bias=False, device=device)
    b = nn.Linear(experts * rank, out_features, bias=False, device=device)
    nn.init.kaiming_uniform_(a.weight, a=5 ** 0.5)
    nn.init.zeros_(b.weight)
    return nn.ModuleDict({"default": a}), nn.ModuleDict({"default": b})


def _expert_delta(x, a, b, expert_of_row, experts: int) -> torch.Tensor:
    """Rows x (n, in), each row's expert (n,) -> (n, out) = B_e A_e x_row, with peft's layout: A.view(E, r, in)[e],
    B.view(out, r, E)[:, :, e]. Dense: x A^T gives every expert's r-vector of a row; the row's own is kept and
    placed in its expert's columns of B (n x E*r values, a few MB at full width)."""
    rank = a.shape[0] // experts
    xa = (x.to(a.dtype) @ a.t()).view(-1, experts, rank)
    xa = xa.gather(1, expert_of_row[:, None, None].expand(-1, 1, rank))  # (n, 1, r)
    placed = xa.new_zeros(x.shape[0], rank, experts)
    placed = placed.scatter(2, expert_of_row[:, None, None].expand(-1, rank, 1), xa.transpose(1, 2))
    return placed.view(x.shape[0], rank * experts) @ b.t()


class _Factors(nn.Module):
    """Holds gate_up_proj's pair at `base_layer.lora_A/B`, where peft's inner wrapper saves it."""

    def __init__(self, pair):
        super().__init__()
        self.lora_A, self.lora_B = pair


class LoraNF4Experts(nn.Module):
    """4-bit experts with trainable LoRA on `gate_up_proj` and `down_proj` (`model.lora.target_experts` with
    `model.quantize=nf4`), laid out under peft's names for that adapter: `experts.base_layer.lora_A/B` for
    gate_up_proj and `experts.lora_A/B` for down_proj, so the saved adapter loads onto a bf16 base with peft
    `target_parameters` and merges with `dgft.merge`. The 4-bit products dequantize a group of experts at a
    time in forward and backward (`_NF4Matmul`); the rest is ordinary autograd, whose saved activations are
    one layer's (gradient checkpointing recomputes them layer by layer).
    """

    def __init__(self, experts: NF4Experts, rank: int, alpha: float):
        super().__init__()
        device = experts.gate_up.packed.device
        E, H, inter = experts.num_experts, experts.hidden_dim, experts.intermediate_dim
        self.nf4 = experts
        self.base_layer = _Factors(_factors(E, rank, H, 2 * inter, device))  # gate_up_proj (E, 2I, H)
        self.lora_A, self.lora_B = _factors(E, rank, inter, H, device)  # down_proj (E, H, I)
        self.scaling = alpha / rank
        self.num_experts = E

    def forward(self, hidden_states, top_k_index, top_k_weights):
        nf4, E = self.nf4, self.num_experts
        order, tokens, counts, device_counts = nf4.route(top_k_index)
        expert_of_row = torch.repeat_interleave(torch.arange(E, device=order.device), device_counts,
                                                output_size=order.shape[0])
        x = hidden_states[tokens]
        gate_up, down = self.base_layer, self
        h = _NF4Matmul.apply(x, nf4.gate_up, counts, device_counts, nf4.group_size)
        h = h + self.scaling * _expert_delta(x, gate_up.lora_A["default"].weight, gate_up.lora_B["default"].weight,
                                             expert_of_row, E).to(h.dtype)
        gate, up = h.chunk(2, dim=-1)
        z = nf4.act_fn(gate) * up
        y = _NF4Matmul.apply(z, nf4.down, counts, device_counts, nf4.group_size)
        y = y + self.scaling * _expert_delta(z, down.lora_A["default"].weight, down.lora_B["default"].weight,
                                             expert_of_row, E).to(y.dtype)
        out = _unsort_sum(y.float() * top_k_weights.reshape(-1)[order, None].float(), order, top_k_index.shape)
        return out.to(hidden_states.dtype)


def add_expert_lora_(core, rank: int, alpha: float) -> None:
    """Wrap every 4-bit experts module of a quantized DiffusionGemma in `LoraNF4Experts` (one module at both
    twin paths, like the experts)."""
    for i, (enc, dec) in enumerate(text_layer_pairs(core)):
        if not isinstance(enc.experts, NF4Experts):
            raise TypeError(f"layer {i}: experts are {type(enc.experts).__name__}, not 4-bit NF4Experts")
        enc.experts = dec.experts = LoraNF4Experts(enc.experts, rank, alpha)


# --- 4-bit linears --------------------------------------------------------------------------------
def nf4_linear(in_features: int, out_features: int, dtype=torch.bfloat16):
    """An empty bitsandbytes NF4 `Linear4bit` (weight set later by `set_linear_weight`)."""
    import bitsandbytes as bnb

    layer = bnb.nn.Linear4bit(in_features, out_features, bias=False, compute_dtype=dtype, compress_statistics=True,
                              quant_type="nf4", device="meta")
    return layer


def set_linear_weight(layer, weight: torch.Tensor, device) -> None:
    """Quantize a bf16 (out, in) weight into `layer` on `device`."""
    import bitsandbytes as bnb

    expected = (layer.out_features, layer.in_features)
    if tuple(weight.shape) != expected:
        raise ValueError(f"linear weight shape {tuple(weight.shape)}, expected {expected}")
    param = bnb.nn.Params4bit(weight.to(torch.bfloat16).contiguous(), requires_grad=False, compress_statistics=True,
                              quant_type="nf4", blocksize=BLOCK, module=layer)
    layer.weight = param.to(device)
    if torch.device(device).type == "cpu":
        # bitsandbytes repacks CPU 4-bit weights in place on a no-grad forward (AVX512-BF16), after which
        # training gradients are wrong (DIFFUSIONGEMMA-NOTES); keep the portable layout.
        layer.support_avx512bf16_for_cpu = False


# --- whole-model surgery --------------------------------------------------------------------------
def text_layer_pairs(core):
    """(encoder layer, decoder layer) twins of a DiffusionGemmaForBlockDiffusion."""
    return zip(core.model.encoder.language_model.layers, core.model.decoder.layers)


def _linear_slots(layer):
    """(path inside the layer, nn.Linear) of the projections that go 4-bit (router and norms stay)."""
    for parent in ("self_attn", "mlp"):
        block = getattr(layer, parent)
        for name in LINEAR_NAMES:
            module = getattr(block, name, None)
            if isinstance(module, nn.Linear):
                yield f"{parent}.{name}", module


def _put(layer, path: str, module) -> None:
    parent, _, leaf = path.rpartition(".")
    setattr(layer.get_submodule(parent) if parent else layer, leaf, module)


def make_slots(core, device, dtype=torch.bfloat16, group_size: int = 32) -> dict:
    """Replace each twin pair's projections and experts by ONE empty 4-bit module placed at both paths.

    Returns {param name prefix: 4-bit module} for every encoder and decoder path, which the loader
    uses to route checkpoint tensors. Works on a model whose weights are on the meta device.
    """
    slots = {}
    enc_prefix, dec_prefix = "model.encoder.language_model.layers", "model.decoder.layers"
    for i, (enc, dec) in enumerate(text_layer_pairs(core)):
        for path, linear in list(_linear_slots(enc)):
            q = nf4_linear(linear.in_features, linear.out_features, dtype)
            _put(enc, path, q)
            _put(dec, path, q)
            slots[f"{enc_prefix}.{i}.{path}"] = slots[f"{dec_prefix}.{i}.{path}"] = q
        q = NF4Experts.like(enc.experts, device=device, dtype=dtype, group_size=group_size)
        enc.experts = dec.experts = q
        slots[f"{enc_prefix}.{i}.experts"] = slots[f"{dec_prefix}.{i}.experts"] = q
    return slots


def place(slots: dict, name: str, source, device) -> bool:
    """Route one checkpoint tensor into its 4-bit slot; False if `name` is not a 4-bit weight.

    `source` is a tensor, or for expert stacks anything indexable by expert (a safetensors slice) with a
    `shape`, so an expert is read, moved and quantized one at a time.
    """
    prefix, _, leaf = name.rpartition(".")
    if isinstance(slots.get(prefix), NF4Experts):
        stack = slots[prefix].stack(leaf)
        if tuple(source.shape) != tuple(stack.shape):  # more or fewer experts than config.json says, or other sizes
            raise ValueError(f"shape {tuple(source.shape)}, model expects {tuple(stack.shape)} (experts, out, in)")
        for e in range(stack.shape[0]):
            stack.set(e, source[e])
        return True
    if leaf == "weight" and prefix in slots:
        set_linear_weight(slots[prefix], source if torch.is_tensor(source) else source[:], device)
        return True
    return False


@torch.no_grad()
def as_trained(slots: dict, name: str, tensor: torch.Tensor, dtype=torch.bfloat16,
               device="cpu") -> torch.Tensor | None:
    """What a 4-bit base computes with for checkpoint tensor `name`: quantized on `device` as `place` quantizes it into
    its slot, then dequantized, in `dtype`, on the CPU; None if `name` is not one of the base's 4-bit weights. A
    tensor of another shape than the slot's is a ValueError.

    Merging a QLoRA adapter into these weights gives the model the run trained and evaluated; merging it into the
    unquantized ones gives another model. Quantized on the device the run trained on, the codes are the run's;
    bitsandbytes' CUDA kernels may round a code at a bin edge otherwise than its CPU code does."""
    prefix, _, leaf = name.rpartition(".")
    slot = slots.get(prefix)
    if isinstance(slot, NF4Experts):
        shape = slot.stack(leaf).shape
        if tuple(tensor.shape) != tuple(shape):
            raise ValueError(f"shape {tuple(tensor.shape)}, the 4-bit base holds {tuple(shape)} (experts, out, in)")
        one = NF4Stack(1, *shape[1:], dtype=dtype, device=device)  # one expert at a time, as `place` sets them
        out = torch.empty(tuple(shape), dtype=dtype)
        for e in range(shape[0]):
            one.set(0, tensor[e])
            out[e] = one.dequantize(0, 1)[0].cpu()
        return out
    if leaf == "weight" and slot is not None:
        layer = nf4_linear(slot.in_features, slot.out_features, dtype)
        set_linear_weight(layer, tensor, device)
        return _bnb_functional().dequantize_4bit(layer.weight.data, layer.weight.quant_state).to(dtype).cpu()
    return None


@torch.no_grad()
def quantize_model_(core, group_size: int = 32):
    """Make an already-loaded bf16 DiffusionGemma's text layers 4-bit in place (tests, small models)."""
    device = core.model.decoder.embed_tokens.weight.device
    sources = {}
    for i, (enc, _dec) in enumerate(text_layer_pairs(core)):
        for path, linear in _linear_slots(enc):
            sources[f"model.decoder.layers.{i}.{path}.weight"] = linear.weight.detach()
        for leaf in ("gate_up_proj", "down_proj"):
            sources[f"model.decoder.layers.{i}.experts.{leaf}"] = getattr(enc.experts, leaf).detach()
    slots = make_slots(core, device, group_size=group_size)
    for name, tensor in sources.items():
        place(slots, name, tensor, device)
    return core


def freeze_base_(model) -> None:
    """Prepare a 4-bit model for adapter training without upcasting anything (peft's helper upcasts
    every non-4-bit weight to fp32, fatal at 26B): freeze all base weights and let gradients reach the
    inputs of checkpointed blocks."""
    for p in model.parameters():
        p.requires_grad_(False)
    if hasattr(model, "enable_input_require_grads"):
        model.enable_input_require_grads()


def quantized_bytes(module) -> int:
    """Bytes held by 4-bit storage (NF4 codes and their scales) under `module`, shared modules once."""
    seen, total = set(), 0
    for m in module.modules():
        if id(m) in seen:
            continue
        seen.add(id(m))
        if isinstance(m, NF4Experts):
            total += m.nbytes()
        elif type(m).__name__ == "Linear4bit" and getattr(m.weight, "quant_state", None) is not None:
            qs = m.weight.quant_state
            total += m.weight.numel() * m.weight.element_size()
            total += qs.absmax.numel() * qs.absmax.element_size()
            if qs.state2 is not None:
                total += qs.state2.absmax.numel() * qs.state2.absmax.element_size()
    return total
