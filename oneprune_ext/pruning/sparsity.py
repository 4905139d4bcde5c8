"""How hard sparsity learning pushes the channels chosen for removal: a fixed ``reg`` or ``reg="auto"``.

With ``regularizer="shrink"`` every optimizer step of sparsity learning multiplies the slices of the
channels chosen for removal by ``1 - reg * lr``. A channel that stays in the removal set is therefore
scaled by ``prod_i (1 - reg_i * lr_i)``, about ``exp(-S)`` with the **shrink**

    ``S = sum_i reg_i * lr_i``  over the sparsity-learning steps it spent in the removal set.

``S`` is what decides whether the prune is gentle: the published CIFAR-10 recipe (391 steps per epoch,
lr 0.1 then 0.02 from epoch 90, ``reg`` 1e-4 growing by 1e-4 per epoch over the 81 epochs 30..110)
reaches ``S = 8.32`` by the end of ``sl_end``, a factor of about 2.4e-4: the prune removes channels
that are already nearly zero. The same ``reg`` numbers on a short schedule shrink far less (45 steps
x 9 epochs of the digits demo: ``S = 0.012``, a factor 0.99), and the prune becomes a blind cut.

A fixed ``reg`` (:class:`ScheduledReg`) gives every step of epoch ``t`` the strength
:func:`~oneprune_ext.pruning.schedule.scheduled_reg` ``(t)``. ``reg="auto"`` (:class:`AutoShrink`)
keeps ``S`` on the published curve (:data:`~oneprune_ext.pruning.recipes.CIFAR10`) whatever the number of
epochs, steps per epoch and learning rate: at each sparsity-learning epoch it plans the share of the
curve that epoch covers, spreads it evenly over the epoch's steps (the step count of the previous
epoch, counted by the pruner), and gives every step its ``reg * lr``. Anything the plan could not
apply (an epoch shorter than the last one, a late start) is carried into the next epoch, so by
``sl_end`` a channel that stayed in the removal set got the published total. Everything here is host
arithmetic on Python floats: no device work, no synchronisation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional, Protocol

from .recipes import CIFAR10
from .schedule import Schedule, scheduled_reg

__all__ = ["ShrinkCurve", "Strength", "ScheduledReg", "AutoShrink", "strength_for",
           "published_shrink_curve", "schedule_shrink"]


def schedule_shrink(
    *, sl_start: int, sl_end: int, steps_per_epoch: int, lr_at: Callable[[int], float], reg: float,
    reg_delta: float, reg_interval: int,
) -> list[float]:
    """Cumulative shrink ``S`` at the end of each epoch ``sl_start..sl_end`` of a fixed-``reg`` schedule.

    Args:
        lr_at: ``lr_at(epoch)``, the learning rate of that epoch's steps.
        reg, reg_delta, reg_interval: ``reg(t) = reg + reg_delta * floor((t - sl_start) / reg_interval)``.
    """
    out, s = [], 0.0
    for t in range(sl_start, sl_end + 1):
        r = scheduled_reg(t, sl_start=sl_start, reg=reg, reg_delta=reg_delta, reg_interval=reg_interval)
        s += steps_per_epoch * r * float(lr_at(t))
        out.append(s)
    return out


def published_shrink_curve() -> list[float]:
    """``S`` at the end of each of the 81 sparsity-learning epochs of the published CIFAR-10 recipe
    (:data:`~oneprune_ext.pruning.recipes.CIFAR10`: 391 steps per epoch, its step schedule, ``reg``
    1e-4 + 1e-4 per epoch from ``sl_start`` 30 to ``sl_end`` 110, as this project schedules it)."""
    r = CIFAR10
    return schedule_shrink(sl_start=int(r.sl_start), sl_end=r.sl_end, steps_per_epoch=r.steps_per_epoch,
                           lr_at=r.lr_at, reg=r.reg, reg_delta=r.reg_delta, reg_interval=r.reg_interval)


@dataclass(frozen=True)
class ShrinkCurve:
    """Cumulative shrink as a function of progress through the sparsity-learning window.

    ``ends[k]`` is ``S`` at the end of the k-th of ``len(ends)`` equal epochs; within an epoch ``S``
    grows linearly (``reg`` and ``lr`` are constant over a published epoch), so :meth:`at` is exact
    linear interpolation.
    """

    ends: tuple[float, ...]

    def __post_init__(self) -> None:
        e = tuple(float(v) for v in self.ends)
        if not e or e[0] < 0 or any(b < a for a, b in zip(e, e[1:])) or not all(map(math.isfinite, e)):
            raise ValueError(f"ShrinkCurve.ends must be finite, >= 0 and non-decreasing, got {self.ends!r}")
        object.__setattr__(self, "ends", e)

    @classmethod
    def published(cls) -> "ShrinkCurve":
        """The published CIFAR-10 curve (``S = 8.32`` at its end)."""
        return cls(tuple(published_shrink_curve()))

    @property
    def total(self) -> float:
        """``S`` at the end of the window."""
        return self.ends[-1]

    def at(self, fraction: float) -> float:
        """``S`` after ``fraction`` (0..1, clipped) of the window."""
        n = len(self.ends)
        x = min(max(float(fraction), 0.0), 1.0) * n
        k = min(int(math.floor(x)), n - 1)
        lo = self.ends[k - 1] if k > 0 else 0.0
        return lo + (self.ends[k] - lo) * (x - k)


#: Steps per epoch assumed for an epoch whose length is not known yet (nothing counted before it);
#: what that epoch leaves undone is carried into the next one (the published CIFAR-10 epoch's 391).
DEFAULT_STEPS_PER_EPOCH = CIFAR10.steps_per_epoch


class Strength(Protocol):
    """How strong sparsity learning is on each step: :class:`ScheduledReg` or :class:`AutoShrink`.

    All host arithmetic on Python floats; the amounts are turned into device values by the
    regularizer's :class:`~oneprune_ext.pruning.regularizers.ArmedChannels`.
    """

    def plan(self, epoch: int, steps_per_epoch: Optional[int], last_lr: Optional[float]) -> tuple[float, float]:
        """At the start of sparsity-learning epoch ``epoch``: the group-lasso ``reg`` of its first
        step and the shrink factor to start from. ``steps_per_epoch``: steps of the last epoch that
        had any (None before); ``last_lr``: the latest learning rate seen (None before)."""
        ...

    def take_step(self, lr: float) -> float:
        """The ``reg * lr`` of the step just taken with learning rate ``lr``."""
        ...

    def next_reg(self, lr: float) -> Optional[float]:
        """The group-lasso ``reg`` of the next step after a step at ``lr``; None: unchanged."""
        ...

    def epoch_reg(self, reg: float, epoch_shrink: float, epoch_lr_sum: float) -> float:
        """At the epoch's end: the strength to report for it (``reg``: the current one)."""
        ...

    def reg_at(self, epoch: int, current: bool, last_lr: Optional[float]) -> float:
        """The strength of ``epoch``'s steps (``current``: it is the epoch now running)."""
        ...

    def state_dict(self) -> Optional[dict[str, Any]]:
        ...

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        ...


