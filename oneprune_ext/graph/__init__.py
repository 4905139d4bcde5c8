"""Channel groups of a model: tracing, the layer registry and its entries, the exact cost model.

The lowest layer of the package: it imports nothing from the other sub-packages.

* :mod:`.trace` -- :func:`trace_groups` / :func:`trace_report` (``torch.fx`` into channel groups);
* :mod:`.propagation` -- the tracer's channel bookkeeping, the vocabulary of coupling rules;
* :mod:`.groups` -- :class:`ChannelGroups`, :class:`ChannelGroup`, :class:`Slice`;
* :mod:`.registry` -- one :class:`~.registry.LayerEntry` per layer type (imports nothing from the
  package); :mod:`.entries` holds the built-in entries and registers them;
* :mod:`.cost` -- :class:`CostModel`, exact MACs and parameters of any kept-count vector;
  :mod:`.flops` -- ``FlopCounterMode`` with attention visible.
"""

from __future__ import annotations

from . import entries  # noqa: F401  (registers the built-in layer entries)
from .cost import CostModel
from .groups import ChannelGroup, ChannelGroups, Slice
from .trace import (
    FrozenPlace,
    TraceReport,
    UnsupportedOpError,
    UnsupportedOpWarning,
    channel_multiplicity,
    trace_groups,
    trace_report,
)

__all__ = [
    "ChannelGroup",
    "ChannelGroups",
    "CostModel",
    "FrozenPlace",
    "Slice",
    "TraceReport",
    "UnsupportedOpError",
    "UnsupportedOpWarning",
    "channel_multiplicity",
    "trace_groups",
    "trace_report",
]
