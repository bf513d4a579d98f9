"""4-bit DiffusionGemma: NF4 experts (per-group dequantization, exact gradients), streaming load, QLoRA."""

import pytest
import torch
from omegaconf import OmegaConf

pytest.importorskip("bitsandbytes")

from dgft import quant, stream  # noqa: E402
from dgft.model import attach_lora, denoise, encode  # noqa: E402

from conftest import tiny_moe  # noqa: E402



@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def reference_experts(x, index, weights, gate_up, down, act):
    """The math of DiffusionGemmaTextExperts, written plainly."""
    out = torch.zeros_like(x)
    for t in range(x.shape[0]):
        for k in range(index.shape[1]):
            e = index[t, k]
            gate, up = (gate_up[e] @ x[t]).chunk(2)
            out[t] = out[t] + weights[t, k] * (down[e] @ (act(gate) * up))
    return out


def test_stack_roundtrip_matches_bitsandbytes_nf4():
    import bitsandbytes.functional as F

    torch.manual_seed(0)
    w = torch.randn(3, 64, 96) * 0.02
    stack = quant.NF4Stack(3, 64, 96, dtype=torch.float32)
    for e in range(3):
        stack.set(e, w[e])
    got = stack.dequantize(0, 3)
    for e in range(3):
        q, st = F.quantize_4bit(w[e].reshape(-1), blocksize=64, quant_type="nf4", compress_statistics=True)
        theirs = F.dequantize_4bit(q, st).view(64, 96)
        assert torch.allclose(got[e], theirs, atol=1e-3 * w.abs().max())  # same codes, same double-quant scales
    assert torch.equal(stack.dequantize(1, 2)[0], got[1])  # an expert dequantizes on its own
    rel = (got - w).norm() / w.norm()
    assert rel < 0.15, rel
    assert stack.nbytes() < w.numel() * 2 / 3.5  # about 4x smaller than bf16


def quantized_experts(dtype, group_size):
    """A tiny MoE layer's experts, their NF4Experts copy, and its dequantized (gate_up, down) as the reference."""
    experts = tiny_moe().model.decoder.layers[0].experts
    q = quant.NF4Experts.like(experts, dtype=dtype, group_size=group_size)
    for e in range(experts.num_experts):
        q.gate_up.set(e, experts.gate_up_proj[e].detach())
        q.down.set(e, experts.down_proj[e].detach())
    return experts, q, q.gate_up.dequantize(0, 4), q.down.dequantize(0, 4)


@pytest.mark.parametrize("group_size", [1, 3, 16])
def test_nf4_experts_forward_and_backward_are_exact(group_size):
    torch.manual_seed(1)
    experts, q, gate_up, down = quantized_experts(dtype=torch.float32, group_size=group_size)

    x = torch.randn(7, 64, requires_grad=True)
    index = torch.tensor([[0, 1], [1, 2], [0, 2], [3, 1], [1, 0], [1, 3], [2, 1]])  # expert 1 busiest
    w = torch.rand(7, 2, requires_grad=True)
    out = q(x, index, w)
    ref_x, ref_w = x.detach().clone().requires_grad_(True), w.detach().clone().requires_grad_(True)
    ref = reference_experts(ref_x, index, ref_w, gate_up, down, experts.act_fn)
    assert torch.allclose(out, ref, atol=1e-6)
    g = torch.randn_like(out)
    out.backward(g)
    ref.backward(g)
    assert torch.allclose(x.grad, ref_x.grad, atol=1e-6)
    assert torch.allclose(w.grad, ref_w.grad, atol=1e-6)


def peft_expert_delta(a, b, experts):
    """peft's ParamWrapper.get_delta_weight for (E, out, in) experts, written out: (E, out, in)."""
    return torch.einsum("o r e, e r i -> e o i", b.reshape(b.shape[0], -1, experts), a.reshape(experts, -1, a.shape[-1]))


