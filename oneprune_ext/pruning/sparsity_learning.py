"""The step path of sparsity learning: :class:`SparsityLearning`.

At the start of each sparsity-learning epoch the pruner *arms* it with the channels the search chose
for removal: the :class:`~oneprune_ext.pruning.sparsity.Strength` plans the epoch's strength and the
:class:`~oneprune_ext.pruning.regularizers.Regularizer`'s device values are set once. Every optimizer
step then runs the regularizer around ``optimizer.step()`` and counts the step in a
:class:`StepLedger` (host floats and ints only: nothing on the step path synchronises). :meth:`reset`
is the one place that clears the step state of an epoch.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Optional

import torch

from .config import is_real
from .regularizers import ArmedChannels, Regularizer, found_inf
from .sparsity import Strength

__all__ = ["SparsityLearning", "StepLedger"]


class StepLedger:
    """Host-side count of the optimizer steps and of the shrink.

    Attributes:
        steps_now: ``after_step`` calls in the current epoch.
        steps_per_epoch: ``after_step`` calls in the last epoch that had any (None before).
        last_lr: the learning rate of the latest ``after_step`` (None before).
        shrink_total: ``S``, the sum of ``reg * lr`` over every sparsity-learning step.
        epoch_shrink, epoch_lr_sum: this epoch's share of ``S`` and the sum of its learning rates.
    """

    def __init__(self) -> None:
        self.steps_now = 0
        self.steps_per_epoch: Optional[int] = None
        self.last_lr: Optional[float] = None
        self.shrink_total = 0.0
        self.epoch_shrink = 0.0
        self.epoch_lr_sum = 0.0

    def new_epoch(self) -> None:
        self.steps_now = 0
        self.epoch_shrink = self.epoch_lr_sum = 0.0

    def idle_step(self, lr: Any) -> None:
        """A step outside sparsity learning: counted; a valid ``lr`` is kept."""
        self.steps_now += 1
        if is_real(lr) and math.isfinite(float(lr)) and float(lr) >= 0:
            self.last_lr = float(lr)

    def step(self, amount: float, lr: float) -> None:
        """A sparsity-learning step at ``lr`` that applied ``amount`` (its ``reg * lr``)."""
        self.steps_now += 1
        self.shrink_total += amount
        self.epoch_shrink += amount
        self.epoch_lr_sum += lr
        self.last_lr = lr

    def end_epoch(self) -> None:
        if self.steps_now:
            self.steps_per_epoch = self.steps_now


class SparsityLearning:
    """Arms the regularizer per epoch and runs it on every step.

    Args:
        regularizer: what each step does (:func:`~oneprune_ext.pruning.regularizers.regularizer_for`).
        strength: how strong each step is (:func:`~oneprune_ext.pruning.sparsity.strength_for`).
        ops: the fused kernels.

    Attributes:
        armed: the epoch's :class:`~oneprune_ext.pruning.regularizers.ArmedChannels`, or None (not in
            sparsity learning this epoch, or no channel chosen for removal).
        reg_value: the regularisation strength now (0.0 outside sparsity learning).
        ledger: the :class:`StepLedger`.
    """

    def __init__(self, regularizer: Regularizer, strength: Strength, ops: Any,
                 follow: Optional[Callable[[], bool]] = None) -> None:
        self.regularizer = regularizer
        self.strength = strength
        self.ops = ops
        self.follow = follow  # the pruner's: follow the model when the kernels no longer fit it
        self.ledger = StepLedger()
        self.armed: Optional[ArmedChannels] = None
        self.reg_value = 0.0

    def reset(self) -> None:
        """Clear the step state of an epoch (at every epoch start, and before a saved state is restored)."""
        self.armed = None
        self.reg_value = 0.0
        self.ledger.new_epoch()

    def arm(self, epoch: int, removal_mask: torch.Tensor, layout: Any) -> None:
        """Plan sparsity-learning epoch ``epoch`` and put its mask and strengths on the device."""
        reg, factor = self.strength.plan(epoch, self.ledger.steps_per_epoch, self.ledger.last_lr)
        self.reg_value = reg
        if bool(removal_mask.any()):
            self.armed = ArmedChannels(self.ops, layout, removal_mask, reg, factor, self.follow)

    def move_to(self, device: torch.device) -> None:
        """The model moved to ``device``: so do the armed mask and strengths."""
        if self.armed is not None:
            self.armed.move_to(device)

    def before_step(self, scaler: Optional[Any]) -> Optional[torch.Tensor]:
        if self.armed is None:
            return None
        return self.regularizer.before_step(self.armed, scaler)

    def after_step(self, lr: Any, scaler: Optional[Any], skipped: Optional[torch.Tensor] = None) -> None:
        armed = self.armed
        if armed is None:
            self.ledger.idle_step(lr)
            return
        if isinstance(lr, torch.Tensor):
            lr = float(lr)  # a tensor lr (capturable optimizers) costs one sync here
        if lr != self.ledger.last_lr and (not is_real(lr) or not math.isfinite(lr) or lr < 0):
            raise ValueError(f"after_step: lr must be a finite number >= 0, got {lr!r}")
        lr = float(lr)
        if skipped is None:
            skipped = found_inf(scaler, armed.device) if self.regularizer.shrinks else None  # checks the scaler
        amount = self.strength.take_step(lr)
        self.ledger.step(amount, lr)
        if self.regularizer.adds_gradient:
            nxt = self.strength.next_reg(lr)
            if nxt is not None:  # the next step's strength
                armed.set_reg(nxt)
                self.reg_value = armed.reg_value
        self.regularizer.after_step(armed, amount, skipped)

    def end_epoch(self) -> float:
        """Close the epoch's steps; the strength to report for it."""
        reg = self.strength.epoch_reg(self.reg_value, self.ledger.epoch_shrink, self.ledger.epoch_lr_sum)
        self.ledger.end_epoch()
        self.armed = None
        return reg

    def reg_at(self, epoch: int, current: bool) -> float:
        return self.strength.reg_at(epoch, current, self.ledger.last_lr)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        led = self.ledger
        return {"steps_per_epoch": led.steps_per_epoch, "last_lr": led.last_lr, "shrink_total": led.shrink_total,
                "auto": self.strength.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any], reg_value: float) -> None:
        """Restore :meth:`state_dict` (as checked by the state reader) and the strength now."""
        self.ledger.steps_per_epoch, self.ledger.last_lr = state["steps_per_epoch"], state["last_lr"]
        self.ledger.shrink_total = state["shrink_total"]
        self.strength.load_state_dict(state["auto"] or {})
        self.reg_value = reg_value
