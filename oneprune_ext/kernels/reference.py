"""Pure-PyTorch reference implementations of every fused op.

They define the semantics the C++/CUDA kernels must reproduce: the tests compare the
two on random layouts and the benchmarks time the kernels against them. They work
slice by slice with indexed tensor ops (``index_select`` / ``index_copy_`` along the slice's
dim), so they accept every layout the kernels accept (concat offsets, flatten blocks, grouped
convolutions' repeated slices, one-channel groups, ``channels_last`` or any other memory
format), on any device, and take the same arguments as the functions in
:mod:`oneprune_ext.kernels.ops`. Like the ops, they never write a parameter with
``requires_grad=False`` (nor give it a ``.grad``) but count it in the norms.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Union

import torch

if TYPE_CHECKING:
    from ..graph.groups import Slice
    from .layout import ChannelLayout

__all__ = ["grouped_norms", "group_lasso_grad_", "scale_channels_", "compact_"]


def _index(s: "Slice", size: int, device: torch.device) -> torch.Tensor:
    """Indices along ``s.dim`` of channels 0..size-1, channel-major (block entries each)."""
    c = torch.arange(size, device=device)[:, None] * s.block
    return (s.offset + c + torch.arange(s.block, device=device)).reshape(-1)


def _per_channel(t: torch.Tensor, s: "Slice", idx: torch.Tensor, size: int) -> torch.Tensor:
    """The slice's entries as fp32 [size, elements per channel]."""
    return t.index_select(s.dim, idx).movedim(s.dim, 0).reshape(size, -1).float()


def _slices(layout: "ChannelLayout"):
    """(group index, slice, size, parameter) for every in_norm slice with channels, lower dims
    first (the order in which the kernels apply writes: rows before columns)."""
    params = dict(zip(layout.tensor_names, layout.parameters()))
    out = [(gi, s, g.size, params[s.name]) for gi, g in enumerate(layout.groups) for s in g.norm_slices()
           if g.size > 0]
    return sorted(out, key=lambda x: x[1].dim)


def grouped_norms(layout: "ChannelLayout") -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel fp32 ``||g_c||^2`` and saliency ``(1/M) sum_m ||s_m||^2 / sqrt(len(s_m))``."""
    sizes = layout.groups.sizes
    dev = layout.device
    sq = [torch.zeros(n, dtype=torch.float32, device=dev) for n in sizes]
    sal = [torch.zeros(n, dtype=torch.float32, device=dev) for n in sizes]
    with torch.no_grad():
        for gi, s, size, p in _slices(layout):
            v = _per_channel(p, s, _index(s, size, p.device), size)
            ss = v.square().sum(1)
            sq[gi] += ss
            sal[gi] += ss / v.shape[1] ** 0.5
    for gi, g in enumerate(layout.groups):
        m = len(g.norm_slices())
        if m:
            sal[gi] /= m
    return torch.cat(sq), torch.cat(sal)


def _update(layout: "ChannelLayout", mask: torch.Tensor, coef: torch.Tensor, rule) -> None:
    """For every slice of a writable parameter: entries of masked channels become
    rule(target entries, weight entries, per-channel coefficient), in fp32."""
    coefs = layout.split(coef)
    masks = layout.split(mask.to(layout.device))
    with torch.no_grad():
        for gi, s, size, p in _slices(layout):
            if not p.requires_grad or not bool(masks[gi].any()):
                continue
            target = rule.target(p)
            idx = _index(s, size, p.device)
            sub = target.index_select(s.dim, idx)
            w = p.index_select(s.dim, idx).float()
            shape = [1] * sub.dim()
            shape[s.dim] = -1
            c = coefs[gi].repeat_interleave(s.block).view(shape)
            m = masks[gi].repeat_interleave(s.block).view(shape)
            new = torch.where(m, rule.apply(sub.float(), w, c).to(sub.dtype), sub)
            target.index_copy_(s.dim, idx, new)


class _Lasso:
    @staticmethod
    def target(p: torch.Tensor) -> torch.Tensor:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        return p.grad

    @staticmethod
    def apply(g: torch.Tensor, w: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return g + c * w


class _Scale:
    @staticmethod
    def target(p: torch.Tensor) -> torch.Tensor:
        return p.data

    @staticmethod
    def apply(x: torch.Tensor, w: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return x * c


def group_lasso_grad_(
    layout: "ChannelLayout", mask: torch.Tensor, reg: Union[float, torch.Tensor], eps: float = 1e-12
) -> torch.Tensor:
    """``grad += reg * w / max(||g_c||, eps)`` on every slice of the masked channels; returns the penalty."""
    sq, _ = grouped_norms(layout)
    norms = sq.sqrt()
    reg_t = torch.as_tensor(reg, dtype=torch.float32, device=layout.device).reshape(())
    mask = mask.to(layout.device)
    coef = torch.where(mask, reg_t / norms.clamp_min(eps), torch.zeros_like(norms))
    for p in layout.parameters():  # like the op: every writable parameter ends with a .grad
        if p.requires_grad and p.grad is None:
            p.grad = torch.zeros_like(p)
    _update(layout, mask, coef, _Lasso)
    return reg_t * norms[mask].sum()


def scale_channels_(layout: "ChannelLayout", mask: torch.Tensor, factor: Union[float, torch.Tensor]) -> None:
    """``w *= factor`` on every slice of the masked channels (twice where a row and a column meet)."""
    f = torch.as_tensor(factor, dtype=torch.float32, device=layout.device).reshape(())
    _update(layout, mask, f.expand(layout.num_channels), _Scale)


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
