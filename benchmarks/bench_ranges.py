"""What the ``oneprune::*`` profiler ranges cost while no profiler is active (issue 12, item 1).

Run (part of ``make bench``; prints the table last)::

    .venv/bin/python -m pytest benchmarks/bench_ranges.py -q -s

On the CIFAR ResNet-56 of :mod:`oneprune_ext.training.models` (CPU), with the pruner in the monitoring
phase, where the step hooks have no kernel to launch and their cost is all bookkeeping, each
round times 1000 calls of ``before_step()`` + ``after_step(lr)``:

* ``hooks``: the hooks as shipped (``profiling.hook``: the hook's timing and a range check per
  call, no range opened: no profiler runs);
* ``unranged``: the same decorator with the range left out (``profiling.hook(..., ranges="never")``
  around ``OneCyclePruner.before_step.__wrapped__``): the timing alone;
* ``always_ranged``: the same decorator opening ``torch.profiler.record_function`` on every call
  (``ranges="always"``), what a plain range decorator would cost.

All three keep the hook timing (it lives only in the decorator), so the differences are the ranges'
cost. The table gives microseconds per step (two hook calls) and the difference to ``unranged``.
"""

from __future__ import annotations

from typing import Any, Callable

import pytest
import torch

from oneprune_ext import OneCyclePruner

from oneprune_ext.pruning import profiling
from oneprune_ext.training.models import resnet56

CALLS = 1000
_pruner: dict[str, Any] = {}
_results: dict[str, float] = {}


def _monitoring_pruner() -> OneCyclePruner:
    if "p" not in _pruner:
        torch.manual_seed(0)
        model = resnet56(10)
        p = OneCyclePruner(model, torch.randn(1, 3, 32, 32), total_epochs=10, monitor_start=0, sl_start=5, sl_end=8)
        p.epoch_start(0)  # monitoring: the step hooks only keep time
        _pruner["p"] = p
    return _pruner["p"]


def _calls(kind: str) -> Callable[[], None]:
    p = _monitoring_pruner()
    assert not profiling.profiler_active()
    if kind == "hooks":
        before, after = OneCyclePruner.before_step, OneCyclePruner.after_step
    else:
        ranges = "never" if kind == "unranged" else "always"
        before = profiling.hook("before_step", ranges=ranges)(OneCyclePruner.before_step.__wrapped__)
        after = profiling.hook("after_step", ranges=ranges)(OneCyclePruner.after_step.__wrapped__)

    def run() -> None:
        for _ in range(CALLS):
            before(p)
            after(p, 0.1)
    return run


@pytest.mark.parametrize("kind", ["unranged", "hooks", "always_ranged"])
def test_range_cost(benchmark, kind: str) -> None:
    fn = _calls(kind)
    benchmark.group = "ranges-resnet56-monitoring"
    benchmark.pedantic(fn, rounds=15, iterations=1, warmup_rounds=2)
    _results[kind] = benchmark.stats.stats.median / CALLS


def test_zz_range_table() -> None:
    """Prints microseconds per step (before_step + after_step) and the added cost of the ranges."""
    if "unranged" not in _results:
        pytest.skip("run together with test_range_cost")
    base = _results["unranged"]
    lines = [f"\nCPU, no profiler active; median of 15 rounds of {CALLS} steps (us per step = two hook calls)",
             "| variant | us per step | added vs unranged |", "| --- | ---: | ---: |"]
    for kind in ("unranged", "hooks", "always_ranged"):
        if kind in _results:
            t = _results[kind]
            lines.append(f"| {kind} | {t * 1e6:.2f} | {(t - base) * 1e6:+.2f} us |")
    print("\n".join(lines))
