"""OneCyclePruner: the one-cycle schedule, driven from any training loop.

Usage (a plain PyTorch loop; every call is cheap, the step-path calls are fused kernels)::

    pruner = OneCyclePruner(model, example_inputs, PrunerConfig(reduction=0.5, total_epochs=E))
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

Loop shapes that work unchanged across the prune: a ``loss`` / ``outputs`` / list of past
losses kept alive (the pruned parameters' cached gradient accumulators are dropped), any
``torch.optim`` optimizer with per-element state (its state is compacted), gradient
accumulation (call ``before_step`` / ``after_step`` once per optimizer step),
``torch.compile`` (one recompile after the prune), ``channels_last`` models, AMP
(``before_step(scaler=scaler)`` while the gradients are scaled, ``after_step(lr,
scaler=scaler)`` between ``scaler.step`` and ``scaler.update``) and DDP (``process_group=``,
see :mod:`oneprune_ext.pruning.distributed`).

The algorithm
-------------

One-cycle structured pruning with a stability-driven sub-network search (Ghimire, Kil, Jeong,
Park, Kim, WACV 2026, arXiv 2501.13439): train from scratch, find the sub-network to keep while
training, push the rest towards zero, remove it physically, and go on training the smaller
model, all in one run with one optimizer and one learning-rate schedule.

A **channel group** is a set of parameter slices removed together (output channel ``c`` of a
conv, entry ``c`` of its BatchNorm, input column ``c`` of every layer that reads it; a residual
add merges its operands' groups; see :mod:`oneprune_ext.graph.trace`). ``g_c`` is every coupled slice
of channel ``c``. Per 0-based epoch ``t`` of a run of ``total_epochs`` epochs:

* ``t < monitor_start``: **dense** training, the pruner does nothing.
* ``t >= monitor_start`` (until pruned), at :meth:`~OneCyclePruner.epoch_start`: **monitoring**.

  - saliency of each channel, ``(1/M) sum_m ||s_m(c)||^2 / sqrt(len(s_m(c)))`` over its ``M``
    slices (one fused kernel), times ``1 - cost_share(group)``, a softmax over the groups of
    their per-channel MACs in millions (channels of expensive groups go first when close);
  - per-layer limit: at most ``floor(C * layer_limit * (1 - exp(-layer_limit_k * C)))`` of a
    group's ``C`` channels may go, the most salient rest is protected;
  - global selection: the unprotected channels ranked by saliency, the shortest prefix whose
    removal reaches the target reduction of MACs (or parameters), found by binary search on an
    exact closed-form cost model (:func:`oneprune_ext.pruning.select.select_subnetwork`);
  - stability indicator ``psi``: mean over the last three epochs of the mean-over-groups
    Jaccard similarity between the kept sets of epoch ``t`` and ``t - 2``
    (:class:`oneprune_ext.pruning.select.StabilityTracker`).

* ``t >= sl_start`` (until pruned): **sparsity learning** on the channels currently chosen for
  removal, with ``reg(t) = reg + reg_delta * floor((t - sl_start) / reg_interval)``:

  - ``regularizer="shrink"`` (default): after each optimizer step those slices are multiplied
    by ``1 - reg * lr`` (:meth:`~OneCyclePruner.after_step`);
  - ``regularizer="group_lasso"``: after each backward the gradient of
    ``reg * sum_c ||g_c||_2``, ``reg * w / ||g_c||``, is added to them
    (:meth:`~OneCyclePruner.before_step`);
  - ``regularizer="both"``: both.

  A channel that stays in the removal set is scaled by about ``exp(-S)``, ``S = sum reg * lr``
  over its steps (:attr:`EpochReport.shrink`): 8.3 by ``sl_end`` in the published CIFAR-10
  recipe, so the prune then removes channels that are nearly zero. ``reg="auto"`` keeps ``S`` on
  that published curve at any number of epochs, steps per epoch and learning rate
  (:mod:`oneprune_ext.pruning.sparsity`); a number keeps the formula above. ``sl_start="auto"`` starts
  sparsity learning at the first epoch ``t > 3`` at which ``psi`` rose by at most 1e-4 since
  ``t - 2`` (:func:`oneprune_ext.pruning.select.auto_sl_start`).
* **Pruning**, at :meth:`~OneCyclePruner.epoch_end` of the first sparsity-learning epoch whose
  indicator (computed at that epoch's start) is ``>= stability_threshold``, or of epoch
  ``sl_end`` at the latest (:meth:`~OneCyclePruner.will_prune` says beforehand): the channels of
  the chosen sub-network that are not kept (with ``reselect_at_prune``, of a sub-network chosen
  once more from the weights the epoch left) are removed physically and in place
  (:func:`oneprune_ext.pruning.compaction.prune_channels`: same ``Parameter`` objects, optimizer state
  compacted), so training goes on with the same optimizer and LR scheduler until
  ``total_epochs``. Afterwards the hooks only keep time. :attr:`EpochReport.removed_norm_share`
  tells, before the prune, how much of the weight norm the removed channels still hold.

Differences from the authors' public code (OCSPruner ``main_cifar.py`` / ``main_imagenet.py``),
each deliberate:

* Sparsity learning starts at ``sl_start`` with ``reg``; the published CIFAR loop regularises
  from ``sl_start + 2`` and raises ``reg`` by ``reg_delta`` before each regularised epoch (so it
  starts at ``reg + reg_delta``) on epochs divisible by ``reg_interval``. Reason: the schedule
  the paper states; the totals agree (``S`` = 8.32 here, 8.13 published, by the prune).
* A stability prune needs sparsity learning to have started; the published loops prune when
  stable in any monitored epoch. Reason: a prune before any regularisation is a blind cut (a
  large prune shock).
* ``sl_end`` is the last epoch trained before the forced prune (the published CIFAR loop trains
  one more, ``sl_end + 1``). Reason: "prune by ``sl_end``", as the option is documented.
* The sub-network search costs candidates with an exact closed form and returns the shortest
  prefix that reaches the target (never below it); the published search deep-copies and prunes
  the model at every binary-search probe and stops at the first probe within 5e-4 of the
  target, which may fall short of it.
  Reason: the same ranking, microseconds instead of seconds, exact reduction.
* The pruned model keeps training with the same optimizer (momentum of the kept channels kept)
  and scheduler; the published code builds a new optimizer after the prune. Reason: one run,
  one optimizer; nothing about the schedule changes.
* The shrink runs after ``optimizer.step()`` on CIFAR and ImageNet alike (the published
  ImageNet loop scales before the step). Reason: one hook order for every loop; it moves one
  step's update.
* ``regularizer="group_lasso"`` / ``"both"`` and ``reg="auto"`` are this project's additions
  (the published penalty is computed under ``no_grad``, so only the shrink acts; SGD momentum
  amplifies the lasso gradient about tenfold). ``saliency_params="all"`` counts depthwise-conv,
  LayerNorm and layer-scale weights too (published: only conv/linear rows and columns and BatchNorm
  weights count, the default).

The recipes (``oneprune --print-config`` prints them resolved; :data:`oneprune_ext.cli.train.PRESETS`):
CIFAR-10: 300 epochs, batch 128, SGD momentum 0.9 Nesterov, weight decay 5e-4, lr 0.1 x0.2 at
30/60/80/90 %, ``monitor_start`` 2, ``sl_start`` 30, ``sl_end`` 110, ``reg`` 1e-4 + 1e-4 per
epoch, ``layer_limit`` 0.75. ImageNet: 130 epochs, batch 256, SGD momentum 0.9 without Nesterov,
weight decay 1e-4, cosine lr from 0.1 stepped per iteration, ``monitor_start`` 2, ``sl_start``
``"auto"``, ``sl_end`` 50, ``reg`` 1e-4 + 1e-4 every 2 epochs, ``reselect_at_prune``.

Resume protocol (bit-identical on CPU to an uninterrupted run with the same seed, including
across the prune)::

    # checkpoint, at the end of epoch k (after pruner.epoch_end(k, optimizer)):
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "pruner": pruner.state_dict(),
                "epoch": k}, path)
    # resume:
    ckpt = torch.load(path, weights_only=True)
    model = build_model(); optimizer = build_optimizer(model); scheduler = build_scheduler(optimizer)
    pruner = OneCyclePruner(model, example_inputs, config)  # same config, on the fresh DENSE model
    pruner.load_state_dict(ckpt["pruner"])       # reshapes the model if the run was pruned
    model.load_state_dict(ckpt["model"])         # now the shapes match
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    for epoch in range(ckpt["epoch"] + 1, E):
        train_loader.sampler.set_epoch(epoch)    # same batches as the uninterrupted run
        ...
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn as nn

from . import distributed, profiling
from ..kernels import ops as _fused_ops
from .compaction import prune_channels
from .config import PrunerConfig
from ..graph.cost import CostModel
from ..graph.trace import channel_multiplicity, trace_groups
from ..graph.groups import ChannelGroups
from ..kernels.layout import ChannelLayout
from .sparsity import AutoShrink
from .select import (
    Selection,
    StabilityTracker,
    auto_sl_start,
    layer_limits,
    per_channel_cost,
    round_kept_counts,
    select_subnetwork,
)
from .state_reader import StateReader

__all__ = ["OneCyclePruner", "EpochReport", "PrunerConfig"]

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
        removed_norm_share: share of the squared weight norm that the channels chosen for
            removal still hold at the end of the epoch, before any prune:
            ``sum_{c removed} ||g_c||^2 / sum_c ||g_c||^2`` over every channel ``c`` of every
            group (``g_c``: all coupled slices of ``c``), 0..1. Near 0 at the prune means the
            prune barely changes the network. None before monitoring and after the prune.
        shrink: the shrink so far, ``S = sum of reg * lr`` over every sparsity-learning step:
            a channel in the removal set since ``sl_start`` is scaled by about ``exp(-S)``
            (``regularizer="shrink"``). The published CIFAR-10 recipe reaches 8.3 by ``sl_end``.
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
    removed_norm_share: Optional[float] = None
    shrink: float = 0.0


def _is_int(x: Any) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _is_real(x: Any) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def _current_scale(scaler: Optional[Any]) -> Optional[torch.Tensor]:
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


def _found_inf(scaler: Optional[Any], device: torch.device) -> Optional[torch.Tensor]:
    """Sum of the scaler's inf/NaN flags of this step on ``device`` (no host sync), or None."""
    if scaler is None or not scaler.is_enabled():
        return None
    flags = [f for st in getattr(scaler, "_per_optimizer_states", {}).values()
             for f in st.get("found_inf_per_device", {}).values()]
    if not flags:
        raise ValueError("after_step(scaler=...): call it after scaler.step(optimizer) and before "
                         "scaler.update() (the scaler's record of skipped steps is cleared by update)")
    return torch.stack([f.reshape(()).to(device, torch.float32) for f in flags]).sum()