@pytest.mark.parametrize("group_size", [1, 16])
def test_nf4_expert_lora_forward_and_backward_are_exact(group_size):
    """LoRA on the 4-bit experts = the dequantized experts plus peft's expert delta, values and gradients."""
    torch.manual_seed(6)
    experts, q, gate_up, down = quantized_experts(dtype=torch.float32, group_size=group_size)
    lora = quant.LoraNF4Experts(q, rank=3, alpha=6)
    factors = {"gate_up": lora.base_layer, "down": lora}
    for f in factors.values():
        f.lora_B["default"].weight.data.normal_(0, 0.3)  # B starts at zero: make the delta visible
    assert lora.scaling == 2.0

    x = torch.randn(7, 64, requires_grad=True)
    index = torch.tensor([[0, 1], [1, 2], [0, 2], [3, 1], [1, 0], [1, 3], [2, 1]])
    w = torch.rand(7, 2, requires_grad=True)
    out = lora(x, index, w)
    ref_x, ref_w = x.detach().clone().requires_grad_(True), w.detach().clone().requires_grad_(True)
    ref_ab = {k: (f.lora_A["default"].weight.detach().clone().requires_grad_(True),
                  f.lora_B["default"].weight.detach().clone().requires_grad_(True)) for k, f in factors.items()}
    eff = {k: base + 2.0 * peft_expert_delta(*ref_ab[k], 4) for k, base in (("gate_up", gate_up), ("down", down))}
    ref = reference_experts(ref_x, index, ref_w, eff["gate_up"], eff["down"], experts.act_fn)
    assert (ref - reference_experts(x.detach(), index, w.detach(), gate_up, down, experts.act_fn)).abs().max() > 0.1
    assert torch.allclose(out, ref, atol=1e-5)
    g = torch.randn_like(out)
    out.backward(g)
    ref.backward(g)
    assert torch.allclose(x.grad, ref_x.grad, atol=1e-5)
    assert torch.allclose(w.grad, ref_w.grad, atol=1e-5)
    for k, f in factors.items():
        assert torch.allclose(f.lora_A["default"].weight.grad, ref_ab[k][0].grad, atol=1e-5), k
        assert torch.allclose(f.lora_B["default"].weight.grad, ref_ab[k][1].grad, atol=1e-5), k
    assert not any(b.requires_grad for b in q.buffers())


def test_grouped_matmul_matches_a_loop_in_bf16():
    torch.manual_seed(2)
    x = torch.randn(9, 64, dtype=torch.bfloat16)
    w = torch.randn(3, 64, 32, dtype=torch.bfloat16)
    counts = [4, 0, 5]
    got = quant.grouped_matmul(x, w, counts)
    want = torch.cat([x[:4] @ w[0], x[4:9] @ w[2]])
    assert torch.allclose(got.float(), want.float(), atol=1e-2)
    # offsets already on the device (as the NF4 experts pass them, to skip a host-to-device copy) agree
    offs = torch.tensor(counts).cumsum(0, dtype=torch.int32)
    assert torch.equal(quant.grouped_matmul(x, w, counts, offs), got)


def _saved(tmp_path, dtype=torch.bfloat16):
    model = tiny_moe(dtype)
    model.save_pretrained(tmp_path)
    return model


def test_streaming_load_quantizes_experts_and_linears(tmp_path):
    import bitsandbytes as bnb

    _saved(tmp_path)
    q = stream.load_streaming(tmp_path, quantize="nf4", device="cpu")
    plain = stream.load_streaming(tmp_path, quantize="none", device="cpu")
    enc, dec = q.model.encoder.language_model.layers[0], q.model.decoder.layers[0]
    assert isinstance(dec.experts, quant.NF4Experts) and enc.experts is dec.experts  # one copy serves both halves
    assert isinstance(dec.self_attn.q_proj, bnb.nn.Linear4bit) and enc.self_attn.q_proj is dec.self_attn.q_proj
    assert isinstance(dec.router.proj, torch.nn.Linear) and not isinstance(dec.router.proj, bnb.nn.Linear4bit)
    bf16_expert_bytes = sum(getattr(plain.model.decoder.layers[i].experts, n).numel() * 2
                            for i in range(2) for n in ("gate_up_proj", "down_proj"))
    nf4_expert_bytes = sum(q.model.decoder.layers[i].experts.nbytes() for i in range(2))
    assert 3.5 < bf16_expert_bytes / nf4_expert_bytes < 4.1
    assert not any(p.is_meta for p in q.parameters())
    from dgft.model import count_parameters  # 4 bits hold as many weights: packed bytes and expert buffers count
    assert count_parameters(q)[1] == count_parameters(plain)[1]

    ids = torch.randint(10, 200, (2, 8))
    mask = torch.ones_like(ids)
    canvas = torch.randint(10, 200, (2, 16))
    with torch.no_grad():
        a = denoise(q, encode(q, ids, mask), canvas, mask)
        b = denoise(plain, encode(plain, ids, mask), canvas, mask)
    cos = torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0)
    assert cos > 0.8, cos  # random tiny weights are the worst case for 4 bits; bench/ measures the real width


