"""oneprune_ext: one-cycle structured pruning with fused C++/CUDA kernels.

Prunes whole channels of a network while it trains from scratch, in one training
run (Ghimire et al., "One-Cycle Structured Pruning via Stability-Driven Subnetwork
Search", WACV 2026). See README.md for the training-loop API.
"""

from __future__ import annotations

from . import ops, reference
from ._build_info import build_info
from .groups import ChannelGroup, ChannelGroups, Slice
from .layout import ChannelLayout

__version__ = "0.1.0"

__all__ = [
    "ChannelGroup",
    "ChannelGroups",
    "ChannelLayout",
    "Slice",
    "build_info",
    "ops",
    "reference",
]
