"""Any torch.optim optimizer across a prune (issue 8, item 7).

For each optimizer that keeps per-parameter state, the pruned run (the same optimizer object,
its state compacted by ``prune_channels``) must take the same steps as a fresh model of the
pruned shape whose weights, gradients and optimizer state were sliced by hand. Optimizers
whose state cannot be sliced per channel are refused before anything changes.
"""

from __future__ import annotations

import copy
import os
import tempfile
from typing import Callable

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from oneprune_ext import models
from oneprune_ext.pruning.compaction import prune_channels
from oneprune_ext.graph.trace import trace_groups
from oneprune_ext.pruning.pruner import OneCyclePruner
from oneprune_ext.storage.saving import load_pruned, save_pruned

from _pruning_cases import kept_indices, random_keep, slice_tensor

gen = torch.Generator().manual_seed(0)
X = torch.randn(16, 1, 8, 8, generator=gen)
Y = torch.randint(0, 10, (16,), generator=gen)

OPTIMIZERS: dict[str, Callable] = {
    "SGD": lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4),
    "Adam": lambda ps: torch.optim.Adam(ps, lr=1e-2, amsgrad=True),
    "AdamW": lambda ps: torch.optim.AdamW(ps, lr=1e-2, weight_decay=1e-2),
    "NAdam": lambda ps: torch.optim.NAdam(ps, lr=1e-2),
    "RAdam": lambda ps: torch.optim.RAdam(ps, lr=1e-2),
    "Adamax": lambda ps: torch.optim.Adamax(ps, lr=1e-2),
    "Adagrad": lambda ps: torch.optim.Adagrad(ps, lr=1e-2),
    "RMSprop": lambda ps: torch.optim.RMSprop(ps, lr=1e-3, momentum=0.9, centered=True),
}


def cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return models.digits_cnn(10, width=6)


def loss_of(model: nn.Module) -> torch.Tensor:
    return F.cross_entropy(model(X), Y)


def steps(model: nn.Module, opt: torch.optim.Optimizer, n: int) -> None:
    for _ in range(n):
        opt.zero_grad()
        loss_of(model).backward()
        opt.step()


def reshaped_fresh(pruned: nn.Module) -> nn.Module:
    """A freshly built model with the pruned model's shapes (through save_pruned / load_pruned)."""
    fresh = cnn(seed=1)
    with tempfile.TemporaryDirectory() as d:
        save_pruned(pruned, os.path.join(d, "m.pt"))
        load_pruned(fresh, os.path.join(d, "m.pt"))
    return fresh


@pytest.mark.outcome
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_optimizer_state_across_prune_equals_hand_sliced_fresh_run(name: str) -> None:
    make = OPTIMIZERS[name]
    model = cnn()
    model.train()
    opt = make(model.parameters())
    steps(model, opt, 3)
    opt.zero_grad()
    loss_of(model).backward()  # gradients present at the prune
    groups = trace_groups(model, X[:1])
    keep = random_keep(groups, seed=3)
    shapes = {n: tuple(t.shape) for n, t in list(model.named_parameters()) + list(model.named_buffers())}
    idx = kept_indices(groups, keep, shapes)
    names = [n for n, _ in model.named_parameters()]
    # the expected state, sliced by hand from the dense one
    sd = {k: slice_tensor(v, idx.get(k, {})) for k, v in model.state_dict().items()}
    grads = {n: slice_tensor(p.grad, idx.get(n, {})) for n, p in model.named_parameters()}
    opt_sd = copy.deepcopy(opt.state_dict())
    n_state = 0
    for i, n in enumerate(names):
        for k, v in opt_sd["state"].get(i, {}).items():
            if isinstance(v, torch.Tensor) and v.dim() > 0:
                opt_sd["state"][i][k] = slice_tensor(v, idx.get(n, {}))
                n_state += 1
    assert n_state >= len(names), f"{name} keeps no per-parameter state?"

    prune_channels(model, groups, keep, optimizer=opt)

    fresh = reshaped_fresh(model)
    fresh.load_state_dict(sd)
    fresh.train()
    fopt = make(fresh.parameters())
    fopt.load_state_dict(opt_sd)
    for n, p in fresh.named_parameters():
        p.grad = grads[n].clone()
    # the pruned optimizer's state is what was sliced by hand
    for (n, p), q in zip(model.named_parameters(), fresh.parameters()):
        for k, v in opt.state[p].items():
            if isinstance(v, torch.Tensor):
                assert torch.equal(v, fopt.state[q][k]), f"{name}: state '{k}' of {n}"
    opt.step()
    fopt.step()
    steps(model, opt, 2)
    steps(fresh, fopt, 2)
    for (n, p), (_, q) in zip(model.named_parameters(), fresh.named_parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=lambda m: f"{name}, {n}: {m}")


