"""dgft.optim: which parameters Muon takes, and the chained optimizer under a schedule, a save and a load."""

import copy
from types import SimpleNamespace

import pytest
import torch

from dgft.optim import Chained, make_optimizer, muon_split

CPU = torch.device("cpu")


class Net(torch.nn.Module):
    """The kinds of parameter a DiffusionGemma has: embedding, attention/MLP matrices, norm, router, expert stack."""

    def __init__(self):
        super().__init__()
        self.embed_tokens = torch.nn.Embedding(10, 8)
        self.q_proj = torch.nn.Linear(8, 8, bias=False)
        self.down_proj = torch.nn.Linear(16, 8, bias=False)
        self.up_proj = torch.nn.Linear(8, 16, bias=False)
        self.norm = torch.nn.Parameter(torch.ones(8))
        self.router = torch.nn.Linear(8, 2, bias=False)
        self.experts = torch.nn.Parameter(torch.randn(2, 8, 8) / 3)
        self.frozen = torch.nn.Linear(8, 8, bias=False)
        self.frozen.weight.requires_grad_(False)

    def forward(self, ids):
        h = self.embed_tokens(ids) * self.norm
        h = h + self.down_proj(torch.relu(self.up_proj(self.q_proj(h))))
        h = h + torch.einsum("bh,eoh->bo", h, self.experts) * self.router(h).softmax(-1)[:, :1]
        return self.frozen(h) @ self.embed_tokens.weight.T


def _cfg(optimizer="muon", lr=0.01, muon_lr=0.0):
    return SimpleNamespace(optimizer=optimizer, lr=lr, muon_lr=muon_lr, weight_decay=0.01)


def _step(net, opt, seed):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 10, (16,), generator=g)
    loss = torch.nn.functional.cross_entropy(net(ids), (ids + 1) % 10)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss.item()


def test_muon_takes_the_hidden_matrices_and_adamw_the_rest():
    net = Net()
    muon, adamw = muon_split(net.named_parameters())
    assert {id(p) for p in muon} == {id(net.q_proj.weight), id(net.down_proj.weight), id(net.up_proj.weight)}
    assert {id(p) for p in adamw} == {id(net.embed_tokens.weight), id(net.norm), id(net.router.weight),
                                      id(net.experts)}  # the frozen matrix in neither
    opt = make_optimizer(net.named_parameters(), _cfg(), CPU)
    assert isinstance(opt.optimizers["muon"], torch.optim.Muon)
    assert isinstance(opt.optimizers["adamw"], torch.optim.AdamW)
    assert len(opt.param_groups) == 2
    assert [g["lr"] for g in opt.param_groups] == [0.01, 0.01]
    opt = make_optimizer(net.named_parameters(), _cfg(muon_lr=0.03), CPU)  # the matrices' own rate
    assert {name: o.param_groups[0]["lr"] for name, o in opt.optimizers.items()} == {"adamw": 0.01, "muon": 0.03}
    assert opt.param_groups[0]["lr"] == 0.01  # AdamW's group first: the rate logged as `lr` is trainer.lr


def test_the_split_on_the_tiny_diffusiongemma():
    """By the real model's names: Muon takes attention, MLP and self-conditioning matrices; the tied embedding,
    `router.proj`, the 3-D expert stacks and every norm and scalar go to AdamW."""
    from omegaconf import OmegaConf

    from dgft.cli import recipes_dir
    from dgft.model import build_tiny

    mcfg = OmegaConf.load(recipes_dir() / "model" / "tiny.yaml")
    model = build_tiny(mcfg, vocab_size=40)
    muon, adamw = muon_split(model.named_parameters())
    names = {id(p): name for name, p in model.named_parameters()}
    muon_names = {names[id(p)] for p in muon}
    adamw_names = {names[id(p)] for p in adamw}
    layer = "model.encoder.language_model.layers.0."
    for part in ("self_attn.q_proj.weight", "self_attn.o_proj.weight", "mlp.gate_proj.weight", "mlp.down_proj.weight"):
        assert layer + part in muon_names
    assert "model.decoder.self_conditioning.up_proj.weight" in muon_names
    for part in ("router.proj.weight", "experts.gate_up_proj", "experts.down_proj", "input_layernorm.weight"):
        assert layer + part in adamw_names
    assert "model.encoder.language_model.embed_tokens.weight" in adamw_names
    assert all(p.ndim == 2 for p in muon) and not any("embed" in n or "router" in n for n in muon_names)


def test_muon_trains_and_its_step_is_orthogonalised():
    torch.manual_seed(0)
    net = Net()
    opt = make_optimizer(net.named_parameters(), _cfg(lr=0.02), CPU)
    before = net.q_proj.weight.detach().clone()
    first = _step(net, opt, 0)
    # Muon's first update is lr * scale * (an orthogonalised momentum): five Newton-Schulz steps bring the singular
    # values of a gradient's main directions near one (AdamW's would spread as the gradient's do)
    update = (before * (1 - 0.02 * 0.01) - net.q_proj.weight.detach()) / (0.02 * 0.2 * 8 ** 0.5)
    s = torch.linalg.svdvals(update)
    assert s[:4].min() > 0.6 and s.max() < 1.3, s
    losses = [_step(net, opt, i) for i in range(1, 60)]
    assert sum(losses[-10:]) / 10 < 0.5 * first


def test_a_schedule_on_the_chain_sets_every_group_also_after_a_load():
    net = Net()
    opt = make_optimizer(net.named_parameters(), _cfg(lr=0.01), CPU)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.5 ** step)
    _step(net, opt, 0)
    sched.step()
    assert [g["lr"] for g in opt.param_groups] == [0.005, 0.005]
    state = copy.deepcopy(opt.state_dict())
    opt.load_state_dict(state)  # torch replaces each optimizer's group dicts: the chain must read the new ones
    _step(net, opt, 1)
    sched.step()
    assert [o.param_groups[0]["lr"] for o in opt.optimizers.values()] == [0.0025, 0.0025]


def test_state_dict_round_trip_continues_exactly():
    torch.manual_seed(1)
    net = Net()
    opt = make_optimizer(net.named_parameters(), _cfg(), CPU)
    for i in range(3):
        _step(net, opt, i)
    saved_net, saved_opt = copy.deepcopy(net.state_dict()), copy.deepcopy(opt.state_dict())
    assert set(saved_opt) == {"muon", "adamw"}
    for i in range(3, 6):
        _step(net, opt, i)

    other = Net()
    other.load_state_dict(saved_net)
    resumed = make_optimizer(other.named_parameters(), _cfg(), CPU)
    resumed.load_state_dict(saved_opt)
    for i in range(3, 6):
        _step(other, resumed, i)
    for (name, a), b in zip(net.state_dict().items(), other.state_dict().values()):
        assert torch.equal(a, b), name


def test_a_state_of_another_optimizer_is_refused_by_name():
    net = Net()
    opt = make_optimizer(net.named_parameters(), _cfg(), CPU)
    adamw_state = make_optimizer(net.named_parameters(), _cfg("adamw"), CPU).state_dict()
    with pytest.raises(ValueError, match=r"optimizer state holds \['param_groups', 'state'\], expected \['adamw', "
                                         r"'muon'\]"):
        opt.load_state_dict(adamw_state)
    assert isinstance(opt, Chained) and "muon=Muon" in repr(opt)
