"""Every shipped recipe and group option composes against the schema; bad overrides fail by key."""

import re

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


def _needs_cuda(cfg) -> bool:
    """A 4-bit pretrained base or the paged 8-bit optimizer: validate() refuses them without a CUDA GPU."""
    return (cfg.model.quantize != "none" and cfg.model.name != "tiny") or cfg.trainer.optimizer == "paged_adamw_8bit"


@pytest.mark.parametrize("recipe", sorted(p.stem for p in (RECIPES / "recipe").glob("*.yaml")))
def test_each_recipe_composes_and_validates(recipe, monkeypatch):
    """Every recipe passes the range checks; one that needs a GPU is checked as on a machine with CUDA, and
    refused, naming the key, on one without."""
    import torch

    cfg = _compose("train", [f"recipe={recipe}"])
    assert cfg.name == recipe
    if _needs_cuda(cfg):
        if not torch.cuda.is_available():
            with pytest.raises(ConfigError, match=r"model\.quantize|trainer\.optimizer"):
                validate(cfg)
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    validate(cfg)


@pytest.mark.parametrize("recipe", sorted(p.stem for p in (RECIPES / "recipe").glob("*.yaml")))
def test_no_recipe_trains_on_4x4_puzzles_as_full_as_the_benchmark(recipe):
    """d1's 4x4 test set (../shared/benchmarks) has 8 givens a puzzle, and 4x4 puzzles are few: generated ones with
    8 givens are, up to symmetry, 374 of its 500 (a session-32 check). Every shipped recipe keeps its 4x4 training
    puzzles below 8 givens, so none of them is a benchmark puzzle."""
    from dgft.data import _givens_range

    cfg = _compose("train", [f"recipe={recipe}"])
    if cfg.task.name == "sudoku" and 4 in cfg.task.sizes:
        assert _givens_range(4, cfg.task.blank_fraction)[1] < 8


def _leaves(node, prefix=""):
    """(dotted key, value) of every leaf a YAML file sets, interpolations and the defaults list left out."""
    for key, value in node.items():
        if key == "defaults":
            continue
        if isinstance(value, dict):
            yield from _leaves(value, f"{prefix}{key}.")
        elif not (isinstance(value, str) and "${" in value):
            yield f"{prefix}{key}", value


@pytest.mark.parametrize("group", ["task", "model", "noise", "trainer", "sampler"])
def test_each_group_option_composes(group):
    """Picking an option puts that file's values in the config: every key it sets, except those the recipe in play
    sets on top of it."""
    for option in sorted(p.stem for p in (RECIPES / group).glob("*.yaml")):
        # a task goes with its own recipe where there is one: the default recipe=sudoku sets Sudoku-only task keys
        own = [f"recipe={option}"] if group == "task" and (RECIPES / "recipe" / f"{option}.yaml").exists() else []
        cfg = _compose("train", [f"{group}={option}", *own])
        recipe = own[0].split("=")[1] if own else "sudoku"  # train.yaml's default recipe
        on_top = dict(_leaves(OmegaConf.to_container(OmegaConf.load(RECIPES / "recipe" / f"{recipe}.yaml"))))
        values = dict(_leaves(OmegaConf.to_container(OmegaConf.load(RECIPES / group / f"{option}.yaml"))))
        assert values, f"{group}/{option}.yaml sets nothing"
        for key in ("name", "kind"):  # the file's own name for itself (model.name, noise.kind), where it has one
            if key in values:
                assert cfg[group][key] == values[key], f"{group}={option} composed {group}.{key}={cfg[group][key]}"
        for key, value in values.items():
            if f"{group}.{key}" not in on_top:
                assert OmegaConf.select(cfg, f"{group}.{key}") == value, f"{group}={option}: {group}.{key}"


def test_eval_and_export_compose():
    assert _compose("eval", ["run=/tmp/x"]).run == "/tmp/x"
    assert _compose("export", ["run=/tmp/x"]).atol > 0


