"""The fused ops against their pure-PyTorch references, on random layouts of every slice kind."""

from __future__ import annotations

import copy

import pytest
import torch

import oneprune_ext
from oneprune_ext import ChannelLayout, ops, reference
from oneprune_ext.graph.groups import ChannelGroup, ChannelGroups, Slice

from layouts import random_layout, random_mask, set_grads

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU"))]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
TOL = {torch.float32: dict(rtol=1e-5, atol=1e-6), torch.float16: dict(rtol=2e-3, atol=2e-3),
       torch.bfloat16: dict(rtol=2e-2, atol=2e-2)}


def _pair(seed, dtype, device):
    model, groups = random_layout(seed, dtype, device)
    twin = copy.deepcopy(model)
    return model, twin, ChannelLayout(model, groups), ChannelLayout(twin, groups)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seed", range(6))
def test_grouped_norms_matches_reference(seed, dtype, device):
    model, groups = random_layout(seed, dtype, device)
    layout = ChannelLayout(model, groups)
    sq, sal = ops.grouped_norms(layout)
    rsq, rsal = reference.grouped_norms(layout)
    assert sq.dtype == sal.dtype == torch.float32
    assert sq.shape == (groups.num_channels,)
    torch.testing.assert_close(sq, rsq, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sal, rsal, rtol=1e-5, atol=1e-5)
    assert sq[0] == 0 and sal[0] == 0  # the all-zero channel
    sq2, sal2 = ops.grouped_norms(layout)
    assert torch.equal(sq, sq2) and torch.equal(sal, sal2)  # deterministic


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mask_kind", ["random", "empty", "full"])
@pytest.mark.parametrize("seed", range(4))
def test_group_lasso_matches_reference(seed, mask_kind, dtype, device):
    model, twin, layout, rlayout = _pair(seed, dtype, device)
    set_grads(model, seed)
    set_grads(twin, seed)
    mask = random_mask(layout.num_channels, seed, mask_kind).to(device)
    pen = ops.group_lasso_grad_(layout, mask, 0.05)
    rpen = reference.group_lasso_grad_(rlayout, mask, 0.05)
    assert pen.shape == () and pen.dtype == torch.float32 and pen.device.type == device
    torch.testing.assert_close(pen, rpen, rtol=1e-5, atol=1e-6)
    for (name, p), q in zip(model.named_parameters(), twin.parameters()):
        assert not torch.isnan(p.grad.float()).any(), name
        torch.testing.assert_close(p.grad, q.grad, **TOL[dtype], msg=name)
        assert torch.equal(p, q)  # weights untouched
    if mask_kind == "empty":
        assert pen.item() == 0.0


def test_group_lasso_gradient_is_the_penalty_gradient():
    """The fused update equals autograd's gradient of reg * sum ||g_c|| (fp64 check)."""
    model, groups = random_layout(3, torch.float32, "cpu", zero_channels=False)
    layout = ChannelLayout(model, groups)
    mask = random_mask(layout.num_channels, 3)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    pen = ops.group_lasso_grad_(layout, mask, 0.3)
    fused = {n: p.grad.clone() for n, p in model.named_parameters()}
    # autograd of the penalty
    for p in model.parameters():
        p.grad = None
    offs = groups.offsets
    total = torch.zeros(())
    params = dict(model.named_parameters())
    per_ch = [torch.zeros(()) for _ in range(layout.num_channels)]
    for gi, g in enumerate(groups):
        for s in g.norm_slices():
            t = params[s.name]
            for c in range(g.size):
                idx = torch.arange(s.offset + c * s.block, s.offset + (c + 1) * s.block)
                per_ch[offs[gi] + c] = per_ch[offs[gi] + c] + t.index_select(s.dim, idx).square().sum()
    for c in range(layout.num_channels):
        if mask[c]:
            total = total + 0.3 * per_ch[c].sqrt()
    total.backward()
    torch.testing.assert_close(pen, total.detach(), rtol=1e-5, atol=1e-6)
    for n, p in model.named_parameters():
        expect = p.grad if p.grad is not None else torch.zeros_like(p)
        torch.testing.assert_close(fused[n], expect, rtol=1e-4, atol=1e-6, msg=n)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mask_kind", ["random", "empty", "full"])
