"""The fused kernels: op wrappers (C++ / CUDA), their pure-PyTorch references, the channel layout.

Imports only from :mod:`oneprune_ext.graph` (the channel groups a layout is built from).

* :mod:`.ops` -- ``torch.ops.oneprune.*`` wrappers and their fake (meta) kernels;
* :mod:`.reference` -- the same ops in plain PyTorch, for tests and benchmarks;
* :mod:`.layout` -- :class:`ChannelLayout`, the one int64 table every kernel reads;
* :mod:`.memory_format` -- memory orders (contiguous, ``channels_last``, any dense permutation).
"""

from __future__ import annotations

from . import ops, reference
from .layout import ChannelLayout

__all__ = ["ChannelLayout", "ops", "reference"]
