"""Physical channel removal, in place, keeping parameters, gradients and optimizer state.

:func:`prune_channels` removes the channels not listed in ``keep`` from every tensor
the groups touch.  Each parameter stays the *same* ``nn.Parameter`` object (only its
``.data`` is replaced by a compacted view of its own storage), so an optimizer, hooks
and references to the parameters stay valid; ``.grad`` and optimizer state tensors of
the parameter's shape (SGD ``momentum_buffer``, Adam/AdamW ``exp_avg``,
``exp_avg_sq``, ``max_exp_avg_sq``, ...) are compacted along the same dimensions.

Prune between optimizer steps, with no autograd graph alive that was built from the
old shapes (a kept loss, a traced graph holding ``grad_fn``), otherwise the next
backward fails with an "invalid gradient ... shape" error.
"""

from __future__ import annotations

import operator
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn as nn

from . import ops
from .groups import ChannelGroup, ChannelGroups, Slice
from .registry import update_module_attrs

__all__ = ["prune_channels"]

# The in-place moves: many tensors, each along one dim, in one fused call.
_compact_many = ops.compact_many_


def _validate_keep(groups: ChannelGroups, keep: Mapping[int, Any]) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for gi, idx in keep.items():
        if isinstance(gi, bool) or not isinstance(gi, int) or not 0 <= gi < len(groups):
            raise ValueError(f"prune_channels: group index {gi!r} is not in [0, {len(groups)})")
        g = groups[gi]
        label = f"group {gi} ({g.name})"
        if isinstance(idx, torch.Tensor):
            if idx.dtype.is_floating_point or idx.dtype == torch.bool or idx.dim() != 1:
                raise ValueError(f"prune_channels: {label}: keep must be a 1-D integer tensor or sequence")
            lst = [int(v) for v in idx.tolist()]
        else:
            lst = []
            for v in idx:
                if isinstance(v, bool):
                    raise ValueError(f"prune_channels: {label}: keep entries must be ints, got {v!r}")
                try:
                    lst.append(operator.index(v))
                except TypeError:
                    raise ValueError(f"prune_channels: {label}: keep entries must be ints, got {v!r}") from None
        if not lst:
            raise ValueError(f"prune_channels: {label}: keep is empty (a group must keep at least one channel)")
        if min(lst) < 0 or max(lst) >= g.size:
            raise ValueError(f"prune_channels: {label}: kept index out of range [0, {g.size})")
        for a, b in zip(lst, lst[1:]):
            if b == a:
                raise ValueError(f"prune_channels: {label}: duplicate kept index {a}")
            if b < a:
                raise ValueError(f"prune_channels: {label}: kept indices are not sorted ({a} before {b})")
        out[gi] = lst
    return out


def _entries(channels: np.ndarray, s: Slice) -> np.ndarray:
    """Indices along ``s.dim`` of the given channels (vectorised :meth:`Slice.indices`)."""
    if s.block == 1:
        return channels + s.offset
    return (s.offset + channels[:, None] * s.block + np.arange(s.block)).reshape(-1)


def _kept_per_dim(
    groups: ChannelGroups, keep: dict[int, list[int]], shapes: Mapping[str, tuple[int, ...]]
) -> dict[tuple[str, int], torch.Tensor]:
    """Bool masks of kept entries for every (tensor, dim) that loses entries.

    (numpy for the many tiny index operations: a few microseconds each instead of torch's
    per-op overhead.)"""
    for gi, g in enumerate(groups):
        for s in g.slices:
            if s.name not in shapes:
                raise ValueError(f"prune_channels: group {gi} ({g.name}) touches unknown tensor '{s.name}'")
            shape = shapes[s.name]
            if not 0 <= s.dim < len(shape) or s.offset + g.size * s.block > shape[s.dim]:
                raise ValueError(
                    f"prune_channels: group {gi} ({g.name}) slice of '{s.name}' (dim {s.dim}, offset "
                    f"{s.offset}, block {s.block}, {g.size} channels) does not fit shape {shape}")
    removed: dict[tuple[str, int], list[np.ndarray]] = {}
    kept: dict[tuple[str, int], list[np.ndarray]] = {}
    for gi, lst in keep.items():
        g = groups[gi]
        if len(lst) == g.size:
            continue
        keep_a = np.asarray(lst, dtype=np.int64)
        dmask = np.ones(g.size, dtype=bool)
        dmask[keep_a] = False
        drop_a = np.flatnonzero(dmask)
        for s in g.slices:
            key = (s.name, s.dim)
            removed.setdefault(key, []).append(_entries(drop_a, s))
            kept.setdefault(key, []).append(_entries(keep_a, s))
    masks: dict[tuple[str, int], torch.Tensor] = {}
    for key, rem in removed.items():
        name, dim = key
        m = np.ones(shapes[name][dim], dtype=bool)
        m[np.concatenate(rem)] = False
        # a dim shared by several groups keeps the union of their kept entries
        m[np.concatenate(kept[key])] = True
        masks[key] = torch.from_numpy(m)
    return masks