@pytest.mark.parametrize("override", ["trainer.lrr=0.1", "trainer.lr=abc", "model.hidden=3", "nosuchgroup=x"])
def test_typos_and_bad_types_fail_at_composition(override):
    with pytest.raises(ConfigCompositionException) as err:
        _compose("train", [override])
    key = override.split("=")[0]  # the whole dotted key, as OmegaConf names it: `lr` alone is in other keys too
    assert re.search(rf"^\s*full_key: {re.escape(key)}$", str(err.value.__cause__), re.MULTILINE), err.value.__cause__


@pytest.mark.parametrize("override,key", [
    ("trainer.lr=-0.1", "trainer.lr"), ("noise.kind=gauss", "noise.kind"), ("task.sizes=[5]", "task.sizes"),
    ("noise.self_conditioning_p=1.5", "noise.self_conditioning_p"), ("model.canvas_length=40", "model.canvas_length"),
    ("model.quantize=nf4", "model.quantize"), ("sampler.views=0", "sampler.views"),
    ("task.singles_weight=0", "task.singles_weight"), ("trainer.ema_decay=1.0", "trainer.ema_decay"),
    ("noise.t_power=0", "noise.t_power"), ("task.sc_rules_p=1.5", "task.sc_rules_p"),
    ("task.solver_order_p=-0.1", "task.solver_order_p"), ("task.wrong_known_p=2", "task.wrong_known_p"),
    ("sampler.revise=1.0", "sampler.revise"),
    ("sampler.self_conditioning_from=views", "sampler.self_conditioning_from"),
    # nan and inf pass comparisons: trainer.lr=inf trained to NaN weights, a nan temperature sampled at random
    ("trainer.lr=inf", "trainer.lr=inf: must be a finite"), ("trainer.weight_decay=nan", "trainer.weight_decay=nan"),
    ("trainer.time_limit_min=nan", "trainer.time_limit_min"), ("noise.t_power=inf", "noise.t_power"),
    ("noise.encoder_ar_weight=nan", "noise.encoder_ar_weight"), ("sampler.temperature=nan", "sampler.temperature"),
    ("sampler.entropy_bound=nan", "sampler.entropy_bound"), ("task.blank_fraction=[0.5,nan]", "task.blank_fraction"),
    # a value listed twice, and settings the run would never use
    ("task.sizes=[9,9]", "task.sizes=\\[9, 9\\]: distinct"), ("sampler.modes=[rules,rules]", "sampler.modes"),
    ("model.path=/weights", "model.path=/weights: model.name=tiny"), ("noise.support=vocab", "noise.support"),
])
def test_range_checks_name_the_key(override, key):
    overrides = {"task.sizes=[9,9]": [override, "task.size_weights=[1,1]"],
                 "noise.support=vocab": ["noise=mask", override]}.get(override, [override])
    cfg = _compose("train", overrides)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        validate(cfg)


@pytest.mark.parametrize("overrides,key", [
    (["task.sc_rules_p=0.5", "noise.self_conditioning_p=0", "sampler.self_conditioning=false", "sampler.passes=1"],
     "task.sc_rules_p=0.5: .* noise.self_conditioning_p=0"),
    (["sampler.self_conditioning_from=rules", "sampler.modes=[free,clamped]"], "sampler.self_conditioning_from=rules"),
    (["sampler.fill_forced=true", "sampler.modes=[clamped]"], "sampler.fill_forced=true"),
    (["noise.self_conditioning_p=0"], "sampler.self_conditioning=true: with noise.self_conditioning_p=0 a model "
                                      "trained from scratch"),
])
def test_settings_the_run_would_not_use_are_refused(overrides, key):
    with pytest.raises(ConfigError, match=key):
        validate(_compose("train", overrides))


