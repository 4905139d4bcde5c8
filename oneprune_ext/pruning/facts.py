"""What the pruner knows of the dense model, fixed for the whole run: :class:`ModelFacts`.

Traced once, when the pruner is built: the channel groups and their dense sizes, the exact cost
model (MACs and parameters as polynomials of the per-group kept counts, for the pruner's
``example_inputs``), the cost the target counts, each group's multiplicity (layer channels per group
channel), each group's per-channel MAC cost (the input of the cost share) and the largest reduction
the per-layer limits allow. Nothing here changes when the model is pruned: the cost model of the
dense groups stays exact for any kept counts.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence, Union

import numpy as np
import torch
import torch.nn as nn

from . import profiling
from ..graph.cost import CostModel
from ..graph.groups import ChannelGroups
from ..graph.trace import channel_multiplicity, trace_groups
from .config import PrunerConfig
from .saliency import Saliency
from .selection import layer_limits, per_channel_cost, round_kept_counts

__all__ = ["ModelFacts", "check_plain_module"]


def check_plain_module(model: Any) -> None:
    """The pruner edits the module itself: refuse the wrappers that forward through it."""
    if isinstance(model, nn.parallel.DistributedDataParallel) or isinstance(model, nn.DataParallel):
        raise ValueError(f"OneCyclePruner: pass the wrapped module ({type(model).__name__}(...).module), not the "
                         "wrapper; forward through the wrapper, and after the prune wrap the module again")
    if hasattr(model, "_orig_mod") and isinstance(getattr(model, "_orig_mod"), nn.Module):
        raise ValueError("OneCyclePruner: pass the module you compiled (compiled._orig_mod), not the "
                         "torch.compile wrapper; keep forwarding through the compiled one")
    if not isinstance(model, nn.Module):
        raise TypeError(f"OneCyclePruner: model must be an nn.Module, got {type(model).__name__}")


class ModelFacts:
    """The dense model's channel groups and exact costs.

    Attributes:
        groups: the dense channel groups (the trace of the model as given).
        dense_sizes: channels per group in the dense model.
        cost: the :class:`~oneprune_ext.graph.cost.CostModel` (MACs and parameters of any kept counts).
        dense_macs, dense_params: MACs (for ``example_inputs``) and parameters of the dense model.
        target: ``"macs"`` or ``"params"``: what the reduction is a fraction of.
        dense_cost: ``dense_macs`` or ``dense_params``, as the target counts.
        multiplicity: per group, the layer channels one group channel stands for (``G`` through
            a grouped conv with ``G`` conv groups): the per-layer limit and ``round_to`` count
            layer channels.
        per_channel_macs: per group, the MACs one of its channels costs, measured as the
            published code does (MAC-based even when the target is parameters); the cost share's input.
        max_reduction: the largest reduction of the target removing every channel the per-layer
            limits (and ``round_to``) allow.
    """

    def __init__(self, model: nn.Module, groups: ChannelGroups,
                 example_inputs: Union[torch.Tensor, Sequence[torch.Tensor]], config: PrunerConfig) -> None:
        self.groups = groups
        self.dense_sizes: list[int] = list(groups.sizes)
        with torch.no_grad(), profiling.span("cost_model"):
            self.cost = CostModel(model, groups, example_inputs)
        self.dense_macs: int = int(self.cost.dense_macs)
        self.dense_params: int = int(self.cost.dense_params)
        self.target = config.target
        self.dense_cost: int = self.dense_macs if config.target == "macs" else self.dense_params
        self.multiplicity: list[int] = channel_multiplicity(groups)
        self.per_channel_macs: list[float] = per_channel_cost(self.cost.macs, self.dense_sizes)
        self.max_reduction: float = self._reachable_reduction(config)

    @classmethod
    def trace(cls, model: nn.Module, example_inputs: Union[torch.Tensor, Sequence[torch.Tensor]],
              config: PrunerConfig, saliency: Saliency) -> "ModelFacts":
        """Trace ``model`` (under ``no_grad``) into its channel groups and build the facts.

        Raises:
            ValueError: an ``ignored_layers`` name the model lacks, or a ``reduction`` the
                per-layer limits do not allow (the message says what to change).
        """
        modules = dict(model.named_modules())
        missing = [n for n in config.ignored_layers if n not in modules]
        if missing:
            raise ValueError(f"ignored_layers: the model has no module named {missing} (see model.named_modules())")
        with torch.no_grad(), profiling.span("trace"):  # nothing here may leave an autograd graph alive
            groups = trace_groups(model, example_inputs, ignored_layers=[modules[n] for n in config.ignored_layers],
                                  saliency_params=saliency.trace_option)
        facts = cls(model, groups, example_inputs, config)
        facts.check_reachable(config)
        return facts

    @property
    def cost_fn(self) -> Callable[[list[int]], int]:
        """The cost the target counts, of per-group kept counts."""
        return self.cost.macs if self.target == "macs" else self.cost.params

    def macs(self, sizes: Sequence[int]) -> int:
        """Exact MACs with ``sizes`` channels kept per group."""
        return int(self.cost.macs(sizes))

    def params(self, sizes: Sequence[int]) -> int:
        """Exact parameter count with ``sizes`` channels kept per group."""
        return int(self.cost.params(sizes))

    def reduction(self, sizes: Sequence[int]) -> float:
        """Fraction of the dense target cost removed with ``sizes`` channels kept per group."""
        return 1.0 - (self.macs(sizes) / self.dense_macs if self.target == "macs"
                      else self.params(sizes) / self.dense_params)

    def _reachable_reduction(self, config: PrunerConfig) -> float:
        sizes = np.asarray(self.dense_sizes, dtype=np.int64)
        limits = np.asarray(layer_limits(self.dense_sizes, config.layer_limit, config.layer_limit_k,
                                         multiplicity=self.multiplicity), dtype=np.int64)
        kept = sizes - limits
        if config.round_to is not None:
            kept = round_kept_counts(kept, sizes, limits, config.round_to, multiplicity=self.multiplicity)
        return 1.0 - self.cost_fn([int(x) for x in kept]) / self.dense_cost

    def check_reachable(self, config: PrunerConfig) -> None:
        """Refuse a ``reduction`` above :attr:`max_reduction`, saying which option to change."""
        cfg = config
        if self.max_reduction < cfg.reduction - 1e-12:
            raise ValueError(
                f"reduction={cfg.reduction} is unreachable: removing every channel the per-layer limit "
                f"allows (layer_limit={cfg.layer_limit}, layer_limit_k={cfg.layer_limit_k}"
                + (f", round_to={cfg.round_to}" if cfg.round_to is not None else "")
                + f") removes at most {self.max_reduction:.4f} of the dense {cfg.target}. Lower `reduction` "
                "or raise `layer_limit` / `layer_limit_k`"
                + (" / lower `round_to`" if cfg.round_to is not None else "") + ".")
