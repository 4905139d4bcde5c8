"""What one epoch of one-cycle pruning did: :class:`EpochReport`, returned by ``OneCyclePruner.epoch_end``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

__all__ = ["EpochReport"]


@dataclass(frozen=True)
class EpochReport:
    """What happened in one epoch (returned by :meth:`~oneprune_ext.pruning.pruner.OneCyclePruner.epoch_end`).

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
