"""The shard-by-shard merge of a LoRA adapter into a base checkpoint (`dgft.merge`), on tiny real models. Needs
no bitsandbytes: it ran only where bitsandbytes imported, inside the 4-bit tests' file."""

import json

import pytest
import torch
from omegaconf import OmegaConf

from dgft.merge import MergeError, merge_streaming
from dgft.model import attach_lora, denoise, encode

from conftest import tiny_moe


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.mark.parametrize("target_experts", [False, True])
def test_streaming_merge_equals_the_adapter_model(tmp_path, target_experts):
    """Shard by shard, the merged checkpoint gives the adapter model's logits; with `target_experts` the fused
    3-D expert tensors take their LoRA too (peft target_parameters), expert by expert."""
    from transformers import DiffusionGemmaForBlockDiffusion

    base = tiny_moe(torch.float32)
    base.save_pretrained(tmp_path / "base", max_shard_size="100KB")  # several shards, as a 26B checkpoint has
    assert len(list((tmp_path / "base").glob("*.safetensors"))) > 2
    lcfg = OmegaConf.create(dict(r=4, alpha=8, dropout=0.0, target_modules=["q_proj", "o_proj", "down_proj"],
                                 target_experts=target_experts))
    model = attach_lora(base, lcfg)
    torch.manual_seed(4)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.05)  # a trained-looking adapter (B starts at zero)
    model.save_pretrained(tmp_path / "adapter")
    ids = torch.randint(10, 200, (2, 8))
    mask = torch.ones_like(ids)
    canvas = torch.randint(10, 200, (2, 16))
    with torch.no_grad():
        want = denoise(model, encode(model, ids, mask), canvas, mask)

    summary = merge_streaming(tmp_path / "base", tmp_path / "adapter", tmp_path / "merged", dtype=torch.float32,
                              log=lambda *_: None)
    assert summary["merged_tensors"] == summary["adapter_modules"] > 0
    assert summary["merged_tensors"] == 2 * (3 + 2 * target_experts)  # 2 layers: 3 linears (+ 2 expert tensors)
    index = json.loads((tmp_path / "merged" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) == summary["shards"]
    merged = DiffusionGemmaForBlockDiffusion.from_pretrained(tmp_path / "merged", dtype=torch.float32).eval()
    with torch.no_grad():
        got = denoise(merged, encode(merged, ids, mask), canvas, mask)
    assert (got - want).abs().max() < 1e-4

    # an adapter entry that matches nothing is an error, not a silent partial merge
    from safetensors.torch import load_file, save_file

    tensors = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    key = next(k for k in tensors if "lora_A" in k)
    tensors[key.replace("layers.0.", "layers.7.")] = tensors[key].clone()
    tensors[key.replace("layers.0.", "layers.7.").replace("lora_A", "lora_B")] = tensors[key.replace("lora_A", "lora_B")].clone()
    save_file(tensors, tmp_path / "adapter" / "adapter_model.safetensors")
    with pytest.raises(MergeError, match="layers.7"):
        merge_streaming(tmp_path / "base", tmp_path / "adapter", tmp_path / "merged2", log=lambda *_: None)

    # per-module ranks or alphas (peft rank_pattern / alpha_pattern) are refused: one scale would merge them wrongly
    config_path = tmp_path / "adapter" / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**config, "alpha_pattern": {"q_proj": 32}}))
    with pytest.raises(MergeError, match="alpha_pattern"):
        merge_streaming(tmp_path / "base", tmp_path / "adapter", tmp_path / "merged3", log=lambda *_: None)
    # an adapter whose rows are not r per target (r per expert): made for another model, refused, not spread over
    # these experts (an 8-expert base once took a 4-expert adapter at r=2 as r=1 and merged it without a word)
    config_path.write_text(json.dumps({**config, "r": config["r"] // 2}))
    with pytest.raises(MergeError, match=rf"r={config['r'] // 2}\)?$"):
        merge_streaming(tmp_path / "base", tmp_path / "adapter", tmp_path / "merged4", log=lambda *_: None)
    config_path.write_text(json.dumps(config))
    with pytest.raises(MergeError, match="not empty"):  # never new shards among an earlier merge's files
        merge_streaming(tmp_path / "base", tmp_path / "adapter", tmp_path / "merged", log=lambda *_: None)


def test_a_tied_weight_stored_twice_is_refused(tmp_path):
    """The encoder and decoder share their weights, so a checkpoint stores each once; one that holds a weight under
    both paths would take the adapter's delta twice (once per copy): refused, naming it."""
    from safetensors.torch import load_file, save_file

    base = tiny_moe(torch.float32)
    base.save_pretrained(tmp_path / "base")
    model = attach_lora(base, OmegaConf.create(dict(r=2, alpha=4, dropout=0.0, target_modules=["q_proj"],
                                                    target_experts=False)))
    model.save_pretrained(tmp_path / "adapter")
    path = tmp_path / "base" / "model.safetensors"
    tensors = load_file(str(path))
    name = next(k for k in tensors if k.endswith("layers.0.self_attn.q_proj.weight"))
    enc, dec = "model.encoder.language_model.", "model.decoder."
    twin = dec + name[len(enc):] if name.startswith(enc) else enc + name[len(dec):]
    assert twin not in tensors
    tensors[twin] = tensors[name].clone()
    save_file(tensors, str(path), metadata={"format": "pt"})
    with pytest.raises(MergeError, match="tied twins must be stored once"):
        merge_streaming(tmp_path / "base", tmp_path / "adapter", tmp_path / "merged", log=lambda *_: None)