def _snapshot(model: nn.Module, opt: torch.optim.Optimizer) -> tuple:
    return ({k: v.clone() for k, v in model.state_dict().items()},
            {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()},
            copy.deepcopy(opt.state_dict()))


def _unchanged(model: nn.Module, opt: torch.optim.Optimizer, snap: tuple) -> None:
    sd, grads, osd = snap
    for k, v in model.state_dict().items():
        assert torch.equal(v, sd[k]), k
    for n, p in model.named_parameters():
        assert (p.grad is None and grads[n] is None) or torch.equal(p.grad, grads[n]), n
    assert repr(opt.state_dict()) == repr(osd)


def _lbfgs(model: nn.Module) -> torch.optim.Optimizer:
    opt = torch.optim.LBFGS(model.parameters(), lr=0.1, history_size=3, max_iter=2)

    def closure():
        opt.zero_grad()
        loss = loss_of(model)
        loss.backward()
        return loss

    opt.step(closure)
    return opt


def _odd_state_on_untouched_param(model: nn.Module) -> torch.optim.Optimizer:
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    steps(model, opt, 1)
    opt.state[model.fc.bias]["row_factor"] = torch.zeros(3)  # fc.bias is never pruned (10 classes)
    return opt


def _adafactor(model: nn.Module) -> torch.optim.Optimizer:
    opt = torch.optim.Adafactor(model.parameters(), lr=1e-2)
    steps(model, opt, 1)
    return opt


@pytest.mark.parametrize("make, what", [
    (_lbfgs, r"LBFGS keeps state '\w+' of parameter 'stem\.0\.weight'"),
    (_odd_state_on_untouched_param, r"Adam keeps state 'row_factor' of parameter 'fc\.bias' as a tensor of shape \(3,\)"),
    pytest.param(_adafactor, r"Adafactor keeps state '\w+_var'",
                 marks=pytest.mark.skipif(not hasattr(torch.optim, "Adafactor"), reason="torch without Adafactor")),
])
def test_unsliceable_optimizer_state_is_refused_before_anything_changes(make, what) -> None:
    model = cnn()
    opt = make(model)
    opt.zero_grad()
    loss_of(model).backward()
    groups = trace_groups(model, X[:1])
    snap = _snapshot(model, opt)
    with pytest.raises(ValueError, match=what) as err:
        prune_channels(model, groups, random_keep(groups, seed=3), optimizer=opt)
    assert "optimizer=None" in str(err.value) and "nothing was pruned" in str(err.value)
    _unchanged(model, opt, snap)


def test_pruner_refusal_leaves_the_run_resumable() -> None:
    """epoch_end with an unsliceable optimizer raises, changes nothing, and can be retried."""
    model = cnn()
    pruner = OneCyclePruner(model, X[:1], total_epochs=4, monitor_start=0, sl_start=0, sl_end=1)
    lbfgs = _lbfgs(model)
    for epoch in range(2):
        pruner.epoch_start(epoch)
        if epoch == 0:
            pruner.epoch_end(epoch, lbfgs)
    snap = _snapshot(model, lbfgs)
    with pytest.raises(ValueError, match="LBFGS"):
        pruner.epoch_end(1, lbfgs)  # sl_end: the prune is due
    _unchanged(model, lbfgs, snap)
    assert not pruner.pruned
    sgd = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    report = pruner.epoch_end(1, sgd)  # retried with an optimizer that can follow
    assert report.pruned_now and pruner.pruned
    steps(model, sgd, 1)
