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
