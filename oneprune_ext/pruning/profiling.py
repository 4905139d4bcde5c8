"""What the pruner shows inside a profile: ``oneprune::<what>`` ranges and device time per hook.

Profiler ranges
    Every hook of :class:`~oneprune_ext.pruning.pruner.OneCyclePruner` and every phase of the prune
    runs inside a :func:`torch.profiler.record_function` range, so ``torch.profiler`` traces,
    TensorBoard's profiler view and Nsight Systems (``torch.autograd.profiler.emit_nvtx``)
    show the pruner inside your own profile:

    ======================  ====================================================================
    range                   what runs inside it
    ======================  ====================================================================
    ``oneprune::init``      building the pruner, made of:
    ``oneprune::trace``     tracing the model into channel groups (the layer registry)
    ``oneprune::cost_model``  the exact MACs / parameter polynomial of the kept counts
    ``oneprune::layout_build``  building the kernels' channel layout (one table)
    ``oneprune::epoch_start``, ``oneprune::before_step``, ``oneprune::after_step``,
    ``oneprune::epoch_end``  the four hooks, whole
    ``oneprune::search``    one sub-network search (in ``epoch_start``), made of:
    ``oneprune::saliency``  the fused per-channel norm / saliency kernel
    ``oneprune::selection`` the closed-form global selection under the layer limits
    ``oneprune::stability`` the stability-indicator update
    ``oneprune::prune``     the physical prune (in ``epoch_end``), made of:
    ``oneprune::compaction``  removing the channels from the modules and the optimizer state
    ``oneprune::layout_rebuild``  rebuilding the kernels' channel layout for the smaller model
    ======================  ====================================================================

    A range is opened only while a profiler is active in the calling thread (``torch.profiler``,
    the autograd profiler, ``emit_nvtx`` / ``emit_itt``); otherwise the check costs about a
    tenth of a microsecond (``benchmarks/bench_ranges.py`` measures it), where an unconditional
    ``record_function`` costs several microseconds per call.

Device time
    On the CPU a hook's host time *is* its cost. On a GPU the hooks only enqueue kernels and
    return, so their host time says little about what they cost the device. For a model on
    CUDA, :class:`DeviceClock` records a CUDA event pair around every hook call on the current
    stream (no synchronisation) and resolves the elapsed times later: all of them at the end
    of each ``epoch_end`` (one event wait there, after the epoch's last step), and the ones
    that have already completed whenever ``pruner.stats`` is read. Device time is the time
    between the two events on the stream, i.e. the kernels the hook launched plus any gap
    the host left in the stream while inside the hook. Nothing is recorded while a CUDA graph
    is being captured.
"""

from __future__ import annotations

import contextlib
import functools
import time
from typing import Any, Callable, Optional, TypeVar

import torch
from torch.autograd.profiler import record_function

__all__ = ["RANGE_PREFIX", "profiler_active", "span", "spanned", "hook", "timed", "HookClock", "DeviceClock"]

#: Every range the pruner opens is named ``RANGE_PREFIX + <what>``.
RANGE_PREFIX = "oneprune::"

_profiler_enabled: Callable[[], bool] = getattr(torch._C._autograd, "_profiler_enabled", lambda: True)
_NO_RANGE = contextlib.nullcontext()
_F = TypeVar("_F", bound=Callable[..., Any])


def profiler_active() -> bool:
    """Whether a PyTorch profiler (torch.profiler, autograd profiler, emit_nvtx) records this thread."""
    return bool(_profiler_enabled())


def span(what: str) -> Any:
    """A context manager: the range ``oneprune::<what>`` while a profiler is active, else nothing."""
    return record_function(RANGE_PREFIX + what) if _profiler_enabled() else _NO_RANGE


def spanned(what: str) -> Callable[[_F], _F]:
    """Decorator: the function runs inside the range ``oneprune::<what>`` (see :func:`span`)."""
    name = RANGE_PREFIX + what

    def deco(fn: _F) -> _F:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if not _profiler_enabled():
                return fn(*args, **kwargs)
            with record_function(name):
                return fn(*args, **kwargs)
        return wrapper  # type: ignore[return-value]
    return deco


_RANGES = ("profiler", "never", "always")


