"""What one-cycle pruning costs on your model and batch shape, measured (``oneprune profile``).

Example (CPU; ``--device cuda`` on a GPU)::

    oneprune profile --model resnet56 --batch 128
    oneprune profile --model resnet50 --input 3x224x224 --batch 32 --steps 5 --trace resnet50.json

On one model, one random batch (fixed seed) and one SGD optimizer (momentum 0.9, Nesterov,
wd 5e-4), in one process, it times in this order:

1. ``plain``: ``--steps`` training steps (forward, cross-entropy, backward, ``optimizer.step``)
   without the pruner, after ``--warmup`` untimed ones;
2. ``monitoring``: the same steps with the hooks of an epoch in the monitoring phase (the
   sub-network is searched at the epoch start; the step hooks have nothing to do);
3. for each regularizer (``shrink``, ``group_lasso``, ``both``): the same steps in the
   sparsity-learning phase with that regularizer, first with the pruner's fused hooks, then
   with the published method's per-layer loop (:mod:`oneprune_ext.tools.per_layer_loop`) doing the
   same work on the same channels in the same places of the step;
4. ``search``: every sub-network search above (``epoch_start``), median;
5. ``prune``: one physical prune (``epoch_end`` at ``sl_end``: compaction of the model and the
   optimizer state, layout rebuild), then the same steps on the pruned model.

Per phase it reports the median step time, the bookkeeping per step (the time inside
``before_step`` + ``after_step``, or inside the per-layer loop's two calls) and that
bookkeeping as a percentage of the plain step. On the CPU the bookkeeping is host time. On
CUDA it is also timed on the device with CUDA events (the percentage then uses the device
time) and every timed step ends with a synchronisation, so step times are device-complete.

``--trace out.json`` afterwards runs a short one-cycle schedule under ``torch.profiler`` on a
copy of the dense model (two plain steps, the pruner's construction, a monitoring epoch, a
sparsity-learning epoch and the prune, each epoch with two steps, then two steps of the pruned
model) and writes a Chrome trace (open it in ``chrome://tracing`` or https://ui.perfetto.dev);
the pruner's work appears as ``oneprune::*`` ranges, the schedule as ``oneprune_profile::*``.
``--save pruned.pt`` keeps the pruned model (random weights) for ``oneprune eval``'s latency.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..pruning import profiling
from ..pruning.config import REGULARIZERS, PrunerConfig

__all__ = ["PhaseTiming", "ProfileResult", "profile_overhead", "parse_shape"]


@dataclass
class PhaseTiming:
    """One row of the profile.

    Attributes:
        name: ``plain``, ``monitoring``, ``sparsity/<regularizer>``, ``per_layer/<regularizer>``
            or ``pruned``.
        label: the row's description.
        step_ms: median wall milliseconds of one whole training step, bookkeeping included.
        host_ms: median host milliseconds of the bookkeeping per step (None for plain steps).
        device_ms: median device milliseconds of the bookkeeping per step (CUDA only).
        overhead_pct: bookkeeping per step as a % of the plain step (device time on CUDA).
    """

    name: str
    label: str
    step_ms: float
    host_ms: Optional[float] = None
    device_ms: Optional[float] = None
    overhead_pct: Optional[float] = None


@dataclass
class ProfileResult:
    """What ``oneprune profile`` measured (times in milliseconds unless named otherwise)."""

    model: str
    device: str
    input_shape: tuple[int, ...]
    batch: int
    steps: int
    threads: int
    plain_step_ms: float
    phases: list[PhaseTiming] = field(default_factory=list)
    search_ms: float = math.nan
    searches: int = 0
    prune_ms: float = math.nan
    init_seconds: float = math.nan
    dense_macs: int = 0
    pruned_macs: int = 0
    target: str = "macs"
    reduction: float = 0.5
    achieved_reduction: float = 0.0
    trace: Optional[str] = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict of every field."""
        return dataclasses.asdict(self)

    def table(self) -> str:
        """The human-readable report: header lines and a Markdown table."""
        shape = "x".join(str(s) for s in self.input_shape)
        dev = self.device == "cuda" or self.device.startswith("cuda:")
        head = [
            f"oneprune profile: {self.model}, input {shape}, batch {self.batch}, {self.device}"
            + ("" if dev else f" ({self.threads} thread{'s' if self.threads != 1 else ''})")
            + f", median of {self.steps} steps per phase",
            f"pruner set-up (trace, cost model, layout): {self.init_seconds:.2f} s; MACs per sample "
            f"{self.dense_macs / 1e6:.2f} M dense -> {self.pruned_macs / 1e6:.2f} M pruned "
            f"(-{100 * self.achieved_reduction:.1f} % {'MACs' if self.target == 'macs' else 'params'}, "
            f"target -{100 * self.reduction:.0f} %)",
            "",
        ]
        cols = ["phase", "step (ms)", "bookkeeping host (ms/step)"]
        if dev:
            cols.append("bookkeeping device (ms/step)")
        cols.append("% of a plain step")
        rows = ["| " + " | ".join(cols) + " |", "| --- | " + " | ".join("---:" for _ in cols[1:]) + " |"]

        def f(v: Optional[float], fmt: str) -> str:
            return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, fmt)
        for p in self.phases:
            cells = [p.label, f(p.step_ms, ".1f"), f(p.host_ms, ".3f")]
            if dev:
                cells.append(f(p.device_ms, ".3f"))
            cells.append("-" if p.overhead_pct is None else f"{p.overhead_pct:.2f} %")
            rows.append("| " + " | ".join(cells) + " |")
        tail = [
            "",
            f"search (epoch_start: saliency kernel, selection, stability): {self.search_ms:.2f} ms "
            f"(median of {self.searches}), once per epoch",
            f"prune (epoch_end at sl_end: compaction of model and optimizer state, layout rebuild): "
            f"{self.prune_ms:.1f} ms, once per run",
        ]
        if self.trace:
            tail.append(f"Chrome trace: {self.trace}")
        return "\n".join(head + rows + tail)