def test_as_trained_gives_the_weights_a_4bit_base_computes_with(tmp_path):
    """`quant.as_trained` (what a 4-bit run's export merges into) equals, to the bit, each weight the streamed 4-bit
    model dequantizes: its linear projections and every expert; None for what stays unquantized."""
    import bitsandbytes.functional as F

    from safetensors.torch import load_file

    model = _saved(tmp_path, torch.float32)
    q = stream.load_streaming(tmp_path, quantize="nf4", device="cpu")
    slots = quant.make_slots(stream.skeleton(model.config), "meta")  # as dgft export builds them
    tensors = load_file(tmp_path / "model.safetensors")
    checked = 0
    for name, tensor in tensors.items():
        got = quant.as_trained(slots, name, tensor)
        prefix, _, leaf = name.rpartition(".")
        module = q.get_submodule(prefix)
        if isinstance(module, quant.NF4Experts):
            stack = module.stack(leaf)
            assert torch.equal(got, stack.dequantize(0, stack.shape[0])), name
        elif leaf == "weight" and hasattr(module, "quant_state") or hasattr(getattr(module, "weight", None),
                                                                              "quant_state"):
            assert torch.equal(got, F.dequantize_4bit(module.weight.data, module.weight.quant_state)), name
        else:
            assert got is None, name
            continue
        assert got.dtype == torch.bfloat16 and not torch.equal(got.float(), tensor)  # 4 bits moved it
        checked += 1
    assert checked == len({n for n in tensors if n.rpartition(".")[0] in slots
                           and (n.endswith(".weight") or isinstance(slots[n.rpartition(".")[0]], quant.NF4Experts))})
    assert checked == 16  # 2 layers x (6 projections + 2 expert stacks), stored once for both halves


def test_streaming_load_names_what_is_missing(tmp_path):
    from safetensors.torch import load_file, save_file

    _saved(tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    dropped = next(k for k in tensors if k.endswith("experts.down_proj"))
    del tensors[dropped]
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(stream.StreamLoadError, match="lacks .*experts.down"):
        stream.load_streaming(tmp_path, quantize="nf4", device="cpu")

    tensors[dropped] = torch.zeros(3, 64, 64)  # three experts where config.json says four
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(stream.StreamLoadError, match=r"model.safetensors: .*experts.down_proj: shape \(3, 64, 64\)"):
        stream.load_streaming(tmp_path, quantize="nf4", device="cpu")

    tensors[dropped] = torch.zeros(4, 64, 64)  # as config.json says, but beside it a tensor the 4-bit slot lacks
    tensors[dropped + "_scale_inv"] = torch.ones(4, 1, 1)
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(stream.StreamLoadError, match=r"experts.down_proj_scale_inv"):
        stream.load_streaming(tmp_path, quantize="nf4", device="cpu")


@pytest.mark.parametrize("quantize", ["nf4", "none"])
def test_streaming_load_refuses_what_would_load_wrong(tmp_path, quantize):
    """Each loaded without a word before: a buffer of another shape (the forward then failed, or broadcast), a tied
    twin stored twice with other values (the last copy won), integer values for an expert weight (quantized, or kept
    as int8); a missing expert stack did not name its layer, and a config.json transformers' checks refuse was a
    bare traceback."""
    import json

    from safetensors.torch import load_file, save_file

    _saved(tmp_path)
    good = load_file(tmp_path / "model.safetensors")
    layer = "model.decoder.layers.1"

    def refused(tensors, match):
        save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
        with pytest.raises(stream.StreamLoadError, match=match):
            stream.load_streaming(tmp_path, quantize=quantize, device="cpu")

    refused({**good, f"{layer}.layer_scalar": torch.zeros(5)}, rf"{layer}.layer_scalar: shape \(5,\), model expects \(1,\)")
    twin = "model.encoder.language_model.layers.0.self_attn.q_proj.weight"
    refused({**good, twin: torch.full((64, 64), 7.0)}, rf"{twin}: a tied twin of model.decoder.layers.0.self_attn.q_proj.weight")
    refused({**good, f"{layer}.experts.down_proj": torch.zeros(4, 64, 64, dtype=torch.int8)},
            rf"{layer}.experts.down_proj: (int8|I8) values for a floating-point weight")
    refused({k: v for k, v in good.items() if k != f"{layer}.experts.gate_up_proj"},
            r"lacks 1 weight\(s\): model\.(decoder|encoder\.language_model)\.layers\.1\.experts\.gate_up_proj")
    experts = f"{layer}.experts.gate_up_proj"
    twin = experts.replace("model.decoder", "model.encoder.language_model")
    refused({**good, twin: good[experts] * 2}, rf"{twin}: a tied twin of {experts}, placed already, with other values")
    # every twin stored twice, alike (a plain safetensors dump of the state_dict): the same model, loaded
    full = {k: v.clone() for k, v in tiny_moe(torch.bfloat16).state_dict().items()}
    save_file(full, tmp_path / "model.safetensors", metadata={"format": "pt"})
    assert len(full) > len(good)
    twice = stream.load_streaming(tmp_path, quantize=quantize, device="cpu")
    save_file(good, tmp_path / "model.safetensors", metadata={"format": "pt"})
    once = stream.load_streaming(tmp_path, quantize=quantize, device="cpu")
    ids, canvas = torch.randint(10, 200, (2, 8)), torch.randint(10, 200, (2, 16))
    with torch.no_grad():
        assert torch.equal(denoise(twice, encode(twice, ids, torch.ones_like(ids)), canvas, torch.ones_like(ids)),
                           denoise(once, encode(once, ids, torch.ones_like(ids)), canvas, torch.ones_like(ids)))
    save_file(good, tmp_path / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((tmp_path / "config.json").read_text())
    config["text_config"]["layer_types"] = config["text_config"]["layer_types"][:1]  # fewer than num_hidden_layers
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(stream.StreamLoadError, match="no readable DiffusionGemma config.json"):
        stream.load_streaming(tmp_path, quantize=quantize, device="cpu")


def test_a_missing_or_damaged_shard_is_named(tmp_path):
    import json

    _saved(tmp_path)
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"\x07\x00")  # a header cut short
    with pytest.raises(stream.StreamLoadError, match=r"model.safetensors: cannot read this shard \(SafetensorError"):
        list(stream.iter_checkpoint(tmp_path))
    weights.unlink()
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"x": "model-00002.safetensors"}}))
    with pytest.raises(stream.StreamLoadError, match=r"model-00002.safetensors: cannot read this shard \(FileNotFound"):
        list(stream.iter_checkpoint(tmp_path))


