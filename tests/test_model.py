"""The one-expert experts path of dgft's from-scratch models (dgft.model.one_expert_path)."""

import json

import torch
from transformers import DiffusionGemmaForBlockDiffusion

from dgft.model import ONE_EXPERT, build_tiny, denoise, encode

from conftest import tiny_cfg


def _logits_and_grads(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    V = model.config.get_text_config().vocab_size
    ids, canvas = torch.randint(11, V, (3, 9), generator=g), torch.randint(11, V, (3, 16), generator=g)
    mask = torch.ones_like(ids)
    model.zero_grad()
    logits = denoise(model, encode(model, ids, mask), canvas, mask)
    logits.square().mean().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return logits.detach(), grads


def test_one_expert_path_equals_transformers_grouped_mm():
    cfg = tiny_cfg(model={"num_experts": 1, "top_k_experts": 1})
    model = build_tiny(cfg.model, 120, seed=1)
    assert model.config.get_text_config()._experts_implementation == ONE_EXPERT
    logits, grads = _logits_and_grads(model)
    model.set_experts_implementation("grouped_mm")
    ref_logits, ref_grads = _logits_and_grads(model)
    torch.testing.assert_close(logits, ref_logits, rtol=1e-5, atol=1e-5)
    assert grads.keys() == ref_grads.keys() and any("experts" in n for n in grads)
    for n in grads:
        torch.testing.assert_close(grads[n], ref_grads[n], rtol=1e-4, atol=1e-6, msg=n)


def test_one_expert_path_is_not_saved_and_larger_models_keep_the_default(tmp_path):
    model = build_tiny(tiny_cfg().model, 120, seed=1)
    model.save_pretrained(tmp_path)
    assert ONE_EXPERT not in (tmp_path / "config.json").read_text()
    reloaded = DiffusionGemmaForBlockDiffusion.from_pretrained(str(tmp_path))  # transformers alone: its default
    assert reloaded.config.get_text_config()._experts_implementation != ONE_EXPERT
    moe = build_tiny(tiny_cfg(model={"num_experts": 4, "top_k_experts": 2}).model, 120, seed=1)
    assert moe.config.get_text_config()._experts_implementation != ONE_EXPERT
    assert json.loads((tmp_path / "config.json").read_text())["text_config"]["num_experts"] == 1


def test_forbid_answers_removes_only_the_forbidden_answers():
    from dgft.model import forbid_answers

    logits = torch.randn(2, 3, 20)
    choices = torch.tensor([[4, 5, 6], [7, 8, 9], [10, 11, 12]])
    forbid = torch.zeros(2, 3, 3, dtype=torch.bool)
    forbid[0, 0, 1] = forbid[1, 2, 0] = True
    forbid[1, 1] = True  # every answer forbidden: the position keeps its logits
    out = forbid_answers(logits, choices, forbid)
    assert out[0, 0, 5] == -1e4 and out[1, 2, 10] == -1e4
    changed = out != logits
    assert int(changed.sum()) == 2 and torch.equal(out[1, 1], logits[1, 1])
