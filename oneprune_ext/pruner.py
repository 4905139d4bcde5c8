"""OneCyclePruner: the one-cycle schedule (DESIGN section 2), driven from any training loop.

Usage (a plain PyTorch loop; every call is cheap, the step-path calls are fused kernels)::

    pruner = OneCyclePruner(model, example_inputs, reduction=0.5, total_epochs=E)
    for epoch in range(start_epoch, E):
        pruner.epoch_start(epoch)                 # search sub-network, update stability
        for x, y in train_loader:
            optimizer.zero_grad()
            loss = criterion(model(x), y)
            loss.backward()
            pruner.before_step()                  # fused group-lasso gradient (when active)
            optimizer.step()
            pruner.after_step(optimizer.param_groups[0]["lr"])  # fused shrink (when active)
            scheduler.step()                      # (or once per epoch, as the schedule wants)
        report = pruner.epoch_end(epoch, optimizer)  # prunes in place when stable / at sl_end

The schedule, per 0-based epoch ``t`` of a run of ``total_epochs`` epochs:

* ``t < monitor_start``: **dense** training, the pruner does nothing.
* ``t >= monitor_start`` (until pruned): at :meth:`~OneCyclePruner.epoch_start` the channel
  saliencies are computed by one fused kernel, the sub-network meeting the target reduction
  (of MACs or parameters) is chosen with the exact cost model
  (:func:`oneprune_ext.select.select_subnetwork`), recorded, and the stability indicator
  ``psi`` is updated (:class:`oneprune_ext.select.StabilityTracker`). Phase **monitoring**.
* ``t >= sl_start`` (until pruned): **sparsity learning** on the channels currently chosen
  for removal, with ``reg(t) = reg0 + reg_delta * floor((t - sl_start) / reg_interval)``:

  - ``regularizer="group_lasso"``: after each backward, the gradient of
    ``reg * sum_c ||g_c||_2`` (``reg * w / ||g_c||``) is added to those channels' slices
    (:meth:`~OneCyclePruner.before_step`) -- the penalty the paper describes;
  - ``regularizer="shrink"``: after each optimizer step those slices are multiplied by
    ``1 - reg * lr`` (:meth:`~OneCyclePruner.after_step`) -- what the published code
    effectively does (its penalty term is computed under ``no_grad``);
  - ``regularizer="both"`` (default): both.

  ``sl_start="auto"`` starts it at the first epoch ``t > 3`` at which ``psi`` rose by at most
  1e-4 since ``t - 2`` (:func:`oneprune_ext.select.auto_sl_start`).
* **Pruning**, at :meth:`~OneCyclePruner.epoch_end` of the first sparsity-learning epoch
  whose indicator (computed at that epoch's start) is ``>= stability_threshold``, or of
  epoch ``sl_end`` at the latest: the channels of the chosen sub-network that are not kept
  are removed physically and in place (:func:`oneprune_ext.compact.prune_channels`: same
  ``Parameter`` objects, optimizer state compacted), so training goes on with the same
  optimizer and LR scheduler until ``total_epochs``. Afterwards the hooks only keep time.

Differences from the published code (OCSPruner ``main_cifar.py``), all deliberate:
the published loop regularises only from epoch ``sl_start + 2`` and adds ``reg_delta``
before the first regularised epoch (so it starts at ``reg0 + reg_delta`` when
``reg_interval=1``) on absolute epochs divisible by ``reg_interval``; here sparsity learning
starts at ``sl_start`` with ``reg0``, as DESIGN section 2 states. The published loop prunes
when stable in any monitored epoch and at ``sl_end + 1`` at the latest; here a stability
prune needs the sparsity-learning phase (the network has been pushed towards the chosen
sub-network) and ``sl_end`` is the last epoch.

Prune between steps: :meth:`~OneCyclePruner.epoch_end` must not be called while an autograd
graph built from the old shapes is alive (a kept loss tensor), or the next backward fails.

Resume protocol (bit-identical on CPU to an uninterrupted run with the same seed, including
across the prune)::

    # checkpoint, at the end of epoch k (after pruner.epoch_end(k, optimizer)):
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "pruner": pruner.state_dict(),
                "epoch": k}, path)
    # resume:
    ckpt = torch.load(path, weights_only=True)
    model = build_model(); optimizer = build_optimizer(model); scheduler = build_scheduler(optimizer)
    pruner = OneCyclePruner(model, example_inputs, **same_options)  # on the fresh DENSE model
    pruner.load_state_dict(ckpt["pruner"])       # reshapes the model if the run was pruned
    model.load_state_dict(ckpt["model"])         # now the shapes match
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    for epoch in range(ckpt["epoch"] + 1, E):
        train_loader.sampler.set_epoch(epoch)    # same batches as the uninterrupted run
        ...
"""

