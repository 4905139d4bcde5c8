"""Profiler ranges (``oneprune::*``) and the pruner's host / device seconds per hook (issue 12, items 1-2).

The cost of the ranges while no profiler runs is measured in benchmarks/bench_ranges.py, not here.
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch.profiler import profile

import oneprune_ext as op
from oneprune_ext import models
from oneprune_ext.pruning import profiling

HOOKS = ("epoch_start", "before_step", "after_step", "epoch_end")
PHASES = ("init", "trace", "cost_model", "layout_build", "search", "saliency", "selection", "stability", "prune", "compaction", "layout_rebuild")


def _schedule(device: str = "cpu", epochs: int = 4, steps: int = 2, **opts):
    """A tiny one-cycle run that prunes at the end of epoch 2: (pruner, model)."""
    torch.manual_seed(0)
    model = models.digits_cnn(10, width=4).to(device)
    x = torch.randn(8, 1, 8, 8, device=device)
    y = torch.randint(0, 10, (8,), device=device)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    pruner = op.OneCyclePruner(model, x[:1], total_epochs=epochs, monitor_start=0, sl_start=1, sl_end=2,
                               regularizer="both", **opts)
    for e in range(epochs):
        pruner.epoch_start(e)
        for _ in range(steps):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            pruner.before_step()
            opt.step()
            pruner.after_step(0.1)
        pruner.epoch_end(e, opt)
    return pruner, model


def test_ranges_appear_in_a_profiler_trace(tmp_path) -> None:
    with profile() as prof:
        pruner, _ = _schedule()
    assert pruner.pruned
    path = tmp_path / "trace.json"
    prof.export_chrome_trace(str(path))
    events = json.loads(path.read_text())["traceEvents"]
    names = {e.get("name") for e in events}
    for what in HOOKS + PHASES:
        assert profiling.RANGE_PREFIX + what in names, what
    # the phases of the prune sit inside the prune, which sits inside epoch_end
    spans: dict[str, list] = {}
    for e in events:
        if e.get("ph") == "X" and str(e.get("name")).startswith("oneprune::"):
            spans.setdefault(e["name"], []).append(e)

    def inside(inner: str, outer: str) -> bool:
        (i,) = spans[inner]  # one prune: one span of each of its phases
        return any(o["ts"] <= i["ts"] and i["ts"] + i["dur"] <= o["ts"] + o["dur"] for o in spans[outer])
    assert inside("oneprune::compaction", "oneprune::prune") and inside("oneprune::layout_rebuild", "oneprune::prune")
    assert inside("oneprune::prune", "oneprune::epoch_end")
    assert all(inside(f"oneprune::{p}", "oneprune::init") for p in ("trace", "cost_model", "layout_build"))
    # record_function counts: one range per hook call (4 epochs, 2 steps each)
    per_name = prof.key_averages()
    counts = {e.key: e.count for e in per_name}
    assert counts["oneprune::before_step"] == 8 and counts["oneprune::epoch_start"] == 4
    assert counts["oneprune::search"] == 3  # epochs 0, 1 and 2 searched; 3 is after the prune


def test_no_range_is_opened_without_a_profiler(monkeypatch) -> None:
    assert not profiling.profiler_active()

    def refuse(name, *a, **k):
        raise AssertionError(f"record_function({name!r}) without an active profiler")
    monkeypatch.setattr(profiling, "record_function", refuse)
    pruner, _ = _schedule()  # every hook and phase runs; none may open a range
    assert pruner.pruned
    with profiling.span("anything"):
        pass


@pytest.fixture(scope="module")
def pruned_run():
    return _schedule()


def test_stats_host_seconds_and_no_device_keys_on_cpu(pruned_run) -> None:
    pruner, _ = pruned_run
    stats = pruner.stats
    assert set(stats) == set(HOOKS) | {"total"}
    assert all(v >= 0 for v in stats.values()) and stats["before_step"] > 0
    assert stats["total"] == pytest.approx(sum(stats[h] for h in HOOKS))
    # the hooks stay reachable undecorated (the range benchmark times both) and keep their docs
    assert op.OneCyclePruner.before_step.__wrapped__ is not None
    assert "before ``optimizer.step()``" in op.OneCyclePruner.before_step.__doc__


def test_device_clock_state_round_trip() -> None:
    clock = profiling.DeviceClock(HOOKS, None)
    assert clock.stats() == {}  # nothing timed on a device: no device keys at all
    clock.load({"before_step": 1.0})  # a CPU run's stats: still nothing
    assert clock.stats() == {}
    clock.load({"before_step_device": 0.5, "after_step_device": 0.25})
    stats = clock.stats()
    assert stats["before_step_device"] == 0.5 and stats["epoch_start_device"] == 0.0
    assert stats["total_device"] == 0.75


def test_pruner_state_dict_keeps_device_seconds(pruned_run) -> None:
    pruner, _ = pruned_run
    state = pruner.state_dict()
    state["stats"] = dict(state["stats"], before_step_device=0.125, after_step_device=0.0,
                          epoch_start_device=0.0, epoch_end_device=0.0)
    torch.manual_seed(0)
    fresh_model = models.digits_cnn(10, width=4)
    fresh = op.OneCyclePruner(fresh_model, torch.randn(1, 1, 8, 8), total_epochs=4, monitor_start=0, sl_start=1,
                              sl_end=2, regularizer="both")
    fresh.load_state_dict(state)
    assert fresh.stats["before_step_device"] == 0.125
    assert fresh.stats["before_step"] == pytest.approx(pruner.stats["before_step"])


# ------------------------------------------------------------------------------------------- CUDA

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.cuda
@cuda
def test_device_seconds_per_hook_on_cuda() -> None:
    pruner, _ = _schedule("cuda")
    stats = pruner.stats
    for h in HOOKS:
        assert f"{h}_device" in stats and stats[f"{h}_device"] >= 0.0
    assert stats["before_step_device"] > 0 and stats["after_step_device"] > 0
    assert stats["total_device"] == pytest.approx(sum(stats[f"{h}_device"] for h in HOOKS))
    assert pruner._clock.pending == 0  # epoch_end resolved everything


@pytest.mark.cuda
@cuda
def test_step_hooks_do_not_synchronise_on_cuda() -> None:
    torch.manual_seed(0)
    model = models.digits_cnn(10, width=4).cuda()
    x = torch.randn(8, 1, 8, 8, device="cuda")
    y = torch.randint(0, 10, (8,), device="cuda")
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    pruner = op.OneCyclePruner(model, x[:1], total_epochs=4, monitor_start=0, sl_start=0, sl_end=2,
                               regularizer="both")
    pruner.epoch_start(0)
    for _ in range(3):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        torch.cuda.set_sync_debug_mode("error")  # any synchronising call in a hook raises
        try:
            pruner.before_step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
        opt.step()
        torch.cuda.set_sync_debug_mode("error")
        try:
            pruner.after_step(0.1)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    assert pruner._clock.pending == 7  # epoch_start + two hooks x three steps, not read yet
    pruner.epoch_end(0, opt)
    assert pruner._clock.pending == 0 and pruner.stats["before_step_device"] > 0


@pytest.mark.cuda
@cuda
def test_device_clock_bounded_and_skips_graph_capture() -> None:
    p = torch.zeros(4, device="cuda")
    clock = profiling.DeviceClock(HOOKS, p, max_pending=8)
    for i in range(50):
        tok = clock.start()
        p.add_(1)
        clock.stop("before_step", tok)
        if i % 10 == 9:
            torch.cuda.synchronize()  # the device catches up; later stops resolve what completed
    assert clock.pending <= 20  # bounded, not all 50 pairs
    torch.cuda.synchronize()
    assert clock.stats()["before_step_device"] > 0 and clock.pending == 0
    g = torch.cuda.CUDAGraph()
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):
        with torch.cuda.graph(g):
            assert clock.start() is None  # no events recorded into a captured graph
            p.add_(1)


def test_readme_profiler_block_shows_the_ranges(capsys) -> None:
    import readme_blocks

    (block,) = [b for b in readme_blocks.loop_blocks() if "torch.profiler" in b]
    ns = readme_blocks.namespace()
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        exec(compile(block, "README.md (profiler block)", "exec"), ns)
    finally:
        torch.set_num_threads(n)
    keys = {e.key for e in ns["prof"].key_averages()}
    assert {"oneprune::before_step", "oneprune::after_step", "oneprune::epoch_start", "oneprune::search"} <= keys
    out = capsys.readouterr().out
    assert "oneprune::before_step" in out and "oneprune::search" in out  # the pruner's rows are printed