@pytest.mark.parametrize("seed", range(4))
def test_scale_channels_matches_reference(seed, mask_kind, dtype, device):
    model, twin, layout, rlayout = _pair(seed, dtype, device)
    mask = random_mask(layout.num_channels, seed + 100, mask_kind).to(device)
    ops.scale_channels_(layout, mask, 0.9)
    reference.scale_channels_(rlayout, mask, torch.tensor(0.9))
    for (name, p), q in zip(model.named_parameters(), twin.parameters()):
        torch.testing.assert_close(p, q, **TOL[dtype], msg=name)


def test_scale_factor_as_device_tensor_and_untouched_channels():
    model, groups = random_layout(1)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    layout = ChannelLayout(model, groups)
    ops.scale_channels_(layout, torch.zeros(layout.num_channels, dtype=torch.bool), torch.tensor([0.5]))
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES + [torch.int64])
@pytest.mark.parametrize("seed", range(8))
def test_compact_matches_index_select(seed, dtype, device):
    g = torch.Generator().manual_seed(seed)
    ndim = 1 + seed % 4
    shape = [int(torch.randint(1, 7, (1,), generator=g)) for _ in range(ndim)]
    t = (torch.randn(shape, generator=g) * 100).to(dtype).to(device)
    for dim in range(ndim):
        size = shape[dim]
        for kind in ("random", "all", "one", "none"):
            if kind == "all":
                keep = torch.arange(size)
            elif kind == "one":
                keep = torch.tensor([int(torch.randint(0, size, (1,), generator=g))])
            elif kind == "none":
                keep = torch.zeros(0, dtype=torch.long)
            else:
                keep = torch.nonzero(torch.rand(size, generator=g) < 0.5).flatten()
            src = t.clone()
            expect = src.index_select(dim, keep.to(device)).clone()
            storage = src.untyped_storage().data_ptr()
            out = ops.compact_(src, dim, keep)
            assert torch.equal(out, expect), (shape, dim, keep)
            assert out.is_contiguous() and out.untyped_storage().data_ptr() == storage  # same storage


@pytest.mark.parametrize("device", DEVICES)
def test_compact_many_matches_index_select(device):
    g = torch.Generator().manual_seed(7)
    tensors, dims, keeps, expect = [], [], [], []
    for i in range(12):
        shape = [int(torch.randint(1, 6, (1,), generator=g)) for _ in range(1 + i % 4)]
        dtype = [torch.float32, torch.float16, torch.bfloat16, torch.int64][i % 4]
        t = (torch.randn(shape, generator=g) * 50).to(dtype).to(device)
        d = i % len(shape)
        k = torch.nonzero(torch.rand(shape[d], generator=g) < 0.6).flatten()
        tensors.append(t)
        dims.append(d)
        keeps.append(k)
        expect.append(t.index_select(d, k.to(device)).clone())
    outs = ops.compact_many_(tensors, dims, keeps)
    for out, e, t in zip(outs, expect, tensors):
        assert torch.equal(out, e)
        assert out.untyped_storage().data_ptr() == t.untyped_storage().data_ptr()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("seed", range(6))
def test_compact_many_several_dims_of_one_tensor(seed, device):
    g = torch.Generator().manual_seed(seed)
    ndim = 2 + seed % 3
    shape = [int(torch.randint(1, 6, (1,), generator=g)) for _ in range(ndim)]
    dims = sorted(torch.randperm(ndim, generator=g)[: 2 + (seed % 2) * (ndim > 2)].tolist())
    t = torch.randn(shape, generator=g).to(device)
    other = torch.randn(7, generator=g).to(device)
    keeps = [torch.nonzero(torch.rand(shape[d], generator=g) < 0.6).flatten() for d in dims]
    expect_other = other[[1, 3]].clone()
    expect = t.clone()
    for d, k in zip(dims, keeps):
        expect = expect.index_select(d, k.to(device))
    outs = ops.compact_many_([t] * len(dims) + [other], dims + [0], keeps + [torch.tensor([1, 3])])
    assert all(o is outs[0] for o in outs[: len(dims)])
    assert torch.equal(outs[0], expect)
    assert torch.equal(outs[-1], expect_other)
    with pytest.raises(ValueError, match="increasing"):
        ops.compact_many_([t, t], [dims[1], dims[0]], [keeps[1], keeps[0]])


