"""The CUDA kernels against the CPU kernels on the same random layouts (fp32 / fp16 / bf16,
contiguous and channels_last, grouped convolutions, frozen parameters, unaligned storage,
real networks), plus what only a GPU shows: determinism, no host synchronisation, CUDA-graph
capture, the launch counts stated in ops.py, and refusals before any launch.
Skipped without a GPU; ``benchmarks/gpu_check.sh`` runs them on one."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from oneprune_ext import ChannelLayout, ops
from oneprune_ext.training.models import resnet56

from layouts import random_layout, random_mask, set_grads

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")]

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
TOL = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.float16: dict(rtol=2e-3, atol=2e-3),
       torch.bfloat16: dict(rtol=2e-2, atol=2e-2)}


def _twins(model: nn.Module, groups, seed: int = 0):
    """(cpu model, cuda model, their layouts); same weights and grads."""
    set_grads(model, seed)
    gpu = copy.deepcopy(model).cuda()
    for p, q in zip(model.parameters(), gpu.parameters()):
        q.grad = p.grad.cuda() if p.grad is not None else None
        assert q.stride() == p.stride()
    return model, gpu, ChannelLayout(model, groups), ChannelLayout(gpu, groups)


def _compare(cpu, gpu, lc, lg, mask, dtype, reg=0.05, factor=0.9):
    sq_c, sal_c = ops.grouped_norms(lc)
    sq_g, sal_g = ops.grouped_norms(lg)
    assert sq_g.device.type == "cuda"
    torch.testing.assert_close(sq_g.cpu(), sq_c, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(sal_g.cpu(), sal_c, rtol=1e-4, atol=1e-5)
    pen_c = ops.group_lasso_grad_(lc, mask, reg)
    pen_g = ops.group_lasso_grad_(lg, mask.cuda(), torch.tensor(reg, device="cuda"))
    torch.testing.assert_close(pen_g.cpu(), pen_c, rtol=1e-4, atol=1e-6)
    ops.scale_channels_(lc, mask, factor)
    ops.scale_channels_(lg, mask.cuda(), torch.tensor(factor, device="cuda"))
    for (n, p), q in zip(cpu.named_parameters(), gpu.parameters()):
        torch.testing.assert_close(q.detach().cpu(), p.detach(), **TOL[dtype], msg=n)
        assert (p.grad is None) == (q.grad is None), n
        if p.grad is not None:
            torch.testing.assert_close(q.grad.cpu(), p.grad, **TOL[dtype], msg=n)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seed", range(8))
def test_cuda_equals_cpu_on_random_layouts(seed, dtype, channels_last):
    model, groups = random_layout(seed, dtype, channels_last=channels_last, conv_groups=[1, 3, 16, 64][seed % 4])
    cpu, gpu, lc, lg = _twins(model, groups, seed)
    for kind in ("random", "full", "empty"):
        _compare(cpu, gpu, lc, lg, random_mask(lc.num_channels, seed, kind), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_equals_cpu_on_resnet56_and_frozen_parameters(dtype):
    from oneprune_ext import trace_groups

    torch.manual_seed(0)
    model = resnet56(10)
    groups = trace_groups(model, torch.randn(1, 3, 32, 32))
    model = model.to(dtype)
    model.conv1.weight.requires_grad_(False)
    model.layer2[0].bn1.weight.requires_grad_(False)
    cpu, gpu, lc, lg = _twins(model, groups)
    for m in (cpu, gpu):
        m.conv1.weight.grad = None
        m.layer2[0].bn1.weight.grad = None
    _compare(cpu, gpu, lc, lg, random_mask(lc.num_channels, 3), dtype)
    assert gpu.conv1.weight.grad is None and gpu.layer2[0].bn1.weight.grad is None


def test_cuda_equals_cpu_on_resnet50_channels_last():
    torchvision = pytest.importorskip("torchvision")
    from oneprune_ext import trace_groups

    torch.manual_seed(0)
    model = torchvision.models.resnet50(weights=None)
    groups = trace_groups(model, torch.randn(1, 3, 64, 64))
    model = model.to(memory_format=torch.channels_last)
    cpu, gpu, lc, lg = _twins(model, groups)
    _compare(cpu, gpu, lc, lg, random_mask(lc.num_channels, 1), torch.float32)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shift", [1, 3])
def test_cuda_unaligned_storage(dtype, shift):
    """Parameters that start off a 16-byte boundary take the scalar path; same results."""
    model, groups = random_layout(5, dtype)
    with torch.no_grad():
        for p in model.parameters():
            buf = torch.empty(p.numel() + shift, dtype=dtype)
            buf[shift:].copy_(p.detach().reshape(-1))
            p.data = buf[shift:].view(p.shape)
    cpu, gpu, lc, lg = _twins(model, groups)
    with torch.no_grad():
        for p in gpu.parameters():
            buf = torch.empty(p.numel() + shift, dtype=dtype, device="cuda")
            buf[shift:].copy_(p.detach().reshape(-1))
            p.data = buf[shift:].view(p.shape)
    assert any(p.data_ptr() % 16 for p in gpu.parameters())
    lg = ChannelLayout(gpu, groups)
    _compare(cpu, gpu, lc, lg, random_mask(lc.num_channels, 2), dtype)


def test_cuda_results_are_bit_identical_run_to_run():
    model, groups = random_layout(3, torch.float32, "cuda", conv_groups=16)
    set_grads(model, 0)
    layout = ChannelLayout(model, groups)
    mask = random_mask(layout.num_channels, 0).cuda()
    a = ops.grouped_norms(layout)
    b = ops.grouped_norms(layout)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    grads0 = [p.grad.clone() for p in model.parameters()]
    pen1 = ops.group_lasso_grad_(layout, mask, 0.1)
    g1 = [p.grad.clone() for p in model.parameters()]
    for p, g in zip(model.parameters(), grads0):
        p.grad.copy_(g)
    pen2 = ops.group_lasso_grad_(layout, mask, 0.1)
    assert torch.equal(pen1, pen2)
    for p, g in zip(model.parameters(), g1):
        assert torch.equal(p.grad, g)


def test_cuda_ops_never_sync_with_the_host():
    model, groups = random_layout(2, torch.float32, "cuda")
    set_grads(model, 0)
    layout = ChannelLayout(model, groups)
    mask = random_mask(layout.num_channels, 0).cuda()
    reg = torch.tensor(0.1, device="cuda")
    factor = torch.tensor(0.9, device="cuda")
    ops.grouped_norms(layout)  # warm-up: the first call uploads the table
    ops.group_lasso_grad_(layout, mask, reg)
    ops.scale_channels_(layout, mask, factor)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        ops.grouped_norms(layout)
        ops.group_lasso_grad_(layout, mask, reg)
        ops.scale_channels_(layout, mask, factor)
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_cuda_launch_counts_match_ops_docs():
    from torch.profiler import ProfilerActivity, profile

    model, groups = random_layout(4, torch.float32, "cuda", conv_groups=64)
    set_grads(model, 0)
    layout = ChannelLayout(model, groups)
    mask = random_mask(layout.num_channels, 0, "full").cuda()
    reg = torch.tensor(0.1, device="cuda")
    factor = torch.tensor(0.9, device="cuda")
    calls = {"grouped_norms": (lambda: ops.grouped_norms(layout), 2),
             "group_lasso_grad_": (lambda: ops.group_lasso_grad_(layout, mask, reg), 3),
             "scale_channels_": (lambda: ops.scale_channels_(layout, mask, factor), 1)}
    for name, (fn, expected) in calls.items():
        fn()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            fn()
            torch.cuda.synchronize()
        kernels = [e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA
                   and "memcpy" not in e.name.lower() and "memset" not in e.name.lower()]
        assert len(kernels) == expected, (name, kernels)


def test_cuda_graph_capture_and_replay_of_the_ops():
    model, groups = random_layout(6, torch.float32, "cuda")
    twin = copy.deepcopy(model)
    set_grads(model, 0)
    set_grads(twin, 0)
    layout, tlayout = ChannelLayout(model, groups), ChannelLayout(twin, groups)
    mask = random_mask(layout.num_channels, 0).cuda()
    reg = torch.tensor(0.1, device="cuda")
    factor = torch.tensor(0.9, device="cuda")

    def step(lay):
        sq, _ = ops.grouped_norms(lay)
        pen = ops.group_lasso_grad_(lay, mask, reg)
        ops.scale_channels_(lay, mask, factor)
        return sq, pen

    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        step(layout)  # warm-up (uploads the table)
    torch.cuda.current_stream().wait_stream(s)
    step(tlayout)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        out = step(layout)
    for _ in range(3):
        g.replay()
        ref = step(tlayout)
    torch.cuda.synchronize()
    torch.testing.assert_close(out[0], ref[0])
    torch.testing.assert_close(out[1], ref[1])
    for p, q in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(p, q)
        torch.testing.assert_close(p.grad, q.grad)


def test_cuda_non_finite_device_scalars_change_nothing():
    model, groups = random_layout(1, torch.float32, "cuda")
    set_grads(model, 0)
    layout = ChannelLayout(model, groups)
    mask = torch.ones(layout.num_channels, dtype=torch.bool, device="cuda")
    before = [(p.detach().clone(), p.grad.clone()) for p in model.parameters()]
    pen = ops.group_lasso_grad_(layout, mask, torch.tensor(float("nan"), device="cuda"))
    ops.scale_channels_(layout, mask, torch.tensor(float("inf"), device="cuda"))
    assert not torch.isfinite(pen)
    for p, (w, g) in zip(model.parameters(), before):
        assert torch.equal(p.detach(), w) and torch.equal(p.grad, g)


def test_cuda_bad_tables_are_refused_before_any_launch():
    model, groups = random_layout(0, torch.float32, "cuda")
    layout = ChannelLayout(model, groups)
    tensors = [p.detach() for p in layout.parameters()]
    bad = layout.table.clone()
    bad[8 + len(tensors) * 18 + 2] += 10_000  # tile 0's line count: past the end of its tensor
    with pytest.raises(ValueError, match="reaches past the end"):
        torch.ops.oneprune.grouped_norms(tensors, bad, layout.num_channels)
    mask = torch.ones(layout.num_channels, dtype=torch.bool, device="cuda")
    with pytest.raises(ValueError, match="reaches past the end"):
        torch.ops.oneprune.scale_channels_(tensors, bad, mask, torch.tensor(0.5, device="cuda"), [])
    torch.cuda.synchronize()  # nothing was launched: no asynchronous error either


def test_cuda_model_moved_after_build_is_followed():
    model, groups = random_layout(2)
    layout = ChannelLayout(model, groups)
    cpu = ops.grouped_norms(layout)
    model.cuda()
    gpu = ops.grouped_norms(layout)
    assert gpu[0].device.type == "cuda"
    torch.testing.assert_close(gpu[0].cpu(), cpu[0], rtol=1e-5, atol=1e-5)
