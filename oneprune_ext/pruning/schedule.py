"""When each part of the one-cycle method runs: :class:`Schedule`.

Per 0-based epoch ``t`` of a run of ``total_epochs`` epochs:

* ``t < monitor_start``: **dense** training;
* ``t >= monitor_start`` until the prune: **monitoring** (the sub-network is searched at the
  epoch's start and the stability indicator updated);
* ``t >= sl_start`` until the prune: **sparsity learning** with strength :func:`scheduled_reg`
  (``sl_start="auto"``: the first epoch ``t > 3`` at which the indicator rose by at most 1e-4
  since ``t - 2``, :func:`~oneprune_ext.pruning.stability.auto_sl_start`);
* the model is **pruned** at the end of the first sparsity-learning epoch whose indicator is
  ``>= stability_threshold``, or of epoch ``sl_end`` at the latest; afterwards: ``"pruned"``.

The schedule also keeps the hooks in order (each ``epoch_start(e)`` matched by one
``epoch_end(e)``, epochs increasing) and refuses an epoch outside the run.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

from .config import PrunerConfig, is_int
from .stability import auto_sl_start

__all__ = ["Schedule", "scheduled_reg"]


def scheduled_reg(epoch: int, *, sl_start: int, reg: float, reg_delta: float, reg_interval: int) -> float:
    """``reg(t) = reg + reg_delta * floor((t - sl_start) / reg_interval)``: the strength of a fixed-``reg``
    schedule on the steps of sparsity-learning epoch ``epoch`` (``>= sl_start``)."""
    return reg + reg_delta * ((epoch - sl_start) // reg_interval)


class Schedule:
    """The phases of one run, the hook order, and when to prune.

    Attributes:
        config: the run's options.
        sl_start: the resolved sparsity-learning start (None while ``"auto"`` has not fired).
        last_start, last_end: the epochs of the latest ``epoch_start`` / ``epoch_end`` (None before).
        prune_epoch: the epoch at whose end the model was pruned (None before).
    """

    def __init__(self, config: PrunerConfig) -> None:
        self.config = config
        self.sl_start: Optional[int] = None if config.sl_start == "auto" else int(config.sl_start)
        self.last_start: Optional[int] = None
        self.last_end: Optional[int] = None
        self.prune_epoch: Optional[int] = None

    # ------------------------------------------------------------------ phases
    @property
    def pruned(self) -> bool:
        return self.prune_epoch is not None

    def monitoring(self, epoch: int) -> bool:
        """Whether ``epoch`` searches the sub-network (from ``monitor_start`` until the prune)."""
        return not self.pruned and epoch >= self.config.monitor_start

    def sparsity_learning(self, epoch: int) -> bool:
        """Whether ``epoch`` is at or after the (resolved) sparsity-learning start."""
        return self.sl_start is not None and epoch >= self.sl_start

    def phase_at(self, epoch: int) -> str:
        """``"dense"``, ``"monitoring"``, ``"sparsity"`` or ``"pruned"`` for ``epoch`` now."""
        if self.pruned and epoch > self.prune_epoch:  # type: ignore[operator]
            return "pruned"
        if self.sparsity_learning(epoch):
            return "sparsity"
        if epoch >= self.config.monitor_start:
            return "monitoring"
        return "dense"

    def reg_at(self, epoch: int) -> float:
        """The fixed-``reg`` strength of ``epoch``'s steps (:func:`scheduled_reg`; 0.0 outside sparsity learning)."""
        if not self.sparsity_learning(epoch) or self.pruned:
            return 0.0
        assert self.sl_start is not None
        c = self.config
        return scheduled_reg(epoch, sl_start=self.sl_start, reg=c.reg, reg_delta=c.reg_delta,  # type: ignore[arg-type]
                             reg_interval=c.reg_interval)

    def start_sparsity_on_plateau(self, epoch: int, psi_history: Sequence[float]) -> None:
        """``sl_start="auto"``: start sparsity learning at ``epoch`` if the indicator plateaued."""
        if self.config.sl_start == "auto" and self.sl_start is None and auto_sl_start(psi_history, epoch):
            self.sl_start = epoch

    def prune_due(self, epoch: int, indicator: float, searched: bool) -> bool:
        """Whether ``epoch_end(epoch)`` prunes: stable in sparsity learning, or ``sl_end`` reached."""
        stable = indicator >= self.config.stability_threshold
        return (not self.pruned and epoch >= self.config.monitor_start and searched
                and ((stable and self.sparsity_learning(epoch)) or epoch >= self.config.sl_end))

    def running(self, epoch: int) -> bool:
        """Whether ``epoch`` was started and not ended yet."""
        return self.last_start == epoch and self.last_end != epoch

    # ------------------------------------------------------------------ hook order
    def check_epoch(self, epoch: Any, hook: str) -> int:
        """``epoch`` as an int in ``[0, total_epochs)``, or a ValueError naming ``hook``."""
        if not is_int(epoch):
            raise ValueError(f"{hook}: epoch must be an int (0-based), got {epoch!r}")
        e = int(epoch)
        if not 0 <= e < self.config.total_epochs:
            raise ValueError(f"{hook}: epoch {e} is outside [0, total_epochs={self.config.total_epochs})")
        return e

    def check_start(self, epoch: Any) -> int:
        """Check that ``epoch_start(epoch)`` may run now (nothing changes)."""
        e = self.check_epoch(epoch, "epoch_start")
        if self.last_end is not None and e <= self.last_end:
            raise ValueError(f"epoch_start: epoch {e} is not after the last finished epoch {self.last_end}")
        if self.last_start is not None and self.last_start != self.last_end:
            s0 = self.last_start
            if e == s0:
                raise ValueError(f"epoch_start({e}) called twice without epoch_end({e})")
            raise ValueError(f"epoch_start({e}): epoch {s0} was started but never ended; call "
                             f"pruner.epoch_end({s0}, optimizer) first (it prunes when epoch {s0} is due)")
        return e

    def check_end(self, epoch: Any) -> int:
        """Check that ``epoch_end(epoch)`` may run now (nothing changes)."""
        e = self.check_epoch(epoch, "epoch_end")
        if not self.running(e):
            raise ValueError(f"epoch_end({e}) without a matching epoch_start({e})")
        return e
