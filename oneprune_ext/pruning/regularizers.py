"""What sparsity learning does to the channels chosen for removal: the :class:`Regularizer` strategies.

``g_c`` is every coupled slice of channel ``c`` (the slices the saliency counts). On every optimizer
step of a sparsity-learning epoch, with the step's strength ``reg`` and learning rate ``lr``:

* :class:`Shrink` (``regularizer="shrink"``, the default; what produced the published numbers, whose
  penalty term is computed under ``no_grad``): after ``optimizer.step()`` the slices of the channels
  chosen for removal are multiplied by ``1 - reg * lr`` (one fused kernel);
* :class:`GroupLasso` (``"group_lasso"``, this project's extension: the penalty the paper
  describes): after the backward, the gradient of ``reg * sum_c ||g_c||_2``, ``reg * w / ||g_c||``,
  is added to those slices' gradients (one fused kernel; SGD momentum amplifies it about tenfold);
* :class:`Both` (``"both"``): both.

A regularizer acts on an :class:`ArmedChannels`: the removal mask and the strengths of one epoch,
put on the model's device once at the epoch's start, so the step path has no host synchronisation.
When the model moves to another device, or the kernels refuse a layout its parameters no longer fit
(another memory format), the armed channels ask the pruner to follow the model (once) and run the
kernel again.
How strong each step is (a fixed ``reg(t)`` or ``reg="auto"``) is decided elsewhere
(:mod:`oneprune_ext.pruning.sparsity`); :func:`regularizer_for` maps the option to its strategy.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Protocol, runtime_checkable

import torch

__all__ = ["Regularizer", "Shrink", "GroupLasso", "Both", "ArmedChannels", "regularizer_for",
           "current_scale", "found_inf"]


class ArmedChannels:
    """The channels chosen for removal and the step strengths, on the model's device, for one epoch.

    Args:
        ops: the fused kernels (:mod:`oneprune_ext.kernels.ops`, or the reference ops in tests).
        layout: the model's channel layout.
        removal_mask: bool CPU tensor over every channel (True = chosen for removal).
        reg: the group-lasso strength of the first step.
        factor: the shrink factor the device tensor starts with (refilled when a step needs another).
    """

    def __init__(self, ops: Any, layout: Any, removal_mask: torch.Tensor, reg: float, factor: float,
                 follow: Optional[Callable[[], bool]] = None) -> None:
        params = layout.parameters()
        device = params[0].device if params else torch.device("cpu")
        self.ops, self.layout, self.follow = ops, layout, follow
        self._probe: Optional[torch.Tensor] = params[0] if params else None  # same object for the whole run
        self.mask = removal_mask.to(device)
        self.reg_value, self.factor_value = reg, factor
        self.reg_t = torch.full((), reg, dtype=torch.float32, device=device)
        self.factor_t = torch.full((), factor, dtype=torch.float32, device=device)

    @property
    def device(self) -> torch.device:
        return self.mask.device

    def move_to(self, device: torch.device) -> None:
        """Put the mask and the strengths on ``device`` (the model moved there), once."""
        if device != self.mask.device:
            self.mask = self.mask.to(device)
            self.reg_t = self.reg_t.to(device)
            self.factor_t = self.factor_t.to(device)

    def _run(self, kernel: Callable[[], Any]) -> Any:
        """Run one fused kernel call; follow the model first when it moved (one device comparison),
        and once more when the kernels refuse a layout the parameters no longer fit (they check
        shapes and strides before writing anything)."""
        if self.follow is not None and self._probe is not None and self._probe.device != self.mask.device:
            self.follow()
        try:
            return kernel()
        except ValueError:
            if self.follow is None or not self.follow():
                raise
            return kernel()

    def set_reg(self, value: float) -> None:
        """The group-lasso strength of the coming steps (refilled on the device only when it changes)."""
        if value != self.reg_value:
            self.reg_t.fill_(value)
            self.reg_value = value

    def add_lasso_gradient(self, scaler: Optional[Any]) -> torch.Tensor:
        """``grad += reg * w / ||g_c||`` on the armed channels; the penalty ``reg * sum_c ||g_c||`` (0-d)."""
        scale = current_scale(scaler)

        def kernel() -> torch.Tensor:
            if scale is None:
                return self.ops.group_lasso_grad_(self.layout, self.mask, self.reg_t)
            s = scale.reshape(()).to(self.reg_t.device)
            return self.ops.group_lasso_grad_(self.layout, self.mask, self.reg_t * s) / s

        return self._run(kernel)

    def shrink(self, amount: float, skipped: Optional[torch.Tensor]) -> None:
        """Scale the armed channels by ``1 - amount`` (by 1 where ``skipped`` says the scaler skipped the step)."""
        value = 1.0 - amount
        if value != self.factor_value:
            self.factor_t.fill_(value)
            self.factor_value = value

        def kernel() -> None:
            factor = self.factor_t
            if skipped is not None:
                s = skipped.reshape(()).to(factor.device)
                factor = torch.where(s > 0, torch.ones_like(factor), factor)
            self.ops.scale_channels_(self.layout, self.mask, factor)

        self._run(kernel)


@runtime_checkable
class Regularizer(Protocol):
    """One sparsity-learning step's action on the armed channels.

    Attributes:
        name: the ``regularizer`` option it stands for (recorded in checkpoints).
        adds_gradient: it acts in ``before_step`` (after the backward, on the gradients).
        shrinks: it acts in ``after_step`` (after ``optimizer.step()``, on the weights); a step
            a ``GradScaler`` skipped is then skipped too.
    """

    name: str
    adds_gradient: bool
    shrinks: bool

    def before_step(self, armed: ArmedChannels, scaler: Optional[Any]) -> Optional[torch.Tensor]:
        """After the backward: act on the gradients; return the penalty (0-d device tensor) or None."""
        ...

    def after_step(self, armed: ArmedChannels, amount: float, skipped: Optional[torch.Tensor]) -> None:
        """After ``optimizer.step()``: act on the weights; ``amount`` is the step's ``reg * lr``."""
        ...