@pytest.mark.parametrize("target_experts", [False, True])
def test_qlora_trains_and_the_adapter_reloads(tmp_path, target_experts):
    """QLoRA trains and its adapter reloads onto a fresh 4-bit base; with `target_experts` the 4-bit experts
    take LoRA too, saved as peft saves expert LoRA, so a bf16 base with peft reads the same adapter."""
    import json

    from dgft.checkpoint import save_weights
    from dgft.model import load_adapter

    _saved(tmp_path / "base")
    model = stream.load_streaming(tmp_path / "base", quantize="nf4", device="cpu", dtype=torch.float32)
    quant.freeze_base_(model)
    lcfg = OmegaConf.create(dict(r=8, alpha=16, dropout=0.0, target_modules=["q_proj", "o_proj", "gate_proj"],
                                 target_experts=target_experts))
    model = attach_lora(model, lcfg)
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n, p in model.named_parameters() if p.requires_grad)
    expert_lora = [n for n, p in model.named_parameters() if p.requires_grad and ".experts." in n]
    assert len(expert_lora) == 8 * target_experts  # 2 layers x (gate_up, down) x (A, B), encoder and decoder shared
    opt = torch.optim.AdamW(trainable, lr=1e-2)
    torch.manual_seed(3)
    ids = torch.randint(10, 200, (4, 8))
    mask = torch.ones_like(ids)
    canvas = torch.randint(10, 200, (4, 16))
    target = torch.randint(10, 200, (4, 16))
    losses = []
    for _ in range(12):
        logits = denoise(model, encode(model, ids, mask), canvas, mask)
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), target.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.5, losses
    with torch.no_grad():
        before = denoise(model, encode(model, ids, mask), canvas, mask)
    save_weights(model, tmp_path / "adapter")  # as dgft train saves it
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert bool(config["target_parameters"]) == target_experts

    base = stream.load_streaming(tmp_path / "base", quantize="nf4", device="cpu", dtype=torch.float32)
    again = load_adapter(base, tmp_path / "adapter")
    with torch.no_grad():
        after = denoise(again, encode(again, ids, mask), canvas, mask)
    assert torch.allclose(before, after, atol=1e-5)
    if target_experts:  # the trained expert LoRA is in the reloaded model, and it matters
        lora = again.base_model.model.model.decoder.layers[0].experts
        assert isinstance(lora, quant.LoraNF4Experts) and lora.lora_B["default"].weight.abs().max() > 0
        lora.lora_B["default"].weight.data.zero_()
        with torch.no_grad():
            assert (denoise(again, encode(again, ids, mask), canvas, mask) - before).abs().max() > 1e-3
    # the same adapter on the bf16 base through peft (target_parameters there): the 4-bit model's logits, up to
    # the quantization gap
    if target_experts:
        from transformers import DiffusionGemmaForBlockDiffusion

        plain = load_adapter(DiffusionGemmaForBlockDiffusion.from_pretrained(tmp_path / "base", dtype=torch.float32),
                             tmp_path / "adapter")
        with torch.no_grad():
            bf16 = denoise(plain, encode(plain, ids, mask), canvas, mask)
        cos = torch.nn.functional.cosine_similarity(bf16.flatten(), before.flatten(), dim=0)
        assert cos > 0.9, cos


