"""Channel groups -> the flat tables the fused kernels read.

A :class:`ChannelLayout` turns every ``in_norm`` slice of every channel of every
group into a *segment* of one parameter tensor: ``rows`` rows of ``row_len``
contiguous elements, ``row_stride`` apart, starting at element ``base``; and every
slice of a group into a *run* of such segments, one per channel (the CPU kernels walk
runs row-major, the CUDA kernels walk segments per channel; ``csrc/oneprune.h``
documents both tables). It is built with tensor operations (no
per-channel Python loop) and rebuilt in milliseconds after a prune.

The data pointers are *not* stored: every op call hands the kernels the live
parameter tensors, so re-assigning ``param.data`` or casting the model can never make
a kernel read freed memory. Moving the model to another device moves the tables on
the next call; a changed shape (a prune the layout did not see) raises an error that
says to call :meth:`ChannelLayout.rebuild`.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from .groups import ChannelGroups

__all__ = ["ChannelLayout"]


class ChannelLayout:
    """Device-resident description of every prunable channel's weight slices.

    Args:
        model: the model whose parameters the groups name.
        groups: the channel groups (from :func:`oneprune_ext.trace_groups` or built by hand).

    Channels are numbered globally: group ``i``'s channel ``c`` is
    ``group_offsets[i] + c``; per-channel vectors (norms, saliency, masks) use that order.
    """

    def __init__(self, model: nn.Module, groups: ChannelGroups) -> None:
        self.model = model
        self.groups = groups
        self.rebuild()

    # ------------------------------------------------------------------ building
    def rebuild(self, groups: Optional[ChannelGroups] = None) -> None:
        """Re-reads parameter shapes (and, if given, new groups) and rebuilds the tables."""
        if groups is not None:
            self.groups = groups
        params = dict(self.model.named_parameters())
        names: list[str] = []
        index: dict[str, int] = {}
        for gi, g in enumerate(self.groups):
            if g.size < 0:
                raise ValueError(f"group {gi} ({g.name}) has negative size {g.size}")
            for s in g.norm_slices():
                if s.is_buffer or s.name not in params:
                    raise ValueError(
                        f"group {gi} ({g.name}): '{s.name}' is not a parameter of the model; "
                        "in_norm slices must name parameters (buffers are compacted only)"
                    )
                if s.name not in index:
                    index[s.name] = len(names)
                    names.append(s.name)
        self.tensor_names: list[str] = names
        self._params: list[nn.Parameter] = [params[n] for n in names]
        self.numels: list[int] = [p.numel() for p in self._params]
        self.device: torch.device = self._params[0].device if self._params else torch.device("cpu")

        sizes = self.groups.sizes
        self.group_offsets: list[int] = self.groups.offsets
        self.num_channels: int = self.group_offsets[-1]
        dims = sorted({s.dim for g in self.groups for s in g.norm_slices()})
        phase_of = {d: i for i, d in enumerate(dims)}
        self.num_phases: int = max(len(dims), 1)

        cols: list[torch.Tensor] = []  # per slice: [C, 7] = phase, channel, tensor, base, rows, len, stride
        runs: list[list[int]] = []  # per slice: tensor, chan0, count, base0, rows, len, stride, phase
        spans: dict[tuple[str, int], list[tuple[int, int, int]]] = {}
        for gi, g in enumerate(self.groups):
            C = sizes[gi]
            for s in g.norm_slices():
                shape = tuple(params[s.name].shape)
                if not 0 <= s.dim < len(shape):
                    raise ValueError(f"group {gi} ({g.name}): dim {s.dim} out of range for '{s.name}' {shape}")
                size_d = shape[s.dim]
                end = s.offset + C * s.block
                if s.offset < 0 or s.block < 1 or end > size_d:
                    raise ValueError(
                        f"group {gi} ({g.name}): {C} channels x block {s.block} at offset {s.offset} "
                        f"do not fit dim {s.dim} (size {size_d}) of '{s.name}'; the groups no longer "
                        "match the model (re-trace, or pass the groups returned by prune_channels)"
                    )
                spans.setdefault((s.name, s.dim), []).append((s.offset, end, gi))
                if C == 0:
                    continue
                outer = math.prod(shape[: s.dim])
                inner = math.prod(shape[s.dim + 1 :])
                c = torch.arange(C, dtype=torch.long)
                t = torch.empty(C, 7, dtype=torch.long)
                t[:, 0] = phase_of[s.dim]
                t[:, 1] = self.group_offsets[gi] + c
                t[:, 2] = index[s.name]
                t[:, 3] = (s.offset + c * s.block) * inner
                t[:, 4] = outer
                t[:, 5] = s.block * inner
                t[:, 6] = size_d * inner
                cols.append(t)
                runs.append([index[s.name], self.group_offsets[gi], C, s.offset * inner, outer,
                             s.block * inner, size_d * inner, phase_of[s.dim]])
        for (name, dim), ranges in spans.items():
            ranges.sort()
            for (a0, a1, ga), (b0, b1, gb) in zip(ranges, ranges[1:]):
                if b0 < a1:
                    raise ValueError(
                        f"groups {ga} and {gb} both claim indices [{b0}, {min(a1, b1)}) of dim {dim} of "
                        f"'{name}'; channel groups must be disjoint"
                    )
        table = torch.cat(cols) if cols else torch.empty(0, 7, dtype=torch.long)
        # Sort by (phase, channel); stable, so a channel's slices keep group order.
        key = table[:, 0] * (self.num_channels + 1) + table[:, 1]
        table = table[torch.sort(key, stable=True).indices]
        seg_ptr = torch.zeros(self.num_phases, self.num_channels + 1, dtype=torch.long)
        for p in range(self.num_phases):
            counts = torch.bincount(table[table[:, 0] == p, 1], minlength=self.num_channels)
            seg_ptr[p, 1:] = torch.cumsum(counts, 0)
        if self.num_phases > 1:
            # Phase p's segments follow all segments of phases < p in the table.
            seg_ptr[1:] += seg_ptr[:-1, -1:].cumsum(0)
        runs.sort(key=lambda r: r[7])  # by phase; stable, so group order within a phase
        self._runs_cpu = torch.tensor(runs, dtype=torch.long).reshape(-1, 8)
        self._segs_cpu = table[:, 2:].contiguous()
        self._seg_ptr_cpu = seg_ptr.contiguous()
        self._to_device(self.device)

    def _to_device(self, device: torch.device) -> None:
        self.device = device
        self.segs = self._segs_cpu.to(device)
        self.seg_ptr = self._seg_ptr_cpu.to(device)
        self.runs = self._runs_cpu.to(device)

    # ------------------------------------------------------------------ kernel inputs
    def parameters(self) -> list[nn.Parameter]:
        """The parameters the layout covers, in table order."""
        return list(self._params)

    def kernel_args(self) -> tuple[list[torch.Tensor], list[int], torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(tensors, numels, segs, seg_ptr, runs)`` for the ``torch.ops.oneprune`` kernels.

        The tensors are the live parameter data (detached: the ops are not part of
        autograd). If the model moved to another device since the last call, the tables
        follow it.
        """
        tensors = [p.detach() for p in self._params]
        if tensors and tensors[0].device != self.device:
            self._to_device(tensors[0].device)
        return tensors, self.numels, self.segs, self.seg_ptr, self.runs

    def grads(self) -> list[torch.Tensor]:
        """The ``.grad`` of every covered parameter; a missing one becomes zeros (kept on the parameter)."""
        out = []
        for p in self._params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            out.append(p.grad)
        return out

    # ------------------------------------------------------------------ helpers
    def split(self, per_channel: torch.Tensor) -> list[torch.Tensor]:
        """Splits a per-channel vector into one view per group."""
        return list(torch.split(per_channel, self.groups.sizes))

    def __repr__(self) -> str:
        return (
            f"ChannelLayout({len(self.groups)} groups, {self.num_channels} channels, "
            f"{self._segs_cpu.shape[0]} segments over {len(self._params)} tensors, "
            f"{self.num_phases} phases, device={self.device})"
        )
