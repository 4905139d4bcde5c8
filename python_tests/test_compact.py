"""Physical pruning in place, equivalence and optimizer state (issue 4, items 4-5)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

from oneprune_ext.pruning.compaction import prune_channels
from oneprune_ext.graph.trace import trace_groups
from oneprune_ext.storage.saving import load_pruned, save_pruned  # noqa: F401  (reshape helper below)

from _pruning_cases import CASES, build, kept_indices, random_keep, slice_tensor, zero_removed


def _check_module_attrs(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.modules.conv._ConvNd):
            assert m.out_channels == m.weight.shape[0]
            assert m.in_channels == m.weight.shape[1] * m.groups
        elif isinstance(m, nn.Linear):
            assert (m.out_features, m.in_features) == tuple(m.weight.shape)
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            assert m.num_features == m.weight.shape[0] == m.running_mean.shape[0] == m.running_var.shape[0]
        elif isinstance(m, nn.LayerNorm):
            assert tuple(m.normalized_shape) == tuple(m.weight.shape)


@pytest.mark.parametrize("name", list(CASES))
def test_pruned_equals_zeroed(name: str) -> None:
    model, x = build(name)
    groups = trace_groups(model, x)
    keep = random_keep(groups, seed=7)
    ref = copy.deepcopy(model)
    zero_removed(ref, groups, keep)
    ids = [id(p) for p in model.parameters()]
    new_groups = prune_channels(model, groups, keep)
    assert [id(p) for p in model.parameters()] == ids  # same Parameter objects
    assert new_groups.sizes == [len(keep[i]) for i in range(len(groups))]
    _check_module_attrs(model)
    model.eval()
    ref.eval()
    with torch.no_grad():
        y, y_ref = model(x), ref(x)
    scale = y_ref.abs().max().item() + 1e-6
    torch.testing.assert_close(y / scale, y_ref / scale, rtol=1e-4, atol=1e-5)
    # the returned groups are what a fresh trace of the pruned model finds
    retraced = trace_groups(model, x)
    assert [(g.name, g.size, set(g.slices)) for g in retraced] == [
        (g.name, g.size, set(g.slices)) for g in new_groups]


def _make_opt(kind: str, params) -> torch.optim.Optimizer:
    if kind == "sgd":
        return torch.optim.SGD(params, lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
    if kind == "adamw":
        return torch.optim.AdamW(params, lr=1e-2, weight_decay=1e-2, amsgrad=True)
    return torch.optim.Adam(params, lr=1e-2)


def _loss(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = model(x)
    return (out.float() ** 2).mean()


@pytest.mark.parametrize("name", ["mlp", "digits_cnn", "resnet56", "vit", "densenet121"])
@pytest.mark.parametrize("kind", ["sgd", "adamw"])
def test_optimizer_step_after_prune(name: str, kind: str) -> None:
    model, x = build(name)
    if name == "densenet121":
        x = x[:, :, :32, :32]
    model.train()
    opt = _make_opt(kind, model.parameters())
    for _ in range(2):
        opt.zero_grad()
        _loss(model, x).backward()
        opt.step()
    opt.zero_grad()
    _loss(model, x).backward()  # gradients are present when pruning (between backward and step)
    groups = trace_groups(model, x)
    keep = random_keep(groups, seed=11)
    # the expected post-prune state, computed independently by slicing
    shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}
    shapes.update({n: tuple(b.shape) for n, b in model.named_buffers()})
    idx = kept_indices(groups, keep, shapes)
    sd = {k: slice_tensor(v, idx.get(k, {})) for k, v in model.state_dict().items()}
    grads = {n: slice_tensor(p.grad, idx.get(n, {})) for n, p in model.named_parameters()}
    opt_sd = copy.deepcopy(opt.state_dict())
    names = [n for n, _ in model.named_parameters()]
    for i, n in enumerate(names):
        for k, v in opt_sd["state"].get(i, {}).items():
            if isinstance(v, torch.Tensor) and v.dim() > 0:
                opt_sd["state"][i][k] = slice_tensor(v, idx.get(n, {}))

    prune_channels(model, groups, keep, optimizer=opt)
    opt.step()  # the same optimizer object, its state compacted in place

    fresh, _ = build(name, seed=1)
    path_like = {k: torch.empty(v.shape) for k, v in sd.items()}
    _reshape_like(fresh, path_like)
    fresh.load_state_dict(sd)
    fresh.train()
    fopt = _make_opt(kind, fresh.parameters())
    fopt.load_state_dict(opt_sd)
    for n, p in fresh.named_parameters():
        p.grad = grads[n].clone()
    fopt.step()
    for (n, p), (_, q) in zip(model.named_parameters(), fresh.named_parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=lambda m: f"{n}: {m}")
    # and training continues: another forward/backward/step works
    opt.zero_grad()
    _loss(model, x).backward()
    opt.step()


def _reshape_like(model: nn.Module, shapes: dict[str, torch.Tensor]) -> None:
    """Give a fresh model the pruned shapes (via the saving module's reshape)."""
    import os
    import tempfile

    from oneprune_ext.storage.saving import structure_record
    donor = copy.deepcopy(model)
    with torch.no_grad():
        for n, p in list(donor.named_parameters()) + list(donor.named_buffers()):
            if n in shapes and tuple(p.shape) != tuple(shapes[n].shape):
                p.data = torch.zeros(shapes[n].shape, dtype=p.dtype)
    for _, m in donor.named_modules():
        if isinstance(m, nn.modules.conv._ConvNd):
            dw = m.groups > 1 and m.groups == m.in_channels
            m.out_channels = m.weight.shape[0]
            if dw:
                m.groups = m.in_channels = m.out_channels
            else:
                m.in_channels = m.weight.shape[1] * m.groups
        elif isinstance(m, nn.Linear):
            m.out_features, m.in_features = m.weight.shape
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.num_features = m.running_mean.shape[0]
        elif isinstance(m, nn.LayerNorm):
            m.normalized_shape = tuple(m.weight.shape)
    # the other recorded attributes (attention widths, a ViT's hidden_dim) follow the tensors too:
    # load_pruned refuses a record whose attributes disagree with its weights
    from oneprune_ext.graph.registry import update_module_attrs
    update_module_attrs(donor, set(shapes))
    assert structure_record(donor)
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "m.pt")
        save_pruned(donor, path)
        load_pruned(model, path)