def test_nf4_experts_backward_in_bf16_with_idle_experts():
    """The grouped (bf16) path, with experts that get no token, against the fp32 reference."""
    torch.manual_seed(5)
    experts, q, gate_up, down = quantized_experts(dtype=torch.bfloat16, group_size=4)
    gate_up, down = gate_up.float(), down.float()
    x = torch.randn(6, 64)
    index = torch.tensor([[0, 3], [3, 0], [0, 3], [3, 0], [0, 3], [3, 0]])  # experts 1 and 2 idle
    w = torch.rand(6, 2)
    xb, wb = x.clone().bfloat16().requires_grad_(True), w.clone().requires_grad_(True)
    out = q(xb, index, wb)
    xr, wr = x.clone().requires_grad_(True), w.clone().requires_grad_(True)
    ref = reference_experts(xr, index, wr, gate_up, down, experts.act_fn)
    g = torch.randn_like(ref)
    out.float().backward(g.bfloat16().float())
    ref.backward(g.bfloat16().float())
    rel = lambda a, b: float((a.detach().float() - b.detach()).norm() / b.detach().norm())  # noqa: E731
    assert rel(out, ref) < 0.02 and rel(xb.grad, xr.grad) < 0.03 and rel(wb.grad, wr.grad) < 0.03


def _qlora_run(tmp_path, *extra):
    """A 3-step QLoRA run of a small embedded model through the CLI (CPU) -> its directory."""
    from dgft.cli import main

    run = tmp_path / "run"
    main(["train", f"hydra.run.dir={run}", f"task.cache_dir={tmp_path / 'cache'}", "task.base_puzzles=20",
          "task.heldout_puzzles=6", "trainer.max_steps=3", "trainer.batch_size=8", "trainer.eval_every=0",
          "trainer.log_every=1", "sampler.steps=8", "model.finetune=lora", "model.quantize=nf4",
          "model.hidden_size=64", "model.num_layers=2", "model.num_heads=2", "model.num_kv_heads=1",
          "model.head_dim=32", "model.intermediate_size=128", "model.moe_intermediate_size=64", *extra])
    return run


