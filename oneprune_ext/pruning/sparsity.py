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

``reg="auto"`` (:class:`AutoShrink`) keeps ``S`` on the published curve whatever the number of
epochs, steps per epoch and learning rate: at each sparsity-learning epoch it plans the share of the
curve that epoch covers, spreads it evenly over the epoch's steps (the step count of the previous
epoch, counted by the pruner), and gives every step its ``reg * lr``. Anything the plan could not
apply (an epoch shorter than the last one, a late start) is carried into the next epoch, so by
``sl_end`` a channel that stayed in the removal set got the published total. Everything here is host
arithmetic on Python floats: no device work, no synchronisation.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional

__all__ = ["PUBLISHED_CIFAR", "ShrinkCurve", "AutoShrink", "published_shrink_curve", "schedule_shrink"]

#: The published CIFAR-10 recipe that ``reg="auto"`` follows (batch 128 on 50,000 images: 391 steps
#: per epoch; lr 0.1, x0.2 at 30/60/80/90 % of 300 epochs; reg 1e-4 + 1e-4 per epoch from sl_start
#: 30 to sl_end 110, as this project schedules it: sparsity learning from sl_start with reg0).
PUBLISHED_CIFAR: Mapping[str, Any] = {
    "total_epochs": 300, "steps_per_epoch": 391, "lr": 0.1, "milestones": (0.3, 0.6, 0.8, 0.9), "gamma": 0.2,
    "sl_start": 30, "sl_end": 110, "reg": 1e-4, "reg_delta": 1e-4, "reg_interval": 1,
}


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
        r = reg + reg_delta * ((t - sl_start) // reg_interval)
        s += steps_per_epoch * r * float(lr_at(t))
        out.append(s)
    return out


def published_shrink_curve() -> list[float]:
    """``S`` at the end of each of the 81 sparsity-learning epochs of the published CIFAR-10 recipe."""
    p = PUBLISHED_CIFAR
    steps = sorted(max(1, int(round(m * p["total_epochs"]))) for m in p["milestones"])

    def lr_at(t: int) -> float:
        return p["lr"] * p["gamma"] ** bisect.bisect_right(steps, t)

    return schedule_shrink(sl_start=p["sl_start"], sl_end=p["sl_end"], steps_per_epoch=p["steps_per_epoch"],
                           lr_at=lr_at, reg=p["reg"], reg_delta=p["reg_delta"], reg_interval=p["reg_interval"])


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
#: what that epoch leaves undone is carried into the next one.
DEFAULT_STEPS_PER_EPOCH = 391


class AutoShrink:
    """The ``reg="auto"`` plan: each step's ``reg * lr`` so that ``S`` follows a :class:`ShrinkCurve`.

    Per sparsity-learning epoch ``e`` of the window ``[sl_start, sl_end]`` (``W`` epochs): the target
    at its end is ``curve.at((e - sl_start + 1) / W)``; what is missing to it (``target - applied``)
    is divided evenly over ``steps_per_epoch`` steps; steps past that get nothing. The pruner turns a
    step's amount ``a`` into the shrink factor ``1 - a`` and, for the group-lasso gradient, into
    ``reg = a / lr``.

    Attributes:
        applied: ``S`` handed out so far (sum of every step's amount).
    """

    def __init__(self, curve: Optional[ShrinkCurve] = None) -> None:
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

    def take_step(self) -> float:
        """The amount of the step just taken; advances the plan."""
        if self._left <= 0:
            return 0.0
        self._left -= 1
        self.applied += self._per_step
        return self._per_step

    def stop(self) -> None:
        """No more steps in this epoch's plan (end of the epoch)."""
        self._left = 0

    def state_dict(self) -> dict[str, Any]:
        return {"applied": self.applied, "per_step": self._per_step, "left": self._left}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.applied = float(state.get("applied", 0.0))
        self._per_step = float(state.get("per_step", 0.0))
        self._left = int(state.get("left", 0))