from __future__ import annotations

import math
import numbers
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn as nn

from . import ops as _fused_ops
from .compact import prune_channels
from .cost import CostModel
from .graph import trace_groups
from .groups import ChannelGroups
from .layout import ChannelLayout
from .select import (
    Selection,
    StabilityTracker,
    auto_sl_start,
    layer_limits,
    per_channel_cost,
    round_kept_counts,
    select_subnetwork,
)

__all__ = ["OneCyclePruner", "EpochReport"]

_TARGETS = ("macs", "params")
_REGULARIZERS = ("shrink", "group_lasso", "both")
_HOOKS = ("epoch_start", "before_step", "after_step", "epoch_end")
_STATE_VERSION = 1


@dataclass(frozen=True)
class EpochReport:
    """What happened in one epoch (returned by :meth:`OneCyclePruner.epoch_end`).

    Attributes:
        epoch: the 0-based epoch.
        phase: the phase the epoch trained in: ``"dense"`` (before ``monitor_start``),
            ``"monitoring"`` (sub-network searched, no regularisation), ``"sparsity"``
            (sparsity learning), ``"pruned"`` (the model was pruned in an earlier epoch).
            The epoch that prunes reports the phase it trained in and ``pruned_now=True``.
        indicator: stability indicator ``psi`` after this epoch's search (0.0 before monitoring;
            frozen at the prune value afterwards).
        reg: regularisation strength used on this epoch's steps (0.0 when not sparsity learning).
        target_reduction: requested fraction of the dense MACs (or parameters) removed.
        reduction: fraction of the dense cost the sub-network chosen this epoch removes
            (None when no search ran this epoch). After a prune: the pruned model's reduction.
        stable: whether ``indicator >= stability_threshold``.
        sl_start: the epoch sparsity learning started (resolved for ``"auto"``), or None (not yet).
        pruned_now: this call pruned the model.
        macs_before, macs_after, params_before, params_after: MACs (for the pruner's
            ``example_inputs``) and parameter counts of the model just before and after the
            prune; None unless ``pruned_now``.
    """

    epoch: int
    phase: str
    indicator: float
    reg: float
    target_reduction: float
    reduction: Optional[float]
    stable: bool
    sl_start: Optional[int]
    pruned_now: bool
    macs_before: Optional[int] = None
    macs_after: Optional[int] = None
    params_before: Optional[int] = None
    params_after: Optional[int] = None


def _is_int(x: Any) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _is_real(x: Any) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


