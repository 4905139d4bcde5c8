"""Per-step pruning bookkeeping as a % of a plain SGD training step (CPU), side by side.

Run (part of ``make bench``; prints the table last)::

    .venv/bin/python -m pytest benchmarks/bench_bookkeeping.py -q -s

For CIFAR ResNet-56 (batch 128, 3x32x32) and torchvision ResNet-50 (batch 32, 3x224x224),
random init, fp32, on the CPU with ``ONEPRUNE_BENCH_THREADS`` threads (default 1, for the step
and the bookkeeping alike: a ratio that does not depend on how busy the other cores are):

* ``sgd_step``: a plain training step (forward, cross-entropy, backward, SGD with momentum);
* what one step of sparsity learning adds, for each regularizer mode, with half of all
  channels chosen for removal (fixed seed):

  - ``group_lasso``: the group-lasso gradient of the chosen channels (before ``optimizer.step``);
  - ``shrink``: the shrink of the chosen channels (after it);
  - ``both``: the two;

  each by the fused ops (:mod:`oneprune_ext.kernels.ops`), by the published method's per-layer loop
  (``per_layer_loop.py``: per group, per coupled slice, indexed ops), and, for the gradient
  regularizer, by Torch-Pruning's ``GroupNormPruner.regularize`` (its group-norm gradient
  regularizer over every group of the same model; skipped when Torch-Pruning is missing).

The search input (``grouped_norms``, once per epoch) is not part of a step; it is timed in
``bench_kernels.py``.
"""

from __future__ import annotations

from typing import Any, Callable

import os

import pytest
import torch

from oneprune_ext import ops
from oneprune_ext.training.models import resnet56

import workloads
from per_layer_loop import LR, REG, per_layer_lasso, per_layer_shrink

try:
    import torchvision
except Exception:  # noqa: BLE001
    torchvision = None

MODELS: dict[str, tuple[Callable[[], torch.nn.Module], tuple[int, ...], tuple[int, ...], int]] = {
    # name: (builder, training batch shape, trace input shape, number of classes)
    "resnet56": (lambda: resnet56(10), (128, 3, 32, 32), (1, 3, 32, 32), 10),
}
if torchvision is not None:
    MODELS["resnet50"] = (lambda: torchvision.models.resnet50(weights=None), (32, 3, 224, 224), (1, 3, 64, 64), 1000)
MODES = ["group_lasso", "shrink", "both"]
ROUNDS = {"resnet56": (5, 30), "resnet50": (2, 8)}  # (SGD step rounds, bookkeeping rounds)
THREADS = int(os.environ.get("ONEPRUNE_BENCH_THREADS", "1"))
_cache: dict[str, Any] = {}
_results: dict[tuple[str, str, str], float] = {}  # medians
_mins: dict[tuple[str, str, str], float] = {}


@pytest.fixture(autouse=True, scope="module")
def _threads():
    before = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    yield
    torch.set_num_threads(before)


def _setup(name: str) -> Any:
    if name not in _cache:
        build, _, trace_shape, _ = MODELS[name]
        model, groups, layout, mask = workloads.setup(build, trace_shape, "cpu")
        _cache[name] = (model, groups, layout, mask, layout.split(mask))
    return _cache[name]


def _sgd_step(name: str) -> Callable[[], None]:
    build, batch, _, classes = MODELS[name]
    torch.manual_seed(0)
    model = build().train()
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9)
    x = torch.randn(batch)
    y = torch.randint(0, classes, (batch[0],))

    def step() -> None:
        opt.zero_grad(set_to_none=False)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return step


def _bookkeeping(name: str, mode: str, impl: str) -> Callable[[], None]:
    model, groups, layout, mask, masks = _setup(name)
    if impl == "fused":
        reg = torch.full((), REG)
        factor = torch.full((), 1 - REG * LR)
        lasso = lambda: ops.group_lasso_grad_(layout, mask, reg)  # noqa: E731
        shrink = lambda: ops.scale_channels_(layout, mask, factor)  # noqa: E731
    elif impl == "per_layer":
        lasso = lambda: per_layer_lasso(model, groups, masks)  # noqa: E731
        shrink = lambda: per_layer_shrink(model, groups, masks)  # noqa: E731
    else:  # Torch-Pruning: a gradient regularizer only
        tp = pytest.importorskip("torch_pruning")
        if mode != "group_lasso":
            pytest.skip("Torch-Pruning's GroupNormPruner has no shrink step")
        fc = model.fc
        pruner = tp.pruner.GroupNormPruner(
            model, torch.randn(MODELS[name][2]), importance=tp.importance.GroupMagnitudeImportance(p=2),
            reg=REG, pruning_ratio=0.5, ignored_layers=[fc])
        pruner.update_regularizer()
        return lambda: pruner.regularize(model)
    if mode == "group_lasso":
        return lasso
    if mode == "shrink":
        return shrink
    return lambda: (lasso(), shrink())


@pytest.mark.parametrize("name", list(MODELS))
def test_sgd_step(benchmark, name):
    fn = _sgd_step(name)
    benchmark.group = f"bookkeeping-{name}"
    benchmark.pedantic(fn, rounds=ROUNDS[name][0], iterations=1, warmup_rounds=1)
    _results[(name, "sgd_step", "")] = benchmark.stats.stats.median
    _mins[(name, "sgd_step", "")] = benchmark.stats.stats.min


@pytest.mark.parametrize("impl", ["fused", "per_layer", "torch_pruning"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", list(MODELS))
def test_bookkeeping(benchmark, name, mode, impl):
    fn = _bookkeeping(name, mode, impl)
    benchmark.group = f"bookkeeping-{name}"
    benchmark.pedantic(fn, rounds=ROUNDS[name][1], iterations=1, warmup_rounds=1)
    _results[(name, mode, impl)] = benchmark.stats.stats.median
    _mins[(name, mode, impl)] = benchmark.stats.stats.min


def test_zz_bookkeeping_table(capsys):
    """Prints the per-step bookkeeping as a % of the SGD step, all implementations side by side."""
    if not _results:
        pytest.skip("run together with the tests above")
    lines = [f"\nCPU, {THREADS} thread(s); median ms (min ms), and the median as a % of the median SGD step",
             "| model | regularizer | SGD step (ms) | fused | per-layer loop | Torch-Pruning regularize | "
             "loop / fused |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]

    def cell(key, step):
        t = _results.get(key)
        return "-" if t is None else f"{t * 1e3:.2f} ({_mins[key] * 1e3:.2f}) = {100 * t / step:.3f} %"
    for name in MODELS:
        step = _results.get((name, "sgd_step", ""))
        if step is None:
            continue
        for mode in MODES:
            f, p = _results.get((name, mode, "fused")), _results.get((name, mode, "per_layer"))
            ratio = f"{p / f:.1f}x" if f and p else "-"
            lines.append(f"| {name} | {mode} | {step * 1e3:.0f} ({_mins[(name, 'sgd_step', '')] * 1e3:.0f}) | "
                         f"{cell((name, mode, 'fused'), step)} | {cell((name, mode, 'per_layer'), step)} | "
                         f"{cell((name, mode, 'torch_pruning'), step)} | {ratio} |")
    with capsys.disabled():  # shown by a plain `make bench` run too
        print("\n".join(lines))