def test_self_conditioning_trained_or_not_decides_whether_sampling_may_read_it():
    """A model from scratch trained without self-conditioning samples without it (its self-conditioning weights keep
    their random start), also when `dgft eval` is asked for it; a pretrained model learnt it before, so it may."""
    from dgft.evaluate import check_options, eval_sampler

    off = ["noise.self_conditioning_p=0", "sampler.self_conditioning=false", "sampler.passes=1"]
    validate(_compose("train", off))
    validate(_compose("train", ["model=diffusiongemma", "model.path=/nowhere", "model.quantize=none",
                                "model.structured_attention=false", "task.tokens=text", "task.tokenizer=/nowhere",
                                "task.canvas_length=${model.canvas_length}", "sampler.views=1",
                                "noise.self_conditioning_p=0"]))
    run_cfg = _compose("train", off)
    cfg = _compose("eval", ["run=/tmp/x", "sampler.self_conditioning=true"])
    with pytest.raises(ConfigError, match="sampler.self_conditioning=true: with noise.self_conditioning_p=0"):
        check_options(cfg, run_cfg, eval_sampler(cfg, run_cfg))


def test_an_infinite_gradient_norm_means_no_clipping_and_is_allowed():
    validate(_compose("train", ["trainer.max_grad_norm=inf"]))
    validate(_compose("train", ["noise=uniform", "noise.support=vocab"]))


@pytest.mark.parametrize("key", ["task.sc_rules_p=0.5", "task.singles_weight=2", "task.solver_order_p=0.5",
                                 "task.wrong_known_p=0.5"])
def test_cell_options_refuse_a_text_answer(key):
    """Options that read the answer cell by cell are errors with tokens=text, naming the key."""
    text = ["task.tokens=text", "task.tokenizer=/nowhere", "task.canvas_length=96", "model.canvas_length=96",
            "sampler.views=1", "model.structured_attention=false"]
    validate(_compose("train", text))
    with pytest.raises(ConfigError, match=key.split("=")[0].replace(".", r"\.")):
        validate(_compose("train", text + [key]))


def test_expert_lora_refuses_dropout():
    """peft's target_parameters has no LoRA dropout, and the 4-bit experts follow it: an error, not ignored."""
    lora = ["model.finetune=lora", "model.lora.target_experts=true"]
    validate(_compose("train", lora))
    with pytest.raises(ConfigError, match=r"model\.lora\.dropout=0\.1"):
        validate(_compose("train", lora + ["model.lora.dropout=0.1"]))
    validate(_compose("train", ["model.finetune=lora", "model.lora.dropout=0.1"]))


def test_structured_attention_needs_a_tiny_model_with_cell_tokens():
    """Row, column and box heads are fitted to Sudoku cell tokens of a model built from a config: anywhere else
    the option would do nothing, so it is an error naming the key."""
    on = ["model.structured_attention=true"]
    validate(_compose("train", on))
    for other in (["task.tokens=digit"], ["model=diffusiongemma", "model.path=/nowhere"], ["recipe=infill"]):
        with pytest.raises(ConfigError, match=r"model\.structured_attention"):
            validate(_compose("train", other + on))


# --- the infill task's schema ---------------------------------------------------------------------
def test_infill_recipe_derives_the_canvas_and_keeps_its_own_schema():
    cfg = _compose("train", ["recipe=infill", "task.canvas_length=96"])
    assert cfg.task.name == "infill" and cfg.model.canvas_length == 96
    validate(cfg)
    assert "sizes" not in cfg.task and "sources" not in _compose("train", []).task
    from dgft.config import INFILL_KINDS
    from dgft.tasks.infill.corpus import KINDS

    assert tuple(INFILL_KINDS) == KINDS


@pytest.mark.parametrize("overrides", [["recipe=infill", "task.sizes=[4]"], ["task.prompt_tokens=64"],
                                       ["recipe=infill", "task.canvas_length=long"]])
def test_keys_of_the_other_task_fail_at_composition(overrides):
    with pytest.raises(ConfigCompositionException) as err:
        _compose("train", overrides)
    key = overrides[-1].split("=")[0].split(".")[-1]
    assert key in str(err.value) + str(err.value.__cause__)


