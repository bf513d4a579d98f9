"""The learning-rate schedule: warmup, cosine by steps, and by time when a time limit is set."""

import math

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
    """The time after warmup (warmup's time estimated from its share of the steps) drives the cosine."""
    tcfg = _trainer(time_limit_min=2.0)
    assert lr_lambda(tcfg, lambda: 80.0)(20) == pytest.approx(0.55)  # warmup ~40 s, half of the 80 s after it used
    assert lr_lambda(tcfg, lambda: 120.0)(20) == pytest.approx(0.1)  # time is up: the floor
    assert lr_lambda(tcfg, lambda: 200.0)(20) == pytest.approx(0.1)  # past it: the floor
    assert lr_lambda(tcfg, lambda: 0.0)(505) == pytest.approx(0.55)  # steps ahead of time: steps lead
    assert lr_lambda(tcfg, lambda: 60.0)(4) == pytest.approx(0.5)  # warmup counts steps only


def test_time_limited_rate_does_not_jump_when_warmup_ends():
    """A slow warmup (a third of the limit) hands over at the full rate, and the rate then falls smoothly."""
    tcfg = _trainer(time_limit_min=3.0)
    pace = 6.0  # seconds a step: warmup's 10 steps take 60 s of the 180
    f = lr_lambda(tcfg, lambda: pace * step)
    factors = []
    for step in range(8, 31):
        factors.append(f(step))
    assert factors[1] == pytest.approx(1.0) and factors[2] == pytest.approx(1.0)  # steps 9 and 10
    assert factors[3] > 0.99  # step 11 (the old schedule: 0.775, a third of the time counted as progress)
    steepest = 0.9 * 0.5 * math.pi / 20  # the cosine's steepest fall over 20 steps after warmup
    assert max(a - b for a, b in zip(factors[2:], factors[3:])) < steepest * 1.05
    assert factors[-1] == pytest.approx(0.1)  # step 30: 180 s, the time is up
