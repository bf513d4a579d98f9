"""The trainer's optimizer, chosen by `trainer.optimizer`.

- `adamw`: torch's AdamW over every trainable parameter (fused on CUDA).
- `paged_adamw_8bit`: bitsandbytes' paged 8-bit AdamW (CUDA only), for the 26B QLoRA path.
- `muon`: torch's Muon (momentum orthogonalised by Newton-Schulz) on the 2-D weight matrices inside the network, and
  AdamW on the rest: embeddings (tied with the output head), the router, norms, scalars and 3-D expert stacks, as
  Muon's authors prescribe (torch's Muon takes 2-D parameters only). Muon's step is scaled to AdamW's usual size
  (`adjust_lr_fn="match_rms_adamw"`), so both can take the same `trainer.lr`; `trainer.muon_lr` gives the matrices
  their own. Both take `trainer.weight_decay`. For full fine-tuning only: LoRA's rank-r factors (and the experts'
  factors, stacked over experts) are not what Muon was made for, and validation refuses the pair.

Example: `opt = make_optimizer(model.named_parameters(), cfg.trainer, device)`; a `LambdaLR` on `opt` scales every
parameter group, whichever optimizer holds it.
"""

from __future__ import annotations

import torch

ADAMW_BETAS = (0.9, 0.98)
MUON_SKIPS = ("embed", "lm_head", "router", "experts")  # 2-D, but not one weight matrix between hidden states


def muon_split(named_params) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """(parameters for Muon, parameters for AdamW) among the trainable `(name, parameter)` pairs."""
    muon, adamw = [], []
    for name, p in named_params:
        if not p.requires_grad:
            continue
        matrix = p.ndim == 2 and not any(skip in name for skip in MUON_SKIPS)
        (muon if matrix else adamw).append(p)
    return muon, adamw


class Chained(torch.optim.Optimizer):
    """Several optimizers stepped, zeroed, saved and scheduled as one.

    `param_groups` is read through to the optimizers' own groups (also after `load_state_dict` replaces them), so an
    LR scheduler on this object sets every group's rate. Groups cannot be added, and torch's step hooks are not
    there: `Optimizer.__init__` is not run, since it would copy the groups.
    """

    def __init__(self, **optimizers: torch.optim.Optimizer):
        self.optimizers = optimizers
        self.defaults = {}

    def add_param_group(self, param_group: dict) -> None:
        raise NotImplementedError("Chained: add the group to one of its optimizers (Chained.optimizers)")

    @property
    def param_groups(self) -> list[dict]:
        return [group for opt in self.optimizers.values() for group in opt.param_groups]

    @property
    def state(self) -> dict:
        return {p: s for opt in self.optimizers.values() for p, s in opt.state.items()}

    @torch.no_grad()
    def step(self, closure=None):
        if closure is not None:
            raise ValueError("Chained.step: a closure would be evaluated once per optimizer; not supported")
        for opt in self.optimizers.values():
            opt.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return {name: opt.state_dict() for name, opt in self.optimizers.items()}

    def load_state_dict(self, state_dict: dict) -> None:
        if set(state_dict) != set(self.optimizers):
            raise ValueError(f"optimizer state holds {sorted(state_dict)}, expected {sorted(self.optimizers)}")
        for name, opt in self.optimizers.items():
            opt.load_state_dict(state_dict[name])

    def __repr__(self) -> str:
        return f"Chained({', '.join(f'{name}={type(opt).__name__}' for name, opt in self.optimizers.items())})"


def make_optimizer(named_params, tcfg, device) -> torch.optim.Optimizer:
    """The optimizer `tcfg.optimizer` names, over the trainable parameters of `named_params` ((name, parameter)
    pairs, each parameter once)."""
    named_params = list(named_params)
    kwargs = dict(lr=tcfg.lr, weight_decay=tcfg.weight_decay)
    if tcfg.optimizer == "muon":
        matrices, rest = muon_split(named_params)
        if not matrices:
            raise ValueError("trainer.optimizer=muon: no trainable 2-D weight matrix for Muon; use adamw")
        optimizers = {}  # AdamW first: its group's rate (trainer.lr) is the one logged as `lr`, as in other runs
        if rest:
            optimizers["adamw"] = torch.optim.AdamW(rest, betas=ADAMW_BETAS, fused=device.type == "cuda", **kwargs)
        optimizers["muon"] = torch.optim.Muon(matrices, adjust_lr_fn="match_rms_adamw",
                                              **{**kwargs, "lr": tcfg.muon_lr or tcfg.lr})
        return Chained(**optimizers)
    params = [p for _, p in named_params if p.requires_grad]
    if tcfg.optimizer == "paged_adamw_8bit":
        import bitsandbytes as bnb

        return bnb.optim.PagedAdamW8bit(params, betas=ADAMW_BETAS, **kwargs)
    return torch.optim.AdamW(params, betas=ADAMW_BETAS, fused=device.type == "cuda", **kwargs)
