"""Range checks that once let a bad value through: each trained wrong without a word, crashed late with a bare
traceback, or crashed validate() itself. Now each is a ConfigError naming the key, raised before anything runs."""

import pytest
from hydra import compose, initialize_config_dir

from dgft.cli import recipes_dir
from dgft.config import ConfigError, register, validate

RECIPES = recipes_dir()
register()


def _compose(name, overrides=()):
    with initialize_config_dir(config_dir=str(RECIPES), version_base="1.3"):
        return compose(config_name=name, overrides=list(overrides))


def _key(pattern):
    return pattern.replace(".", r"\.")


BAD = [
    # silently wrong: clip_grad_norm_ with max <= 0 flips or zeroes the gradients; alpha=0 scales LoRA to nothing;
    # eval_puzzles=-1 slices [:-1], and 0 evaluates on no puzzles while eval_every asks for evaluations
    (["trainer.max_grad_norm=-1"], "trainer.max_grad_norm"),
    (["trainer.max_grad_norm=0"], "trainer.max_grad_norm"),
    (["model.lora.alpha=0"], "model.lora.alpha"),
    (["trainer.eval_puzzles=-1"], "trainer.eval_puzzles"),
    (["trainer.eval_puzzles=0"], "trainer.eval_puzzles"),
    (["trainer.keep_last=0"], "trainer.keep_last"),  # checkpoint.prune keeps one whatever it says
    # late crashes, in train.py or transformers
    (["trainer.log_every=0"], "trainer.log_every"),
    (["trainer.num_threads=-2"], "trainer.num_threads"),
    (["model.num_kv_heads=3"], "model.num_kv_heads"),
    (["model.num_kv_heads=0"], "model.num_kv_heads"),
    (["model.head_dim=0"], "model.head_dim"),
    (["model.head_dim=15"], "model.head_dim"),
    (["model.intermediate_size=0"], "model.intermediate_size"),
    (["model.num_experts=0"], "model.num_experts"),
    (["model.top_k_experts=0"], "model.top_k_experts"),
    (["model.top_k_experts=2"], "model.top_k_experts"),
    (["model.moe_intermediate_size=-1"], "model.moe_intermediate_size"),
    (["model.lora.dropout=1.5"], "model.lora.dropout"),
    (["model.lora.dropout=-0.1"], "model.lora.dropout"),
    # validate() itself crashed: ZeroDivisionError, unpacking ValueError
    (["model.num_heads=0"], "model.num_heads"),
    (["task.blank_fraction=[0.5,0.6,0.7]"], "task.blank_fraction"),
    (["task.blank_fraction=[0.5]"], "task.blank_fraction"),
    # accepted, then trained on puzzles with no blank cell (loss 0), a sum that overflows, a cache in the working dir
    (["task.blank_fraction=[0.001,0.002]"], "task.blank_fraction"),
    (["task.blank_fraction=[0.01,0.5]"], "task.blank_fraction"),  # 4x4 puzzles with 8-16 givens: some full
    (["task.size_weights=[1e308,1e308]"], "task.size_weights"),
    (["task.cache_dir="], "task.cache_dir"),
    # sampler settings the sampler would silently ignore
    (["sampler.passes=2", "sampler.self_conditioning=false"], "sampler.passes"),
    (["sampler.self_conditioning_from=rules", "sampler.self_conditioning=false", "sampler.passes=1"],
     "sampler.self_conditioning_from"),
    (["sampler.fill_forced=true", "sampler.modes=[free,clamped]"], "sampler.fill_forced"),
    (["recipe=infill", "sampler.fill_forced=true"], "sampler.fill_forced"),
    # trained nothing: mask noise never scores a cell shown as known, where wrong_known_p plants its digits
    (["noise=mask", "task.wrong_known_p=0.5"], "task.wrong_known_p"),
    # MDLM's 1/t is the ELBO weight only for t drawn uniformly
    (["noise=mask", "noise.loss_weight=inv_t", "noise.t_power=2"], "noise.t_power"),
    # a rate for matrices that AdamW trains at trainer.lr: ignored without a word
    (["trainer.muon_lr=0.01"], "trainer.muon_lr"),
    (["trainer.optimizer=muon", "trainer.muon_lr=-0.01"], "trainer.muon_lr"),
    (["trainer.optimizer=sgd"], "trainer.optimizer"),
    (["trainer.optimizer=muon", "model.finetune=lora"], "trainer.optimizer"),  # rank-r factors: not measured
]


