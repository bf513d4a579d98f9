"""Command-line mistakes end with a message naming what is wrong, not a traceback."""

import pytest
import torch

from dgft.cli import main


@pytest.mark.parametrize("command", ["eval", "export"])
def test_no_run_given(command, capsys):
    with pytest.raises(SystemExit) as err:
        main([command])
    assert err.value.code == 2
    assert f"dgft {command}: error: no run given: dgft {command} RUN" in capsys.readouterr().err


@pytest.mark.parametrize("name,message", [("cdua", "expected auto, cpu, cuda or cuda:N"),
                                          ("cpu:0", "expected auto, cpu, cuda or cuda:N"),
                                          ("cuda:x", "expected auto, cpu, cuda or cuda:N")])
def test_device_names_are_checked(name, message):
    from dgft.config import ConfigError
    from dgft.train import pick_device

    with pytest.raises(ConfigError, match=message):
        pick_device(name)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
@pytest.mark.parametrize("name", ["cuda", "cuda:0"])
def test_cuda_without_a_device(name):
    from dgft.config import ConfigError
    from dgft.train import pick_device

    with pytest.raises(ConfigError, match=f"device={name}: no CUDA device found"):
        pick_device(name)


def test_eval_names_a_bad_device(tmp_path, capsys):
    """Through the CLI on a run directory: the device is checked before any model loads."""
    from omegaconf import OmegaConf

    from tests.conftest import tiny_cfg

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(OmegaConf.to_yaml(tiny_cfg()))
    with pytest.raises(SystemExit) as err:
        main(["eval", str(run), "device=cdua"])
    assert err.value.code == 2 and "device='cdua': expected auto, cpu, cuda or cuda:N" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["lr=0.01", "it's a=b", "back\\slash'", "plain", "10", "a#b", "${x}"])
def test_a_run_folder_with_grammar_characters_in_its_name_is_the_run(tmp_path, capsys, monkeypatch, name):
    """`dgft eval outputs/sudoku/lr=0.01`: a first argument that names a folder is the run, '=' or quotes and all
    (without the folder, `x=y` stays an override); the run is read (its device checked), not parsed as a key."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    from dgft.cli import _quote
    from tests.conftest import tiny_cfg

    parsed = OverridesParser.create().parse_override(f"run={_quote(name)}").value()
    assert OmegaConf.create({"run": parsed}).run == name  # as the config reads it back (an escaped "${" unescaped)
    run = tmp_path / name
    run.mkdir()
    (run / "config.yaml").write_text(OmegaConf.to_yaml(tiny_cfg()))
    with pytest.raises(SystemExit) as err:
        main(["eval", str(run), "device=cdua"])
    assert err.value.code == 2 and "device='cdua': expected auto, cpu, cuda or cuda:N" in capsys.readouterr().err
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit):
        main(["eval", "x=y"])  # no folder of that name: an override, which the eval schema does not have
    assert "Could not override 'x'" in capsys.readouterr().err



def _train(tmp_path, run, *extra):
    from tests.test_eval_weights import _train as train_tiny

    train_tiny(tmp_path, run, "trainer.max_steps=2", "trainer.ckpt_every=0", *extra)


@pytest.mark.parametrize("finetune", ["full", "lora"])
def test_a_damaged_run_directory_is_named(tmp_path, capsys, finetune):
    """A run whose files were damaged (a torn copy, a hand edit): eval and export name the file, no traceback."""
    run = tmp_path / "run"
    _train(tmp_path, run, f"model.finetune={finetune}")
    config = (run / "config.yaml").read_text()
    damage = {"config.yaml": "model: [unclosed\n", "empty config": ""}
    if finetune == "full":
        weights = run / "model" / "model.safetensors"
        damage["weights"] = weights.read_bytes()[:1000]
    else:
        weights = run / "adapter" / "adapter_config.json"
        damage["weights"] = "{bad"
    for what, text in damage.items():
        target = run / "config.yaml" if what != "weights" else weights
        original = target.read_bytes()
        target.write_bytes(text.encode() if isinstance(text, str) else text)
        for command in ("eval", "export"):
            capsys.readouterr()
            with pytest.raises(SystemExit) as err:
                main([command, str(run), "limit=1", "baseline=false", "plot=false"] if command == "eval"
                     else [command, str(run)])
            message = capsys.readouterr().err
            assert err.value.code == 2, (what, command, message[-500:])
            assert str(target if what != "weights" else target.parent) in message, (what, command, message)
            assert "Traceback" not in message
        target.write_bytes(original)
    assert (run / "config.yaml").read_text() == config
