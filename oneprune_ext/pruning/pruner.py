"""OneCyclePruner: the one-cycle method behind four hooks, called from any training loop.

Usage (every call is cheap; the step-path calls are fused kernels)::

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

The method, its differences from the published code and the loop shapes that work across the prune:
:mod:`oneprune_ext.pruning`; the resume protocol: :mod:`oneprune_ext.pruning.state`. The pruner is a
facade over named parts: ``facts`` (dense groups, exact costs), ``schedule`` (phases, when to prune),
``search`` (saliency, selection, stability), ``sparsity`` (the regularizer on every step),
``mirrors`` (EMA / SWA copies pruned with the model, :mod:`~oneprune_ext.pruning.mirrors`),
``follower`` (the layout follows the model's memory format, dtype and device,
:mod:`~oneprune_ext.pruning.follow`) and :class:`~oneprune_ext.pruning.state.PrunerState`
(``state_dict`` and its checked reader).
"""

from __future__ import annotations

import time
from typing import Any, Optional, Sequence, TypeVar, Union

import torch
import torch.nn as nn

from . import distributed, profiling
from ..kernels import ops as _fused_ops
from ..kernels.layout import ChannelLayout
from .compaction import prune_to_kept
from .config import PrunerConfig, config_with_options
from .epoch_report import EpochReport
from .facts import ModelFacts, check_plain_module
from .follow import ModelFollower
from .mirrors import Mirrors, tensor_shapes
from .regularizers import Regularizer, regularizer_for
from .saliency import Saliency, saliency_for
from .schedule import Schedule
from .search import SubnetworkSearch
from .selection import Selection
from .sparsity import strength_for
from .sparsity_learning import SparsityLearning
from .state import HOOKS, PrunerState

__all__ = ["OneCyclePruner", "EpochReport", "PrunerConfig"]

T = TypeVar("T")


def _read(path: str, doc: str) -> Any:
    """A read-only attribute of the facade: ``name`` of its part ``part`` (``path="part.name"``)."""
    part, name = path.split(".")
    return property(lambda self: getattr(getattr(self, part), name), doc=doc)