def _call_timed(clock: "HookClock", what: str, name: str, ranges: str, fn: Callable[..., Any],
                args: tuple, kwargs: dict) -> Any:
    """``fn(*args, **kwargs)`` with its host seconds (and, on CUDA, an event pair) into ``clock[what]``,
    inside the range ``name`` as ``ranges`` says."""
    rf = None
    if ranges == "always" or (ranges == "profiler" and _profiler_enabled()):
        rf = record_function(name)
        rf.__enter__()
    token = clock.device.start() if clock.on_cuda() else None
    t0 = time.perf_counter()
    try:
        return fn(*args, **kwargs)
    finally:
        clock.host[what] += time.perf_counter() - t0
        if token is not None:
            clock.device.stop(what, token)
        if rf is not None:
            rf.__exit__(None, None, None)


def hook(what: str, ranges: str = "profiler") -> Callable[[_F], _F]:
    """Decorator of a pruner hook method: all of a hook's timing, and its profiler range.

    Each call adds its host seconds to the pruner's :class:`HookClock` (``self._clock``) and, while
    the model is on CUDA, records an event pair on its :class:`DeviceClock`. ``ranges``:
    ``"profiler"`` (default) opens the range ``oneprune::<what>`` only while a profiler is active,
    ``"never"`` / ``"always"`` never / unconditionally (``benchmarks/bench_ranges.py`` compares the
    three). The undecorated method stays reachable as ``__wrapped__``.
    """
    if ranges not in _RANGES:
        raise ValueError(f"hook: ranges must be one of {_RANGES}, got {ranges!r}")
    name = RANGE_PREFIX + what

    def deco(fn: _F) -> _F:
        @functools.wraps(fn)
        def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
            return _call_timed(self._clock, what, name, ranges, fn, (self, *args), kwargs)
        return wrapper  # type: ignore[return-value]
    return deco


def timed(fn: Callable[..., Any], clock: "HookClock", what: str, ranges: str = "never") -> Callable[..., Any]:
    """``fn`` timed into ``clock`` under ``what``, the way :func:`hook` times a pruner hook (used by
    ``oneprune profile`` for the per-layer loop it compares the hooks with)."""
    if ranges not in _RANGES:
        raise ValueError(f"timed: ranges must be one of {_RANGES}, got {ranges!r}")
    name = RANGE_PREFIX + what

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return _call_timed(clock, what, name, ranges, fn, args, kwargs)
    return wrapper


class HookClock:
    """Seconds spent in each hook: host (wall) time always, device time while the model is on CUDA.

    Args:
        hooks: the hook names.
        probe: one of the pruned model's parameters (see :class:`DeviceClock`).

    Attributes:
        host: host seconds per hook.
        device: the :class:`DeviceClock`.
    """

    def __init__(self, hooks: tuple[str, ...], probe: Optional[torch.Tensor]) -> None:
        self.hooks = tuple(hooks)
        self.host: dict[str, float] = {h: 0.0 for h in self.hooks}
        self.device = DeviceClock(self.hooks, probe)

    def on_cuda(self) -> bool:
        probe = self.device.probe
        return probe is not None and probe.is_cuda

    @property
    def pending(self) -> int:
        """Timed calls whose device time is not resolved yet."""
        return self.device.pending

    def stats(self) -> dict[str, float]:
        """Seconds spent in each hook, accumulated (``OneCyclePruner.stats``).

        Host (wall) seconds, keys ``epoch_start``, ``before_step``, ``after_step``, ``epoch_end``
        and ``total`` (their sum): the time the calling thread spent inside the hook. On the CPU
        that is the hook's whole cost; on a GPU the hooks only launch kernels.

        Device seconds, only while the model is on CUDA: ``<hook>_device`` and ``total_device``,
        from a CUDA event pair around each hook call on the current stream (:class:`DeviceClock`).
        The step path never synchronises: the events are read at the end of each ``epoch_end``
        (then the totals are complete) and, for calls already finished on the device, here.
        """
        out = {h: self.host[h] for h in self.hooks}
        out["total"] = sum(out.values())
        out.update(self.device.stats())
        return out

    def saved(self) -> dict[str, float]:
        """What a saved state records: the host seconds per hook and the device ones."""
        return {**{h: self.host[h] for h in self.hooks}, **self.device.stats()}

    def load(self, stats: Any) -> None:
        """Restore :meth:`saved` (hooks missing from ``stats`` count 0)."""
        for h in self.hooks:
            self.host[h] = stats.get(h, 0.0)
        self.device.load(stats)


