"""The learning-rate schedule: warmup, cosine by steps, and by time when a time limit is set."""

import pytest
from omegaconf import OmegaConf

from dgft.config import TrainerConfig
from dgft.train import lr_lambda


def _trainer(**kw):
    return OmegaConf.structured(TrainerConfig(max_steps=1000, warmup_steps=10, min_lr_ratio=0.1, **kw))


def test_warmup_then_cosine_by_steps():
    f = lr_lambda(_trainer(), lambda: 1e9)  # no time limit: the clock is ignored
    assert f(4) == pytest.approx(0.5)
    assert f(10) == pytest.approx(1.0)
    assert f(505) == pytest.approx(0.55)
    assert f(1000) == pytest.approx(0.1) and f(5000) == pytest.approx(0.1)


def test_time_limit_leads_when_time_is_further_along():
    tcfg = _trainer(time_limit_min=2.0)
    assert lr_lambda(tcfg, lambda: 60.0)(20) == pytest.approx(0.55)  # half the time used, 1% of the steps
    assert lr_lambda(tcfg, lambda: 120.0)(20) == pytest.approx(0.1)  # time is up: the floor
    assert lr_lambda(tcfg, lambda: 0.0)(505) == pytest.approx(0.55)  # steps ahead of time: steps lead
    assert lr_lambda(tcfg, lambda: 60.0)(4) == pytest.approx(0.5)  # warmup counts steps only
