"""The published method's per-step bookkeeping, re-implemented faithfully for comparison.

Per group, per coupled slice: ``index_select`` the channels, reduce in Python-driven
small ops, write back with indexed ops -- one or more small kernels per slice per
step, as OCSPruner (on top of Torch-Pruning) does. Not used by the pruner: the benchmarks
and ``oneprune profile`` time it next to the fused ops, on the same model and channels.

``masks`` are per-group boolean masks of the channels chosen for removal
(``layout.split(removal_mask)``); ``REG`` and ``LR`` are the published starting
regularisation strength and learning rate.
"""

from __future__ import annotations

import math

import torch

REG, LR = 1e-4, 0.1


def _slice_index(s, c_idx: torch.Tensor) -> torch.Tensor:
    if s.block == 1:
        return c_idx + s.offset
    return (s.offset + c_idx[:, None] * s.block + torch.arange(s.block, device=c_idx.device)).flatten()


def per_layer_norms(model, groups) -> list[torch.Tensor]:
    params = dict(model.named_parameters())
    out = []
    for g in groups:
        idx = torch.arange(g.size, device=next(model.parameters()).device)
        sq = torch.zeros(g.size, device=idx.device)
        sal = torch.zeros(g.size, device=idx.device)
        n = 0
        for s in g.norm_slices():
            w = params[s.name].data.index_select(s.dim, _slice_index(s, idx))
            w = w.transpose(0, s.dim).reshape(g.size, -1)
            local = w.float().pow(2).sum(1)
            sq += local
            sal += local / math.sqrt(w.shape[1])
            n += 1
        out.append(sal / max(n, 1))
        out.append(sq)
    return out


def per_layer_lasso(model, groups, masks: list[torch.Tensor], reg: float = REG) -> None:
    """Group-lasso gradient of the chosen channels: per group, their norms over every coupled
    slice, then ``grad += reg * w / norm`` slice by slice (regularizer "group_lasso")."""
    params = dict(model.named_parameters())
    for g, m in zip(groups, masks):
        idx = m.nonzero().flatten()
        if idx.numel() == 0:
            continue
        norm2 = torch.zeros(idx.numel(), device=idx.device)
        for s in g.norm_slices():
            w = params[s.name].data.index_select(s.dim, _slice_index(s, idx))
            norm2 += w.transpose(0, s.dim).reshape(idx.numel(), -1).float().pow(2).sum(1)
        coef = reg / norm2.sqrt().clamp_min(1e-12)
        for s in g.norm_slices():
            p = params[s.name]
            sidx = _slice_index(s, idx)
            shape = [1] * p.dim()
            shape[s.dim] = -1
            cexp = coef.repeat_interleave(s.block).view(shape)
            p.grad.index_add_(s.dim, sidx, p.data.index_select(s.dim, sidx) * cexp)


def per_layer_shrink(model, groups, masks: list[torch.Tensor], factor: float = 1 - REG * LR) -> None:
    """Shrink of the chosen channels, slice by slice (regularizer "shrink")."""
    params = dict(model.named_parameters())
    for g, m in zip(groups, masks):
        idx = m.nonzero().flatten()
        if idx.numel() == 0:
            continue
        for s in g.norm_slices():
            p = params[s.name]
            sidx = _slice_index(s, idx)
            p.data.index_copy_(s.dim, sidx, p.data.index_select(s.dim, sidx) * factor)


def per_layer_step(model, groups, masks: list[torch.Tensor]) -> None:
    """Norms, group lasso and shrink: one step of regularizer "both" plus the search input."""
    per_layer_norms(model, groups)
    per_layer_lasso(model, groups, masks)
    per_layer_shrink(model, groups, masks)