@pytest.mark.parametrize("overrides,key", BAD, ids=[" ".join(o) for o, _ in BAD])
def test_bad_value_names_the_key(overrides, key):
    cfg = _compose("train", overrides)
    with pytest.raises(ConfigError, match=_key(key)):
        validate(cfg)


@pytest.mark.parametrize("overrides,other", [
    (["sampler.passes=2", "sampler.self_conditioning=false"], "sampler.self_conditioning"),
    (["sampler.self_conditioning_from=rules", "sampler.self_conditioning=false", "sampler.passes=1"],
     "sampler.self_conditioning"),
    (["model.num_kv_heads=3"], "model.num_heads"),
    (["model.top_k_experts=2"], "model.num_experts"),
    (["trainer.eval_puzzles=0"], "trainer.eval_every"),
    (["trainer.muon_lr=0.01"], "trainer.optimizer"),
])
def test_a_conflict_names_both_keys(overrides, other):
    with pytest.raises(ConfigError, match=_key(other)):
        validate(_compose("train", overrides))


@pytest.mark.parametrize("overrides", [
    ["trainer.max_grad_norm=inf"],  # no clipping
    ["trainer.eval_every=0", "trainer.eval_puzzles=0"],  # no periodic evaluation
    ["trainer.num_threads=0", "trainer.keep_last=1", "trainer.log_every=1"],
    ["model.num_experts=4", "model.top_k_experts=4", "model.num_heads=4", "model.num_kv_heads=4"],
    ["model.finetune=lora", "model.lora.dropout=0.5", "model.lora.alpha=1"],
    ["sampler.self_conditioning=false", "sampler.passes=1"],
    ["sampler.fill_forced=true"],
    ["task.blank_fraction=[0.5,0.5]"],
    ["noise=mask", "noise.loss_weight=inv_t"],
    ["noise=mask", "noise.loss_weight=flat", "noise.t_power=2"],  # flat cross-entropy at any density of t
    ["trainer.optimizer=muon", "trainer.muon_lr=0.006"],
])
def test_edge_values_that_work_pass(overrides):
    validate(_compose("train", overrides))


def test_a_pretrained_model_ignores_the_architecture_keys():
    """model=diffusiongemma reads its shape from the checkpoint, so the from-config architecture is not checked."""
    pretrained = ["model=diffusiongemma", "model.path=/nowhere", "model.quantize=none",
                  "model.structured_attention=false"]
    validate(_compose("train", pretrained + ["model.num_heads=0", "model.num_kv_heads=3", "model.head_dim=15",
                                             "model.top_k_experts=2", "model.hidden_size=0"]))
    with pytest.raises(ConfigError, match=r"model\.lora\.alpha"):  # LoRA settings still apply
        validate(_compose("train", pretrained + ["model.lora.alpha=0"]))


def test_eval_refuses_passes_without_self_conditioning():
    """check_sampler is shared: `dgft eval RUN sampler.self_conditioning=false` on a two-pass run names both keys."""
    from dgft.evaluate import check_options, eval_sampler

    cfg = _compose("eval", ["run=/tmp/x", "sampler.self_conditioning=false"])
    run_cfg = _compose("train", ["sampler.passes=2"])
    scfg = eval_sampler(cfg, run_cfg)
    with pytest.raises(ConfigError, match=r"sampler\.passes=2.*sampler\.self_conditioning=false"):
        check_options(cfg, run_cfg, scfg)
    cfg = _compose("eval", ["run=/tmp/x", "sampler.self_conditioning=false", "sampler.passes=1"])
    check_options(cfg, run_cfg, eval_sampler(cfg, run_cfg))


