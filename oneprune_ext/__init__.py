"""oneprune_ext: one-cycle structured pruning with fused C++/CUDA kernels.

Prunes whole channels of a network while it trains from scratch, in one training
run (Ghimire et al., "One-Cycle Structured Pruning via Stability-Driven Subnetwork
Search", WACV 2026). See README.md for the training-loop API.

The package is layered; each sub-package imports only from the ones before it:

* :mod:`oneprune_ext.graph` -- tracing a model into channel groups, the layer registry and its
  built-in entries, the exact cost model (MACs, parameters);
* :mod:`oneprune_ext.kernels` -- the fused ops (C++/CUDA), their pure-PyTorch references and the
  channel layout they read;
* :mod:`oneprune_ext.pruning` -- the one-cycle pruner, its options, the sub-network search, the
  sparsity schedule and the physical prune;
* :mod:`oneprune_ext.storage` -- atomic, checksummed files and pruned-model save / load;
* :mod:`oneprune_ext.training` -- the bundled trainer, data, models, run reports and plots;
* :mod:`oneprune_ext.tools` -- ``oneprune profile`` and ``oneprune eval``;
* :mod:`oneprune_ext.integrations` -- the pruner inside training frameworks (the Lightning callback
  ``integrations.lightning.OneCyclePruning``; optional extra, not imported here);
* :mod:`oneprune_ext.cli` -- the ``oneprune`` command, one module per subcommand.
"""

from __future__ import annotations

from ._build_info import build_info
from .graph import (
    ChannelGroup,
    ChannelGroups,
    CostModel,
    Slice,
    TraceReport,
    UnsupportedOpError,
    UnsupportedOpWarning,
    trace_groups,
    trace_report,
)
from .kernels import ChannelLayout, ops, reference
from .pruning import EpochReport, OneCyclePruner, PrunerConfig, check_optimizer, distributed, prune_channels
from .storage import files, load_pruned, save_pruned
from .training import TrainResult, evaluate, models, train

__version__ = "0.1.0"

__all__ = [
    "ChannelGroup",
    "ChannelGroups",
    "ChannelLayout",
    "CostModel",
    "EpochReport",
    "OneCyclePruner",
    "PrunerConfig",
    "TraceReport",
    "TrainResult",
    "Slice",
    "UnsupportedOpError",
    "UnsupportedOpWarning",
    "build_info",
    "check_optimizer",
    "distributed",
    "evaluate",
    "files",
    "load_pruned",
    "models",
    "ops",
    "prune_channels",
    "reference",
    "save_pruned",
    "trace_groups",
    "trace_report",
    "train",
]