def _update_module_attrs(model: nn.Module, old_shapes: Mapping[str, tuple[int, ...]], touched: set[str]) -> None:
    # the layer registry knows which attributes each module type keeps in step with its tensors
    update_module_attrs(model, touched)


def prune_channels(
    model: nn.Module,
    groups: ChannelGroups,
    keep: Mapping[int, Sequence[int] | torch.Tensor],
    optimizer: torch.optim.Optimizer | None = None,
) -> ChannelGroups:
    """Remove every channel not kept, in place, and return the updated groups.

    Args:
        model: the network the groups were traced from (current shapes).
        groups: its channel groups.
        keep: group index -> sorted, distinct kept channel indices (ints or a 1-D
            integer tensor); groups not listed keep all channels.
        optimizer: optional; per-parameter state tensors with the parameter's shape are
            compacted along the same dims (momentum, Adam moments).

    Returns:
        New :class:`ChannelGroups` with sizes ``len(keep[i])`` and slice offsets
        recomputed (concat offsets shift when earlier channels go).

    Raises:
        ValueError: a bad ``keep`` (unknown group, empty, unsorted, duplicate,
            out of range) or groups that do not match the model; nothing is changed.
    """
    kept_idx = _validate_keep(groups, keep)
    params = dict(model.named_parameters())
    buffers = dict(model.named_buffers())
    tensors: dict[str, torch.Tensor] = {**buffers, **params}
    shapes = {n: tuple(t.shape) for n, t in tensors.items()}
    masks = _kept_per_dim(groups, kept_idx, shapes)
    by_tensor: dict[str, list[tuple[int, torch.Tensor]]] = {}
    for (name, dim), m in masks.items():
        if not bool(m.all()):
            by_tensor.setdefault(name, []).append((dim, m.nonzero().flatten()))
    # validate optimizer state before changing anything
    state_moves: list[tuple[dict, str, str]] = []
    if optimizer is not None:
        for name, p in params.items():
            if name not in by_tensor or p not in optimizer.state:
                continue
            for key, v in optimizer.state[p].items():
                if isinstance(v, torch.Tensor) and v.dim() > 0:
                    if tuple(v.shape) != shapes[name]:
                        raise ValueError(
                            f"prune_channels: optimizer state '{key}' of '{name}' has shape {tuple(v.shape)}, "
                            f"not the parameter's {shapes[name]}; cannot compact it")
                    state_moves.append((optimizer.state[p], key, name))
    for name, p in params.items():
        if name in by_tensor and p.grad is not None and tuple(p.grad.shape) != shapes[name]:
            raise ValueError(f"prune_channels: .grad of '{name}' does not have the parameter's shape")

    # Every tensor to compact (optimizer state, parameter data and grads, buffers) with its
    # moves, all in one fused call: a tensor losing entries along several dims is named by
    # consecutive entries (dims increasing) and moved once.
    jobs: list[list] = []  # [tensor, moves, setter]
    with torch.no_grad():
        for state, key, name in state_moves:
            jobs.append([state[key], by_tensor[name], lambda t, st=state, k=key: st.__setitem__(k, t)])
        for name, moves in by_tensor.items():
            t = tensors[name]
            if name in params:
                grad = t.grad
                t.grad = None
                jobs.append([t.data, moves, lambda v, p=t: setattr(p, "data", v)])
                if grad is not None:
                    jobs.append([grad, moves, lambda v, p=t: setattr(p, "grad", v)])
            else:
                owner, _, attr = name.rpartition(".")
                mod = model.get_submodule(owner) if owner else model
                jobs.append([t, moves, lambda v, m=mod, a=attr: m._buffers.__setitem__(a, v)])
        entries: list[tuple[torch.Tensor, int, torch.Tensor]] = []
        last: list[int] = []  # index of each job's last entry
        for job in jobs:
            t = job[0] if job[0].is_contiguous() else job[0].contiguous()
            for dim, idx in sorted(job[1], key=lambda x: x[0]):
                entries.append((t, dim, idx.to(t.device)))
            last.append(len(entries) - 1)
        outs = _compact_many([e[0] for e in entries], [e[1] for e in entries], [e[2] for e in entries])
        for job, i in zip(jobs, last):
            job[0] = outs[i]
        # parameters' data first, then their grads (a grad must match the new data's shape)
        for tensor, _, setter in jobs:
            setter(tensor)
    _update_module_attrs(model, shapes, set(by_tensor))

    new_groups: list[ChannelGroup] = []
    for gi, g in enumerate(groups):
        sl: list[Slice] = []
        for s in g.slices:
            # a slice's new offset = entries kept before it (only concat slices have offsets)
            m = masks.get((s.name, s.dim))
            off = s.offset if m is None or s.offset == 0 else int(m[: s.offset].sum())
            sl.append(Slice(s.name, s.dim, off, s.block, s.is_buffer, s.in_norm))
        size = len(kept_idx[gi]) if gi in kept_idx else g.size
        new_groups.append(ChannelGroup(size=size, slices=tuple(sl), name=g.name))
    return ChannelGroups(new_groups)
