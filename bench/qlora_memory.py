"""Peak GPU memory and step time of a LoRA training step on the real DiffusionGemma-26B-A4B architecture,
bf16 base vs 4-bit (NF4, experts included) base, at reduced depth, extrapolated to the released 30 layers.

The released weights cannot be downloaded here, so the released text config (full width, full 262k
vocabulary, 128 experts top-8) is built with fewer layers and random weights, created tensor by tensor
on the GPU and placed by the streaming loader's own code path (`dgft.stream.Loader`), 4-bit slots
quantized there exactly as a real checkpoint would be. The training step is dgft's own (`dgft.step.batch_loss`):
prompt 256 + canvas 256, batch 1, self-conditioning first pass on every step, LoRA r16 on attention and
dense-MLP projections (shared by encoder and decoder; `--target-experts`: on the experts too), gradient
checkpointing, AdamW (bf16) or paged 8-bit AdamW (nf4). Each depth uses (depth - 1) sliding-attention layers
+ 1 full-attention layer.

    python bench/qlora_memory.py --depths 2 3 4 --steps 4 --out qlora.json

Prints one line per (mode, depth) and a fit per mode: peak = a + b * layers, extrapolated to 30.
Also the quantized forward's logits against bf16 on the same random weights and inputs (cosine, KL).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import zlib
from pathlib import Path

import torch
from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the dgft beside this script, installed or not

RELEASED = dict(vocab_size=262144, hidden_size=2816, intermediate_size=2112, num_attention_heads=16,
                num_key_value_heads=8, num_global_key_value_heads=2, head_dim=256, global_head_dim=512,
                num_experts=128, top_k_experts=8, moe_intermediate_size=704, sliding_window=1024,
                final_logit_softcapping=30.0, max_position_embeddings=4096, hidden_activation="gelu_pytorch_tanh")
GIB = 1024**3
DIMS = RELEASED
DEVICE = torch.device("cuda")
GROUP = 32  # experts dequantized at once (--group-size; model.quant_group_size's default)
EXPERT_LORA = False  # --target-experts: LoRA on the experts too (LoraNF4Experts on the 4-bit base, peft on bf16)


TINY = dict(RELEASED, vocab_size=512, hidden_size=128, intermediate_size=128, num_attention_heads=2,
            num_key_value_heads=1, num_global_key_value_heads=1, head_dim=64, global_head_dim=64, num_experts=4,
            top_k_experts=2, moe_intermediate_size=64)  # --tiny: a CPU smoke test of this script


def released_config(depth: int):
    from transformers import DiffusionGemmaConfig
    from transformers.models.gemma4 import Gemma4VisionConfig

    vision = Gemma4VisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                                num_key_value_heads=1, head_dim=8, position_embedding_size=16)
    text = dict(DIMS, num_hidden_layers=depth,
                layer_types=["sliding_attention"] * (depth - 1) + ["full_attention"])
    return DiffusionGemmaConfig(text_config=text, vision_config=vision, canvas_length=256,
                                image_token_id=258880, boi_token_id=255999, eoi_token_id=258882)


def seeded_source(name: str, shape, device):
    """Random weights, the same for a name whatever the mode (so bf16 and nf4 logits compare)."""
    from dgft.stream import random_source

    if len(shape) == 1:  # norms, scales: ones, as an initialised model has them
        class _Ones:
            def __init__(self):
                self.shape = tuple(shape)

            def __getitem__(self, item):
                return torch.ones(self.shape, device=device, dtype=torch.bfloat16)

        return _Ones()
    gen = torch.Generator(device=device).manual_seed(zlib.crc32(name.encode()))
    return random_source(shape, device, generator=gen)


def build(depth: int, quantize: str, device):
    from dgft.stream import Loader, skeleton

    config = released_config(depth)
    names = [(n, tuple(p.shape)) for n, p in skeleton(config).named_parameters()]  # unique (tied once)
    loader = Loader(config, quantize=quantize, device=device, vision_device=device, group_size=GROUP)
    for name, shape in names:
        loader.place(name, seeded_source(name, shape, device))
    return loader.finish()


def step_inputs(device, vocab: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    prompt = torch.randint(3, vocab, (1, 256), generator=g)
    target = torch.randint(3, vocab, (1, 256), generator=g)
    noisy = torch.where(torch.rand(1, 256, generator=g) < 0.5, torch.randint(3, vocab, (1, 256), generator=g), target)
    return {"prompt_ids": prompt, "prompt_mask": torch.ones_like(prompt), "noisy": noisy, "target": target,
            "scored": torch.ones_like(target, dtype=torch.bool), "hit": noisy != target,
            "t": torch.tensor([0.5])}


def training_setup(model, quantize: str, device):
    """Frozen base + LoRA r16 on attention and dense-MLP projections, gradient checkpointing, train mode, and
    the optimizer (paged 8-bit AdamW for nf4 on CUDA, else AdamW) -> (model, trainable params, optimizer)."""
    from dgft.model import attach_lora
    from dgft.quant import freeze_base_

    cuda = device.type == "cuda"
    freeze_base_(model)
    lcfg = OmegaConf.create(dict(r=16, alpha=32, dropout=0.0, target_experts=EXPERT_LORA,
                                 target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                                 "down_proj"]))
    model = attach_lora(model, lcfg)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    if quantize == "nf4" and cuda:
        import bitsandbytes as bnb

        opt = bnb.optim.PagedAdamW8bit(params, lr=1e-4)
    else:
        opt = torch.optim.AdamW(params, lr=1e-4, fused=cuda)
    return model, params, opt


def step_config(ar_weight: float):
    """The config `dgft.step.batch_loss` reads: a whole train config (the schema's defaults, so a setting the loss reads
    later is there too), uniform noise, self-conditioning on every step."""
    from dgft.config import typed_train_config

    return typed_train_config(OmegaConf.create({"task": {"name": "sudoku"}, "noise": {
        "encoder_ar_weight": ar_weight, "self_conditioning_p": 1.0, "kind": "uniform", "loss_weight": "flat"}}),
        missing="quiet")


def measure(depth: int, quantize: str, steps: int, ar_weight: float, want_logits: bool):
    from dgft.model import denoise, encode
    from dgft.quant import quantized_bytes
    from dgft.step import batch_loss

    device = DEVICE
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.time()
    model = build(depth, quantize, device)
    load_s = time.time() - t0
    sync()
    weights = torch.cuda.memory_allocated() if cuda else 0
    load_peak = torch.cuda.max_memory_allocated() if cuda else 0
    batch = step_inputs(device, DIMS["vocab_size"])
    logits = None
    if want_logits:
        with torch.no_grad():
            ids, mask = batch["prompt_ids"].to(device), batch["prompt_mask"].to(device)
            logits = denoise(model, encode(model, ids, mask), batch["noisy"].to(device), mask).float().cpu()

    if cuda:
        torch.cuda.reset_peak_memory_stats()  # the training peak, apart from the loader's
    model, params, opt = training_setup(model, quantize, device)
    cfg = step_config(ar_weight)
    gen = torch.Generator().manual_seed(0)
    times = []
    for i in range(steps + 2):  # two warm-up steps
        sync()
        t = time.time()
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss_sum, extra = batch_loss(model, batch, cfg, gen, device)
            loss = loss_sum / 256 + extra
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync()
        if i >= 2:
            times.append(time.time() - t)
    row = dict(mode=quantize, depth=depth, ar_weight=ar_weight, load_s=round(load_s, 1),
               weights_gib=weights / GIB, load_peak_gib=load_peak / GIB, steps=steps,
               peak_gib=torch.cuda.max_memory_allocated() / GIB if cuda else 0.0,
               reserved_gib=torch.cuda.max_memory_reserved() / GIB if cuda else 0.0,
               step_s=statistics.median(times), loss=float(loss), quantized_gib=quantized_bytes(model) / GIB,
               trainable=sum(p.numel() for p in params))
    del model, opt
    if cuda:
        torch.cuda.empty_cache()
    return row, logits


def sync():
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def fit(rows, key):
    """Least-squares a + b * depth over rows -> (a, b, value at 30 layers)."""
    xs = torch.tensor([float(r["depth"]) for r in rows])
    ys = torch.tensor([float(r[key]) for r in rows])
    b = ((xs - xs.mean()) * (ys - ys.mean())).sum() / ((xs - xs.mean()) ** 2).sum()
    a = ys.mean() - b * xs.mean()
    return float(a), float(b), float(a + b * 30)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--depths", type=int, nargs="+", default=[2, 3, 4])
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--modes", nargs="+", default=["bf16", "nf4"])
    ap.add_argument("--ar-weight", type=float, default=0.0, help="encoder AR co-loss weight in the main matrix")
    ap.add_argument("--out", default="qlora_memory.json")
    ap.add_argument("--tiny", action="store_true", help="tiny dims on the CPU: checks this script, measures nothing")
    ap.add_argument("--group-size", type=int, default=32,
                    help="experts dequantized at once (nf4; default: model.quant_group_size's, 32)")
    ap.add_argument("--target-experts", action="store_true", help="LoRA r16 on the experts too")
    args = ap.parse_args()
    global DEVICE, DIMS, GROUP, EXPERT_LORA
    GROUP, EXPERT_LORA = args.group_size, args.target_experts
    if args.tiny:
        DEVICE, DIMS = torch.device("cpu"), TINY
    torch.backends.cuda.matmul.allow_tf32 = True
    name = torch.cuda.get_device_name() if DEVICE.type == "cuda" else "cpu"
    print(f"device: {name}, torch {torch.__version__}", flush=True)
    rows, logits = [], {}
    for depth in args.depths:
        for mode in args.modes:
            row, lg = measure(depth, "nf4" if mode == "nf4" else "none", args.steps, args.ar_weight,
                              want_logits=depth == args.depths[0])
            row["mode"] = mode
            row["group_size"] = GROUP
            row["target_experts"] = EXPERT_LORA
            rows.append(row)
            if lg is not None:
                logits[mode] = lg
            print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
    result = {"rows": rows, "fits": {}}
    for mode in args.modes:
        mine = [r for r in rows if r["mode"] == mode]
        if len({r["depth"] for r in mine}) >= 2:
            result["fits"][mode] = {k: fit(mine, k) for k in ("weights_gib", "peak_gib", "step_s")}
            print(f"{mode}: " + ", ".join(f"{k} = {a:.3f} + {b:.3f}*L -> {v30:.2f} at 30 layers"
                                          for k, (a, b, v30) in result["fits"][mode].items()), flush=True)
    if "bf16" in result["fits"] and "nf4" in result["fits"]:
        ratio = result["fits"]["nf4"]["step_s"][2] / result["fits"]["bf16"]["step_s"][2]
        same = [(a["step_s"] / b["step_s"]) for a in rows for b in rows
                if a["mode"] == "nf4" and b["mode"] == "bf16" and a["depth"] == b["depth"]]
        result["step_ratio"] = {"at_30_layers": ratio, "measured": same}
        print(f"nf4/bf16 step time: measured {[round(s, 2) for s in same]}, extrapolated to 30 layers {ratio:.2f}")
    if "bf16" in logits and "nf4" in logits:
        a, b = logits["bf16"][0], logits["nf4"][0]
        cos = torch.nn.functional.cosine_similarity(a, b, dim=-1)
        kl = torch.nn.functional.kl_div(b.log_softmax(-1), a.log_softmax(-1), log_target=True, reduction="none").sum(-1)
        agree = (a.argmax(-1) == b.argmax(-1)).float().mean()
        result["logits"] = {"depth": args.depths[0], "cosine_mean": float(cos.mean()), "cosine_min": float(cos.min()),
                            "kl_mean": float(kl.mean()), "argmax_agree": float(agree)}
        print(f"logits nf4 vs bf16 ({args.depths[0]} layers, 256 canvas positions): cosine mean {cos.mean():.4f} "
              f"min {cos.min():.4f}, KL(bf16||nf4) mean {kl.mean():.4f}, argmax agree {agree:.3f}", flush=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
