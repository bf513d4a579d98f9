"""The moving average of the weights (`trainer.ema_decay`, dgft.ema) on plain parameters."""

import pytest
import torch

from dgft.ema import EMA


def test_average_follows_the_formula_and_warms_up():
    p = torch.nn.Parameter(torch.zeros(3))
    ema = EMA([p], decay=0.9)
    expected = torch.zeros(3)
    for n in range(1, 100):  # the warm-up reaches 0.9 after 80 updates
        with torch.no_grad():
            p.add_(1.0)
        ema.update()
        d = min(0.9, (1 + n) / (10 + n))  # warm-up: early averages are not mostly the initial weights
        expected = d * expected + (1 - d) * p.detach()
        assert torch.allclose(ema.shadow[0], expected, atol=1e-5)
    assert ema.decay_now() == 0.9
    assert ema.shadow[0][0] < p[0] - 5  # it lags behind a steadily moving weight


def test_applied_swaps_the_average_in_and_restores_the_trained_weights():
    lin = torch.nn.Linear(4, 2)
    params = list(lin.parameters())
    ema = EMA(params, decay=0.5)
    with torch.no_grad():
        lin.weight.mul_(3)
    ema.update()
    trained = [p.detach().clone() for p in params]
    with ema.applied():
        assert all(torch.equal(p, s) for p, s in zip(params, ema.shadow))
        assert not torch.equal(lin.weight, trained[0])
    assert all(torch.equal(p, t) for p, t in zip(params, trained))
    with pytest.raises(KeyError), ema.applied():  # restored even when the block fails
        raise KeyError("x")
    assert all(torch.equal(p, t) for p, t in zip(params, trained))


def test_state_round_trip_and_mismatch():
    a = EMA([torch.nn.Parameter(torch.ones(2))], 0.99)
    a.update()
    b = EMA([torch.nn.Parameter(torch.zeros(2))], 0.99)
    b.load_state_dict(a.state_dict())
    assert b.updates == 1 and torch.equal(b.shadow[0], a.shadow[0])
    with pytest.raises(RuntimeError, match="EMA state holds 1"):
        two = EMA([torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(1))], 0.99)
        two.load_state_dict(a.state_dict())


def test_bf16_weights_move_the_average():
    """A bf16 copy stood still: 0.002 of a step is below half a bf16 unit near 1.0. The average is fp32."""
    p = torch.nn.Parameter(torch.ones(4, dtype=torch.bfloat16))
    ema = EMA([p], decay=0.998)
    ema.updates = 5000  # past the warm-up
    for i in range(1, 3001):  # the weight walks from 1.0 to 1.5
        with torch.no_grad():
            p.fill_(1 + 0.5 * i / 3000)
        ema.update()
    assert ema.shadow[0].dtype == torch.float32 and ema.shadow[0][0] > 1.3
    with ema.applied():
        assert p.dtype == torch.bfloat16 and torch.allclose(p.float(), ema.shadow[0], atol=1e-2)
