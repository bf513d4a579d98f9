"""Every shipped recipe and group option composes against the schema; bad overrides fail by key."""


import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from dgft.cli import recipes_dir
from dgft.config import ConfigError, register, validate

RECIPES = recipes_dir()
register()


def _compose(name, overrides=()):
    with initialize_config_dir(config_dir=str(RECIPES), version_base="1.3"):
        return compose(config_name=name, overrides=list(overrides))


@pytest.mark.parametrize("recipe", sorted(p.stem for p in (RECIPES / "recipe").glob("*.yaml")))
def test_each_recipe_composes(recipe):
    cfg = _compose("train", [f"recipe={recipe}"])
    assert cfg.name == recipe
    if cfg.model.name == "tiny" and cfg.model.quantize == "none":
        validate(cfg)


@pytest.mark.parametrize("group", ["task", "model", "noise", "trainer", "sampler"])
def test_each_group_option_composes(group):
    for option in sorted(p.stem for p in (RECIPES / group).glob("*.yaml")):
        cfg = _compose("train", [f"{group}={option}"])
        assert OmegaConf.select(cfg, group) is not None


def test_eval_and_export_compose():
    assert _compose("eval", ["run=/tmp/x"]).run == "/tmp/x"
    assert _compose("export", ["run=/tmp/x"]).atol > 0


@pytest.mark.parametrize("override", ["trainer.lrr=0.1", "trainer.lr=abc", "model.hidden=3", "nosuchgroup=x"])
def test_typos_and_bad_types_fail_at_composition(override):
    with pytest.raises(ConfigCompositionException) as err:
        _compose("train", [override])
    assert override.split("=")[0].split(".")[-1] in str(err.value) + str(err.value.__cause__)


@pytest.mark.parametrize("override,key", [
    ("trainer.lr=-0.1", "trainer.lr"), ("noise.kind=gauss", "noise.kind"), ("task.sizes=[5]", "task.sizes"),
    ("noise.self_conditioning_p=1.5", "noise.self_conditioning_p"), ("model.canvas_length=40", "model.canvas_length"),
    ("model.quantize=nf4", "model.quantize"),
])
def test_range_checks_name_the_key(override, key):
    cfg = _compose("train", [override])
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        validate(cfg)
