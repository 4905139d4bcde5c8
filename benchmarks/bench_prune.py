"""Tracing and physical pruning: oneprune_ext vs Torch-Pruning, same run.

Run::

    .venv/bin/python -m pytest benchmarks/bench_prune.py -q -s --benchmark-columns=min,median,max

What is timed (CPU, fp32, torchvision models, random init, input 1x3x224x224):

* tracing: ``trace_groups`` vs Torch-Pruning's ``DependencyGraph().build_dependency`` on
  ResNet-50, EfficientNet-B0 and ViT-B/16 (both include one forward pass of the model);
* pruning (ResNet-50): ``prune_channels`` (in place, same Parameters) vs, for the very same keep
  sets (half of every group, chosen at random), Torch-Pruning's
  ``DG.get_pruning_group(producer, prune_*_out_channels, idxs).prune()`` for each group.
  The tracing / dependency graph is built in the (untimed) setup of every round.

Peak memory: each pruning runs in a fresh subprocess; the peak resident set size
during the prune (``VmHWM`` after resetting it through ``/proc/self/clear_refs``)
minus the resident size just before it.

The last test prints the side-by-side table with the ratios; Torch-Pruning is a
benchmark-only dependency (skipped when it is not installed).
"""

from __future__ import annotations

import random
from typing import Any

import pytest
import torch
import torchvision

from oneprune_ext.pruning.compaction import prune_channels
from oneprune_ext.graph.trace import trace_groups

import proc_memory

tp = pytest.importorskip("torch_pruning")

INPUT = (1, 3, 224, 224)
ROUNDS = 5
_results: dict[str, float] = {}


TRACED = {"resnet50": 37, "efficientnet_b0": 40, "vit_b_16": 13}  # model -> groups we find


def _model(name: str = "resnet50") -> torch.nn.Module:
    torch.manual_seed(0)
    return getattr(torchvision.models, name)(weights=None).eval()