def test_a_pretrained_model_must_read_the_vocabulary_it_learnt():
    """`dgft train recipe=sudoku model=diffusiongemma model.path=DIR` would feed the released model Sudoku cell-token
    ids it never learnt: refused before any data is made, pointing at recipe=sudoku_lora. A dgft export of a
    cell-token run (the same vocabulary) may be trained further; a pretrained tokenizer is the model's own."""
    from dgft.tasks import get_task
    from dgft.train import check_vocabulary

    cfg = _compose("train", ["model=diffusiongemma", "model.path=/models/dg", "model.structured_attention=false"])
    task = get_task(cfg.task)
    with pytest.raises(ConfigError, match=r"model\.path=/models/dg: .*262144 tokens .*task\.tokens=cell.*"
                                          r"recipe=sudoku_lora"):
        check_vocabulary(task, cfg, 262144)
    check_vocabulary(task, cfg, task.vocab_size)  # an export of a run with these tokens
    cfg.task.tokenizer = "/models/dg"  # a pretrained tokenizer is the model's own: not checked by size
    check_vocabulary(task, cfg, task.vocab_size + 64)
    check_vocabulary(task, cfg, task.vocab_size - 1)


@pytest.mark.parametrize("recipe", ["sudoku", "sudoku_gpu", "sudoku_lora", "infill"])
def test_shipped_recipes_set_nothing_they_do_not_read(recipe):
    from dgft.config import unread_in_training

    assert unread_in_training(_compose("train", [f"recipe={recipe}"])) == []


@pytest.mark.parametrize("overrides,said", [
    (["sampler.acceptance=fixed", "sampler.entropy_bound=0.3"], ["sampler.entropy_bound is read only with "
                                                                  "sampler.acceptance=entropy"]),
    (["sampler.confidence=0.5"], ["sampler.confidence is read only with sampler.acceptance=confidence"]),
    (["model.lora.r=4"], ["model.lora is read only with model.finetune=lora (this config has model.finetune=full)"]),
    (["model.quant_group_size=64"], ["model.quant_group_size is read only with model.quantize=nf4"]),
    (["recipe=sudoku_lora", "model=diffusiongemma", "model.num_layers=2"],
     ["model.num_layers is read only with model.name=tiny"]),
])
def test_a_setting_nothing_reads_is_said(overrides, said):
    """Set away from its default while another setting turns it off, a setting changes nothing: training says so
    (a note, not an error). Those the recipe turns off itself (structured_init: false on a pretrained model) are
    not said."""
    from dgft.config import unread_in_training

    notes = unread_in_training(_compose("train", overrides))
    assert len(notes) == len(said) and all(s in n for s, n in zip(said, notes)), notes


def test_eval_says_a_sampler_option_its_acceptance_does_not_read(tmp_path, capsys):
    """`dgft eval RUN sampler.entropy_bound=0.3` on a run sampling with fixed acceptance: said on stderr (before the
    run's weights are looked for, so a run without weights shows it too)."""
    from omegaconf import OmegaConf

    from dgft.cli import main
    from tests.conftest import tiny_cfg

    run = tmp_path / "run"
    run.mkdir()
    cfg = tiny_cfg()
    cfg.sampler.acceptance = "fixed"
    (run / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    with pytest.raises(SystemExit):
        main(["eval", str(run), "sampler.entropy_bound=0.3", "sampler.steps=8"])
    err = capsys.readouterr().err
    assert "note: sampler.entropy_bound is read only with sampler.acceptance=entropy" in err, err
    assert "sampler.steps" not in err.split("error:")[0], err