BAD_KEEPS = [
    ({99: [0]}, "group index 99"),
    ({-1: [0]}, "group index -1"),
    ({0: []}, "empty"),
    ({0: [1, 0]}, "not sorted"),
    ({0: [0, 0]}, "duplicate"),
    ({0: [0, 10**6]}, "out of range"),
    ({0: [-1, 0]}, "out of range"),
    ({0: [0.5]}, "ints"),
    ({0: [0, 1], 1: [3, 2]}, r"group 1 .*not sorted"),  # group 0 is fine, group 1 is not
]


@pytest.mark.parametrize("keep,msg", BAD_KEEPS)
def test_bad_keep_leaves_everything_unchanged(keep, msg) -> None:
    model, x = build("digits_cnn")
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    _loss(model, x).backward()
    opt.step()
    groups = trace_groups(model, x)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    state = copy.deepcopy(opt.state_dict())
    with pytest.raises(ValueError, match=msg):
        prune_channels(model, groups, keep, optimizer=opt)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    for n, p in model.named_parameters():
        assert torch.equal(p.grad, grads[n])
    for i, st in opt.state_dict()["state"].items():
        assert torch.equal(st["momentum_buffer"], state["state"][i]["momentum_buffer"])
    _check_module_attrs(model)


def test_keep_as_tensor_and_partial() -> None:
    model, x = build("resnet56")
    groups = trace_groups(model, x)
    new = prune_channels(model, groups, {1: torch.tensor([0, 3, 5]), 0: list(range(8))})
    assert new.sizes[:3] == [8, 3, groups.sizes[2]]
    assert model.conv1.out_channels == 8 and model.layer1[0].conv1.out_channels == 3
    model(x)