def _keep(groups: Any, seed: int = 0) -> dict[int, list[int]]:
    rng = random.Random(seed)
    return {i: sorted(rng.sample(range(g.size), g.size // 2)) for i, g in enumerate(groups)}


def _prune_ours(model: torch.nn.Module, groups: Any, keep: dict[int, list[int]]) -> None:
    prune_channels(model, groups, keep)


def _tp_plan(model: torch.nn.Module, groups: Any, keep: dict[int, list[int]]) -> list[tuple[Any, Any, list[int]]]:
    """Torch-Pruning calls for the same keep sets: (module, pruning fn, removed idxs) per group."""
    mods = dict(model.named_modules())
    plan = []
    for i, g in enumerate(groups):
        m = mods[g.name]
        fn = tp.prune_conv_out_channels if isinstance(m, torch.nn.Conv2d) else tp.prune_linear_out_channels
        removed = sorted(set(range(g.size)) - set(keep[i]))
        plan.append((m, fn, removed))
    return plan


def _prune_tp(dg: Any, plan: list[tuple[Any, Any, list[int]]]) -> None:
    for m, fn, removed in plan:
        dg.get_pruning_group(m, fn, idxs=removed).prune()


def _store(name: str, benchmark: Any) -> None:
    _results[name] = float(benchmark.stats.stats.median)


@pytest.mark.parametrize("name", list(TRACED))
def test_trace_ours(benchmark: Any, name: str) -> None:
    model, x = _model(name), torch.randn(*INPUT)
    groups = benchmark.pedantic(trace_groups, args=(model, x), rounds=ROUNDS, warmup_rounds=1)
    assert len(groups) == TRACED[name]
    _store(f"trace_ours/{name}", benchmark)
    assert _results[f"trace_ours/{name}"] < 10.0


@pytest.mark.parametrize("name", list(TRACED))
def test_trace_torch_pruning(benchmark: Any, name: str) -> None:
    model, x = _model(name), torch.randn(*INPUT)

    def build() -> Any:
        return tp.DependencyGraph().build_dependency(model, example_inputs=x, verbose=False)

    benchmark.pedantic(build, rounds=ROUNDS, warmup_rounds=1)
    _store(f"trace_tp/{name}", benchmark)


def test_prune_ours(benchmark: Any) -> None:
    x = torch.randn(*INPUT)

    def setup() -> tuple[tuple, dict]:
        model = _model()
        groups = trace_groups(model, x)
        return (model, groups, _keep(groups)), {}

    benchmark.pedantic(_prune_ours, setup=setup, rounds=ROUNDS)
    _store("prune_ours", benchmark)


def test_prune_torch_pruning(benchmark: Any) -> None:
    x = torch.randn(*INPUT)

    def setup() -> tuple[tuple, dict]:
        model = _model()
        groups = trace_groups(model, x)
        plan = _tp_plan(model, groups, _keep(groups))
        dg = tp.DependencyGraph().build_dependency(model, example_inputs=x, verbose=False)
        return (dg, plan), {}

    benchmark.pedantic(_prune_tp, setup=setup, rounds=ROUNDS)
    _store("prune_tp", benchmark)


def test_same_result() -> None:
    """Both prunes give the same parameter shapes and values for the same keep sets."""
    x = torch.randn(*INPUT)
    a, b = _model(), _model()
    ga = trace_groups(a, x)
    keep = _keep(ga)
    prune_channels(a, ga, keep)
    plan = _tp_plan(b, trace_groups(b, x), keep)
    _prune_tp(tp.DependencyGraph().build_dependency(b, example_inputs=x, verbose=False), plan)
    for (n, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.equal(p, q), n


# ---------------------------------------------------------------------------------
# peak memory, each in a fresh process
# ---------------------------------------------------------------------------------

def _measure(which: str) -> dict[str, float]:
    x = torch.randn(*INPUT)
    model = _model()
    groups = trace_groups(model, x)
    keep = _keep(groups)
    if which == "ours":
        def run() -> None:
            _prune_ours(model, groups, keep)
    else:
        plan = _tp_plan(model, groups, keep)
        dg = tp.DependencyGraph().build_dependency(model, example_inputs=x, verbose=False)

        def run() -> None:
            _prune_tp(dg, plan)
    import gc
    gc.collect()
    proc_memory.reset_peak()
    before = proc_memory.status("VmRSS")
    run()
    peak = proc_memory.status("VmHWM")
    return {"peak_delta_mb": (peak - before) / 2**20, "rss_before_mb": before / 2**20}


def _measure_subprocess(which: str) -> dict[str, float] | None:
    if not proc_memory.AVAILABLE:
        return None
    return proc_memory.in_fresh_process("bench_prune", "_measure", which)


def test_report() -> None:
    mem = {w: _measure_subprocess(w) for w in ("ours", "tp")}
    r = _results
    lines = ["", "torchvision, 224x224, CPU -- median seconds",
             f"{'':34s}{'oneprune_ext':>14s}{'Torch-Pruning':>15s}{'TP / ours':>11s}"]
    for name in TRACED:
        a, b = r.get(f"trace_ours/{name}"), r.get(f"trace_tp/{name}")
        if a is not None and b is not None:
            lines.append(f"{'trace / dep. graph ' + name:34s}{a:14.3f}{b:15.3f}{b / a:10.2f}x")
    if "prune_ours" in r and "prune_tp" in r:
        lines.append(f"{'prune 50% of every group resnet50':34s}{r['prune_ours']:14.3f}{r['prune_tp']:15.3f}"
                     f"{r['prune_tp'] / r['prune_ours']:10.2f}x")
    if mem["ours"] and mem["tp"]:
        lines.append(f"{'peak RSS growth in prune MB':34s}{mem['ours']['peak_delta_mb']:14.1f}"
                     f"{mem['tp']['peak_delta_mb']:15.1f}"
                     f"{mem['tp']['peak_delta_mb'] / max(mem['ours']['peak_delta_mb'], 1e-3):10.2f}x")
    print("\n".join(lines))
