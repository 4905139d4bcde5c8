"""The per-epoch sub-network search: :class:`SubnetworkSearch`.

One search = the channels' saliencies (one fused kernel, the :mod:`~oneprune_ext.pruning.saliency`
strategy; under ``torch.distributed`` every rank takes rank 0's), the closed-form global selection
under the per-layer limits (:func:`~oneprune_ext.pruning.selection.select_subnetwork` on the exact
cost model of :class:`~oneprune_ext.pruning.facts.ModelFacts`) and the stability indicator's update
(:class:`~oneprune_ext.pruning.stability.StabilityTracker`). The search keeps what it chose: the
latest selection, one history entry and one removal mask per monitored epoch.
"""

from __future__ import annotations

from typing import Any, Optional

import torch

from . import distributed, profiling
from .config import PrunerConfig
from .facts import ModelFacts
from .saliency import Saliency
from .selection import Selection, select_subnetwork
from .stability import StabilityTracker

__all__ = ["SubnetworkSearch"]


class SubnetworkSearch:
    """Saliency, selection and stability of the sub-network, epoch after epoch.

    Args:
        facts: the dense model's groups and costs.
        config: the run's options (target reduction, layer limits, ``round_to``).
        saliency: the saliency strategy.
        ops: the fused kernels.
        process_group: under ``torch.distributed``, the group whose rank 0's saliencies every rank uses.

    Attributes:
        tracker: the :class:`~oneprune_ext.pruning.stability.StabilityTracker`.
        selection: the latest :class:`~oneprune_ext.pruning.selection.Selection` (None before monitoring).
        history: one plain dict per monitored epoch: ``epoch``, ``indicator``, ``reduction``, ``kept_counts``.
        masks: one removal mask (bool CPU tensor over the dense channels) per monitored epoch.
        searched_now: whether the epoch now running searched (reset at every epoch start).
    """

    def __init__(self, facts: ModelFacts, config: PrunerConfig, saliency: Saliency, ops: Any,
                 process_group: Optional[Any] = None) -> None:
        self.facts, self.config, self.saliency, self.ops = facts, config, saliency, ops
        self.process_group = process_group
        self.tracker = StabilityTracker()
        self.selection: Optional[Selection] = None
        self.history: list[dict[str, Any]] = []
        self.masks: list[torch.Tensor] = []
        self.searched_now = False

    def norms(self, layout: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel squared norms and saliencies now (every rank gets rank 0's saliencies)."""
        with torch.no_grad(), profiling.span("saliency"):
            sq_norm, saliency = self.saliency.scores(self.ops, layout)
        if self.process_group is not None:  # every rank chooses rank 0's sub-network
            saliency = distributed.broadcast_from_rank0(saliency, self.process_group)
        return sq_norm, saliency

    def select(self, saliency: torch.Tensor, sizes: list[int]) -> Selection:
        """The sub-network these saliencies choose (groups of ``sizes`` channels)."""
        f, c = self.facts, self.config
        with profiling.span("selection"):
            return select_subnetwork(
                saliency, sizes, f.cost_fn, c.reduction, per_channel_mac_cost=f.per_channel_macs,
                dense_cost=f.dense_cost, layer_limit=c.layer_limit, layer_limit_k=c.layer_limit_k,
                round_to=c.round_to, multiplicity=f.multiplicity)

    @profiling.spanned("search")
    def search(self, epoch: int, layout: Any, sizes: list[int]) -> Selection:
        """Epoch ``epoch``'s search: saliency, selection, indicator; recorded in the history."""
        _, saliency = self.norms(layout)
        sel = self.select(saliency, sizes)
        with profiling.span("stability"):
            psi = self.tracker.update(sel.kept_indices)
        self.selection = sel
        self.searched_now = True
        self.masks.append(sel.removal_mask.clone())
        self.history.append({"epoch": epoch, "indicator": psi, "reduction": sel.reduction,
                             "kept_counts": list(sel.kept_counts)})
        return sel

    def removed_share(self, sel: Selection, layout: Any, sq_norm: Optional[torch.Tensor] = None) -> float:
        """Share of the squared channel norms that ``sel``'s removal set holds now (one host sync)."""
        if sq_norm is None:
            with torch.no_grad():
                sq_norm, _ = self.saliency.scores(self.ops, layout)
        sq = sq_norm.to(torch.float64)
        removed, total = torch.stack([sq[sel.removal_mask.to(sq.device)].sum(), sq.sum()]).tolist()
        return removed / total if total > 0 else 0.0
