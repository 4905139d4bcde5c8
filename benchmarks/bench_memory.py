"""Memory before and after pruning ResNet-50 to half its channels: oneprune_ext vs Torch-Pruning.

Run::

    .venv/bin/python -m pytest benchmarks/bench_memory.py -q -s

Each side runs in a fresh subprocess (CPU, fp32, torchvision ResNet-50, random init):

1. build the model and an SGD optimizer (momentum 0.9), take one training step on a
   2x3x64x64 batch and leave its gradients in place: weights, ``.grad`` and momentum,
   about 3 x 102 MB;
2. prune half of the channels of every one of the 37 channel groups (the same random keep
   sets on both sides): ``prune_channels(model, groups, keep, optimizer)`` (in place, the
   optimizer's state compacted) vs Torch-Pruning's ``DG.get_pruning_group(...).prune()`` for
   every group (which slices weights and grads, but not the optimizer's state: its momentum
   must be rebuilt, so the old optimizer is dropped and a new one built, as a TP user does);
3. measure, before and after the prune: the bytes of every tensor storage the model and the
   optimizer hold (parameters, grads, optimizer state, buffers; each storage counted once),
   the process's resident set size (``VmRSS``, after ``gc.collect()`` and glibc's
   ``malloc_trim(0)``, which hands freed heap pages back to the OS), the peak RSS growth during
   the prune (``VmHWM`` reset through ``/proc/self/clear_refs``), and the size of the saved
   model file (``save_pruned`` / ``torch.save(state_dict)``).

The test prints the side-by-side table; Torch-Pruning is a benchmark-only dependency (skipped
when it is not installed).

What the release costs in time: ``test_release_cost`` times ``prune_channels`` of ResNet-50
(model only, the same keep sets) as shipped and with the release step (``compact._release``, the
copy into exact-size storages) switched off, alternating, and prints both medians and the ratio.
"""

from __future__ import annotations

import ctypes
import gc
import os
import random
import statistics
import tempfile
import time
from typing import Any

import pytest
import torch
import torchvision

from oneprune_ext.pruning import compaction as compact
from oneprune_ext.pruning.compaction import prune_channels
from oneprune_ext.graph.trace import trace_groups
from oneprune_ext.storage.saving import save_pruned

import proc_memory

INPUT = (2, 3, 64, 64)


def _rss() -> int:
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:  # not glibc
        pass
    return proc_memory.status("VmRSS")


def _tensor_bytes(model: torch.nn.Module, opt: torch.optim.Optimizer) -> int:
    seen: dict[int, int] = {}
    tensors = list(model.parameters()) + list(model.buffers())
    tensors += [p.grad for p in model.parameters() if p.grad is not None]
    tensors += [v for st in opt.state.values() for v in st.values() if isinstance(v, torch.Tensor)]
    for t in tensors:
        s = t.untyped_storage()
        seen[s.data_ptr()] = s.nbytes()
    return sum(seen.values())


def _file_bytes(save: Any) -> int:
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "m.pt")
        save(path)
        return os.path.getsize(path)


