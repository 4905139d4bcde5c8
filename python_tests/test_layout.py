"""The channel layout: memory formats, frozen parameters, grouped convolutions, stale layouts,
and the ops' argument checks."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from oneprune_ext import ChannelLayout, ops, reference, trace_groups
from oneprune_ext.graph.groups import ChannelGroup, ChannelGroups, Slice
from oneprune_ext.training.models import digits_cnn

from layouts import random_layout, random_mask, set_grads

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
TOL = {torch.float32: dict(rtol=1e-5, atol=1e-6), torch.float16: dict(rtol=2e-3, atol=2e-3),
       torch.bfloat16: dict(rtol=2e-2, atol=2e-2)}


def _run_all(model, groups, mask_seed=5):
    """(sq, saliency, penalty, grads, weights after scaling) of the fused ops on ``model``."""
    layout = ChannelLayout(model, groups)
    mask = random_mask(layout.num_channels, mask_seed)
    sq, sal = ops.grouped_norms(layout)
    pen = ops.group_lasso_grad_(layout, mask, 0.05)
    ops.scale_channels_(layout, mask, 0.75)
    return sq, sal, pen, {n: p.grad.clone() for n, p in model.named_parameters()}, \
        {n: p.detach().clone() for n, p in model.named_parameters()}


# --- channels_last ----------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seed", range(3))
def test_channels_last_equals_contiguous(seed, dtype):
    model, groups = random_layout(seed, dtype)
    twin = copy.deepcopy(model).to(memory_format=torch.channels_last)
    if any(p.dim() == 4 and p.shape[1] > 1 and p.shape[2] * p.shape[3] > 1 for p in twin.parameters()):
        assert any(not p.is_contiguous() for p in twin.parameters())
    set_grads(model, seed)
    set_grads(twin, seed)
    a, b = _run_all(model, groups), _run_all(twin, groups)
    torch.testing.assert_close(a[0], b[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(a[1], b[1], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(a[2], b[2], rtol=1e-5, atol=1e-6)
    for name in a[3]:
        torch.testing.assert_close(a[3][name], b[3][name], **TOL[dtype], msg=name)
        torch.testing.assert_close(a[4][name], b[4][name], **TOL[dtype], msg=name)
    for p in twin.parameters():  # still channels_last, grads too
        if p.dim() == 4 and p.shape[1] > 1 and p.shape[2] * p.shape[3] > 1:
            assert p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous()
            assert p.grad.stride() == p.stride()


@pytest.mark.parametrize("dtype", DTYPES)
def test_channels_last_cnn_matches_reference(dtype):
    torch.manual_seed(0)
    model = digits_cnn(width=8)
    groups = trace_groups(model, torch.randn(1, 1, 8, 8))
    model = model.to(dtype).to(memory_format=torch.channels_last)
    twin = copy.deepcopy(model)  # (deepcopy does not copy .grad)
    set_grads(model, 1)
    set_grads(twin, 1)
    layout, rlayout = ChannelLayout(model, groups), ChannelLayout(twin, groups)
    mask = random_mask(layout.num_channels, 2)
    torch.testing.assert_close(ops.grouped_norms(layout), reference.grouped_norms(rlayout), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(ops.group_lasso_grad_(layout, mask, 0.1), reference.group_lasso_grad_(rlayout, mask, 0.1),
                               rtol=1e-4, atol=1e-5)
    ops.scale_channels_(layout, mask, 0.5)
    reference.scale_channels_(rlayout, mask, 0.5)
    for (n, p), q in zip(model.named_parameters(), twin.parameters()):
        torch.testing.assert_close(p.grad, q.grad, **TOL[dtype], msg=n)
        torch.testing.assert_close(p, q, **TOL[dtype], msg=n)


def test_grad_in_another_memory_format_is_converted_not_misread():
    model, groups = random_layout(1)
    model = model.to(memory_format=torch.channels_last)
    twin = copy.deepcopy(model)
    set_grads(model, 3)
    set_grads(twin, 3)
    p = model.conv2_w
    assert p.dim() == 4 and not p.is_contiguous()
    p.grad = p.grad.contiguous()  # a contiguous grad on a channels_last parameter
    assert p.grad.stride() != p.stride()
    layout, rlayout = ChannelLayout(model, groups), ChannelLayout(twin, groups)
    mask = torch.ones(layout.num_channels, dtype=torch.bool)
    ops.group_lasso_grad_(layout, mask, 0.2)
    reference.group_lasso_grad_(rlayout, mask, 0.2)
    assert p.grad.stride() == p.stride()
    for (n, a), b in zip(model.named_parameters(), twin.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-6, msg=n)


def test_memory_format_changed_after_build_asks_for_rebuild():
    model, groups = random_layout(1)
    assert model.conv2_w.shape[1] > 1 and model.conv2_w.shape[-1] == 3
    layout = ChannelLayout(model, groups)
    model.to(memory_format=torch.channels_last)
    with pytest.raises(ValueError, match=r"memory format changed.*call layout\.rebuild\(\)"):
        ops.grouped_norms(layout)
    layout.rebuild()
    torch.testing.assert_close(ops.grouped_norms(layout), reference.grouped_norms(layout))


# --- frozen parameters ------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(3))
def test_frozen_parameters_are_read_never_written(seed):
    model, groups = random_layout(seed)
    layout = ChannelLayout(model, groups)  # built while everything trains
    frozen = ["conv2_w", "bn1_w", "fc1_w"]
    for n in frozen:
        getattr(model, n).requires_grad_(False)  # frozen after the layout was built
    before = {n: getattr(model, n).detach().clone() for n in frozen}
    mask = torch.ones(layout.num_channels, dtype=torch.bool)
    twin = copy.deepcopy(model)
    rlayout = ChannelLayout(twin, groups)
    torch.testing.assert_close(ops.grouped_norms(layout), reference.grouped_norms(rlayout))  # counted
    pen = ops.group_lasso_grad_(layout, mask, 0.1)
    torch.testing.assert_close(pen, reference.group_lasso_grad_(rlayout, mask, 0.1))
    ops.scale_channels_(layout, mask, 0.5)
    reference.scale_channels_(rlayout, mask, 0.5)
    for n in frozen:
        p = getattr(model, n)
        assert p.grad is None and getattr(twin, n).grad is None
        assert torch.equal(p.detach(), before[n])
    for (n, p), q in zip(model.named_parameters(), twin.parameters()):
        torch.testing.assert_close(p.detach(), q.detach(), msg=n)
        if p.requires_grad:
            torch.testing.assert_close(p.grad, q.grad, msg=n)
    getattr(model, frozen[2]).requires_grad_(True)  # unfrozen again: written again
    ops.scale_channels_(layout, mask, 0.5)
    assert not torch.equal(getattr(model, frozen[2]).detach(), before[frozen[2]])


# --- grouped convolutions: many slices of one tensor dim --------------------------------


@pytest.mark.parametrize("conv_groups", [1, 7, 64])
def test_grouped_conv_slices(conv_groups):
    model, groups = random_layout(4, conv_groups=conv_groups)
    twin = copy.deepcopy(model)
    set_grads(model, 0)
    set_grads(twin, 0)
    layout, rlayout = ChannelLayout(model, groups), ChannelLayout(twin, groups)
    # the repeated slices of one tensor dim are one run: the tile count does not grow with G
    base = ChannelLayout(*random_layout(4, conv_groups=1))
    assert layout.num_tiles == base.num_tiles
    mask = random_mask(layout.num_channels, 1)
    torch.testing.assert_close(ops.grouped_norms(layout), reference.grouped_norms(rlayout), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ops.group_lasso_grad_(layout, mask, 0.1), reference.group_lasso_grad_(rlayout, mask, 0.1))
    ops.scale_channels_(layout, mask, 0.9)
    reference.scale_channels_(rlayout, mask, 0.9)
    for (n, p), q in zip(model.named_parameters(), twin.parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=n)
        torch.testing.assert_close(p, q, msg=n)


def test_grouped_conv_with_shuffled_slices_and_gaps():
    """Slices given out of order, with unclaimed indices between them, on both dims."""
    w = 3
    model = nn.Module()
    model.a = nn.Parameter(torch.randn(8 * w + 2, 5 * w + 1, 3, 3))
    offs = [2 + g * w for g in range(8)]
    cols = [1 + g * w for g in range(5)]
    groups = ChannelGroups([
        ChannelGroup(w, tuple(Slice("a", 0, offset=o) for o in reversed(offs)), "rows"),
        ChannelGroup(w, tuple(Slice("a", 1, offset=o) for o in cols), "cols"),
    ])
    layout = ChannelLayout(model, groups)
    torch.testing.assert_close(ops.grouped_norms(layout), reference.grouped_norms(layout), rtol=1e-5, atol=1e-5)


# --- stale layouts ----------------------------------------------------------------------


def _stale_cases():
    def assign_state_dict(m):
        m.load_state_dict({k: v.clone() for k, v in m.state_dict().items()}, assign=True)

    def new_parameter(m):
        m.conv2_w = nn.Parameter(m.conv2_w.detach().clone())

    def reshape_same_numel(m):
        m.fc2_w.data = m.fc2_w.data.reshape(-1, 1)

    def meta(m):
        m.to("meta")

    return [assign_state_dict, new_parameter, reshape_same_numel, meta]


@pytest.mark.parametrize("change", _stale_cases(), ids=lambda f: f.__name__)
@pytest.mark.parametrize("op", ["norms", "lasso", "scale"])
def test_stale_layout_is_refused(change, op):
    model, groups = random_layout(3)
    layout = ChannelLayout(model, groups)
    old = [p.detach().clone() for p in layout.parameters()]
    change(model)
    mask = torch.ones(layout.num_channels, dtype=torch.bool)
    call = {"norms": lambda: ops.grouped_norms(layout),
            "lasso": lambda: ops.group_lasso_grad_(layout, mask, 0.1),
            "scale": lambda: ops.scale_channels_(layout, mask, 0.5)}[op]
    with pytest.raises(ValueError, match=r"call layout\.rebuild\(\)"):
        call()
    for p, o in zip(layout.parameters(), old):  # the orphaned tensors were not touched
        if p.device.type != "meta":
            assert torch.equal(p.detach().reshape(o.shape), o) and p.grad is None
    if change.__name__ in ("assign_state_dict", "new_parameter"):
        layout.rebuild()  # the groups still fit: the layout follows the new parameters
        call()


def test_reassigned_data_of_the_same_shape_is_followed():
    model, groups = random_layout(2)
    layout = ChannelLayout(model, groups)
    with torch.no_grad():
        for p in model.parameters():
            p.data = torch.randn_like(p)  # new storage, same shape and format: fine
    torch.testing.assert_close(ops.grouped_norms(layout)[0], reference.grouped_norms(layout)[0])


def test_rebuild_that_raises_changes_nothing():
    model, groups = random_layout(2)
    layout = ChannelLayout(model, groups)
    table = layout.table
    bad = ChannelGroups([ChannelGroup(10_000, (Slice("conv1_w", 0),), "x")])
    with pytest.raises(ValueError, match="do not fit"):
        layout.rebuild(bad)
    assert layout.groups is groups and layout.table is table
    torch.testing.assert_close(ops.grouped_norms(layout)[0], reference.grouped_norms(layout)[0])


def test_layout_rejects_three_channel_dims_and_sparse_tensors():
    model = nn.Module()
    model.t = nn.Parameter(torch.randn(2, 3, 4))
    g = ChannelGroups([ChannelGroup(2, (Slice("t", 0), Slice("t", 1), Slice("t", 2)), "x")])
    with pytest.raises(ValueError, match="at most two dims"):
        ChannelLayout(model, g)
    model.t = nn.Parameter(torch.randn(4, 6)[:, ::2])
    with pytest.raises(ValueError, match="not dense"):
        ChannelLayout(model, ChannelGroups([ChannelGroup(2, (Slice("t", 0),), "x")]))


# --- argument checks --------------------------------------------------------------------


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, torch.tensor(math.nan), torch.tensor([math.inf])])
def test_non_finite_reg_and_factor_are_refused(bad):
    model, groups = random_layout(0)
    layout = ChannelLayout(model, groups)
    set_grads(model, 0)
    before = {n: (p.detach().clone(), p.grad.clone()) for n, p in model.named_parameters()}
    mask = torch.ones(layout.num_channels, dtype=torch.bool)
    with pytest.raises(ValueError, match="group_lasso_grad_: reg must be"):
        ops.group_lasso_grad_(layout, mask, bad)
    with pytest.raises(ValueError, match="scale_channels_: factor must be"):
        ops.scale_channels_(layout, mask, bad)
    for n, p in model.named_parameters():
        assert torch.equal(p.detach(), before[n][0]) and torch.equal(p.grad, before[n][1])


@pytest.mark.parametrize("keep", [[False, True], [0.0, 2.7], torch.tensor([True, False, True]),
                                  torch.tensor([0.0, 1.0]), [1, 2.0]])
def test_compact_refuses_bool_and_float_keep(keep):
    t = torch.arange(12.0).view(4, 3)
    before = t.clone()
    with pytest.raises(TypeError, match="integer indices"):
        ops.compact_(t, 0, keep)
    with pytest.raises(TypeError, match="integer indices"):
        ops.compact_many_([t], [0], [keep])
    assert torch.equal(t, before)


def test_compact_many_accepts_distinct_empty_tensors():
    a, b = torch.empty(0), torch.empty(0, 3)
    outs = ops.compact_many_([a, torch.empty(0)], [0, 0], [[], []])
    assert [o.shape for o in outs] == [(0,), (0,)]
    outs = ops.compact_many_([b, b], [0, 1], [[], [0, 2]])  # one empty tensor along two dims
    assert outs[0].shape == (0, 2) and outs[1] is outs[0]
    x, y = torch.randn(0, 4), torch.randn(0, 4)
    outs = ops.compact_many_([x, y], [1, 1], [[1], [0, 3]])
    assert outs[0].shape == (0, 1) and outs[1].shape == (0, 2)


# --- following the model ----------------------------------------------------------------


def _to_bf16(m):
    m.to(torch.bfloat16)


def _channels_last(m):
    m.to(memory_format=torch.channels_last)


@pytest.mark.parametrize("change", [_channels_last, _to_bf16], ids=lambda f: f.__name__)
def test_follow_rebuilds_once_for_in_place_changes(change):
    model, groups = random_layout(1)  # conv2_w: 3x3 kernels, several input channels
    layout = ChannelLayout(model, groups)
    assert not layout.drift() and layout.follow() is False  # nothing changed: no rebuild
    table = layout.table
    change(model)
    d = layout.drift()
    assert d and d.followable and not d.replaced and not d.reshaped
    assert layout.follow() is True and layout.table is not table
    assert layout.follow() is False  # once
    torch.testing.assert_close(ops.grouped_norms(layout), reference.grouped_norms(layout), **TOL[torch.bfloat16])


def test_follow_a_round_trip_through_another_format_and_dtype():
    model, groups = random_layout(1)
    twin = copy.deepcopy(model)
    layout = ChannelLayout(model, groups)
    model.to(memory_format=torch.channels_last).to(torch.float16)
    assert layout.follow()
    ops.scale_channels_(layout, torch.ones(layout.num_channels, dtype=torch.bool), 1.0)
    model.to(torch.float32).to(memory_format=torch.contiguous_format)
    assert layout.follow()
    sq, _ = ops.grouped_norms(layout)
    twin_sq, _ = ops.grouped_norms(ChannelLayout(twin, groups))
    torch.testing.assert_close(sq, twin_sq, rtol=2e-3, atol=2e-3)  # fp16 round trip of the values


@pytest.mark.parametrize("change", _stale_cases()[:3], ids=lambda f: f.__name__)
def test_follow_refuses_replaced_or_reshaped_parameters(change):
    model, groups = random_layout(3)
    layout = ChannelLayout(model, groups)
    table = layout.table
    change(model)
    d = layout.drift()
    assert not d.followable
    word = "replaced" if change.__name__ != "reshape_same_numel" else "changed shape"
    with pytest.raises(ValueError, match=f"{word}.*call layout.rebuild"):
        layout.follow()
    assert layout.table is table  # nothing changed


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_follow_a_device_move():
    model, groups = random_layout(8)
    layout = ChannelLayout(model, groups)
    model.cuda()
    assert layout.drift().moved and layout.follow() and layout.device.type == "cuda"
    torch.testing.assert_close(ops.grouped_norms(layout), reference.grouped_norms(layout))
    model.cpu()
    assert layout.follow() and layout.device.type == "cpu"