class ScheduledReg:
    """A fixed ``reg``: every step of epoch ``t`` has ``reg(t)`` (:meth:`Schedule.reg_at`)."""

    def __init__(self, schedule: Schedule) -> None:
        self.schedule = schedule
        self._reg = 0.0

    def plan(self, epoch: int, steps_per_epoch: Optional[int], last_lr: Optional[float]) -> tuple[float, float]:
        self._reg = self.schedule.reg_at(epoch)
        return self._reg, 1.0

    def take_step(self, lr: float) -> float:
        return self._reg * lr

    def next_reg(self, lr: float) -> Optional[float]:
        return None

    def epoch_reg(self, reg: float, epoch_shrink: float, epoch_lr_sum: float) -> float:
        return reg

    def reg_at(self, epoch: int, current: bool, last_lr: Optional[float]) -> float:
        return self.schedule.reg_at(epoch)

    def state_dict(self) -> None:
        return None

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        return None


class AutoShrink:
    """The ``reg="auto"`` plan: each step's ``reg * lr`` so that ``S`` follows a :class:`ShrinkCurve`.

    Per sparsity-learning epoch ``e`` of the window ``[sl_start, sl_end]`` (``W`` epochs): the target
    at its end is ``curve.at((e - sl_start + 1) / W)``; what is missing to it (``target - applied``)
    is divided evenly over ``steps_per_epoch`` steps; steps past that get nothing. A step's amount
    ``a`` becomes the shrink factor ``1 - a`` and, for the group-lasso gradient, ``reg = a / lr``.

    Args:
        schedule: the run's schedule (``sl_start`` once resolved, ``sl_end``); None for the bare
            planner (:meth:`plan_epoch` only).
        curve: the curve to follow (default: the published CIFAR-10 one).

    Attributes:
        applied: ``S`` handed out so far (sum of every step's amount).
    """

    def __init__(self, schedule: Optional[Schedule] = None, curve: Optional[ShrinkCurve] = None) -> None:
        self.schedule = schedule
        self.curve = curve or ShrinkCurve.published()
        self.applied = 0.0
        self._per_step = 0.0
        self._left = 0

    def plan_epoch(self, epoch: int, sl_start: int, sl_end: int, steps_per_epoch: Optional[int]) -> float:
        """Plan epoch ``epoch``'s steps; returns the amount per step (``reg * lr`` of each)."""
        window = max(1, sl_end - sl_start + 1)
        target = self.curve.at((epoch - sl_start + 1) / window)
        n = int(steps_per_epoch) if steps_per_epoch else DEFAULT_STEPS_PER_EPOCH
        self._per_step = max(0.0, target - self.applied) / n
        self._left = n
        return self._per_step

    @property
    def per_step(self) -> float:
        """The amount the next step gets (0.0 once the epoch's plan is used up)."""
        return self._per_step if self._left > 0 else 0.0

    def take_step(self, lr: float = 0.0) -> float:
        """The amount of the step just taken; advances the plan."""
        if self._left <= 0:
            return 0.0
        self._left -= 1
        self.applied += self._per_step
        return self._per_step

    def stop(self) -> None:
        """No more steps in this epoch's plan (end of the epoch)."""
        self._left = 0

    # ------------------------------------------------------------------ as a Strength
    def plan(self, epoch: int, steps_per_epoch: Optional[int], last_lr: Optional[float]) -> tuple[float, float]:
        assert self.schedule is not None and self.schedule.sl_start is not None
        per_step = self.plan_epoch(epoch, self.schedule.sl_start, self.schedule.config.sl_end, steps_per_epoch)
        return (per_step / last_lr if last_lr else 0.0), 1.0 - per_step

    def next_reg(self, lr: float) -> Optional[float]:
        return self.per_step / lr if lr > 0 else 0.0

    def epoch_reg(self, reg: float, epoch_shrink: float, epoch_lr_sum: float) -> float:
        self.stop()
        return epoch_shrink / epoch_lr_sum if epoch_lr_sum > 0 else reg  # the epoch's shrink over its lrs

    def reg_at(self, epoch: int, current: bool, last_lr: Optional[float]) -> float:
        s = self.schedule
        if s is None or not s.sparsity_learning(epoch) or s.pruned or not current or not last_lr:
            return 0.0
        return self.per_step / last_lr

    def state_dict(self) -> dict[str, Any]:
        return {"applied": self.applied, "per_step": self._per_step, "left": self._left}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.applied = float(state.get("applied", 0.0))
        self._per_step = float(state.get("per_step", 0.0))
        self._left = int(state.get("left", 0))


def strength_for(schedule: Schedule) -> Strength:
    """:class:`AutoShrink` for ``reg="auto"``, else :class:`ScheduledReg`."""
    return AutoShrink(schedule) if schedule.config.reg == "auto" else ScheduledReg(schedule)
