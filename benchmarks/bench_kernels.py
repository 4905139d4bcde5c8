"""The per-step regularizer on real parameter sets: fused ops vs reference vs per-layer loop.

Run (writes the ratio table to stdout and, with --benchmark-json, the raw numbers)::

    .venv/bin/python -m pytest benchmarks/bench_kernels.py -q -s

Parameter sets: torchvision ResNet-50 (ImageNet shapes), the CIFAR ResNet-56 of
``oneprune_ext.training.models`` and torchvision MobileNetV2, random init, fp32, their channel
groups from ``trace_groups``. On a GPU (``cuda`` parametrization) the same on the device.

Each round times one training step's pruning bookkeeping, with half of all channels
chosen for removal:

* ``norms``: per-channel sum of squares + saliency (the per-epoch search input);
* ``step``: norms, group-lasso gradient and the shrink of the chosen channels —
  what one training step of one-cycle pruning adds (regularizer ``"both"``).

Three implementations, side by side in one run:

* ``fused``: :mod:`oneprune_ext.kernels.ops` (a fixed number of launches per op for the whole model);
* ``reference``: :mod:`oneprune_ext.kernels.reference` (vectorised per slice, pure PyTorch);
* ``per_layer``: the published method's loop, re-implemented faithfully: per group, per
  coupled slice, ``index_select`` the chosen channels, reduce, and write back with
  indexed ops (as OCSPruner / Torch-Pruning's group regularizers do).
"""

from __future__ import annotations

from typing import Any, Callable

import pytest
import torch

from oneprune_ext import ops, reference

import workloads
from per_layer_loop import LR, REG, per_layer_norms, per_layer_step

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
MODELS = workloads.models()
_cache: dict[tuple[str, str], Any] = {}
_results: dict[tuple[str, str, str, str], float] = {}


def _setup(name: str, device: str):
    key = (name, device)
    if key not in _cache:
        _cache[key] = workloads.setup(*MODELS[name], device)
    return _cache[key]


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _run(kind: str, what: str, model, groups, layout, mask, device: str) -> Callable[[], None]:
    if kind == "fused":
        mod = ops
    elif kind == "reference":
        mod = reference
    if kind in ("fused", "reference"):
        if what == "norms":
            return lambda: (mod.grouped_norms(layout), _sync(device))
        reg = torch.full((), REG, device=device)
        factor = torch.full((), 1 - REG * LR, device=device)

        def step():
            mod.grouped_norms(layout)
            mod.group_lasso_grad_(layout, mask, reg)
            mod.scale_channels_(layout, mask, factor)
            _sync(device)
        return step
    masks = layout.split(mask)
    if what == "norms":
        return lambda: (per_layer_norms(model, groups), _sync(device))
    return lambda: (per_layer_step(model, groups, masks), _sync(device))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("what", ["norms", "step"])
@pytest.mark.parametrize("kind", ["fused", "reference", "per_layer"])
@pytest.mark.parametrize("model_name", list(MODELS))
def test_regularizer(benchmark, model_name, kind, what, device):
    model, groups, layout, mask = _setup(model_name, device)
    fn = _run(kind, what, model, groups, layout, mask, device)
    benchmark.group = f"{model_name}-{what}-{device}"
    fn()  # warm-up
    benchmark.pedantic(fn, rounds=10 if device == "cpu" else 50, iterations=1, warmup_rounds=1)
    _results[(model_name, what, device, kind)] = benchmark.stats.stats.median


def test_zz_ratio_table(capsys):
    """Prints the side-by-side table (median seconds and speed-up of the fused ops)."""
    if not _results:
        pytest.skip("run together with test_regularizer")
    lines = ["| model | op | device | fused (ms) | reference (ms) | per-layer loop (ms) | vs reference | vs per-layer |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for (m, w, d, k), t in sorted(_results.items()):
        if k != "fused":
            continue
        ref = _results.get((m, w, d, "reference"))
        loop = _results.get((m, w, d, "per_layer"))
        if ref is None or loop is None:
            continue
        lines.append(f"| {m} | {w} | {d} | {t*1e3:.3f} | {ref*1e3:.3f} | {loop*1e3:.3f} | "
                     f"{ref/t:.1f}x | {loop/t:.1f}x |")
    with capsys.disabled():  # shown by a plain `make bench` run too
        print("\n" + "\n".join(lines))
