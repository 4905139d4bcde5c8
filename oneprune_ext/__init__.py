"""oneprune_ext: one-cycle structured pruning with fused C++/CUDA kernels.

Prunes whole channels of a network while it trains from scratch, in one training
run (Ghimire et al., "One-Cycle Structured Pruning via Stability-Driven Subnetwork
Search", WACV 2026). See README.md for the training-loop API.
"""

from __future__ import annotations

from . import distributed, files, models, ops, reference
from ._build_info import build_info
from .compact import check_optimizer, prune_channels
from .config import PrunerConfig
from .cost import CostModel
from .graph import TraceReport, UnsupportedOpError, UnsupportedOpWarning, trace_groups, trace_report
from .groups import ChannelGroup, ChannelGroups, Slice
from .layout import ChannelLayout
from .pruner import EpochReport, OneCyclePruner
from .saving import load_pruned, save_pruned
from .train import TrainResult, evaluate, train

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