def test_compact_many_rejects_shared_memory_and_mismatched_lists():
    t = torch.randn(4, 6)
    with pytest.raises(ValueError, match="share memory"):
        ops.compact_many_([t, t.view(6, 4)], [0, 0], [[0, 1], [0, 1]])
    with pytest.raises(ValueError, match="one dim"):
        ops.compact_many_([t], [0, 1], [[0]])
    before = t.clone()
    with pytest.raises(ValueError, match="sorted"):
        ops.compact_many_([t, torch.randn(3)], [0, 0], [[0, 1], [2, 1]])
    assert torch.equal(t, before)  # checked before anything moved


def test_compact_rejects_bad_keep_and_leaves_tensor():
    t = torch.arange(24.0).view(4, 6)
    before = t.clone()
    with pytest.raises(ValueError, match="sorted"):
        ops.compact_(t, 1, [2, 1])
    with pytest.raises(ValueError, match="sorted"):
        ops.compact_(t, 1, [1, 1])
    with pytest.raises(IndexError, match="outside"):
        ops.compact_(t, 1, [0, 6])
    with pytest.raises(IndexError, match="dim"):
        ops.compact_(t, 2, [0])
    with pytest.raises(ValueError, match="contiguous"):
        ops.compact_(t.t(), 0, [0])
    assert torch.equal(t, before)


def test_compact_parameter_and_optimizer_state_roundtrip():
    p = torch.nn.Parameter(torch.randn(5, 3))
    opt = torch.optim.SGD([p], lr=0.1, momentum=0.9)
    p.grad = torch.randn(5, 3)
    opt.step()
    keep = torch.tensor([0, 3, 4])
    expect_w = p.detach()[keep].clone()
    expect_m = opt.state[p]["momentum_buffer"][keep].clone()
    p.data = ops.compact_(p.data, 0, keep)
    opt.state[p]["momentum_buffer"] = ops.compact_(opt.state[p]["momentum_buffer"], 0, keep)
    assert torch.equal(p.detach(), expect_w)
    assert torch.equal(opt.state[p]["momentum_buffer"], expect_m)
    p.grad = torch.ones(3, 3)
    opt.step()  # runs on the compacted shapes


# --- layout validity -------------------------------------------------------------------


def test_layout_reads_live_parameters_after_reassignment():
    model, groups = random_layout(2)
    layout = ChannelLayout(model, groups)
    with torch.no_grad():
        for p in model.parameters():
            p.data = torch.randn_like(p)  # new storage, same shape
    torch.testing.assert_close(ops.grouped_norms(layout)[0], reference.grouped_norms(layout)[0])


def test_layout_follows_dtype_change():
    model, groups = random_layout(2)
    layout = ChannelLayout(model, groups)
    model.to(torch.bfloat16)
    torch.testing.assert_close(ops.grouped_norms(layout)[0], reference.grouped_norms(layout)[0])


def test_layout_detects_shape_change():
    model, groups = random_layout(2)
    layout = ChannelLayout(model, groups)
    model.conv1_w.data = torch.randn(model.conv1_w.shape[0] + 1, *model.conv1_w.shape[1:])
    with pytest.raises((RuntimeError, ValueError), match="rebuild"):
        ops.grouped_norms(layout)
    layout.rebuild()  # the groups still fit the larger tensor: rebuilding re-reads its shape
    torch.testing.assert_close(ops.grouped_norms(layout)[0], reference.grouped_norms(layout)[0])
    model.conv1_w.data = torch.randn(0, *model.conv1_w.shape[1:])
    with pytest.raises(ValueError, match="do not fit"):
        layout.rebuild()  # now the groups no longer fit the model


def test_layout_rejects_overlapping_groups_and_bad_slices():
    model, groups = random_layout(0)
    bad = ChannelGroups(list(groups) + [ChannelGroup(1, (Slice("conv1_w", 0),), "dup")])
    with pytest.raises(ValueError, match="disjoint"):
        ChannelLayout(model, bad)
    with pytest.raises(ValueError, match="not a parameter"):
        ChannelLayout(model, ChannelGroups([ChannelGroup(1, (Slice("nope", 0),), "x")]))
    with pytest.raises(ValueError, match="do not fit"):
        ChannelLayout(model, ChannelGroups([ChannelGroup(10_000, (Slice("conv1_w", 0),), "x")]))


def test_ops_reject_bad_masks():
    model, groups = random_layout(0)
    layout = ChannelLayout(model, groups)
    with pytest.raises(ValueError, match="bool"):
        ops.scale_channels_(layout, torch.zeros(layout.num_channels), 0.5)
    with pytest.raises(ValueError, match="channels"):
        ops.group_lasso_grad_(layout, torch.zeros(layout.num_channels + 1, dtype=torch.bool), 0.1)


