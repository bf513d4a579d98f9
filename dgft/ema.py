"""An exponential moving average of the trained parameters (`trainer.ema_decay`): the weights a run then
evaluates periodically and saves as its model, as diffusion models are usually trained (MDLM, EDM).

The averaging is torch's own (`torch.optim.swa_utils.get_ema_multi_avg_fn`); this holds the average, warms its
decay up over the first updates (min(decay, (1 + n) / (10 + n)) after n updates, so early evaluations are not
mostly the initial weights) and swaps it into the model. Only trainable parameters are averaged (a LoRA run:
its adapter), so the copy is as small as what trains; it is fp32 (bf16 weights would not move a bf16 average).
Example: decay 0.998 weighs about the last 500 steps (the warm-up's (1 + n) / (10 + n) passes 0.998 after about
4,500 updates; at 3,600 it is 0.9975).
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch.optim.swa_utils import get_ema_multi_avg_fn


class EMA:
    def __init__(self, params: list[torch.Tensor], decay: float):
        self.params, self.decay, self.updates = list(params), decay, 0
        # kept in fp32 whatever the weights are: with bf16 weights a bf16 average stood still, each update's
        # (1 - decay) share of a step being below half a bf16 unit
        self.shadow = [p.detach().float().clone() for p in self.params]

    def decay_now(self) -> float:
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    def update(self) -> None:
        """Fold the parameters as they are now into the average (after each optimizer step)."""
        self.updates += 1
        get_ema_multi_avg_fn(self.decay_now())(self.shadow, [p.detach().float() for p in self.params], self.updates)

    @contextmanager
    def applied(self):
        """The averaged weights in the model inside the block; the trained ones are restored after it."""
        trained = [p.detach().clone() for p in self.params]
        with torch.no_grad():
            torch._foreach_copy_([p.data for p in self.params], self.shadow)
        try:
            yield
        finally:
            with torch.no_grad():
                torch._foreach_copy_([p.data for p in self.params], trained)

    def state_dict(self) -> dict:
        return {"updates": self.updates, "shadow": self.shadow}

    def load_state_dict(self, state: dict) -> None:
        if len(state["shadow"]) != len(self.shadow):
            raise RuntimeError(f"EMA state holds {len(state['shadow'])} tensors; the model trains {len(self.shadow)}")
        self.updates = int(state["updates"])
        with torch.no_grad():
            torch._foreach_copy_(self.shadow, [s.to(p.device) for s, p in zip(state["shadow"], self.shadow)])