class DeviceClock:
    """Device seconds per hook from CUDA events, resolved without synchronising the step path.

    Args:
        hooks: the hook names it keeps totals for.
        probe: one of the pruned model's parameters (same object for the whole run, the prune
            edits it in place); the clock times only while it is on a CUDA device.

    Each timed call leaves a (start, end) event pair pending; :meth:`resolve` adds the elapsed
    times of completed pairs to :attr:`seconds` and returns the events to a pool for reuse.
    At most ``max_pending`` pairs wait: beyond that the completed ones are resolved (a
    non-blocking query), so an epoch of any length keeps a bounded number of events.
    """

    def __init__(self, hooks: tuple[str, ...], probe: Optional[torch.Tensor], max_pending: int = 1024) -> None:
        self.hooks = tuple(hooks)
        self.probe = probe
        self.max_pending = int(max_pending)
        self.seconds: dict[str, float] = {h: 0.0 for h in self.hooks}
        self.used = False  # whether anything was ever timed on a device (then stats has device keys)
        self._pending: list[tuple[str, Any, Any, torch.device]] = []
        self._pool: list[Any] = []
        self._pool_device: Optional[torch.device] = None

    # -------------------------------------------------------------- the step path (no sync)
    def _event(self, device: torch.device) -> Any:
        if device != self._pool_device:  # an event belongs to the device it first recorded on
            self._pool, self._pool_device = [], device
        return self._pool.pop() if self._pool else torch.cuda.Event(enable_timing=True)

    def start(self) -> Optional[tuple[Any, Any]]:
        """Record a start event on the current stream of the model's device (None when capturing)."""
        assert self.probe is not None
        device = self.probe.device
        if torch.cuda.is_current_stream_capturing():
            return None
        stream = torch.cuda.current_stream(device)
        ev = self._event(device)
        ev.record(stream)
        return ev, stream

    def stop(self, hook: str, token: tuple[Any, Any]) -> None:
        """Record the end event of ``hook``'s call; ``epoch_end`` resolves everything pending."""
        start, stream = token
        end = self._event(stream.device)
        end.record(stream)
        self._pending.append((hook, start, end, stream.device))
        self.used = True
        if hook == "epoch_end":
            self.resolve(wait=True)
        elif len(self._pending) > self.max_pending:
            self.resolve(wait=False)

    # -------------------------------------------------------------- resolution
    def resolve(self, wait: bool) -> None:
        """Add the elapsed time of pending pairs to :attr:`seconds`, oldest first.

        ``wait=True`` waits for every pending end event (used at ``epoch_end``); ``wait=False``
        stops at the first pair whose end event has not completed yet (no synchronisation).
        """
        done = 0
        for hook, start, end, device in self._pending:
            if wait:
                end.synchronize()
            elif not end.query():
                break
            self.seconds[hook] = self.seconds.get(hook, 0.0) + start.elapsed_time(end) / 1000.0
            if device == self._pool_device:
                self._pool += (start, end)
            done += 1
        del self._pending[:done]

    @property
    def pending(self) -> int:
        """Number of timed hook calls whose device time is not resolved yet."""
        return len(self._pending)

    # -------------------------------------------------------------- reporting and state
    def stats(self) -> dict[str, float]:
        """``<hook>_device`` seconds per hook and ``total_device``; empty when nothing ran on CUDA.

        Resolves the completed pairs first (no synchronisation); calls still running on the
        device are counted once they complete (at the latest at the next ``epoch_end``).
        """
        if self._pending:
            self.resolve(wait=False)
        if not self.used:
            return {}
        out = {f"{h}_device": self.seconds[h] for h in self.hooks}
        out["total_device"] = sum(self.seconds[h] for h in self.hooks)
        return out

    def load(self, stats: Any) -> None:
        """Restore the device totals from a saved ``stats`` dict (keys ``<hook>_device``)."""
        keys = [f"{h}_device" for h in self.hooks]
        if any(k in stats for k in keys):
            self.seconds = {h: float(stats.get(f"{h}_device", 0.0)) for h in self.hooks}
            self.used = True
        self._pending.clear()