@pytest.mark.parametrize("overrides,key", [
    (["recipe=infill", "model.canvas_length=32"], "task.canvas_length"),
    (["recipe=infill", "task.kind_weights=[1.0]"], "task.kind_weights"),
    (["recipe=infill", "task.kinds=[line,block]", "task.kind_weights=[1.0,1.0]"], "task.kinds"),
    (["recipe=infill", "sampler.modes=[free,rules]"], "sampler.modes"),
    (["recipe=infill", "task.heldout_share=1.5"], "task.heldout_share"),
    (["recipe=infill", "task.pad_weight=-1"], "task.pad_weight"),
    (["recipe=infill", "task.vocab_size=100"], "task.vocab_size"),
    (["recipe=infill", "model=diffusiongemma", "model.canvas_length=64"], "task.tokenizer"),
    (["recipe=infill", "task.prompt_format=xml"], "task.prompt_format"),
    (["recipe=infill", "sampler.views=2"], "sampler.views"),
    (["recipe=infill", "sampler.self_conditioning_from=rules"], "sampler.self_conditioning_from"),
    (["recipe=infill", "sampler.reprompt=true"], "sampler.reprompt"),
    (["recipe=infill", "task.split_seed=-1"], "task.split_seed"),
    (["task.name=infill"], "task.name"),
])
def test_infill_range_checks_name_the_key(overrides, key):
    cfg = _compose("train", overrides)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        validate(cfg)


def test_infill_with_a_pretrained_model_reads_its_tokenizer():
    """model=diffusiongemma needs task.tokenizer; with it the config passes (fim or chat is picked from the tokenizer)."""
    base = ["recipe=infill", "model=diffusiongemma", "model.quantize=none"]
    with pytest.raises(ConfigError, match=r"task\.tokenizer"):
        validate(_compose("train", base))
    cfg = _compose("train", base + ["task.tokenizer=${model.path}"])
    validate(cfg)
    assert cfg.task.tokenizer == cfg.model.path and cfg.task.prompt_format == "auto"


@pytest.mark.parametrize("override,noise", [("sampler.revise=1.5", "uniform"), ("sampler.revise=0.5", "mask")])
def test_eval_checks_revise_against_the_run(override, noise):
    """An eval override of sampler.revise is range-checked, and refused for a mask-noise run, naming the key."""
    from dgft.evaluate import check_options, eval_sampler

    cfg = _compose("eval", ["run=/tmp/x", override])
    run_cfg = _compose("train", [f"noise={noise}"])
    scfg = eval_sampler(cfg, run_cfg)
    with pytest.raises(ConfigError, match=r"sampler\.revise"):
        check_options(cfg, run_cfg, scfg)
    validate(_compose("train", ["sampler.revise=0.5"]))
    with pytest.raises(ConfigError, match=r"sampler\.revise"):
        validate(_compose("train", ["noise=mask", "sampler.revise=0.5"]))


@pytest.mark.parametrize("override,key", [
    ("sampler.steps=0", r"sampler\.steps"), ("sampler.acceptance=foo", r"sampler\.acceptance"),
    ("sampler.modes=[foo]", r"sampler\.modes"), ("sampler.batch_size=0", r"sampler\.batch_size"),
    ("sampler.temperature=-1", r"sampler\.temperature"), ("sampler.view_batch=-1", r"sampler\.view_batch"),
    ("sampler.confidence=2", r"sampler\.confidence"), ("sampler.views=0", r"sampler\.views"),
    ("sampler.passes=0", r"sampler\.passes"), ("limit=-1", r"^limit"), ("on_error=skp", r"^on_error"),
    ("batch_by=rows", r"^batch_by='rows': expected size or givens"), ("seed=-1", r"^seed=-1"),
    ("seed=4294967296", r"^seed=4294967296"), ("sampler.temperature=nan", r"sampler\.temperature=nan"),
])
def test_eval_range_checks_its_overrides(override, key):
    """Eval overrides get the train config's range checks, before any model loads: `sampler.steps=0` once scored
    every puzzle wrong without a word, and `limit=-1` dropped the last puzzle."""
    from dgft.evaluate import check_options, eval_sampler

    cfg = _compose("eval", ["run=/tmp/x", override])
    run_cfg = _compose("train")
    scfg = eval_sampler(cfg, run_cfg)
    with pytest.raises(ConfigError, match=key):
        check_options(cfg, run_cfg, scfg)
    if override.startswith("sampler."):
        with pytest.raises(ConfigError, match=key):
            validate(_compose("train", [override]))