class _NoAction:
    """Base of the built-in strategies: does nothing on either side of the optimizer step."""

    name = ""
    adds_gradient = False
    shrinks = False

    def before_step(self, armed: ArmedChannels, scaler: Optional[Any]) -> Optional[torch.Tensor]:
        return None

    def after_step(self, armed: ArmedChannels, amount: float, skipped: Optional[torch.Tensor]) -> None:
        return None

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Shrink(_NoAction):
    """Multiply the channels chosen for removal by ``1 - reg * lr`` after each optimizer step."""

    name = "shrink"
    shrinks = True

    def after_step(self, armed: ArmedChannels, amount: float, skipped: Optional[torch.Tensor]) -> None:
        armed.shrink(amount, skipped)


class GroupLasso(_NoAction):
    """Add the gradient of ``reg * sum_c ||g_c||_2`` over the channels chosen for removal."""

    name = "group_lasso"
    adds_gradient = True

    def before_step(self, armed: ArmedChannels, scaler: Optional[Any]) -> Optional[torch.Tensor]:
        return armed.add_lasso_gradient(scaler)


class Both(_NoAction):
    """The group-lasso gradient before the optimizer step and the shrink after it."""

    name = "both"
    adds_gradient = True
    shrinks = True

    def before_step(self, armed: ArmedChannels, scaler: Optional[Any]) -> Optional[torch.Tensor]:
        return armed.add_lasso_gradient(scaler)

    def after_step(self, armed: ArmedChannels, amount: float, skipped: Optional[torch.Tensor]) -> None:
        armed.shrink(amount, skipped)


_BY_NAME = {r.name: r for r in (Shrink, GroupLasso, Both)}


def regularizer_for(name: str) -> Regularizer:
    """The strategy of a ``regularizer`` option (``"shrink"``, ``"group_lasso"`` or ``"both"``)."""
    if name not in _BY_NAME:
        raise ValueError(f"regularizer must be one of {tuple(_BY_NAME)}, got {name!r}")
    return _BY_NAME[name]()


# ------------------------------------------------------------------------------ AMP (GradScaler)
def current_scale(scaler: Optional[Any]) -> Optional[torch.Tensor]:
    """The scale of an enabled GradScaler whose gradients are still scaled (a device tensor), or None."""
    if scaler is None or not scaler.is_enabled():
        return None
    from torch.amp.grad_scaler import OptState

    states = getattr(scaler, "_per_optimizer_states", {})
    if any(st.get("stage") is OptState.UNSCALED for st in states.values()):
        raise ValueError(
            "before_step(scaler=...): scaler.unscale_(optimizer) already ran this step, so the gradients are "
            "unscaled; call before_step() without scaler after unscale_ (or pass scaler and do not unscale first)")
    scale = getattr(scaler, "_scale", None)
    if scale is None:
        raise ValueError("before_step(scaler=...): the scaler has not scaled a loss yet; call it after "
                         "scaler.scale(loss).backward()")
    return scale


def found_inf(scaler: Optional[Any], device: torch.device) -> Optional[torch.Tensor]:
    """Sum of the scaler's inf/NaN flags of this step on ``device`` (no host sync), or None."""
    if scaler is None or not scaler.is_enabled():
        return None
    flags = [f for st in getattr(scaler, "_per_optimizer_states", {}).values()
             for f in st.get("found_inf_per_device", {}).values()]
    if not flags:
        raise ValueError("after_step(scaler=...): call it after scaler.step(optimizer) and before "
                         "scaler.update() (the scaler's record of skipped steps is cleared by update)")
    return torch.stack([f.reshape(()).to(device, torch.float32) for f in flags]).sum()
