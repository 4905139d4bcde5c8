"""Property tests: the fused ops equal the pure-PyTorch references on random layouts of every
slice kind (and the references work on all of them), for all dtypes and memory formats."""

from __future__ import annotations

import copy

import pytest
import torch

from oneprune_ext import ChannelLayout, ops, reference

from layouts import random_layout, random_mask, set_grads

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings, strategies as st  # noqa: E402

TOL = {torch.float32: dict(rtol=1e-5, atol=1e-6), torch.float16: dict(rtol=2e-3, atol=2e-3),
       torch.bfloat16: dict(rtol=2e-2, atol=2e-2)}

layouts = st.fixed_dictionaries({
    "seed": st.integers(0, 10**6),
    "dtype": st.sampled_from([torch.float32, torch.float16, torch.bfloat16]),
    "channels_last": st.booleans(),
    "conv_groups": st.sampled_from([None, 1, 5, 16]),
    "mask_kind": st.sampled_from(["random", "random", "empty", "full"]),
    "frozen": st.sets(st.sampled_from(["conv1_w", "conv2_w", "cat_w", "fc1_w", "gconv_w", "col_w"]), max_size=3),
})


def _pair(case):
    model, groups = random_layout(case["seed"], case["dtype"], channels_last=case["channels_last"],
                                  conv_groups=case["conv_groups"], zero_channels=case["seed"] % 2 == 0)
    for n in case["frozen"]:
        getattr(model, n).requires_grad_(False)
    twin = copy.deepcopy(model)
    set_grads(model, case["seed"])
    set_grads(twin, case["seed"])
    for m in (model, twin):
        for n in case["frozen"]:
            getattr(m, n).grad = None
    return model, twin, ChannelLayout(model, groups), ChannelLayout(twin, groups)


@settings(max_examples=40, deadline=None)
@given(layouts)
def test_ops_equal_references_on_random_layouts(case):
    model, twin, layout, rlayout = _pair(case)
    dtype = case["dtype"]
    sq, sal = ops.grouped_norms(layout)
    rsq, rsal = reference.grouped_norms(rlayout)
    torch.testing.assert_close(sq, rsq, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sal, rsal, rtol=1e-5, atol=1e-5)
    mask = random_mask(layout.num_channels, case["seed"] + 1, case["mask_kind"])
    torch.testing.assert_close(ops.group_lasso_grad_(layout, mask, 0.05),
                               reference.group_lasso_grad_(rlayout, mask, 0.05), rtol=1e-5, atol=1e-6)
    ops.scale_channels_(layout, mask, 0.9)
    reference.scale_channels_(rlayout, mask, 0.9)
    for (name, p), q in zip(model.named_parameters(), twin.parameters()):
        torch.testing.assert_close(p, q, **TOL[dtype], msg=name)
        assert (p.grad is None) == (q.grad is None) == (name in case["frozen"]), name
        if p.grad is not None:
            torch.testing.assert_close(p.grad, q.grad, **TOL[dtype], msg=name)


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 10**6), st.booleans(), st.sampled_from([None, 3, 64]))
def test_references_accept_every_layout(seed, channels_last, conv_groups):
    """The references run on every valid layout (one channel per column, concat offsets,
    flatten blocks, repeated slices, channels_last) and leave unmasked channels alone."""
    model, groups = random_layout(seed, channels_last=channels_last, conv_groups=conv_groups)
    layout = ChannelLayout(model, groups)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    reference.grouped_norms(layout)
    reference.group_lasso_grad_(layout, torch.zeros(layout.num_channels, dtype=torch.bool), 0.1)
    reference.scale_channels_(layout, torch.zeros(layout.num_channels, dtype=torch.bool), 0.5)
    covered = set(layout.tensor_names)
    for n, p in model.named_parameters():
        assert torch.equal(p.detach(), before[n]), n
        assert (p.grad is not None and not p.grad.any()) if n in covered else p.grad is None, n
    reference.scale_channels_(layout, torch.ones(layout.num_channels, dtype=torch.bool), 0.5)