def test_ops_reject_mismatched_arguments_at_the_c_level():
    model, groups = random_layout(0)
    layout = ChannelLayout(model, groups)
    tensors, table, n = [p.detach() for p in layout.parameters()], layout.table, layout.num_channels
    with pytest.raises(ValueError, match="tensors"):
        torch.ops.oneprune.grouped_norms(tensors[:-1], table, n)
    with pytest.raises(ValueError, match="dtype"):
        torch.ops.oneprune.grouped_norms([t.double() for t in tensors], table, n)
    with pytest.raises(ValueError, match="nchan"):
        torch.ops.oneprune.grouped_norms(tensors, table, n + 1)
    with pytest.raises(ValueError, match="int64 CPU tensor"):
        torch.ops.oneprune.grouped_norms(tensors, table.int(), n)
    strided = [t.transpose(0, -1).contiguous().transpose(0, -1) for t in tensors]
    if any(not t.is_contiguous() for t in strided):
        with pytest.raises(ValueError, match="memory format changed"):
            torch.ops.oneprune.grouped_norms(strided, table, n)
    mask = torch.ones(n, dtype=torch.bool)
    with pytest.raises(IndexError, match="frozen index"):
        torch.ops.oneprune.scale_channels_(tensors, table, mask, torch.tensor(0.5), [len(tensors)])


# --- torch.library integration ---------------------------------------------------------


def _op_args(seed=0):
    model, groups = random_layout(seed)
    layout = ChannelLayout(model, groups)
    set_grads(model, seed)
    tensors = [p.detach() for p in layout.parameters()]
    mask = random_mask(layout.num_channels, seed)
    return layout, tensors, layout.table, mask


def test_opcheck_all_ops():
    layout, tensors, table, mask = _op_args()
    grads = layout.grads()
    reg = torch.tensor(0.1)
    n = layout.num_channels
    torch.library.opcheck(torch.ops.oneprune.grouped_norms.default, (tensors, table, n))
    torch.library.opcheck(torch.ops.oneprune.group_lasso_grad_.default,
                          (tensors, grads, table, mask, reg, 1e-12, []))
    torch.library.opcheck(torch.ops.oneprune.scale_channels_.default,
                          (tensors, table, mask, torch.tensor(0.9), []))
    frozen = [0, 3]
    grads = [torch.empty(0) if i in frozen else g for i, g in enumerate(grads)]
    torch.library.opcheck(torch.ops.oneprune.group_lasso_grad_.default,
                          (tensors, grads, table, mask, reg, 1e-12, frozen))
    t = torch.randn(6, 4, 3)
    torch.library.opcheck(torch.ops.oneprune.compact_.default, (t, 1, torch.tensor([0, 2])))
    torch.library.opcheck(torch.ops.oneprune.compact_many_.default,
                          ([torch.randn(5, 3), torch.randn(4)], [1, 0], [torch.tensor([0, 2]), torch.tensor([1])]))


def test_torch_compile_calls_the_ops():
    layout, tensors, table, mask = _op_args(1)
    n = layout.num_channels

    def step(ts, gs, m):
        sq, sal = torch.ops.oneprune.grouped_norms(ts, table, n)
        pen = torch.ops.oneprune.group_lasso_grad_(ts, gs, table, m, torch.tensor(0.1), 1e-12, [])
        return sq.sum() + sal.sum(), pen

    twin_model = copy.deepcopy(layout.model)
    set_grads(twin_model, 1)
    set_grads(layout.model, 1)
    twin = ChannelLayout(twin_model, layout.groups)
    compiled = torch.compile(step, backend="inductor", fullgraph=True)
    out_c = compiled([p.detach() for p in layout.parameters()], layout.grads(), mask)
    out_e = step([p.detach() for p in twin.parameters()], twin.grads(), mask)
    torch.testing.assert_close(out_c[0], out_e[0])
    torch.testing.assert_close(out_c[1], out_e[1])
    for p, q in zip(layout.model.parameters(), twin_model.parameters()):
        torch.testing.assert_close(p.grad, q.grad)


def test_build_info_reports_the_build():
    info = oneprune_ext.build_info()
    for key in ("torch", "cuda_compiled", "cuda_available", "cuda_arch_list", "cxx"):
        assert key in info
    assert info["cuda_available"] == torch.cuda.is_available()