def _check_plain_module(model: Any) -> None:
    """The pruner edits the module itself: refuse the wrappers that forward through it."""
    if isinstance(model, nn.parallel.DistributedDataParallel) or isinstance(model, nn.DataParallel):
        raise ValueError(f"OneCyclePruner: pass the wrapped module ({type(model).__name__}(...).module), not the "
                         "wrapper; forward through the wrapper, and after the prune wrap the module again")
    if hasattr(model, "_orig_mod") and isinstance(getattr(model, "_orig_mod"), nn.Module):
        raise ValueError("OneCyclePruner: pass the module you compiled (compiled._orig_mod), not the "
                         "torch.compile wrapper; keep forwarding through the compiled one")
    if not isinstance(model, nn.Module):
        raise TypeError(f"OneCyclePruner: model must be an nn.Module, got {type(model).__name__}")


def _make_config(model: nn.Module, config: Optional[PrunerConfig], options: dict[str, Any]) -> PrunerConfig:
    """The config of ``OneCyclePruner(model, x, config, **options)``: keywords override ``config``."""
    if config is not None and not isinstance(config, PrunerConfig):
        raise TypeError(f"OneCyclePruner: config must be a PrunerConfig, got {type(config).__name__} "
                        "(pass options as keywords, or PrunerConfig(**options))")
    known = {f.name for f in dataclasses.fields(PrunerConfig)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise TypeError(f"OneCyclePruner: unknown option(s) {unknown}; the options are {sorted(known)}")
    if "ignored_layers" in options:
        options = dict(options, ignored_layers=_layer_names(model, options["ignored_layers"]))
    if config is not None:
        return dataclasses.replace(config, **options)
    if "total_epochs" not in options:
        raise ValueError("OneCyclePruner: total_epochs is required (the length of the run, in epochs)")
    return PrunerConfig(**options)


def _layer_names(model: nn.Module, layers: Any) -> tuple[str, ...]:
    """Module names of ``layers`` (modules of ``model`` or names)."""
    if isinstance(layers, (str, nn.Module)):
        layers = [layers]
    name_of = {id(m): n for n, m in model.named_modules()}
    out = []
    for m in layers:
        if isinstance(m, nn.Module):
            if id(m) not in name_of:
                raise ValueError(f"ignored_layers: {type(m).__name__} module is not part of the model")
            out.append(name_of[id(m)])
        else:
            out.append(m)
    return tuple(out)


class OneCyclePruner:
    """Prunes channels of ``model`` while it trains from scratch, in one run (see module docs).

    Build it with a :class:`~oneprune_ext.pruning.config.PrunerConfig` or with the same options as
    keywords (both forms may be mixed: keywords override the config's fields)::

        pruner = OneCyclePruner(model, x, PrunerConfig(total_epochs=300, reduction=0.5))
        pruner = OneCyclePruner(model, x, total_epochs=300, reduction=0.5, ignored_layers=[model.fc])

    Args:
        model: the dense network (CPU or CUDA, any memory format). Traced once, here, under
            ``torch.no_grad``. Pass the plain module, not a ``DistributedDataParallel`` or
            ``torch.compile`` wrapper (those forward through it, the pruner edits it).
        example_inputs: a tensor or tuple of positional inputs for one forward (shapes only
            matter; MACs are reported for this batch, so use a batch of one for per-sample MACs).
        config: the options (see :class:`~oneprune_ext.pruning.config.PrunerConfig` for each one, its
            unit and default); ``total_epochs`` is required, here or as a keyword.
        process_group: under ``torch.distributed`` (DDP, torchrun): the group whose ranks train
            this model, e.g. ``torch.distributed.group.WORLD``. Every epoch's saliencies are then
            broadcast from the group's rank 0, so every rank chooses the same sub-network and
            prunes at the same epoch, and ``epoch_start`` checks (one all-reduce of per-tensor
            checksums) that the ranks' parameters are identical. None: single process.
        **options: any :class:`~oneprune_ext.pruning.config.PrunerConfig` field; ``ignored_layers`` may
            also be given as modules of ``model``.

    Raises:
        ValueError: a bad option (the message names it), a target unreachable under the
            layer limits, or a model without prunable channels.
        TypeError: an unknown option name.

    Attributes:
        config: the :class:`~oneprune_ext.pruning.config.PrunerConfig` in use.
        process_group: the ``torch.distributed`` group given, or None.
        groups: the channel groups now (dense sizes before the prune, kept counts after).
        layout: the fused kernels' channel layout (rebuilt at the prune).
        tracker: the :class:`~oneprune_ext.pruning.select.StabilityTracker`.
        selection: the latest :class:`~oneprune_ext.pruning.select.Selection` (None before monitoring).
        history: one plain dict per monitored epoch: ``epoch``, ``indicator``, ``reduction``,
            ``kept_counts``.
        sl_start: the resolved sparsity-learning start epoch (None while ``"auto"`` has not fired).
    """

    @profiling.spanned("init")
    def __init__(
        self,
        model: nn.Module,
        example_inputs: Union[torch.Tensor, Sequence[torch.Tensor]],
        config: Optional[PrunerConfig] = None,
        *,
        process_group: Optional[Any] = None,
        **options: Any,
    ) -> None:
        t0 = time.perf_counter()
        _check_plain_module(model)
        cfg = _make_config(model, config, options)
        self.config: PrunerConfig = cfg
        self.model = model
        self.process_group = process_group
        self.sl_start: Optional[int] = None if cfg.sl_start == "auto" else int(cfg.sl_start)
        modules = dict(model.named_modules())
        missing = [n for n in cfg.ignored_layers if n not in modules]
        if missing:
            raise ValueError(f"ignored_layers: the model has no module named {missing} (see model.named_modules())")

        with torch.no_grad():  # nothing here may leave an autograd graph alive
            with profiling.span("trace"):
                groups = trace_groups(model, example_inputs, ignored_layers=[modules[n] for n in cfg.ignored_layers],
                                      saliency_params=cfg.saliency_params)
            self._dense_groups: ChannelGroups = groups
            self.groups: ChannelGroups = groups
            with profiling.span("cost_model"):
                self._cost = CostModel(model, groups, example_inputs)
        with profiling.span("layout_build"):
            self.layout = ChannelLayout(model, groups)
        self.dense_macs: int = int(self._cost.dense_macs)
        self.dense_params: int = int(self._cost.dense_params)
        self._dense_sizes: list[int] = list(groups.sizes)
        # layer channels per group channel (G for a group through a grouped conv with G conv groups):
        # the per-layer limit and round_to count layer channels
        self._multiplicity: list[int] = channel_multiplicity(groups)
        self._cost_fn: Callable[[list[int]], int] = self._cost.macs if cfg.target == "macs" else self._cost.params
        self._dense_cost = self.dense_macs if cfg.target == "macs" else self.dense_params
        # Per-channel MAC cost of each group, in MACs (cost_share divides by 1e6), measured as the
        # published code does; MAC-based even when the target is parameters.
        self._per_channel_macs: list[float] = per_channel_cost(self._cost.macs, self._dense_sizes)
        self.max_reduction: float = self._max_reachable_reduction()
        if self.max_reduction < cfg.reduction - 1e-12:
            raise ValueError(
                f"reduction={cfg.reduction} is unreachable: removing every channel the per-layer limit "
                f"allows (layer_limit={cfg.layer_limit}, layer_limit_k={cfg.layer_limit_k}"
                + (f", round_to={cfg.round_to}" if cfg.round_to is not None else "")
                + f") removes at most {self.max_reduction:.4f} of the dense {cfg.target}. Lower `reduction` "
                "or raise `layer_limit` / `layer_limit_k`"
                + (" / lower `round_to`" if cfg.round_to is not None else "") + ".")

        self._ops: Any = _fused_ops  # the fused kernels; tests swap in oneprune_ext.kernels.reference
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
        # sparsity-learning bookkeeping (host floats and ints only: nothing here synchronises)
        self._auto: Optional[AutoShrink] = AutoShrink() if cfg.reg == "auto" else None
        self._factor_value = 1.0  # what _factor_t holds (reg="auto")
        self._steps_now = 0  # after_step calls in the current epoch
        self._steps_per_epoch: Optional[int] = None  # after_step calls in the last epoch that had any
        self._last_lr: Optional[float] = None  # lr of the latest after_step
        self._shrink_total = 0.0  # S = sum of reg * lr over the sparsity-learning steps
        self._epoch_shrink = 0.0  # this epoch's share of S
        self._epoch_lr_sum = 0.0  # sum of this epoch's lrs (for its effective reg under "auto")
        self._stats: dict[str, float] = {h: 0.0 for h in _HOOKS}
        self._clock = profiling.DeviceClock(_HOOKS, next(iter(self.layout.parameters()), None))
        #: wall seconds the construction took (trace + cost model + layout), not part of ``stats``
        self.init_seconds: float = time.perf_counter() - t0

    @property
    def total_epochs(self) -> int:
        """Length of the run in epochs (``config.total_epochs``)."""
        return self.config.total_epochs

    def _max_reachable_reduction(self) -> float:
        sizes = np.asarray(self._dense_sizes, dtype=np.int64)
        limits = np.asarray(layer_limits(self._dense_sizes, self.config.layer_limit, self.config.layer_limit_k,
                                       multiplicity=self._multiplicity), dtype=np.int64)
        kept = sizes - limits
        if self.config.round_to is not None:
            kept = round_kept_counts(kept, sizes, limits, self.config.round_to, multiplicity=self._multiplicity)
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
        """Regularisation strength on the steps of ``epoch`` (0.0 outside sparsity learning).

        With a number ``reg``: ``reg + reg_delta * floor((epoch - sl_start) / reg_interval)``. With
        ``reg="auto"`` the strength is planned when the epoch starts (its share of the published
        shrink curve spread over its steps): for the epoch now running, that step's ``reg * lr``
        divided by the latest learning rate seen by :meth:`after_step` (0.0 before any step);
        :attr:`EpochReport.reg` gives the epoch's effective value afterwards.
        """
        if not self._sl_active(epoch) or self._pruned:
            return 0.0
        assert self.sl_start is not None
        if self._auto is not None:
            if epoch != self._last_start or not self._last_lr:
                return 0.0
            return self._auto.per_step / self._last_lr
        return self.config.reg + self.config.reg_delta * ((epoch - self.sl_start) // self.config.reg_interval)

    def will_prune(self, epoch: int) -> bool:
        """Whether ``epoch_end(epoch)`` will prune the model (ask after ``epoch_start(epoch)``).

        Lets a training loop evaluate the model right before the prune, with no training in
        between, and compare with the accuracy right after it (the *prune shock*); the bundled
        trainer does this.
        """
        e = int(epoch)
        return self._last_start == e and self._last_end != e and self._prune_due(e)

    def _prune_due(self, epoch: int) -> bool:
        stable = self.tracker.indicator >= self.config.stability_threshold
        return (not self._pruned and epoch >= self.config.monitor_start and self.selection is not None
                and ((stable and self._sl_active(epoch)) or epoch >= self.config.sl_end))

    def phase_at(self, epoch: int) -> str:
        """``"dense"``, ``"monitoring"``, ``"sparsity"`` or ``"pruned"`` for ``epoch`` now."""
        if self._pruned and self._prune_epoch is not None and epoch > self._prune_epoch:
            return "pruned"
        if self._sl_active(epoch):
            return "sparsity"
        if epoch >= self.config.monitor_start:
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

    def channel_counts(self) -> list[dict[str, Any]]:
        """Per channel group, in group order: ``name``, ``dense`` (channels of the dense model)
        and ``kept`` (channels now: the dense count before the prune, the kept count after)."""
        return [{"name": g.name, "dense": int(d), "kept": int(k)}
                for g, d, k in zip(self._dense_groups, self._dense_sizes, self.groups.sizes)]

    @property
    def stats(self) -> dict[str, float]:
        """Seconds spent in each hook, accumulated: host time always, device time on CUDA.

        Host (wall) seconds, keys ``epoch_start``, ``before_step``, ``after_step``,
        ``epoch_end`` and ``total`` (their sum): the time the calling thread spent inside the
        hook. On the CPU that is the hook's whole cost; on a GPU the hooks only launch kernels.

        Device seconds, only while the model is on CUDA: ``epoch_start_device``,
        ``before_step_device``, ``after_step_device``, ``epoch_end_device`` and
        ``total_device``, measured with a CUDA event pair around each hook call on the current
        stream (:mod:`oneprune_ext.pruning.profiling`). The step path never synchronises: the events
        are read at the end of each :meth:`epoch_end` (then the totals are complete) and,
        for calls already finished on the device, whenever ``stats`` is read.

        The one-off construction is :attr:`init_seconds`. Restored by :meth:`load_state_dict`,
        so a resumed run reports the whole run's overhead.
        """
        out = {h: self._stats[h] for h in _HOOKS}
        out["total"] = sum(out.values())
        out.update(self._clock.stats())
        return out

    # ------------------------------------------------------------------ hooks
    @profiling.hook("epoch_start")
    def epoch_start(self, epoch: int) -> None:
        """Start of a 0-based epoch: search the sub-network and update the indicator.

        From ``monitor_start`` until the prune: one fused saliency kernel, the closed-form
        selection and the indicator update; then the regulariser's mask and ``reg`` are put
        on the model's device once for the whole epoch. Raises ValueError for an epoch outside
        ``[0, total_epochs)``, an epoch not after the previous one, an epoch started while the
        previous one was not ended (``epoch_end`` skipped), or a model that was reshaped behind
        the pruner's back.
        """
        t0 = time.perf_counter()
        try:
            e = self._check_epoch(epoch, "epoch_start")
            if self._last_end is not None and e <= self._last_end:
                raise ValueError(f"epoch_start: epoch {e} is not after the last finished epoch {self._last_end}")
            if self._last_start is not None and self._last_start != self._last_end:
                s0 = self._last_start
                if e == s0:
                    raise ValueError(f"epoch_start({e}) called twice without epoch_end({e})")
                raise ValueError(f"epoch_start({e}): epoch {s0} was started but never ended; call "
                                 f"pruner.epoch_end({s0}, optimizer) first (it prunes when epoch {s0} is due)")
            self._check_model()
            if self.process_group is not None:
                distributed.check_same_on_all_ranks(self.layout.parameters(), self.layout.tensor_names, self.process_group)
            self._last_start = e
            self._searched_now = False
            self._active_lasso = self._active_shrink = False
            self._mask_dev = None
            self._reg_value = 0.0
            self._steps_now = 0
            self._epoch_shrink = self._epoch_lr_sum = 0.0
            if self._pruned or e < self.config.monitor_start:
                return
            self._search(e)
            if (self.config.sl_start == "auto") and self.sl_start is None and auto_sl_start(self.tracker.history, e):
                self.sl_start = e
            if self._sl_active(e):
                self._arm_regularizer(e)
        finally:
            self._stats["epoch_start"] += time.perf_counter() - t0

    def _norms(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel squared norms and saliencies now (every rank gets rank 0's saliencies)."""
        with torch.no_grad(), profiling.span("saliency"):
            sq_norm, saliency = self._ops.grouped_norms(self.layout)
        if self.process_group is not None:  # every rank chooses rank 0's sub-network
            saliency = distributed.broadcast_from_rank0(saliency, self.process_group)
        return sq_norm, saliency

    def _select(self, saliency: torch.Tensor) -> Selection:
        with profiling.span("selection"):
            return select_subnetwork(
                saliency, self.groups.sizes, self._cost_fn, self.config.reduction,
                per_channel_mac_cost=self._per_channel_macs, dense_cost=self._dense_cost,
                layer_limit=self.config.layer_limit, layer_limit_k=self.config.layer_limit_k, round_to=self.config.round_to,
                multiplicity=self._multiplicity,
            )

    @profiling.spanned("search")
    def _search(self, epoch: int) -> None:
        _, saliency = self._norms()
        sel = self._select(saliency)
        with profiling.span("stability"):
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
        self._mask_dev = self.selection.removal_mask.to(device)
        self._factor_lr = None
        if self._auto is not None:
            assert self.sl_start is not None
            per_step = self._auto.plan_epoch(epoch, self.sl_start, self.config.sl_end, self._steps_per_epoch)
            self._reg_value = per_step / self._last_lr if self._last_lr else 0.0
            self._factor_value = 1.0 - per_step
        else:
            self._reg_value = self.reg_at(epoch)
            self._factor_value = 1.0
        self._reg_t = torch.full((), self._reg_value, dtype=torch.float32, device=device)
        self._factor_t = torch.full((), self._factor_value, dtype=torch.float32, device=device)
        any_chosen = bool(self.selection.removal_mask.any())
        self._active_lasso = any_chosen and self.config.regularizer in ("group_lasso", "both")
        self._active_shrink = any_chosen and self.config.regularizer in ("shrink", "both")

    @profiling.hook("before_step")
    def before_step(self, scaler: Optional[Any] = None) -> Optional[torch.Tensor]:
        """After the backward of the step's last (micro-)batch, before ``optimizer.step()``.

        In sparsity learning with ``regularizer`` ``"group_lasso"`` or ``"both"``: adds
        ``reg * w / ||g_c||`` to the gradients of every slice of the channels chosen for
        removal (one fused kernel, no host synchronisation) and returns the penalty
        ``reg * sum_c ||g_c||`` as a 0-d fp32 device tensor (for logging; it is not part of
        the loss graph). Otherwise returns None. Call it once per optimizer step (with
        gradient accumulation: after the last micro-batch's backward).

        Args:
            scaler: the ``torch.amp.GradScaler`` whose scaled loss made the gradients, when
                they are still scaled (``scaler.scale(loss).backward()``, no ``unscale_`` yet):
                the gradient added is multiplied by the current scale on the device, so after
                unscaling it is exactly ``reg * w / ||g_c||``. If you call
                ``scaler.unscale_(optimizer)`` first (e.g. to clip gradients), call
                ``before_step()`` without it. A step the scaler skips (inf/NaN gradients) stays
                skipped: the added gradient is finite.

        Raises:
            ValueError: ``scaler`` was given but ``scaler.unscale_`` already ran this step, or
                the scaler has not scaled a loss yet.
        """
        t0 = time.perf_counter()
        try:
            if not self._active_lasso:
                return None
            scale = _current_scale(scaler)
            if scale is None:
                return self._ops.group_lasso_grad_(self.layout, self._mask_dev, self._reg_t)
            scale = scale.reshape(()).to(self._reg_t.device)
            return self._ops.group_lasso_grad_(self.layout, self._mask_dev, self._reg_t * scale) / scale
        finally:
            self._stats["before_step"] += time.perf_counter() - t0

    @profiling.hook("after_step")
    def after_step(self, lr: float, scaler: Optional[Any] = None) -> None:
        """After ``optimizer.step()``: in sparsity learning with ``regularizer`` ``"shrink"`` or
        ``"both"``, multiplies every slice of the channels chosen for removal by ``1 - reg * lr``
        (one fused kernel; the factor is refilled on the device only when it changes).
        Call it once per optimizer step, in every epoch: the pruner also counts the steps of an
        epoch (``reg="auto"`` spreads each epoch's share of the shrink curve over that many steps)
        and keeps the latest ``lr``.

        With ``reg="auto"`` the step's ``reg * lr`` comes from the epoch's plan (see
        :mod:`oneprune_ext.pruning.sparsity`), so the shrink does not depend on ``lr``; the group-lasso
        strength of the next step is that amount divided by ``lr``.

        Args:
            lr: the learning rate of the step just taken (e.g. ``optimizer.param_groups[0]["lr"]``).
            scaler: with a ``torch.amp.GradScaler``: the scaler that took the step. Call this
                after ``scaler.step(optimizer)`` and before ``scaler.update()``; when the scaler
                skipped the step (inf/NaN gradients) the shrink is skipped too. Decided on the
                device from the scaler's inf checks, without a host synchronisation (the
                shrink total :attr:`EpochReport.shrink` still counts the skipped step).

        Raises:
            ValueError: a bad ``lr``, or ``scaler`` given outside ``scaler.step`` .. ``scaler.update``.
        """
        t0 = time.perf_counter()
        try:
            if not (self._active_shrink or self._active_lasso):
                self._steps_now += 1
                if _is_real(lr) and math.isfinite(float(lr)) and float(lr) >= 0:
                    self._last_lr = float(lr)
                return
            if isinstance(lr, torch.Tensor):
                lr = float(lr)  # a tensor lr (capturable optimizers) costs one sync here
            if lr != self._last_lr and (not _is_real(lr) or not math.isfinite(lr) or lr < 0):
                raise ValueError(f"after_step: lr must be a finite number >= 0, got {lr!r}")
            lr = float(lr)
            found_inf = _found_inf(scaler, self._mask_dev.device) if self._active_shrink else None
            self._steps_now += 1
            amount = self._auto.take_step() if self._auto is not None else self._reg_value * lr
            self._shrink_total += amount
            self._epoch_shrink += amount
            self._epoch_lr_sum += lr
            self._last_lr = lr
            if self._auto is not None and self._active_lasso:
                self._set_reg(self._auto.per_step / lr if lr > 0 else 0.0)  # the next step's strength
            if self._active_shrink:
                self._shrink(lr, amount, found_inf)
        finally:
            self._stats["after_step"] += time.perf_counter() - t0

    def _set_reg(self, value: float) -> None:
        """The group-lasso strength of the coming steps (refilled on the device only when it changes)."""
        if value != self._reg_value:
            assert self._reg_t is not None
            self._reg_t.fill_(value)
            self._reg_value = value

    def _shrink(self, lr: float, amount: float, found_inf: Optional[torch.Tensor]) -> None:
        """Scale the channels chosen for removal by ``1 - amount`` (1 where the scaler skipped the step)."""
        assert self._factor_t is not None
        if self._auto is not None:
            value = 1.0 - amount
            if value != self._factor_value:
                self._factor_t.fill_(value)
                self._factor_value = value
        elif lr != self._factor_lr:
            self._factor_t.fill_(1.0 - self._reg_value * lr)
            self._factor_lr = lr
        factor = self._factor_t
        if found_inf is not None:  # 1 where the scaler skipped the step
            factor = torch.where(found_inf > 0, torch.ones_like(factor), factor)
        self._ops.scale_channels_(self.layout, self._mask_dev, factor)

    @profiling.hook("epoch_end")
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
            phase = self.phase_at(e)
            psi = self.tracker.indicator
            stable = psi >= self.config.stability_threshold
            reduction = self.selection.reduction if (self._searched_now and self.selection is not None) else None
            due = self._prune_due(e)
            sel, sq_norm = self.selection, None
            if due and self.config.reselect_at_prune:  # choose once more, from the weights this epoch left
                sq_norm, saliency = self._norms()
                sel = self._select(saliency)
                reduction = sel.reduction
            share = self._removed_share(sel, sq_norm) if (sel is not None and not self._pruned) else None
            info: dict[str, int] = {}
            pruned_now = False
            if due:
                assert sel is not None
                info = self._prune(e, optimizer, sel)  # validates first: if it raises, nothing changed
                self.selection = sel
                pruned_now = True
            reg = self._reg_value
            if self._auto is not None:
                self._auto.stop()
                if self._epoch_lr_sum > 0:  # the epoch's effective strength: its shrink over its lrs
                    reg = self._epoch_shrink / self._epoch_lr_sum
            if self._steps_now:
                self._steps_per_epoch = self._steps_now
            self._last_end = e
            self._active_lasso = self._active_shrink = False
            if self._pruned and reduction is None:
                reduction = 1.0 - (self.macs() / self.dense_macs if self.config.target == "macs"
                                   else self.params() / self.dense_params)
            return EpochReport(
                epoch=e, phase=phase, indicator=psi, reg=reg, target_reduction=self.config.reduction,
                reduction=reduction, stable=bool(stable), sl_start=self.sl_start, pruned_now=pruned_now,
                macs_before=info.get("macs_before"), macs_after=info.get("macs_after"),
                params_before=info.get("params_before"), params_after=info.get("params_after"),
                removed_norm_share=share, shrink=self._shrink_total,
            )
        finally:
            self._stats["epoch_end"] += time.perf_counter() - t0

    def _removed_share(self, sel: Selection, sq_norm: Optional[torch.Tensor] = None) -> float:
        """Share of the squared channel norms that ``sel``'s removal set holds now (one host sync)."""
        if sq_norm is None:
            with torch.no_grad():
                sq_norm, _ = self._ops.grouped_norms(self.layout)
        sq = sq_norm.to(torch.float64)
        removed, total = torch.stack([sq[sel.removal_mask.to(sq.device)].sum(), sq.sum()]).tolist()
        return removed / total if total > 0 else 0.0

    @profiling.spanned("prune")
    def _prune(self, epoch: int, optimizer: Optional[torch.optim.Optimizer], sel: Selection) -> dict[str, int]:
        info = {"macs_before": self.macs(), "params_before": self.params()}
        keep = [k.clone() for k in sel.kept_indices]
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
        with torch.no_grad(), profiling.span("compaction"):
            new_groups = prune_channels(self.model, self._dense_groups, cut, optimizer)
        self.groups = new_groups
        with profiling.span("layout_rebuild"):
            self.layout.rebuild(new_groups)  # the dense cost model stays exact: it is a polynomial of kept counts

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """All schedule state, as plain Python values and CPU tensors (``weights_only``-loadable)."""
        sel = self.selection
        return {
            "version": _STATE_VERSION,
            "config": self.config.to_dict(),
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
            "stats": {**{h: self._stats[h] for h in _HOOKS}, **self._clock.stats()},
            "sparsity": {
                "steps_per_epoch": self._steps_per_epoch, "last_lr": self._last_lr,
                "shrink_total": self._shrink_total,
                "auto": None if self._auto is None else self._auto.state_dict(),
            },
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`; reshapes the model when the saved run was already pruned.

        Call it on a pruner built on a fresh **dense** model, *before* ``model.load_state_dict``
        and ``optimizer.load_state_dict`` (see the module docs for the whole resume order): the
        model's layers are cut to the recorded kept channels so the saved tensors fit. Loading
        into this same pruner after it pruned is also accepted (no reshape).

        The whole state is checked before anything changes: if this raises, the model and the
        pruner are as they were.

        Raises:
            ValueError: the state was saved with other options (the message names each one
                and its two values: build the pruner with
                ``PrunerConfig.from_dict(state["config"])`` to continue that run), belongs to a
                different model (group names / sizes), is corrupt (a missing or malformed entry,
                named), or the model is already pruned differently.
        """
        saved = self._parse_state(state)
        keep = saved["prune_keep"]
        cur_sizes = list(self.groups.sizes)
        if saved["pruned"]:
            if cur_sizes == self._dense_sizes and saved["sizes"] != self._dense_sizes:
                self._check_model()
                self._apply_keep(keep, None)  # validates first: if it raises, nothing changed
            elif cur_sizes != saved["sizes"]:
                raise ValueError(
                    f"the model is pruned to {cur_sizes}, the saved run to {saved['sizes']}; load the pruner "
                    "state into a pruner built on a fresh dense model")
        elif cur_sizes != self._dense_sizes:
            raise ValueError("the saved run was not pruned yet but this model is; build a fresh dense model")
        # from here on nothing can fail
        self._prune_keep = keep
        self._pruned = saved["pruned"]
        self._prune_epoch = saved["prune_epoch"]
        self._prune_info = saved["prune_info"]
        self.sl_start = saved["sl_start_resolved"]
        self._reg_value = saved["reg_current"]
        self._last_start = saved["last_start"]
        self._last_end = saved["last_end"]
        self.tracker = saved["tracker"]
        self.history = saved["history"]
        self._masks = saved["masks"]
        self.selection = saved["selection"]
        for h in _HOOKS:
            self._stats[h] = saved["stats"].get(h, 0.0)
        self._clock.load(saved["stats"])
        sp = saved["sparsity"]
        self._steps_per_epoch, self._last_lr = sp["steps_per_epoch"], sp["last_lr"]
        self._shrink_total = sp["shrink_total"]
        if self._auto is not None:
            self._auto.load_state_dict(sp["auto"] or {})
        # step-path state is re-armed by the next epoch_start
        self._active_lasso = self._active_shrink = False
        self._mask_dev = self._reg_t = self._factor_t = None
        self._factor_lr = None
        self._factor_value = 1.0
        self._searched_now = False
        self._steps_now = 0
        self._epoch_shrink = self._epoch_lr_sum = 0.0

    def _parse_state(self, state: Any) -> dict[str, Any]:
        """Every entry of a :meth:`state_dict`, checked and converted; nothing is changed here."""
        if not isinstance(state, Mapping):
            raise ValueError(f"OneCyclePruner.load_state_dict: expected the dict of state_dict(), got "
                             f"{type(state).__name__}")
        version = state.get("version")
        if isinstance(version, bool) or not isinstance(version, int) or version != _STATE_VERSION:
            raise ValueError(f"unsupported OneCyclePruner state version {version!r} "
                             f"(this version reads {_STATE_VERSION})")
        v = StateReader(state, self.total_epochs)
        self._check_same_model(v)
        self._check_saved_config(v.get("config"))
        return {**self._parse_prune(v), **self._parse_schedule(v)}

    def _check_same_model(self, v: StateReader) -> None:
        names, dense = [g.name for g in self._dense_groups], self._dense_sizes
        saved_names, saved_dense = v.get("group_names"), v.get("dense_sizes")
        if not isinstance(saved_names, Sequence) or list(saved_names) != names or not isinstance(
                saved_dense, Sequence) or [v.int(s, "dense_sizes") for s in saved_dense] != dense:
            raise ValueError(
                "pruner state does not match this model's channel groups (different architecture, width "
                f"or ignored_layers?): saved sizes {saved_dense!r}, model {dense}")

    def _parse_prune(self, v: StateReader) -> dict[str, Any]:
        """Whether and how the saved run was pruned: sizes, prune epoch, kept channels."""
        dense = self._dense_sizes
        out: dict[str, Any] = {"sizes": v.int_list("sizes", len(dense), 1, dense), "pruned": v.flag("pruned")}
        if out["pruned"]:
            out["prune_epoch"] = v.epoch("prune_epoch")
            out["prune_keep"] = v.index_sets("prune_keep", dense, counts=out["sizes"])
        else:
            if out["sizes"] != dense or v.get("prune_epoch") is not None:
                raise v.bad("sizes / prune_epoch of a run that was not pruned")
            out["prune_epoch"], out["prune_keep"] = None, None
        out["prune_info"] = v.int_dict("prune_info")
        return out

    def _parse_schedule(self, v: StateReader) -> dict[str, Any]:
        """Where the schedule stands: epochs, regularisation, search history, stats."""
        dense = self._dense_sizes
        out: dict[str, Any] = {"sl_start_resolved": v.optional_epoch("sl_start_resolved")}
        if self.config.sl_start != "auto" and out["sl_start_resolved"] != self.config.sl_start:
            raise v.bad(f"sl_start_resolved={out['sl_start_resolved']!r} but sl_start={self.config.sl_start}")
        out["reg_current"] = v.number("reg_current", v.get("reg_current"))
        out["last_start"], out["last_end"] = v.optional_epoch("last_start"), v.optional_epoch("last_end")
        if out["last_end"] is not None and (out["last_start"] is None or out["last_end"] > out["last_start"]):
            raise v.bad(f"last_end={out['last_end']} after last_start={out['last_start']}")
        out["tracker"] = v.tracker("tracker", dense)
        out["history"] = v.history("history", len(dense))
        out["masks"] = v.masks("masks", sum(dense))
        if not len(out["history"]) == len(out["masks"]) == len(out["tracker"].history):
            raise v.bad(f"history ({len(out['history'])} epochs), masks ({len(out['masks'])}) and tracker "
                        f"({len(out['tracker'].history)}) disagree")
        out["selection"] = v.selection("selection", dense)
        stats = v.get("stats")
        if not isinstance(stats, Mapping):
            raise v.bad("stats is not a dict")
        out["stats"] = {h: v.number(f"stats[{h!r}]", stats[h]) for h in _HOOKS if h in stats}
        device_keys = [f"{h}_device" for h in _HOOKS]  # CUDA device seconds (profiling.DeviceClock)
        out["stats"].update({k: v.number(f"stats[{k!r}]", stats[k]) for k in device_keys if k in stats})
        out["sparsity"] = v.sparsity("sparsity")
        return out

    def _check_saved_config(self, saved: Any) -> None:
        """Refuse a state saved with other options, naming each one."""
        try:
            cfg = PrunerConfig.from_dict(saved)
        except (TypeError, ValueError) as e:
            raise ValueError(f"OneCyclePruner.load_state_dict: the saved options are invalid ({e})") from None
        a, b = cfg.to_dict(), self.config.to_dict()
        diff = [f"{k}={a[k]!r} (saved) vs {b[k]!r} (this pruner)" for k in a if a[k] != b[k]]
        if diff:
            raise ValueError(
                f"OneCyclePruner.load_state_dict: the state was saved by a run with other options: "
                f"{', '.join(diff)}. A resumed run must be the same run: build the pruner with the saved "
                "options, PrunerConfig.from_dict(state['config']); nothing was changed")

    def __repr__(self) -> str:
        return (f"OneCyclePruner(target={self.config.target!r}, reduction={self.config.reduction}, groups={len(self.groups)}, "
                f"channels={self.groups.num_channels}, pruned={self._pruned}, prune_epoch={self._prune_epoch})")