def test_inverse_t_weight_needs_positive_eps():
    """noise.loss_weight=inv_t divides by t, and eps=0 lets t be 0: a NaN loss, refused before training."""
    validate(_compose("train", ["noise=mask", "noise.loss_weight=inv_t", "noise.eps=0.001"]))
    with pytest.raises(ConfigError, match=r"noise\.eps=0"):
        validate(_compose("train", ["noise=mask", "noise.loss_weight=inv_t", "noise.eps=0"]))
    validate(_compose("train", ["noise=mask", "noise.loss_weight=flat", "noise.eps=0"]))


def test_eval_checks_a_run_saved_before_a_sampler_setting():
    """A run's saved sampler may lack a setting added since (the schema's default stands in) or keep one removed
    since (ignored); neither stops its evaluation."""
    from dgft.evaluate import check_options

    cfg = _compose("eval", ["run=/tmp/x"])
    run_cfg = _compose("train")
    old = OmegaConf.create({k: v for k, v in OmegaConf.to_container(run_cfg.sampler).items() if k != "revise"})
    check_options(cfg, run_cfg, OmegaConf.merge(old, {"wait_below": 0.0}))


@pytest.mark.parametrize("name", ["/tmp/elsewhere", "sub/dir", "..", ""])
def test_eval_name_is_a_plain_file_name(name):
    """`name` names RUN/eval/<name>.json: a path would write outside the run's eval directory."""
    from dgft.evaluate import check_options

    cfg = _compose("eval", ["run=/tmp/x", f"name='{name}'"])
    run_cfg = _compose("train")
    with pytest.raises(ConfigError, match=r"^name="):
        check_options(cfg, run_cfg, run_cfg.sampler)
    cfg.name = "easy50_rules"
    check_options(cfg, run_cfg, run_cfg.sampler)


def test_every_sampler_setting_can_be_overridden_at_eval():
    """`dgft eval RUN sampler.X=...` needs X in SamplerOverrides; a new sampler setting must be added to both."""
    from dataclasses import fields

    from dgft.config import SamplerConfig, SamplerOverrides

    assert {f.name for f in fields(SamplerConfig)} == {f.name for f in fields(SamplerOverrides)}


@pytest.mark.parametrize("override,message", [("on_error=skip", r"^on_error: infilling files have no lines"),
                                              ("batch_by=givens", r"^batch_by=givens: .* for Sudoku runs"),
                                              ("sampler.reprompt=true", r"^sampler\.reprompt=true: Sudoku only"),
                                              ("sampler.self_conditioning_from=rules", r"code has no rules"),
                                              ("baseline=true", r"^baseline=true: .* an infill run has none")])
def test_sudoku_only_eval_options_are_refused_for_an_infill_run(override, message):
    from dgft.evaluate import check_options, eval_sampler

    cfg = _compose("eval", ["run=/tmp/x", override])
    run_cfg = _compose("train", ["recipe=infill"])
    scfg = eval_sampler(cfg, run_cfg)
    with pytest.raises(ConfigError, match=message):
        check_options(cfg, run_cfg, scfg)
    check_options(_compose("eval", ["run=/tmp/x"]), run_cfg, run_cfg.sampler)
