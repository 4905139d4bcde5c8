"""Channel groups: the sets of parameter slices that are removed together.

This module only holds the data model shared by the tracer (``graph.py``), the
kernel layout (``layout.py``), the cost model (``cost.py``) and the physical
pruning (``compact.py``).  It knows nothing about how groups are found (the layer
registry, ``registry.py``, holds that knowledge).

Coordinates
-----------
Channel ``c`` (0-based, ``0 <= c < group.size``) of a group occupies, in every
tensor the group touches, the indices ``[offset + c * block, offset + (c + 1) * block)``
along one dimension ``dim`` of that tensor:

* output channel of a conv / linear:       ``dim=0, offset=0, block=1``
* input channel of a consumer conv/linear: ``dim=1, offset=0, block=1``
* a concat operand starting at channel k:  ``offset=k``
* a flatten of ``[C, H, W]`` before a linear: ``dim=1, block=H*W`` (and ``offset`` scaled by ``H*W``)
* BatchNorm weight/bias/running stats:     ``dim=0, block=1`` (length-1 slices)
* a depthwise conv's weight:               ``dim=0`` (its input and output channels are one group)
* a grouped conv with ``G`` conv groups of width ``w``: channel ``c`` of the group is channel
  ``c`` of *every* conv group, so each (tensor, dim) it touches holds ``G`` slices at offsets
  ``k * w`` (``k < G``) and the group's ``size`` is ``w`` (its input columns, ``dim=1`` of the
  grouped weight, are one slice).  Attention heads are the same: ``G`` heads of width ``w``.
  Slices of one (tensor, dim) never overlap, within a group or across groups.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Sequence

__all__ = ["Slice", "ChannelGroup", "ChannelGroups"]


@dataclass(frozen=True)
class Slice:
    """One tensor touched by a channel group.

    Attributes:
        name: qualified name as in ``model.named_parameters()`` (or ``named_buffers()``
            when ``is_buffer``).
        dim: the tensor dimension that indexes channels.
        offset: index along ``dim`` of channel 0's first entry.
        block: consecutive entries along ``dim`` per channel (``H*W`` after a flatten).
        is_buffer: a buffer (BatchNorm running stats): compacted, never regularised.
        in_norm: counted in the saliency, the group-lasso norm and the shrink step.
            True for conv/linear weights (rows and columns) and BatchNorm weights; False
            for biases, buffers and embeddings, which are only compacted.  Depthwise-conv,
            LayerNorm and layer-scale weights count only when traced with
            ``saliency_params="all"`` (the published saliency leaves them out).
    """

    name: str
    dim: int
    offset: int = 0
    block: int = 1
    is_buffer: bool = False
    in_norm: bool = True

    def indices(self, channels: Sequence[int]) -> list[int]:
        """Indices along ``dim`` occupied by the given channels, in order."""
        out: list[int] = []
        for c in channels:
            start = self.offset + int(c) * self.block
            out.extend(range(start, start + self.block))
        return out


@dataclass
class ChannelGroup:
    """A set of ``size`` channels whose slices must be removed together.

    Attributes:
        size: number of channels in the group now (shrinks after a prune).
        slices: every tensor slice the group touches (see :class:`Slice`).
        name: a readable label, normally the qualified name of the module that
            produces the channels (for messages and reports).
    """

    size: int
    slices: tuple[Slice, ...]
    name: str = ""

    def coupled_params(self) -> set[tuple[str, int]]:
        """The ``(qualified name, dim)`` pairs this group touches (parameters and buffers)."""
        return {(s.name, s.dim) for s in self.slices}

    def norm_slices(self) -> tuple[Slice, ...]:
        """Slices counted in saliency / group lasso / shrink (``in_norm``)."""
        return tuple(s for s in self.slices if s.in_norm)


@dataclass
class ChannelGroups:
    """The prunable channel groups of one model, in a fixed order.

    Only prunable groups are listed: the network output, ``ignored_layers`` and
    channels the tracer keeps fixed (ops it does not understand, listed in its report)
    appear in no group.
    Global channel index ``g`` of group ``i``'s channel ``c`` is ``offsets[i] + c``.
    """

    groups: list[ChannelGroup] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.groups)

    def __iter__(self) -> Iterator[ChannelGroup]:
        return iter(self.groups)

    def __getitem__(self, i: int) -> ChannelGroup:
        return self.groups[i]

    @property
    def sizes(self) -> list[int]:
        """Channel count of each group, in group order."""
        return [g.size for g in self.groups]

    @property
    def num_channels(self) -> int:
        """Total channels over all groups (length of the kernels' per-channel vectors)."""
        return sum(self.sizes)

    @property
    def offsets(self) -> list[int]:
        """Global index of each group's channel 0 (length ``len(self) + 1``)."""
        out = [0]
        for s in self.sizes:
            out.append(out[-1] + s)
        return out