# ----------------------------------------------------------------------------------- timing


class _Clock:
    """Wall time of whole steps; the bookkeeping calls in them timed the way the pruner times its own
    hooks (:func:`oneprune_ext.pruning.profiling.timed` into a :class:`~oneprune_ext.pruning.profiling.HookClock`:
    host seconds, and CUDA events on the device of ``probe``)."""

    def __init__(self, probe: torch.Tensor) -> None:
        self.device = probe.device
        self.cuda = self.device.type == "cuda"
        self.hooks = profiling.HookClock(("bookkeeping",), probe)
        self._taken = (0.0, 0.0)

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def wrap(self, fn: Optional[Callable[[], Any]]) -> Optional[Callable[[], Any]]:
        """``fn`` timed under ``bookkeeping``."""
        return None if fn is None else profiling.timed(fn, self.hooks, "bookkeeping")

    def take(self) -> tuple[float, Optional[float]]:
        """Host and device milliseconds since the last call (call it after a sync)."""
        stats = self.hooks.stats()
        now = (stats["bookkeeping"], stats.get("bookkeeping_device", 0.0))
        host, device = ((a - b) * 1e3 for a, b in zip(now, self._taken))
        self._taken = now
        return host, (device if self.cuda else None)


def _median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs)) if xs else math.nan


class _Stepper:
    """Training steps of one model on one batch, with optional bookkeeping around ``optimizer.step``."""

    def __init__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, optimizer: torch.optim.Optimizer,
                 clock: _Clock) -> None:
        self.model, self.x, self.y, self.opt, self.clock = model, x, y, optimizer, clock

    def step(self, pre: Optional[Callable[[], None]] = None, post: Optional[Callable[[], None]] = None) -> None:
        self.opt.zero_grad(set_to_none=True)
        F.cross_entropy(self.model(self.x), self.y).backward()
        if pre is not None:
            pre()
        self.opt.step()
        if post is not None:
            post()

    def run(self, n: int, pre: Optional[Callable[[], Any]] = None,
            post: Optional[Callable[[], Any]] = None) -> tuple[list[float], list[float], list[float]]:
        """``n`` timed steps: per step wall ms, bookkeeping host ms, bookkeeping device ms (CUDA)."""
        pre_t, post_t = self.clock.wrap(pre), self.clock.wrap(post)
        steps, host, device = [], [], []
        for _ in range(n):
            self.clock.sync()
            t0 = time.perf_counter()
            self.step(pre_t, post_t)
            self.clock.sync()
            steps.append((time.perf_counter() - t0) * 1e3)
            h, d = self.clock.take()
            host.append(h)
            if d is not None:
                device.append(d)
        return steps, host, device


