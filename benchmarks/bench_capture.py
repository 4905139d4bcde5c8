"""Detectors torch.fx cannot trace, side by side with Torch-Pruning 1.6.1: groups, channels, time.

Run (slow: minutes per model on a 2-core CPU)::

    .venv/bin/python benchmarks/bench_capture.py [model ...]      # default: every model
    .venv/bin/python -m pytest benchmarks/bench_capture.py -q -s   # the same, as a test

Models: torchvision's detectors and ultralytics' YOLOv8n / YOLO11n at the small inputs of
``python_tests/_detection_cases.py``.  Ours: ``trace_report`` (the executed-forward capture),
the cost model, ``prune_channels`` of a random half of every group, then the checks (masked
dense model, MACs equal to ``FlopCounterMode`` on the pruned model, a train-mode backward).
Torch-Pruning: ``DependencyGraph.build_dependency`` + ``get_all_groups`` (conv / linear roots)
as its trace, and pruning half of every group as it yields them as its prune.  Traces are timed
``ONEPRUNE_BENCH_REPEATS`` times (default 3) on each side and the fastest counts (the machine is
shared).  Torch-Pruning runs in a
child process with a time limit (``ONEPRUNE_TP_SECONDS``, default 600) and an 8 GB
address-space limit, since it runs out of memory or time on some of these models.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import resource
import sys
import time
import warnings
from typing import Any

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "python_tests"))

import _detection_cases as dc  # noqa: E402


REPEATS = int(os.environ.get("ONEPRUNE_BENCH_REPEATS", "3"))  # traces timed per side (the fastest counts)


def ours(name: str) -> dict[str, Any]:
    import copy

    import torch

    from oneprune_ext.graph import CostModel, trace_report
    from oneprune_ext.pruning import prune_channels

    model, inputs = dc.build(name)
    times = []
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        report = trace_report(model, inputs)
        times.append(time.perf_counter() - t0)
    t1 = time.perf_counter()
    cost = CostModel(model, report.groups, inputs)
    t2 = time.perf_counter()
    keep = dc.random_half(report.groups, 0)
    ref = copy.deepcopy(model)
    dc.zero_removed(ref, report.groups, keep)
    predicted = cost.macs([len(keep[i]) for i in range(len(report.groups))])
    t3 = time.perf_counter()
    prune_channels(model, report.groups, keep)
    t4 = time.perf_counter()
    with torch.no_grad():
        err = dc.output_error(dc.compared_outputs(name, model, inputs), dc.compared_outputs(name, ref, inputs),
                              dc.shape_only(name))
    counted = dc.counted_macs(model, inputs)
    try:
        dc.backward(name, model, inputs)
        backward = "ok"
    except Exception as e:  # noqa: BLE001 - reported in the table
        backward = f"{type(e).__name__}: {e}"[:80]
    return dict(groups=len(report.groups), channels=report.groups.num_channels, trace_s=min(times),
                cost_s=t2 - t1, prune_s=t4 - t3, error=err, macs_exact=predicted == counted,
                dense_macs=cost.dense_macs, backward=backward, frozen=report.frozen_groups())


def _torch_pruning(name: str, queue: Any) -> None:
    limit = 8 << 30
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    warnings.simplefilter("ignore")
    import torch
    import torch_pruning as tp

    model, inputs = dc.build(name)
    times = []
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        dg = tp.DependencyGraph().build_dependency(model, example_inputs=inputs)
        groups = list(dg.get_all_groups(root_module_types=[torch.nn.Conv2d, torch.nn.Linear]))
        times.append(time.perf_counter() - t0)
        channels = sum(len(g[0].idxs) for g in groups)
        queue.put(dict(groups=len(groups), channels=channels, trace_s=min(times)))
    t1 = min(times)
    t2 = time.perf_counter()
    for g in dg.get_all_groups(root_module_types=[torch.nn.Conv2d, torch.nn.Linear]):
        n = len(g[0].idxs)
        g.prune(idxs=list(range(0, n, 2))) if n > 1 else None
    queue.put(dict(groups=len(groups), channels=channels, trace_s=t1, prune_s=time.perf_counter() - t2))


def torch_pruning(name: str, seconds: float) -> dict[str, Any]:
    ctx = mp.get_context("spawn")  # a forked child of a process with OpenMP threads can hang
    queue = ctx.Queue()
    p = ctx.Process(target=_torch_pruning, args=(name, queue))
    p.start()
    p.join(seconds)
    if p.is_alive():
        p.kill()
        p.join()
    out: dict[str, Any] = {}
    while not queue.empty():
        out = queue.get()
    if not out:
        out["failed"] = f"no result (exit code {p.exitcode}; time limit {seconds:.0f} s, 8 GB memory limit)"
    elif "prune_s" not in out:
        out["prune_failed"] = f"pruning did not finish (exit code {p.exitcode})"
    return out


def row(name: str) -> dict[str, Any]:
    seconds = float(os.environ.get("ONEPRUNE_TP_SECONDS", "600"))
    return dict(model=name, ours=ours(name), tp=torch_pruning(name, seconds))


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| model | groups (TP) | channels (TP) | trace s (TP) | prune s (TP) | masked rel. error | MACs exact | backward |",
             "| --- | ---: | ---: | ---: | ---: | ---: | --- | --- |"]
    for r in rows:
        o, t = r["ours"], r["tp"]
        tp_g = t.get("groups", "-")
        tp_c = t.get("channels", "-")
        tp_t = f"{t['trace_s']:.2f}" if "trace_s" in t else "did not finish"
        tp_p = f"{t['prune_s']:.2f}" if "prune_s" in t else "-"
        lines.append(f"| {r['model']} | {o['groups']} ({tp_g}) | {o['channels']} ({tp_c}) | {o['trace_s']:.2f} ({tp_t}) "
                     f"| {o['prune_s']:.2f} ({tp_p}) | {o['error']:.1e} | {'yes' if o['macs_exact'] else 'NO'} "
                     f"| {o['backward']} |")
    return "\n".join(lines)


def test_detectors() -> None:
    import pytest

    pytest.importorskip("torch_pruning")
    rows = [row(n) for n in dc.ALL]
    print("\n" + table(rows))
    for r in rows:
        assert r["ours"]["error"] < 1e-4 and r["ours"]["macs_exact"] and r["ours"]["backward"] == "ok", r


if __name__ == "__main__":
    names = sys.argv[1:] or dc.ALL
    rows = []
    for n in names:
        rows.append(row(n))
        print(json.dumps(rows[-1], default=str), flush=True)
    print(table(rows))