@pytest.mark.parametrize("experts", [False, True])
def test_qlora_train_eval_export_through_the_cli(tmp_path, experts):
    """model.quantize=nf4 end to end on the embedded model (CPU): 4-bit base, LoRA (on the 4-bit experts too with
    model.lora.target_experts), eval, streaming export."""
    import json

    from transformers import DiffusionGemmaForBlockDiffusion

    from dgft.cli import main

    run = _qlora_run(tmp_path, "model.num_experts=2", "model.top_k_experts=1",
                     f"model.lora.target_experts={str(experts).lower()}")
    assert (run / "adapter" / "adapter_config.json").exists() and (run / "base" / "config.json").exists()
    adapter_config = json.loads((run / "adapter" / "adapter_config.json").read_text())
    assert bool(adapter_config["target_parameters"]) == experts
    info = json.loads((run / "run.json").read_text())
    assert info["trainable_parameters"] < info["parameters"] / 2
    main(["eval", str(run), "limit=3"])
    assert json.loads((run / "eval" / "heldout.json").read_text())["modes"]["rules"]["rule_violations"] == 0
    main(["export", str(run)])
    record = json.loads((run / "export" / "export.json").read_text())
    assert record["quantize"] == "nf4" and record["merged_max_abs_diff"] <= record["atol"]
    from safetensors.torch import load_file

    saved = load_file(run / "adapter" / "adapter_model.safetensors")
    pairs = [k for k in saved if "lora_A" in k]
    assert len([k for k in pairs if ".experts." in k]) == 4 * experts  # 2 layers x (gate_up_proj, down_proj)
    assert record["merge"]["merged_tensors"] == record["merge"]["adapter_modules"] == len(pairs)
    assert record["merge_into"] == "dequantized" and "These figures are the trained model's" in \
        (run / "export" / "README.md").read_text()  # the card says so
    assert (run / "export" / "adapter" / "adapter_config.json").exists()
    DiffusionGemmaForBlockDiffusion.from_pretrained(str(run / "export"))
    # evaluated as an export, its result names the merged weights it measured, not the adapter shipped beside them
    main(["eval", str(run / "export"), f"data={run / 'data' / 'heldout.csv'}", "limit=2", "plot=false"])
    hashes = json.loads((run / "export" / "eval" / "heldout.json").read_text())["export"]["weights_sha256"]
    assert set(hashes) == {p.name for p in (run / "export").glob("*.safetensors")} and hashes
    # merged into the unquantized base instead: another model, exported again, and said to be one
    main(["export", str(run), "merge_into=base"])
    other = json.loads((run / "export" / "export.json").read_text())
    assert other["merge_into"] == "base" and other["merged_max_abs_diff"] <= other["atol"]
    assert "so these figures do not carry over" in (run / "export" / "README.md").read_text()
    with pytest.raises(SystemExit) as err:  # a typo is refused, not merged into the base under its name
        main(["export", str(run), "merge_into=dequantised"])
    assert err.value.code == 2


def test_a_4bit_runs_export_is_the_model_it_trained(tmp_path):
    """The default export of a QLoRA run (merge_into=dequantized) gives the trained model's logits up to its bf16
    arithmetic; merged into the unquantized base (merge_into=base) it is another model, 16x further off when this
    was written (one expert, so that no token's route flips between the two and hides the difference)."""
    import json

    from dgft.cli import main

    run = _qlora_run(tmp_path, "model.lora.target_experts=true")
    gaps = {}
    for into in ("dequantized", "base"):
        main(["export", str(run), f"merge_into={into}"])
        record = json.loads((run / "export" / "export.json").read_text())
        assert record["merge_into"] == into and record["merged_max_abs_diff"] <= 1e-5  # same weights: same logits
        gaps[into] = record["quantization_gap_max_abs_diff"]
    assert gaps["dequantized"] < gaps["base"] / 5, gaps

    # a buffer stays as training held it (the loader keeps buffers in their own dtype): an fp32 value bf16 cannot
    # hold is exported as it is, and the gate's reference holds it alike
    from safetensors.torch import load_file, save_file

    from dgft.export import ExportError, export
    from dgft.runs import RunError

    summary = json.loads((run / "train_summary.json").read_text())
    summary.pop("base")  # the base is changed by hand below, as a run from before dgft recorded it could be
    (run / "train_summary.json").write_text(json.dumps(summary))
    base = run / "base" / "model.safetensors"
    tensors = load_file(base)
    scalars = [k for k, v in tensors.items() if k.endswith("layer_scalar")]
    assert scalars and all(tensors[k].dtype == torch.float32 for k in scalars)
    for k in scalars:
        tensors[k] = torch.full_like(tensors[k], 0.3)
    save_file(tensors, base, metadata={"format": "pt"})
    main(["export", str(run)])
    exported = load_file(run / "export" / "model.safetensors")
    assert all(torch.equal(exported[k], tensors[k]) for k in scalars)
    assert all(v.dtype == torch.bfloat16 for k, v in exported.items() if k not in scalars and v.is_floating_point())
    # a base the 4-bit slots do not fit, or without its config: named, nothing exported
    cfg = OmegaConf.create({"run": str(run), "out": None, "checkpoint": None, "atol": 1e-4, "max_check_gb": 4.0,
                            "merge_into": "dequantized", "device": "cpu"})
    name = next(k for k in tensors if k.endswith("experts.down_proj"))
    tensors[name] = torch.zeros(tensors[name].shape[0], tensors[name].shape[1], tensors[name].shape[2] + 64)
    save_file(tensors, base, metadata={"format": "pt"})
    with pytest.raises(ExportError, match=f"{name} has shape"):
        export(cfg)
    (run / "base" / "config.json").rename(tmp_path / "config.json")
    with pytest.raises((ExportError, RunError), match="config.json"):
        export(cfg)