class OneCyclePruner:
    """Prunes channels of ``model`` while it trains from scratch, in one run (see module docs).

    Args:
        model: the dense network (CPU or CUDA). Traced once, here, under ``torch.no_grad``.
        example_inputs: a tensor or tuple of positional inputs for one forward (shapes only
            matter; MACs are reported for this batch, so use a batch of one for per-sample MACs).
        target: ``"macs"`` or ``"params"``: what ``reduction`` is a fraction of.
        reduction: fraction of the dense MACs / parameters to remove, in ``(0, 1)``.
        total_epochs: length of the whole run in epochs (epochs are 0-based, ``< total_epochs``).
        monitor_start: first epoch of the sub-network search (published default 2).
        sl_start: first epoch of sparsity learning (an int ``>= monitor_start``), or ``"auto"``.
        sl_end: last epoch: the model is pruned at its end if stability did not prune it
            earlier; ``monitor_start < sl_end < total_epochs``.
        reg: ``reg0``, the regularisation strength at ``sl_start`` (>= 0).
        reg_delta: added to ``reg`` every ``reg_interval`` epochs of sparsity learning (>= 0).
        reg_interval: epochs between increments (>= 1; 1 for CIFAR, 2 for ImageNet as published).
        regularizer: ``"shrink"``, ``"group_lasso"`` or ``"both"``.
        stability_threshold: the indicator value (in ``(0, 1]``) at which the sub-network is
            considered stable and pruned (0.999 published).
        layer_limit, layer_limit_k: per-layer limit ``floor(C * layer_limit * (1 - exp(-k C)))``
            channels removable from a group of ``C``.
        round_to: keep channel counts multiples of this (None: no rounding).
        ignored_layers: modules whose output channels are never pruned.

    Raises:
        ValueError: a bad option (the message names it), a target unreachable under the
            layer limits, or a model without prunable channels.

    Attributes:
        groups: the channel groups now (dense sizes before the prune, kept counts after).
        layout: the fused kernels' channel layout (rebuilt at the prune).
        tracker: the :class:`~oneprune_ext.select.StabilityTracker`.
        selection: the latest :class:`~oneprune_ext.select.Selection` (None before monitoring).
        history: one plain dict per monitored epoch: ``epoch``, ``indicator``, ``reduction``,
            ``kept_counts``.
        sl_start: the resolved sparsity-learning start epoch (None while ``"auto"`` has not fired).
    """

    def __init__(
        self,
        model: nn.Module,
        example_inputs: Union[torch.Tensor, Sequence[torch.Tensor]],
        *,
        target: str = "macs",
        reduction: float = 0.5,
        total_epochs: int,
        monitor_start: int = 2,
        sl_start: Union[int, str] = 30,
        sl_end: int = 110,
        reg: float = 1e-4,
        reg_delta: float = 1e-4,
        reg_interval: int = 1,
        regularizer: str = "both",
        stability_threshold: float = 0.999,
        layer_limit: float = 0.75,
        layer_limit_k: float = 1.0,
        round_to: Optional[int] = None,
        ignored_layers: Sequence[nn.Module] = (),
    ) -> None:
        t0 = time.perf_counter()
        self._validate_options(
            target=target, reduction=reduction, total_epochs=total_epochs, monitor_start=monitor_start,
            sl_start=sl_start, sl_end=sl_end, reg=reg, reg_delta=reg_delta, reg_interval=reg_interval,
            regularizer=regularizer, stability_threshold=stability_threshold, layer_limit=layer_limit,
            layer_limit_k=layer_limit_k, round_to=round_to,
        )
        self.model = model
        self.target = target
        self.reduction = float(reduction)
        self.total_epochs = int(total_epochs)
        self.monitor_start = int(monitor_start)
        self.auto_sl_start = sl_start == "auto"
        self.sl_start: Optional[int] = None if self.auto_sl_start else int(sl_start)  # type: ignore[arg-type]
        self.sl_end = int(sl_end)
        self.reg0 = float(reg)
        self.reg_delta = float(reg_delta)
        self.reg_interval = int(reg_interval)
        self.regularizer = regularizer
        self.stability_threshold = float(stability_threshold)
        self.layer_limit = float(layer_limit)
        self.layer_limit_k = float(layer_limit_k)
        self.round_to = None if round_to is None else int(round_to)

        with torch.no_grad():  # nothing here may leave an autograd graph alive (DESIGN section 3)
            groups = trace_groups(model, example_inputs, ignored_layers=ignored_layers)
            if len(groups) == 0:
                raise ValueError(
                    "model has no prunable channel groups (every layer is fixed or in ignored_layers)")
            self._dense_groups: ChannelGroups = groups
            self.groups: ChannelGroups = groups
            self._cost = CostModel(model, groups, example_inputs)
        self.layout = ChannelLayout(model, groups)
        self.dense_macs: int = int(self._cost.dense_macs)
        self.dense_params: int = int(self._cost.dense_params)
        self._dense_sizes: list[int] = list(groups.sizes)
        self._cost_fn: Callable[[list[int]], int] = self._cost.macs if target == "macs" else self._cost.params
        self._dense_cost = self.dense_macs if target == "macs" else self.dense_params
        # Per-channel MAC cost of each group, in MACs (cost_share divides by 1e6), measured as the
        # published code does; MAC-based even when the target is parameters.
        self._per_channel_macs: list[float] = per_channel_cost(self._cost.macs, self._dense_sizes)
        self.max_reduction: float = self._max_reachable_reduction()
        if self.max_reduction < self.reduction - 1e-12:
            raise ValueError(
                f"reduction={self.reduction} is unreachable: removing every channel the per-layer limit "
                f"allows (layer_limit={self.layer_limit}, layer_limit_k={self.layer_limit_k}"
                + (f", round_to={self.round_to}" if self.round_to is not None else "")
                + f") removes at most {self.max_reduction:.4f} of the dense {target}. Lower `reduction` "
                "or raise `layer_limit` / `layer_limit_k`"
                + (" / lower `round_to`" if self.round_to is not None else "") + ".")

        self._ops: Any = _fused_ops  # the fused kernels; tests swap in oneprune_ext.reference
        self.tracker = StabilityTracker()
        self.selection: Optional[Selection] = None
        self.history: list[dict[str, Any]] = []
        self._masks: list[torch.Tensor] = []  # per monitored epoch: removal mask (bool, dense channels)
        self._pruned = False
        self._prune_epoch: Optional[int] = None
        self._prune_keep: Optional[list[torch.Tensor]] = None
        self._prune_info: dict[str, int] = {}
        self._last_start: Optional[int] = None  # epoch of the last epoch_start
        self._last_end: Optional[int] = None  # epoch of the last epoch_end
        self._searched_now = False
        # step-path state, set once per epoch by epoch_start
        self._active_lasso = False
        self._active_shrink = False
        self._reg_value = 0.0
        self._mask_dev: Optional[torch.Tensor] = None
        self._reg_t: Optional[torch.Tensor] = None
        self._factor_t: Optional[torch.Tensor] = None
        self._factor_lr: Optional[float] = None
        self._stats: dict[str, float] = {h: 0.0 for h in _HOOKS}
        #: wall seconds the construction took (trace + cost model + layout), not part of ``stats``
        self.init_seconds: float = time.perf_counter() - t0

    # ------------------------------------------------------------------ validation
    @staticmethod
    def _validate_options(**o: Any) -> None:
        if o["target"] not in _TARGETS:
            raise ValueError(f"target must be one of {_TARGETS}, got {o['target']!r}")
        if o["regularizer"] not in _REGULARIZERS:
            raise ValueError(f"regularizer must be one of {_REGULARIZERS}, got {o['regularizer']!r}")
        r = o["reduction"]
        if not _is_real(r) or not 0.0 < float(r) < 1.0:
            raise ValueError(f"reduction must be a fraction in (0, 1) (0.5 = half the {o['target']} removed), "
                             f"got {r!r}")
        for name in ("total_epochs", "monitor_start", "sl_end", "reg_interval"):
            if not _is_int(o[name]):
                raise ValueError(f"{name} must be an int (epochs), got {o[name]!r}")
        if o["total_epochs"] < 1:
            raise ValueError(f"total_epochs must be >= 1, got {o['total_epochs']}")
        if o["monitor_start"] < 0:
            raise ValueError(f"monitor_start must be >= 0 (a 0-based epoch), got {o['monitor_start']}")
        if o["reg_interval"] < 1:
            raise ValueError(f"reg_interval must be >= 1 epoch, got {o['reg_interval']}")
        sl = o["sl_start"]
        if sl != "auto":
            if not _is_int(sl):
                raise ValueError(f"sl_start must be an int (epoch) or 'auto', got {sl!r}")
            if sl < o["monitor_start"]:
                raise ValueError(
                    f"sl_start ({sl}) must be >= monitor_start ({o['monitor_start']}): sparsity learning "
                    "regularises the sub-network the search chose")
            if sl > o["sl_end"]:
                raise ValueError(f"sl_start ({sl}) must be <= sl_end ({o['sl_end']})")
        if not o["monitor_start"] < o["sl_end"]:
            raise ValueError(f"monitor_start ({o['monitor_start']}) must be < sl_end ({o['sl_end']})")
        if not o["sl_end"] < o["total_epochs"]:
            raise ValueError(
                f"sl_end ({o['sl_end']}) must be < total_epochs ({o['total_epochs']}): the model is pruned "
                "at the end of epoch sl_end at the latest and then trained further")
        for name in ("reg", "reg_delta"):
            v = o[name]
            if not _is_real(v) or not math.isfinite(float(v)) or float(v) < 0.0:
                raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
        th = o["stability_threshold"]
        if not _is_real(th) or not 0.0 < float(th) <= 1.0:
            raise ValueError(f"stability_threshold must be in (0, 1], got {th!r}")
        ll = o["layer_limit"]
        if not _is_real(ll) or not 0.0 <= float(ll) <= 1.0:
            raise ValueError(f"layer_limit must be in [0, 1] (fraction of a group removable), got {ll!r}")
        k = o["layer_limit_k"]
        if not _is_real(k) or not float(k) > 0.0:
            raise ValueError(f"layer_limit_k must be > 0, got {k!r}")
        rt = o["round_to"]
        if rt is not None and (not _is_int(rt) or rt < 1):
            raise ValueError(f"round_to must be a positive int or None, got {rt!r}")

    def _max_reachable_reduction(self) -> float:
        sizes = np.asarray(self._dense_sizes, dtype=np.int64)
        limits = np.asarray(layer_limits(self._dense_sizes, self.layer_limit, self.layer_limit_k), dtype=np.int64)
        kept = sizes - limits
        if self.round_to is not None:
            kept = round_kept_counts(kept, sizes, limits, self.round_to)
        return 1.0 - self._cost_fn([int(x) for x in kept]) / self._dense_cost

    def _check_epoch(self, epoch: Any, hook: str) -> int:
        if not _is_int(epoch):
            raise ValueError(f"{hook}: epoch must be an int (0-based), got {epoch!r}")
        e = int(epoch)
        if not 0 <= e < self.total_epochs:
            raise ValueError(f"{hook}: epoch {e} is outside [0, total_epochs={self.total_epochs})")
        return e

    def _check_model(self) -> None:
        """Cheap check that nobody reshaped or replaced the parameters behind the pruner's back."""
        params = dict(self.model.named_parameters())
        for name, p, n in zip(self.layout.tensor_names, self.layout.parameters(), self.layout.numels):
            q = params.get(name)
            if q is not p or p.numel() != n:
                what = "was removed or replaced" if q is not p else f"has {p.numel()} elements, expected {n}"
                raise ValueError(
                    f"parameter '{name}' {what}: the model changed behind the pruner's back. Prune only "
                    "through the pruner, and on resume call pruner.load_state_dict before "
                    "model.load_state_dict (see OneCyclePruner docs); otherwise build a new pruner.")

    # ------------------------------------------------------------------ schedule
    def _sl_active(self, epoch: int) -> bool:
        return self.sl_start is not None and epoch >= self.sl_start

    def reg_at(self, epoch: int) -> float:
        """Regularisation strength on the steps of ``epoch`` (0.0 outside sparsity learning)."""
        if not self._sl_active(epoch) or self._pruned:
            return 0.0
        assert self.sl_start is not None
        return self.reg0 + self.reg_delta * ((epoch - self.sl_start) // self.reg_interval)

    def phase_at(self, epoch: int) -> str:
        """``"dense"``, ``"monitoring"``, ``"sparsity"`` or ``"pruned"`` for ``epoch`` now."""
        if self._pruned and self._prune_epoch is not None and epoch > self._prune_epoch:
            return "pruned"
        if self._sl_active(epoch):
            return "sparsity"
        if epoch >= self.monitor_start:
            return "monitoring"
        return "dense"

    @property
    def pruned(self) -> bool:
        """Whether the model has been pruned."""
        return self._pruned

    @property
    def prune_epoch(self) -> Optional[int]:
        """The epoch at whose end the model was pruned (None before)."""
        return self._prune_epoch

    @property
    def indicator(self) -> float:
        """The latest stability indicator ``psi``."""
        return self.tracker.indicator

    def macs(self) -> int:
        """Exact MACs of the model now, for ``example_inputs`` (closed-form cost model)."""
        return int(self._cost.macs(self.groups.sizes))

    def params(self) -> int:
        """Exact parameter count of the model now."""
        return int(self._cost.params(self.groups.sizes))

    @property
    def stats(self) -> dict[str, float]:
        """Wall seconds spent in each hook, accumulated (host time; CUDA work is asynchronous).

        Keys ``epoch_start``, ``before_step``, ``after_step``, ``epoch_end`` and ``total``
        (their sum). The one-off construction is :attr:`init_seconds`. Restored by
        :meth:`load_state_dict`, so a resumed run reports the whole run's overhead.
        """
        out = {h: self._stats[h] for h in _HOOKS}
        out["total"] = sum(out.values())
        return out

    # ------------------------------------------------------------------ hooks
    def epoch_start(self, epoch: int) -> None:
        """Start of a 0-based epoch: search the sub-network and update the indicator.

        From ``monitor_start`` until the prune: one fused saliency kernel, the closed-form
        selection and the indicator update; then the regulariser's mask and ``reg`` are put
        on the model's device once for the whole epoch. Raises ValueError for an epoch outside
        ``[0, total_epochs)``, an epoch not after the previous one, or a model that was
        reshaped behind the pruner's back.
        """
        t0 = time.perf_counter()
        try:
            e = self._check_epoch(epoch, "epoch_start")
            if self._last_end is not None and e <= self._last_end:
                raise ValueError(f"epoch_start: epoch {e} is not after the last finished epoch {self._last_end}")
            if self._last_start is not None and self._last_start != self._last_end and e == self._last_start:
                raise ValueError(f"epoch_start({e}) called twice without epoch_end({e})")
            self._check_model()
            self._last_start = e
            self._searched_now = False
            self._active_lasso = self._active_shrink = False
            self._mask_dev = None
            self._reg_value = 0.0
            if self._pruned or e < self.monitor_start:
                return
            self._search(e)
            if self.auto_sl_start and self.sl_start is None and auto_sl_start(self.tracker.history, e):
                self.sl_start = e
            if self._sl_active(e):
                self._arm_regularizer(e)
        finally:
            self._stats["epoch_start"] += time.perf_counter() - t0

    def _search(self, epoch: int) -> None:
        with torch.no_grad():
            _, saliency = self._ops.grouped_norms(self.layout)
        sel = select_subnetwork(
            saliency, self.groups.sizes, self._cost_fn, self.reduction,
            per_channel_mac_cost=self._per_channel_macs, dense_cost=self._dense_cost,
            layer_limit=self.layer_limit, layer_limit_k=self.layer_limit_k, round_to=self.round_to,
        )
        psi = self.tracker.update(sel.kept_indices)
        self.selection = sel
        self._searched_now = True
        self._masks.append(sel.removal_mask.clone())
        self.history.append({"epoch": epoch, "indicator": psi, "reduction": sel.reduction,
                             "kept_counts": list(sel.kept_counts)})

    def _arm_regularizer(self, epoch: int) -> None:
        assert self.selection is not None
        params = self.layout.parameters()
        device = params[0].device if params else torch.device("cpu")
        self._reg_value = self.reg_at(epoch)
        self._mask_dev = self.selection.removal_mask.to(device)
        self._reg_t = torch.full((), self._reg_value, dtype=torch.float32, device=device)
        self._factor_t = torch.ones((), dtype=torch.float32, device=device)
        self._factor_lr = None
        any_chosen = bool(self.selection.removal_mask.any())
        self._active_lasso = any_chosen and self.regularizer in ("group_lasso", "both")
        self._active_shrink = any_chosen and self.regularizer in ("shrink", "both")

    def before_step(self) -> Optional[torch.Tensor]:
        """After ``loss.backward()``, before ``optimizer.step()``.

        In sparsity learning with ``regularizer`` ``"group_lasso"`` or ``"both"``: adds
        ``reg * w / ||g_c||`` to the gradients of every slice of the channels chosen for
        removal (one fused kernel, no host synchronisation) and returns the penalty
        ``reg * sum_c ||g_c||`` as a 0-d fp32 device tensor (for logging; it is not part of
        the loss graph). Otherwise returns None.
        """
        t0 = time.perf_counter()
        try:
            if not self._active_lasso:
                return None
            return self._ops.group_lasso_grad_(self.layout, self._mask_dev, self._reg_t)
        finally:
            self._stats["before_step"] += time.perf_counter() - t0

    def after_step(self, lr: float) -> None:
        """After ``optimizer.step()``: in sparsity learning with ``regularizer`` ``"shrink"`` or
        ``"both"``, multiplies every slice of the channels chosen for removal by ``1 - reg * lr``
        (one fused kernel; the factor is refilled on the device only when ``lr`` changes).

        Args:
            lr: the learning rate of the step just taken (e.g. ``optimizer.param_groups[0]["lr"]``).
        """
        t0 = time.perf_counter()
        try:
            if not self._active_shrink:
                return
            assert self._factor_t is not None
            if isinstance(lr, torch.Tensor):
                lr = float(lr)  # a tensor lr (capturable optimizers) costs one sync here
            if lr != self._factor_lr:
                if not _is_real(lr) or not math.isfinite(lr) or lr < 0:
                    raise ValueError(f"after_step: lr must be a finite number >= 0, got {lr!r}")
                self._factor_t.fill_(1.0 - self._reg_value * float(lr))
                self._factor_lr = lr
            self._ops.scale_channels_(self.layout, self._mask_dev, self._factor_t)
        finally:
            self._stats["after_step"] += time.perf_counter() - t0

    def epoch_end(self, epoch: int, optimizer: Optional[torch.optim.Optimizer] = None) -> EpochReport:
        """End of a 0-based epoch: prune in place when it is time; report what happened.

        Prunes when the epoch is in sparsity learning and the indicator computed at its start
        is ``>= stability_threshold``, or when ``epoch >= sl_end``. The model's parameters (same
        objects), gradients, BN buffers and ``optimizer``'s state are compacted; pass the
        optimizer that trains the model (None only if it has no per-parameter state).
        """
        t0 = time.perf_counter()
        try:
            e = self._check_epoch(epoch, "epoch_end")
            if self._last_start != e or self._last_end == e:
                raise ValueError(f"epoch_end({e}) without a matching epoch_start({e})")
            self._last_end = e
            phase = self.phase_at(e)
            reg = self._reg_value
            self._active_lasso = self._active_shrink = False
            psi = self.tracker.indicator
            stable = psi >= self.stability_threshold
            reduction = self.selection.reduction if (self._searched_now and self.selection is not None) else None
            info: dict[str, int] = {}
            pruned_now = False
            if not self._pruned and e >= self.monitor_start and self.selection is not None and (
                    (stable and self._sl_active(e)) or e >= self.sl_end):
                info = self._prune(e, optimizer)
                pruned_now = True
            if self._pruned and reduction is None:
                reduction = 1.0 - (self.macs() / self.dense_macs if self.target == "macs"
                                   else self.params() / self.dense_params)
            return EpochReport(
                epoch=e, phase=phase, indicator=psi, reg=reg, target_reduction=self.reduction,
                reduction=reduction, stable=bool(stable), sl_start=self.sl_start, pruned_now=pruned_now,
                macs_before=info.get("macs_before"), macs_after=info.get("macs_after"),
                params_before=info.get("params_before"), params_after=info.get("params_after"),
            )
        finally:
            self._stats["epoch_end"] += time.perf_counter() - t0

    def _prune(self, epoch: int, optimizer: Optional[torch.optim.Optimizer]) -> dict[str, int]:
        assert self.selection is not None
        info = {"macs_before": self.macs(), "params_before": self.params()}
        keep = [k.clone() for k in self.selection.kept_indices]
        self._apply_keep(keep, optimizer)
        self._pruned = True
        self._prune_epoch = epoch
        self._prune_keep = keep
        self._mask_dev = self._reg_t = self._factor_t = None
        info.update(macs_after=self.macs(), params_after=self.params())
        self._prune_info = dict(info)
        return info

    def _apply_keep(self, keep: list[torch.Tensor], optimizer: Optional[torch.optim.Optimizer]) -> None:
        """Physically remove every channel of the dense groups not in ``keep`` (per group)."""
        cut = {gi: k for gi, k in enumerate(keep) if int(k.numel()) < self._dense_sizes[gi]}
        with torch.no_grad():
            new_groups = prune_channels(self.model, self._dense_groups, cut, optimizer)
        self.groups = new_groups
        self.layout.rebuild(new_groups)  # the dense cost model stays exact: it is a polynomial of kept counts

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """All schedule state, as plain Python values and CPU tensors (``weights_only``-loadable)."""
        sel = self.selection
        return {
            "version": _STATE_VERSION,
            "config": {
                "target": self.target, "reduction": self.reduction, "total_epochs": self.total_epochs,
                "monitor_start": self.monitor_start, "sl_start": "auto" if self.auto_sl_start else self.sl_start,
                "sl_end": self.sl_end, "reg": self.reg0, "reg_delta": self.reg_delta,
                "reg_interval": self.reg_interval, "regularizer": self.regularizer,
                "stability_threshold": self.stability_threshold, "layer_limit": self.layer_limit,
                "layer_limit_k": self.layer_limit_k, "round_to": self.round_to,
            },
            "group_names": [g.name for g in self._dense_groups],
            "dense_sizes": list(self._dense_sizes),
            "sizes": list(self.groups.sizes),
            "dense_macs": self.dense_macs,
            "dense_params": self.dense_params,
            "sl_start_resolved": self.sl_start,
            "reg_current": self._reg_value,
            "last_start": self._last_start,
            "last_end": self._last_end,
            "pruned": self._pruned,
            "prune_epoch": self._prune_epoch,
            "prune_keep": None if self._prune_keep is None else [k.clone() for k in self._prune_keep],
            "prune_info": dict(self._prune_info),
            "tracker": self.tracker.state_dict(),
            "history": [dict(h, kept_counts=list(h["kept_counts"])) for h in self.history],
            "masks": [m.clone() for m in self._masks],
            "selection": None if sel is None else {
                "kept_indices": [k.clone() for k in sel.kept_indices],
                "removal_mask": sel.removal_mask.clone(),
                "kept_counts": list(sel.kept_counts), "removed_counts": list(sel.removed_counts),
                "reduction": sel.reduction, "cost": sel.cost, "dense_cost": sel.dense_cost,
                "target_reduction": sel.target_reduction, "prefix_length": sel.prefix_length,
                "num_candidates": sel.num_candidates, "tolerance": sel.tolerance,
            },
            "stats": {h: self._stats[h] for h in _HOOKS},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`; reshapes the model when the saved run was already pruned.

        Call it on a pruner built on a fresh **dense** model, *before* ``model.load_state_dict``
        and ``optimizer.load_state_dict`` (see the module docs for the whole resume order): the
        model's layers are cut to the recorded kept channels so the saved tensors fit. Loading
        into this same pruner after it pruned is also accepted (no reshape).

        Raises:
            ValueError: the state belongs to a different model (group names / sizes), or the
                model is already pruned differently.
        """
        if int(state.get("version", -1)) != _STATE_VERSION:
            raise ValueError(f"unsupported OneCyclePruner state version {state.get('version')!r}")
        names = [g.name for g in self._dense_groups]
        if list(state["group_names"]) != names or [int(s) for s in state["dense_sizes"]] != self._dense_sizes:
            raise ValueError(
                "pruner state does not match this model's channel groups (different architecture, width "
                "or ignored_layers?): saved sizes "
                f"{list(state['dense_sizes'])}, model {self._dense_sizes}")
        saved_sizes = [int(s) for s in state["sizes"]]
        cur_sizes = list(self.groups.sizes)
        if bool(state["pruned"]):
            keep = [torch.as_tensor(k, dtype=torch.int64).clone() for k in state["prune_keep"]]
            if [int(k.numel()) for k in keep] != saved_sizes:
                raise ValueError("corrupt pruner state: prune_keep does not match the saved sizes")
            if cur_sizes == self._dense_sizes and saved_sizes != self._dense_sizes:
                self._check_model()
                self._apply_keep(keep, None)
            elif cur_sizes != saved_sizes:
                raise ValueError(
                    f"the model is pruned to {cur_sizes}, the saved run to {saved_sizes}; load the pruner "
                    "state into a pruner built on a fresh dense model")
            self._prune_keep = keep
        else:
            if cur_sizes != self._dense_sizes:
                raise ValueError("the saved run was not pruned yet but this model is; build a fresh dense model")
            self._prune_keep = None
        self._pruned = bool(state["pruned"])
        self._prune_epoch = None if state["prune_epoch"] is None else int(state["prune_epoch"])
        self._prune_info = {k: int(v) for k, v in dict(state["prune_info"]).items()}
        sl = state["sl_start_resolved"]
        self.sl_start = None if sl is None else int(sl)
        self._reg_value = float(state["reg_current"])
        self._last_start = None if state["last_start"] is None else int(state["last_start"])
        self._last_end = None if state["last_end"] is None else int(state["last_end"])
        self.tracker = StabilityTracker()
        self.tracker.load_state_dict(state["tracker"])
        self.history = [dict(h, kept_counts=[int(c) for c in h["kept_counts"]]) for h in state["history"]]
        self._masks = [torch.as_tensor(m, dtype=torch.bool).clone() for m in state["masks"]]
        s = state["selection"]
        self.selection = None if s is None else Selection(
            kept_indices=[torch.as_tensor(k, dtype=torch.int64).clone() for k in s["kept_indices"]],
            removal_mask=torch.as_tensor(s["removal_mask"], dtype=torch.bool).clone(),
            kept_counts=[int(c) for c in s["kept_counts"]], removed_counts=[int(c) for c in s["removed_counts"]],
            reduction=float(s["reduction"]), cost=int(s["cost"]), dense_cost=int(s["dense_cost"]),
            target_reduction=float(s["target_reduction"]), prefix_length=int(s["prefix_length"]),
            num_candidates=int(s["num_candidates"]), tolerance=float(s["tolerance"]),
        )
        for h in _HOOKS:
            self._stats[h] = float(state["stats"].get(h, 0.0))
        # step-path state is re-armed by the next epoch_start
        self._active_lasso = self._active_shrink = False
        self._mask_dev = self._reg_t = self._factor_t = None
        self._factor_lr = None
        self._searched_now = False

    def __repr__(self) -> str:
        return (f"OneCyclePruner(target={self.target!r}, reduction={self.reduction}, groups={len(self.groups)}, "
                f"channels={self.groups.num_channels}, pruned={self._pruned}, prune_epoch={self._prune_epoch})")
