"""Shared fixtures: tiny real DiffusionGemma models and configs (CPU, seconds)."""

import pytest
import torch
from omegaconf import OmegaConf

from dgft.config import TrainRecipe

torch.set_num_threads(1)  # tiny models: one thread is as fast, and immune to oversubscription


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