def _keep(groups: Any, seed: int = 0) -> dict[int, list[int]]:
    rng = random.Random(seed)
    return {i: sorted(rng.sample(range(g.size), g.size // 2)) for i, g in enumerate(groups)}


def _measure(which: str) -> dict[str, float]:
    torch.manual_seed(0)
    model = torchvision.models.resnet50(weights=None)
    x = torch.randn(*INPUT)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    model(x).square().mean().backward()
    opt.step()
    model(x).square().mean().backward()  # gradients present at the prune
    groups = trace_groups(model, x[:1])
    keep = _keep(groups)
    if which == "tp":
        import torch_pruning as tp

        mods = dict(model.named_modules())
        plan = []
        for i, g in enumerate(groups):
            m = mods[g.name]
            fn = tp.prune_conv_out_channels if isinstance(m, torch.nn.Conv2d) else tp.prune_linear_out_channels
            plan.append((m, fn, sorted(set(range(g.size)) - set(keep[i]))))
        dg = tp.DependencyGraph().build_dependency(model, example_inputs=x[:1], verbose=False)
    del groups
    out: dict[str, float] = {}
    out["tensor_mb_before"] = _tensor_bytes(model, opt) / 2**20
    out["file_mb_before"] = _file_bytes(lambda p: torch.save(model.state_dict(), p)) / 2**20
    out["rss_mb_before"] = _rss() / 2**20
    proc_memory.reset_peak()
    before = proc_memory.status("VmRSS")
    if which == "ours":
        prune_channels(model, trace_groups(model, x[:1]), keep, opt)
    else:
        for m, fn, removed in plan:
            dg.get_pruning_group(m, fn, idxs=removed).prune()
        del dg, plan
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)  # momentum is lost
    out["peak_growth_mb"] = (proc_memory.status("VmHWM") - before) / 2**20
    out["tensor_mb_after"] = _tensor_bytes(model, opt) / 2**20
    out["rss_mb_after"] = _rss() / 2**20
    out["file_mb_after"] = _file_bytes(
        (lambda p: save_pruned(model, p)) if which == "ours" else (lambda p: torch.save(model.state_dict(), p))
    ) / 2**20
    out["params_after"] = float(sum(p.numel() for p in model.parameters()))
    return out


def _measure_subprocess(which: str) -> dict[str, float]:
    return proc_memory.in_fresh_process("bench_memory", "_measure", which)


@pytest.mark.skipif(not proc_memory.AVAILABLE, reason="needs Linux /proc")
def test_memory_report() -> None:
    pytest.importorskip("torch_pruning")
    ours, tp = _measure_subprocess("ours"), _measure_subprocess("tp")
    assert ours["params_after"] == tp["params_after"]  # the same pruned network
    assert ours["tensor_mb_after"] < 0.4 * ours["tensor_mb_before"]
    rows = [
        ("model + grads + optimizer state (MB)", "tensor_mb"),
        ("resident set size (MB)", "rss_mb"),
        ("saved model file (MB)", "file_mb"),
    ]
    lines = ["", "ResNet-50, half the channels of every group pruned (CPU, fp32, SGD momentum, grads present)",
             f"{'':38s}{'oneprune_ext':>22s}{'Torch-Pruning':>22s}",
             f"{'':38s}{'before -> after':>22s}{'before -> after':>22s}"]
    for label, key in rows:
        a = f"{ours[key + '_before']:.1f} -> {ours[key + '_after']:.1f}"
        b = f"{tp[key + '_before']:.1f} -> {tp[key + '_after']:.1f}"
        lines.append(f"{label:38s}{a:>22s}{b:>22s}")
    lines.append(f"{'peak RSS growth during the prune (MB)':38s}{ours['peak_growth_mb']:22.1f}{tp['peak_growth_mb']:22.1f}")
    lines.append("(Torch-Pruning: the optimizer is rebuilt after the prune, its momentum is lost)")
    print("\n".join(lines))



def _prune_once(release: bool) -> float:
    torch.manual_seed(0)
    model = torchvision.models.resnet50(weights=None).eval()
    groups = trace_groups(model, torch.randn(1, 3, 224, 224))
    keep = _keep(groups)
    real = compact._release
    if not release:
        compact._release = lambda jobs, views: None  # the dense storages stay
    try:
        gc.collect()
        t0 = time.perf_counter()
        prune_channels(model, groups, keep)
        return time.perf_counter() - t0
    finally:
        compact._release = real


def test_release_cost() -> None:
    """prune_channels of ResNet-50 with and without the release, alternating, 9 rounds each (median)."""
    _prune_once(True)  # warm-up
    times: dict[bool, list[float]] = {True: [], False: []}
    for _ in range(9):
        for release in (False, True):
            times[release].append(_prune_once(release))
    w, wo = statistics.median(times[True]), statistics.median(times[False])
    print(f"\nprune_channels, ResNet-50, half of every group (median of 9, alternating): {w:.3f} s with the "
          f"release, {wo:.3f} s without ({w / wo:.2f}x)")