def parse_shape(text: str) -> tuple[int, ...]:
    """``"3x224x224"`` (or ``"3,224,224"``) -> ``(3, 224, 224)``; every entry a positive int."""
    parts = text.lower().replace(",", "x").split("x")
    try:
        dims = tuple(int(p) for p in parts)
    except ValueError:
        raise ValueError(f"--input must look like 3x224x224 (channels x height x width), got {text!r}") from None
    if not dims or any(d < 1 for d in dims):
        raise ValueError(f"--input entries must be positive ints, got {text!r}")
    return dims


# ----------------------------------------------------------------------------------- the run


def _pruner_config(base: dict[str, Any], regularizer: str) -> PrunerConfig:
    """Monitoring at epoch 0, sparsity learning at epoch 1, the prune at the end of epoch 2."""
    return PrunerConfig(**dict(base, total_epochs=4, monitor_start=0, sl_start=1, sl_end=2, regularizer=regularizer))


def _phase(name: str, label: str, runs: tuple[list[float], list[float], list[float]], plain_ms: float,
           bookkeeping: bool = True) -> PhaseTiming:
    steps, host, device = runs
    h = _median(host) if bookkeeping else None
    d = _median(device) if bookkeeping and device else None
    cost = d if d is not None else h
    pct = 100.0 * cost / plain_ms if cost is not None and plain_ms > 0 else None
    return PhaseTiming(name, label, _median(steps), h, d, pct)


def profile_overhead(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, *, steps: int = 10,
                     warmup: int = 2, regularizers: Sequence[str] = REGULARIZERS, per_layer: bool = True,
                     options: Optional[dict[str, Any]] = None, trace: Optional[str] = None,
                     trace_regularizer: Optional[str] = None, name: str = "model") -> ProfileResult:
    """Measure the pruning overhead on ``model`` (already on its device) for one batch.

    Args:
        model: the dense network, on the device to profile (it is pruned in place at the end).
        inputs, labels: one training batch on that device (``labels``: int64 class indices).
        steps: timed training steps per phase.
        warmup: untimed plain steps first.
        regularizers: the sparsity-learning modes to time (each with its own pruner).
        per_layer: also time the published per-layer loop for each mode.
        options: :class:`~oneprune_ext.PrunerConfig` options (``reduction``, ``target``, layer
            limits...); the schedule fields are set by the profile.
        trace: write a Chrome trace of a short one-cycle schedule here (see the module docs).
        trace_regularizer: the regularizer of the traced schedule (default: the config default).
        name: the model's name, for the report.

    Returns:
        A :class:`ProfileResult`.
    """
    from .per_layer_loop import LR, REG, per_layer_lasso, per_layer_shrink
    from ..pruning.pruner import OneCyclePruner

    if steps < 1 or warmup < 0:
        raise ValueError(f"steps must be >= 1 and warmup >= 0, got {steps} and {warmup}")
    bad = [r for r in regularizers if r not in REGULARIZERS]
    if bad or not regularizers:
        raise ValueError(f"regularizers must be some of {REGULARIZERS}, got {list(regularizers)}")
    options = dict(options or {})
    device = inputs.device
    clock = _Clock(inputs)
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9, weight_decay=5e-4, nesterov=True)
    stepper = _Stepper(model, inputs, labels, optimizer, clock)
    for _ in range(max(warmup, 1)):  # at least one: the optimizer state exists before anything is timed
        stepper.step()
    dense_copy = copy.deepcopy(model) if trace else None
    plain = stepper.run(steps)
    plain_ms = _median(plain[0])
    result = ProfileResult(model=name, device=str(device), input_shape=tuple(inputs.shape[1:]), batch=int(inputs.shape[0]),
                           steps=steps, threads=torch.get_num_threads(), plain_step_ms=plain_ms,
                           target=str(options.get("target", "macs")),
                           reduction=float(options.get("reduction", PrunerConfig.__dataclass_fields__["reduction"].default)))
    result.phases.append(PhaseTiming("plain", "plain training step", plain_ms))

    searches: list[float] = []

    def timed_search(pruner: Any, epoch: int) -> None:
        clock.sync()
        t0 = time.perf_counter()
        pruner.epoch_start(epoch)
        clock.sync()
        searches.append((time.perf_counter() - t0) * 1e3)

    example = inputs[:1]
    pruners = {}
    for i, mode in enumerate(regularizers):
        t0 = time.perf_counter()
        pruners[mode] = OneCyclePruner(model, example, _pruner_config(options, mode))
        if i == 0:
            result.init_seconds = time.perf_counter() - t0
    first = pruners[regularizers[0]]
    result.dense_macs = first.dense_macs

    # monitoring: the search at the epoch start, then steps whose hooks have nothing to do
    timed_search(first, 0)
    runs = stepper.run(steps, pre=first.before_step, post=lambda: first.after_step(LR))
    first.epoch_end(0, optimizer)
    result.phases.append(_phase("monitoring", "monitoring (search each epoch, hooks idle)", runs, plain_ms))

    for mode in regularizers:
        p = pruners[mode]
        if p is not first:
            timed_search(p, 0)
            p.epoch_end(0, optimizer)
        timed_search(p, 1)  # sparsity learning armed for epoch 1
        runs = stepper.run(steps, pre=p.before_step, post=lambda p=p: p.after_step(LR))
        result.phases.append(_phase(f"sparsity/{mode}", f"sparsity learning, {mode}: fused hooks", runs, plain_ms))
        if per_layer:
            assert p.selection is not None
            masks = p.layout.split(p.selection.removal_mask.to(device))
            groups = p.groups
            lasso = (lambda: per_layer_lasso(model, groups, masks, REG)) if mode in ("group_lasso", "both") else None
            shrink = (lambda: per_layer_shrink(model, groups, masks, 1 - REG * LR)) if mode in ("shrink", "both") else None
            runs = stepper.run(steps, pre=lasso, post=shrink)
            result.phases.append(_phase(f"per_layer/{mode}", f"sparsity learning, {mode}: published per-layer loop",
                                        runs, plain_ms))
        p.epoch_end(1, optimizer)

    # the prune: the last pruner reaches sl_end
    last = pruners[regularizers[-1]]
    timed_search(last, 2)
    clock.sync()
    t0 = time.perf_counter()
    report = last.epoch_end(2, optimizer)
    clock.sync()
    result.prune_ms = (time.perf_counter() - t0) * 1e3
    if not report.pruned_now:  # pragma: no cover - the schedule forces the prune at sl_end
        raise RuntimeError("oneprune profile: the pruner did not prune at sl_end")
    result.pruned_macs = last.macs()
    result.achieved_reduction = 1.0 - (last.macs() / last.dense_macs if result.target == "macs"
                                       else last.params() / last.dense_params)
    result.search_ms, result.searches = _median(searches), len(searches)
    stepper.step()  # first step of the pruned model (allocations of the new shapes), untimed
    pruned = stepper.run(steps)
    result.phases.append(_phase("pruned", "pruned model, plain training step", pruned, plain_ms, bookkeeping=False))

    if trace:
        assert dense_copy is not None
        _trace_schedule(dense_copy, inputs, labels, options, trace_regularizer, trace)
        result.trace = trace
    return result


