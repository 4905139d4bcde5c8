"""Pure-PyTorch reference implementations of every fused op.

They define the semantics the C++/CUDA kernels must reproduce: the tests compare the
two on random layouts and the benchmarks time the kernels against them. They work
slice by slice with ordinary tensor ops (one or two small kernels per slice), on any
device, and take the same arguments as the functions in :mod:`oneprune_ext.ops`.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Iterator, Union

import torch

if TYPE_CHECKING:
    from .groups import Slice
    from .layout import ChannelLayout

__all__ = ["grouped_norms", "group_lasso_grad_", "scale_channels_", "compact_"]


def _slice_views(layout: "ChannelLayout", tensors: dict[str, torch.Tensor]) -> Iterator[tuple[int, "Slice", torch.Tensor]]:
    """Yields (group index, slice, view [outer, C, block*inner]) for every in_norm slice."""
    for gi, g in enumerate(layout.groups):
        for s in g.norm_slices():
            t = tensors[s.name]
            outer = math.prod(t.shape[: s.dim])
            inner = math.prod(t.shape[s.dim + 1 :])
            v = t.view(outer, t.shape[s.dim], inner)[:, s.offset : s.offset + g.size * s.block, :]
            yield gi, s, v.reshape(outer, g.size, s.block * inner) if g.size else v.reshape(outer, 0, 0)


def _params(layout: "ChannelLayout") -> dict[str, torch.Tensor]:
    return {n: p.detach() for n, p in zip(layout.tensor_names, layout.parameters())}


def grouped_norms(layout: "ChannelLayout") -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel fp32 ``||g_c||^2`` and saliency ``(1/M) sum_m ||s_m||^2 / sqrt(len(s_m))``."""
    sizes = layout.groups.sizes
    sq = [torch.zeros(n, dtype=torch.float32, device=layout.device) for n in sizes]
    sal = [torch.zeros(n, dtype=torch.float32, device=layout.device) for n in sizes]
    for gi, s, v in _slice_views(layout, _params(layout)):
        if sizes[gi] == 0:
            continue
        ss = v.float().square().sum(dim=(0, 2))
        sq[gi] += ss
        sal[gi] += ss / math.sqrt(v.shape[0] * v.shape[2])
    for gi, g in enumerate(layout.groups):
        m = len(g.norm_slices())
        if m:
            sal[gi] /= m
    return torch.cat(sq), torch.cat(sal)


def _by_phase(layout: "ChannelLayout", tensors: dict[str, torch.Tensor]) -> list[tuple[int, "Slice", torch.Tensor]]:
    """Slice views ordered as the kernels apply writes: rows (lower dims) first."""
    views = list(_slice_views(layout, tensors))
    return sorted(views, key=lambda x: x[1].dim)


def group_lasso_grad_(
    layout: "ChannelLayout", mask: torch.Tensor, reg: Union[float, torch.Tensor], eps: float = 1e-12
) -> torch.Tensor:
    """``grad += reg * w / max(||g_c||, eps)`` on every slice of the masked channels; returns the penalty."""
    sq, _ = grouped_norms(layout)
    norms = sq.sqrt()
    reg_t = torch.as_tensor(reg, dtype=torch.float32, device=layout.device)
    mask = mask.to(layout.device)
    coef = torch.where(mask, reg_t / norms.clamp_min(eps), torch.zeros_like(norms))
    coefs = layout.split(coef)
    weights = _params(layout)
    grads = dict(zip(layout.tensor_names, layout.grads()))
    for gi, s, gv in _by_phase(layout, grads):
        if gv.numel() == 0:
            continue
        t = weights[s.name]
        outer = math.prod(t.shape[: s.dim])
        inner = math.prod(t.shape[s.dim + 1 :])
        size = layout.groups[gi].size
        wv = t.view(outer, t.shape[s.dim], inner)[:, s.offset : s.offset + size * s.block, :]
        wv = wv.reshape(outer, size, s.block * inner)
        gv.copy_((gv.float() + coefs[gi].view(1, -1, 1) * wv.float()).to(gv.dtype))
        _write_back(grads[s.name], s, size, gv)
    return reg_t * norms[mask].sum()


def scale_channels_(layout: "ChannelLayout", mask: torch.Tensor, factor: Union[float, torch.Tensor]) -> None:
    """``w *= factor`` on every slice of the masked channels (twice where a row and a column meet)."""
    f = torch.as_tensor(factor, dtype=torch.float32, device=layout.device)
    scale = torch.where(mask.to(layout.device), f, torch.ones((), device=layout.device))
    scales = layout.split(scale)
    weights = _params(layout)
    for gi, s, wv in _by_phase(layout, weights):
        if wv.numel() == 0:
            continue
        wv.copy_((wv.float() * scales[gi].view(1, -1, 1)).to(wv.dtype))
        _write_back(weights[s.name], s, layout.groups[gi].size, wv)


def _write_back(t: torch.Tensor, s: "Slice", size: int, v: torch.Tensor) -> None:
    """Copies a (possibly reshaped-copy) slice view back into its tensor."""
    outer = math.prod(t.shape[: s.dim])
    inner = math.prod(t.shape[s.dim + 1 :])
    dst = t.view(outer, t.shape[s.dim], inner)[:, s.offset : s.offset + size * s.block, :]
    src = v.reshape(outer, size * s.block, inner)
    if dst.data_ptr() != src.data_ptr() or dst.stride() != src.stride():
        dst.copy_(src)


def compact_(tensor: torch.Tensor, dim: int, keep: Union[torch.Tensor, list[int]]) -> torch.Tensor:
    """Keep only ``keep`` (sorted int64 indices) along ``dim``, in ``tensor``'s own storage.

    The kept slices are moved to the front of the storage; the returned tensor is a
    contiguous view of that storage with ``size(dim) == len(keep)``. (This reference
    gathers through a temporary the size of the result.)
    """
    if not tensor.is_contiguous():
        raise ValueError("compact_: tensor must be contiguous")
    dim = dim % max(tensor.dim(), 1)
    keep_t = torch.as_tensor(keep, dtype=torch.long, device=tensor.device)
    kept = tensor.index_select(dim, keep_t)
    flat = tensor.view(-1)[: kept.numel()]
    flat.copy_(kept.reshape(-1))
    return flat.view(kept.shape)
