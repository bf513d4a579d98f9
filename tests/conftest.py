"""Shared fixtures: tiny real DiffusionGemma models and configs (CPU, seconds)."""

import os
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from dgft.config import TrainRecipe

torch.set_num_threads(1)  # tiny models: one thread is as fast, and immune to oversubscription


def shared_dir() -> Path:
    """The workspace's shared folder (benchmarks): $DGFT_SHARED, else `shared/` beside the checkout, else these
    machines' /work/shared; tests that read it skip where none of them exists."""
    here = Path(__file__).resolve().parents[2] / "shared"
    for candidate in (os.environ.get("DGFT_SHARED"), here, "/work/shared"):
        if candidate and Path(candidate).is_dir():
            return Path(candidate)
    return here


SHARED = shared_dir()

# Test tokenizers for the pretrained (chat) path: the embedded model's special ids, then Gemma's turn markers,
# and a Gemma-like chat template (test_sudoku_text.py, test_infill_chat.py)
CHAT_SPECIALS = ["[PAD]", "[EOS]", "[BOS]", "[IMG]", "[BOI]", "[EOI]", "[MASK]", "[SEP]", "[UNK]",
                 "<start_of_turn>", "<end_of_turn>"]
CHAT_TEMPLATE = ("{% for m in messages %}<start_of_turn>{{ m['role'] }}\n{{ m['content'] }}<end_of_turn>\n"
                 "{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}")


# A tiny model with four experts, top 2; Linear4bit on CPU wants in_features % 64 == 0 and out_features % 32 == 0
MOE = dict(hidden_size=64, intermediate_size=128, num_layers=2, num_heads=2, num_kv_heads=1, head_dim=32,
           num_experts=4, top_k_experts=2, moe_intermediate_size=64, canvas_length=16)


def tiny_moe(dtype=torch.float32):
    from dgft.model import build_tiny

    return build_tiny(OmegaConf.create(MOE), vocab_size=256).to(dtype)


def tiny_cfg(**overrides):
    """A composed-like TrainRecipe for a 2-layer, hidden-32 model."""
    cfg = OmegaConf.structured(TrainRecipe)
    tiny = {"model": {"hidden_size": 32, "num_layers": 2, "num_heads": 2, "num_kv_heads": 1, "head_dim": 16,
                      "intermediate_size": 64, "moe_intermediate_size": 32}}
    cfg = OmegaConf.merge(cfg, tiny, overrides)
    return cfg


@pytest.fixture
def cfg():
    return tiny_cfg()


@pytest.fixture(autouse=True)
def _clear_hydra():
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    yield
    GlobalHydra.instance().clear()