def _trace_schedule(model: nn.Module, x: torch.Tensor, y: torch.Tensor, options: dict[str, Any],
                    regularizer: Optional[str], path: str) -> None:
    """A short one-cycle schedule on ``model`` under torch.profiler, exported as a Chrome trace."""
    from torch.autograd.profiler import record_function
    from torch.profiler import ProfilerActivity, profile

    from .per_layer_loop import LR
    from ..pruning.pruner import OneCyclePruner

    mode = regularizer or PrunerConfig.__dataclass_fields__["regularizer"].default
    optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9, weight_decay=5e-4, nesterov=True)
    stepper = _Stepper(model, x, y, optimizer, _Clock(x))
    stepper.step()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if x.device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        with record_function("oneprune_profile::plain_steps"):
            stepper.step()
            stepper.step()
        pruner = OneCyclePruner(model, x[:1], _pruner_config(options, mode))
        for epoch, phase in enumerate(("monitoring_epoch", "sparsity_epoch", "prune_epoch")):
            with record_function(f"oneprune_profile::{phase}"):
                pruner.epoch_start(epoch)
                for _ in range(2):
                    stepper.step(pruner.before_step, lambda: pruner.after_step(LR))
                pruner.epoch_end(epoch, optimizer)
        with record_function("oneprune_profile::pruned_steps"):
            stepper.step()
            stepper.step()
        if x.device.type == "cuda":
            torch.cuda.synchronize(x.device)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    prof.export_chrome_trace(path)