class OneCyclePruner:
    """Prunes channels of ``model`` while it trains from scratch, in one run (see module docs).

    Options: a :class:`~oneprune_ext.pruning.config.PrunerConfig` and/or the same as keywords (which
    override it): ``OneCyclePruner(model, x, total_epochs=300, reduction=0.5, ignored_layers=[model.fc])``.

    Args:
        model: the dense network (CPU or CUDA, any memory format), traced here once under ``no_grad``.
            Pass the plain module, not a ``DistributedDataParallel`` / ``torch.compile`` wrapper.
        example_inputs: a tensor or tuple of inputs for one forward (shapes only matter; MACs are
            reported for this batch: a batch of one gives per-sample MACs).
        config: the options (each one's unit and default: ``PrunerConfig``); ``total_epochs`` is required.
        process_group: under ``torch.distributed``: the group training this model; every epoch's
            saliencies come from its rank 0 and ``epoch_start`` checks the ranks' parameters agree.
        **options: any ``PrunerConfig`` field; ``ignored_layers`` may also be modules of ``model``.

    Raises:
        ValueError: a bad option (named), a target the layer limits make unreachable, a model without
            prunable channels. TypeError: an unknown option name.

    Attributes:
        groups: the channel groups now (kept counts after the prune). layout: the kernels' channel
        layout. facts, schedule, search, sparsity, mirrors, follower: the parts. saliency, regularizer:
        the strategies the options chose (:mod:`~oneprune_ext.pruning.saliency`,
        :mod:`~oneprune_ext.pruning.regularizers`).
    """

    @profiling.spanned("init")
    def __init__(self, model: nn.Module, example_inputs: Union[torch.Tensor, Sequence[torch.Tensor]],
                 config: Optional[PrunerConfig] = None, *, process_group: Optional[Any] = None,
                 **options: Any) -> None:
        t0 = time.perf_counter()
        check_plain_module(model)
        self.config: PrunerConfig = config_with_options(model, config, options)
        self.model, self.process_group = model, process_group
        self.saliency: Saliency = saliency_for(self.config.saliency_params)
        self.regularizer: Regularizer = regularizer_for(self.config.regularizer)
        self.facts = ModelFacts.trace(model, example_inputs, self.config, self.saliency)
        self.groups = self.facts.groups
        with profiling.span("layout_build"):
            self.layout = ChannelLayout(model, self.groups)
        self.follower = ModelFollower(self.layout)
        touched = sorted({s.name for g in self.groups for s in g.slices})
        self.mirrors = Mirrors(model, touched, tensor_shapes(model))
        self.dense_macs, self.dense_params = self.facts.dense_macs, self.facts.dense_params
        self.max_reduction: float = self.facts.max_reduction  # the largest reachable reduction
        self.schedule = Schedule(self.config)
        self.search = SubnetworkSearch(self.facts, self.config, self.saliency, _fused_ops, process_group)
        self.sparsity = SparsityLearning(self.regularizer, strength_for(self.schedule), _fused_ops, self._follow)
        self._prune_keep: Optional[list[torch.Tensor]] = None
        self._prune_info: dict[str, int] = {}
        self._clock = profiling.HookClock(HOOKS, next(iter(self.layout.parameters()), None))
        #: wall seconds the construction took (trace + cost model + layout), not part of ``stats``
        self.init_seconds: float = time.perf_counter() - t0

    # ------------------------------------------------------------------ the four hooks
    @profiling.hook("epoch_start")
    def epoch_start(self, epoch: int) -> None:
        """Start of a 0-based epoch: from ``monitor_start`` until the prune, search the sub-network and
        update the stability indicator; in sparsity learning, arm the regularizer for the epoch's steps.
        ValueError: an epoch outside the run, not after the last one, or started before the last one
        ended; a model reshaped behind the pruner's back."""
        e = self.schedule.check_start(epoch)
        self._follow()
        if self.process_group is not None:
            distributed.check_same_on_all_ranks(self.layout.parameters(), self.layout.tensor_names, self.process_group)
        self.schedule.last_start = e
        self._reset_step_state()
        if not self.schedule.monitoring(e):
            return
        selection = self.search.search(e, self.layout, self.groups.sizes)
        self.schedule.start_sparsity_on_plateau(e, self.search.tracker.history)
        if self.schedule.sparsity_learning(e):
            self.sparsity.arm(e, selection.removal_mask, self.layout)

    @profiling.hook("before_step")
    def before_step(self, scaler: Optional[Any] = None) -> Optional[torch.Tensor]:
        """After the step's last backward, before ``optimizer.step()``: the regularizer's gradient (in
        sparsity learning with ``group_lasso`` / ``both``: ``reg * w / ||g_c||`` added to the chosen
        channels' gradients, one fused kernel); returns the penalty ``reg * sum_c ||g_c||`` (0-d device
        tensor) or None. ``scaler``: the ``GradScaler`` whose scaled loss made the gradients, while
        still scaled (not after ``unscale_``: ValueError)."""
        return self.sparsity.before_step(scaler)

    @profiling.hook("after_step")
    def after_step(self, lr: float, scaler: Optional[Any] = None, *, skipped: Optional[torch.Tensor] = None) -> None:
        """After ``optimizer.step()``, every step of every epoch, with its learning rate: the
        regularizer's shrink (in sparsity learning with ``shrink`` / ``both``: the chosen channels times
        ``1 - reg * lr``, one fused kernel); counts the epoch's steps (``reg="auto"`` plans with them).
        ``scaler``: call between ``scaler.step`` and ``scaler.update``; a skipped step is not shrunk.
        ``skipped``: instead of ``scaler``, where the scaler was already updated (a framework's
        precision plugin): a 0-d device tensor, nonzero when the optimizer skipped the step (no host sync)."""
        self.sparsity.after_step(lr, scaler, skipped)

    @profiling.hook("epoch_end")
    def epoch_end(self, epoch: int, optimizer: Optional[torch.optim.Optimizer] = None) -> EpochReport:
        """End of a 0-based epoch: when the prune is due (:meth:`will_prune`), remove the channels the
        sub-network does not keep (chosen once more with ``reselect_at_prune``) in place, compacting
        ``optimizer``'s state too (pass the optimizer that trains the model); report the epoch."""
        e = self.schedule.check_end(epoch)
        self._follow()
        phase, psi, sel = self.schedule.phase_at(e), self.tracker.indicator, self.selection
        reduction = sel.reduction if (self.search.searched_now and sel is not None) else None
        due, sq_norm = self._prune_due(e), None
        if due and self.config.reselect_at_prune:  # choose once more, from the weights this epoch left
            sq_norm, saliency = self.search.norms(self.layout)
            sel = self.search.select(saliency, self.groups.sizes)
            reduction = sel.reduction
        share = self.search.removed_share(sel, self.layout, sq_norm) if (sel is not None and not self.pruned) else None
        info = self._prune(e, optimizer, sel) if due else {}  # validates first: if it raises, nothing changed
        reg = self.sparsity.end_epoch()
        self.schedule.last_end = e
        if self.pruned and reduction is None:
            reduction = self.facts.reduction(self.groups.sizes)
        return EpochReport(
            epoch=e, phase=phase, indicator=psi, reg=reg, target_reduction=self.config.reduction,
            reduction=reduction, stable=bool(psi >= self.config.stability_threshold),
            sl_start=self.schedule.sl_start, pruned_now=due, removed_norm_share=share,
            shrink=self.sparsity.ledger.shrink_total, **info)

    # ------------------------------------------------------------------ the prune
    def will_prune(self, epoch: int) -> bool:
        """Whether ``epoch_end(epoch)`` will prune (ask after ``epoch_start(epoch)``): lets a loop
        evaluate right before the prune and compare with right after it (the *prune shock*)."""
        return self.schedule.running(int(epoch)) and self._prune_due(int(epoch))

    def _prune_due(self, epoch: int) -> bool:
        return self.schedule.prune_due(epoch, self.tracker.indicator, self.selection is not None)

    @profiling.spanned("prune")
    def _prune(self, epoch: int, optimizer: Optional[torch.optim.Optimizer], sel: Selection) -> dict[str, int]:
        info = {"macs_before": self.macs(), "params_before": self.params()}
        keep = [k.clone() for k in sel.kept_indices]
        self.groups = prune_to_kept(self.model, self.facts.groups, keep, optimizer, self.layout,
                                    self.mirrors.modules())
        self.mirrors.after_prune()
        self.search.selection, self.schedule.prune_epoch, self._prune_keep = sel, epoch, keep
        info.update(macs_after=self.macs(), params_after=self.params())
        self._prune_info = dict(info)
        return info

    # ------------------------------------------------------------------ copies and changes of the model
    def track(self, mirror: T) -> T:
        """Prune ``mirror``, a copy of the model, with it: an EMA or SWA average of the weights.

        ``mirror`` is a ``torch.optim.swa_utils.AveragedModel`` (EMA or SWA averaging), a timm
        ``ModelEma`` / ``ModelEmaV2`` / ``ModelEmaV3``, an ultralytics ``ModelEMA``, or a module that
        copies the model (same parameter and buffer names; any device, dtype or memory format); see
        :mod:`oneprune_ext.pruning.mirrors`. At the prune it loses exactly the model's channels
        (parameters and buffers; its holder's own state, such as ``n_averaged``, is kept, and cached
        tensor lists are dropped), so its updates go on. :meth:`load_state_dict` cuts the copies
        tracked on a fresh dense model too. A dense copy tracked after the prune is cut at once.

        Returns:
            ``mirror`` (``ema = pruner.track(AveragedModel(model, ...))``).

        Raises:
            TypeError: ``mirror`` holds no module. ValueError: it is the model, shares memory with
                it, is tracked already, or has neither the model's shapes nor its dense shapes;
                nothing is changed then.
        """
        module, dense = self.mirrors.check_new(mirror)
        if dense and self.pruned:
            assert self._prune_keep is not None
            prune_to_kept(module, self.facts.groups, self._prune_keep, None, None)
        self.mirrors.add(mirror)
        if dense and self.pruned:
            self.mirrors.after_prune()
        return mirror

    def _follow(self) -> bool:
        """Follow the model's memory format, dtype or device if they changed (rebuild the layout and
        move the armed device tensors, once); True if it did. Refuses replaced or reshaped parameters."""
        if not self.follower.check():
            return False
        self.sparsity.move_to(self.layout.device)
        return True

    def _reset_step_state(self) -> None:
        """The one reset of an epoch's step state (every epoch start; a restored state starts from it)."""
        self.sparsity.reset()
        self.search.searched_now = False

    # ------------------------------------------------------------------ read-outs
    sl_start = _read("schedule.sl_start", "The resolved sparsity-learning start epoch (None while 'auto' waits).")
    pruned = _read("schedule.pruned", "Whether the model has been pruned.")
    prune_epoch = _read("schedule.prune_epoch", "The epoch at whose end the model was pruned (None before).")
    tracker = _read("search.tracker", "The :class:`~oneprune_ext.pruning.stability.StabilityTracker`.")
    selection = _read("search.selection", "The latest :class:`~oneprune_ext.pruning.selection.Selection` or None.")
    history = _read("search.history", "One dict per monitored epoch: epoch, indicator, reduction, kept_counts.")
    total_epochs = _read("config.total_epochs", "Length of the run in epochs (``config.total_epochs``).")

    @property
    def open_epoch(self) -> Optional[int]:
        """The epoch started by ``epoch_start`` and not ended yet (None between epochs): a framework
        resuming from a checkpoint taken inside an epoch knows which epoch is still running."""
        s = self.schedule
        return s.last_start if s.last_start is not None and s.last_start != s.last_end else None
    indicator = _read("tracker.indicator", "The latest stability indicator ``psi``.")

    @property
    def stats(self) -> dict[str, float]:
        """Seconds in each hook over the run, restored on resume (host; on CUDA also ``<hook>_device``):
        see :meth:`~oneprune_ext.pruning.profiling.HookClock.stats`; construction: :attr:`init_seconds`."""
        return self._clock.stats()

    def macs(self) -> int:
        """Exact MACs of the model now, for ``example_inputs`` (closed-form cost model)."""
        return self.facts.macs(self.groups.sizes)

    def params(self) -> int:
        """Exact parameter count of the model now."""
        return self.facts.params(self.groups.sizes)

    def channel_counts(self) -> list[dict[str, Any]]:
        """Per group, in order: ``name``, ``dense`` and ``kept`` channels (kept = dense before the prune)."""
        return [{"name": g.name, "dense": int(d), "kept": int(k)}
                for g, d, k in zip(self.facts.groups, self.facts.dense_sizes, self.groups.sizes)]

    def phase_at(self, epoch: int) -> str:
        """``"dense"``, ``"monitoring"``, ``"sparsity"`` or ``"pruned"`` for ``epoch`` now."""
        return self.schedule.phase_at(epoch)

    def reg_at(self, epoch: int) -> float:
        """Regularisation strength on the steps of ``epoch`` (0.0 outside sparsity learning): with a
        number, ``reg + reg_delta * floor((epoch - sl_start) / reg_interval)``; with ``reg="auto"``, for
        the epoch now running, the step's ``reg * lr`` over the latest lr (:attr:`EpochReport.reg` after)."""
        return self.sparsity.reg_at(epoch, current=epoch == self.schedule.last_start)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """All schedule state, as plain Python values and CPU tensors (``weights_only``-loadable)."""
        return PrunerState(self).to_dict()

    def load_state_dict(self, state: Any) -> None:
        """Restore :meth:`state_dict` into a pruner built on a fresh **dense** model (or this one after
        its prune), *before* ``model.load_state_dict``: a pruned run's model is cut to its kept channels
        (:mod:`oneprune_ext.pruning.state`). All is checked first; a ValueError (other options, each
        named: build with ``PrunerConfig.from_dict(state["config"])``; another model; a corrupt entry,
        named; a model pruned differently) leaves the model and the pruner as they were."""
        saved = PrunerState(self).read(state)
        cur, dense = list(self.groups.sizes), self.facts.dense_sizes
        if saved["pruned"] and cur == dense and saved["sizes"] != dense:
            self._follow()
            self.groups = prune_to_kept(self.model, self.facts.groups, saved["prune_keep"], None, self.layout,
                                        self.mirrors.modules())
            self.mirrors.after_prune()
        elif saved["pruned"] and cur != saved["sizes"]:
            raise ValueError(f"the model is pruned to {cur}, the saved run to {saved['sizes']}; load the "
                             "pruner state into a pruner built on a fresh dense model")
        elif not saved["pruned"] and cur != dense:
            raise ValueError("the saved run was not pruned yet but this model is; build a fresh dense model")
        self._reset_step_state()  # from here on nothing can fail; the next epoch_start re-arms the steps
        PrunerState(self).restore(saved)

    def __repr__(self) -> str:
        return (f"OneCyclePruner(target={self.config.target!r}, reduction={self.config.reduction}, "
                f"groups={len(self.groups)}, channels={self.groups.num_channels}, pruned={self.pruned}, "
                f"prune_epoch={self.prune_epoch})")
