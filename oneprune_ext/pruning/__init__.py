"""The one-cycle pruner: schedule, sub-network search, sparsity learning, the physical prune.

Imports only from :mod:`oneprune_ext.graph` and :mod:`oneprune_ext.kernels`.

* :mod:`.pruner` -- :class:`OneCyclePruner`, the four hooks a training loop calls;
* :mod:`.config` -- :class:`PrunerConfig`, every option in one validated object;
* :mod:`.select` -- saliency, per-layer limits, global selection, the stability indicator;
* :mod:`.sparsity` -- the shrink curve (``reg="auto"``);
* :mod:`.compaction` -- :func:`prune_channels`, the in-place physical prune;
* :mod:`.state_reader` -- checked reading of saved pruner states;
* :mod:`.distributed` -- DDP helpers; :mod:`.profiling` -- profiler ranges and hook timing.
"""

from __future__ import annotations

from . import distributed
from .compaction import check_optimizer, prune_channels
from .config import PrunerConfig
from .pruner import EpochReport, OneCyclePruner

__all__ = ["EpochReport", "OneCyclePruner", "PrunerConfig", "check_optimizer", "distributed", "prune_channels"]
