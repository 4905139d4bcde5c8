"""Physical channel removal, in place, keeping parameters, gradients and optimizer state.

:func:`prune_channels` removes the channels not listed in ``keep`` from every tensor
the groups touch.  Each parameter stays the *same* ``nn.Parameter`` object (only its
``.data`` is replaced), so an optimizer, hooks and references to the parameters stay
valid; ``.grad`` and the optimizer's per-parameter state tensors (SGD
``momentum_buffer``, Adam/AdamW ``exp_avg``, ``exp_avg_sq``, ``max_exp_avg_sq``, Adagrad
``sum``, RMSprop ``square_avg``, ...) are compacted along the same dimensions.

How a tensor is compacted: the kept entries move to the front of its own storage (the
fused ``compact_many_`` op, all tensors in one call, along the tensor's memory order, so a
``channels_last`` tensor stays ``channels_last``); then the kept entries are copied into a
storage of exactly their size, one tensor at a time, and the dense storage is freed as soon
as nothing else references it.  Memory only goes down: the peak is the dense model plus
the largest single kept tensor.

Copies of the model (``mirrors=``: the network inside an EMA or SWA average, see
:mod:`oneprune_ext.pruning.mirrors`) lose the same entries of the same tensors, in their own
storage, dtype and memory format; the model and every copy are validated before any of them
changes.

Loops that keep an autograd graph alive across the prune (the last batch's ``loss``, the
``outputs``, a list of past losses) keep working: the parameters' cached gradient
accumulators, which remember the dense shapes, are dropped, so the next forward builds
new ones.  The old graph itself cannot be back-propagated any more (its tensors were
compacted): its version counters are bumped, so such a backward raises PyTorch's "modified
by an inplace operation" error instead of computing garbage.
"""

from __future__ import annotations

import operator
import warnings
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn

from . import profiling
from ..kernels import ops
from ..graph.groups import ChannelGroup, ChannelGroups, Slice
from ..kernels.memory_format import inverse_order, memory_order
from ..graph.registry import update_module_attrs

__all__ = ["prune_channels", "prune_to_kept", "check_optimizer"]

# The in-place moves: many tensors, each along one dim, in one fused call.
_compact_many = ops.compact_many_


def _keep_by_group(groups: ChannelGroups, keep: Any) -> Mapping[int, Any]:
    """``keep`` as group index -> indices: a mapping as it is, a list indexed by group (``None``
    entries keep the whole group)."""
    if isinstance(keep, Mapping):
        return keep
    if isinstance(keep, (list, tuple)):
        if len(keep) != len(groups):
            raise ValueError(f"prune_channels: keep has {len(keep)} entries, the model has {len(groups)} groups "
                             "(give one entry per group, None to keep a group whole, or a dict group -> indices)")
        return {gi: k for gi, k in enumerate(keep) if k is not None}
    raise ValueError(f"prune_channels: keep must be a dict group index -> kept channel indices or a list with "
                     f"one entry per group, got {type(keep).__name__}")


def _validate_keep(groups: ChannelGroups, keep: Any) -> dict[int, list[int]]:
    keep = _keep_by_group(groups, keep)
    out: dict[int, list[int]] = {}
    for gi, idx in keep.items():
        if isinstance(gi, bool) or not isinstance(gi, int) or not 0 <= gi < len(groups):
            raise ValueError(f"prune_channels: group index {gi!r} is not in [0, {len(groups)})")
        g = groups[gi]
        label = f"group {gi} ({g.name})"
        if isinstance(idx, (str, bytes, Mapping)) or not hasattr(idx, "__iter__"):
            raise ValueError(f"prune_channels: {label}: keep must be a 1-D integer tensor or sequence, got "
                             f"{type(idx).__name__}")
        if isinstance(idx, np.ndarray):
            idx = torch.from_numpy(idx) if idx.dtype != object else list(idx)
        if isinstance(idx, torch.Tensor):
            if idx.dtype.is_floating_point or idx.dtype == torch.bool or idx.is_complex() or idx.dim() != 1:
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


# ---------------------------------------------------------------------------------------------
# optimizer state

_SLICEABLE = "SGD, Adam, AdamW, NAdam, RAdam, Adamax, Adagrad, RMSprop, ..."


def _refuse_state(optimizer: torch.optim.Optimizer, pname: str, key: str, what: str) -> ValueError:
    return ValueError(
        f"prune_channels: {type(optimizer).__name__} keeps state '{key}' of parameter '{pname}' as {what}; "
        "only state tensors of the parameter's own shape (momentum, Adam moments, ...) and scalars can be "
        "compacted with the channels, so nothing was pruned. Use an optimizer with per-element state "
        f"({_SLICEABLE}), or leave this optimizer out of the prune (optimizer=None; for OneCyclePruner "
        "epoch_end(epoch) without it) and build a new one over the pruned model's parameters afterwards.")


def check_optimizer(
    optimizer: torch.optim.Optimizer, model: Optional[nn.Module] = None
) -> list[tuple[torch.nn.Parameter, str]]:
    """Check that every per-parameter state tensor of ``optimizer`` can follow a prune.

    Every state entry of every parameter the optimizer holds (pruned or not, ignored layers
    included) must be a scalar (0-d tensor, number, ...) or a tensor of exactly the
    parameter's shape; containers of tensors (LBFGS's history lists) and tensors of other
    shapes (LBFGS's flat direction, factored second moments) cannot be sliced per channel.

    Args:
        optimizer: any ``torch.optim.Optimizer``.
        model: names the parameters in the messages (optional).

    Returns:
        ``(parameter, state key)`` of every state tensor of the parameter's shape.

    Raises:
        ValueError: naming the optimizer, parameter and state key, and what to do instead.
    """
    names = {id(p): n for n, p in model.named_parameters()} if model is not None else {}
    index = {id(p): i for i, p in enumerate(p for g in optimizer.param_groups for p in g["params"])}
    out: list[tuple[torch.nn.Parameter, str]] = []
    for p, st in optimizer.state.items():
        if not isinstance(p, torch.Tensor) or not isinstance(st, Mapping):
            raise ValueError(
                f"prune_channels: {type(optimizer).__name__} keeps state that is not per parameter; "
                "nothing was pruned. Build a new optimizer after the prune and pass optimizer=None.")
        pname = names.get(id(p), f"#{index.get(id(p), '?')} of the optimizer's param_groups")
        for key, v in st.items():
            if isinstance(v, torch.Tensor):
                if v.dim() == 0:
                    continue
                if v.layout != torch.strided:
                    raise _refuse_state(optimizer, pname, key, f"a {v.layout} tensor")
                if tuple(v.shape) != tuple(p.shape):
                    raise _refuse_state(optimizer, pname, key,
                                        f"a tensor of shape {tuple(v.shape)} (the parameter is {tuple(p.shape)})")
                out.append((p, key))
            elif isinstance(v, (list, tuple, dict, set)) and _holds_tensor(v):
                raise _refuse_state(optimizer, pname, key, f"a {type(v).__name__} of tensors")
    return out


def _holds_tensor(v: Any) -> bool:
    if isinstance(v, torch.Tensor):
        return True
    if isinstance(v, dict):
        return any(_holds_tensor(x) for x in v.values())
    if isinstance(v, (list, tuple, set)):
        return any(_holds_tensor(x) for x in v)
    return False


# ---------------------------------------------------------------------------------------------
# the moves


@dataclass
class _Job:
    """One tensor to compact: what it is (``kind``: data, grad, buffer, state), where it goes."""

    kind: str
    tensor: torch.Tensor
    moves: list[tuple[int, torch.Tensor]]  # (logical dim, kept indices), any order
    owner: Any  # the Parameter (data, grad), the module (buffer) or the state dict (state)
    key: str = ""  # buffer attribute / state key


def _collect_jobs(
    model: nn.Module,
    params: dict[str, nn.Parameter],
    buffers: dict[str, torch.Tensor],
    by_tensor: dict[str, list[tuple[int, torch.Tensor]]],
    optimizer: Optional[torch.optim.Optimizer],
    state_keys: list[tuple[nn.Parameter, str]],
) -> list[_Job]:
    """Every tensor the prune compacts: optimizer state, parameter data then grads, buffers."""
    name_of = {id(p): n for n, p in params.items()}
    jobs: list[_Job] = []
    if optimizer is not None:
        for p, key in state_keys:
            name = name_of.get(id(p))
            if name in by_tensor:
                st = optimizer.state[p]
                jobs.append(_Job("state", st[key], by_tensor[name], st, key))
    for name, moves in by_tensor.items():
        if name in params:
            p = params[name]
            jobs.append(_Job("data", p.detach(), moves, p))
            if p.grad is not None:
                jobs.append(_Job("grad", p.grad, moves, p))
        else:
            owner, _, attr = name.rpartition(".")
            jobs.append(_Job("buffer", buffers[name], moves, model.get_submodule(owner) if owner else model, attr))
    return jobs


def _compact_in_place(jobs: list[_Job]) -> list[torch.Tensor]:
    """Move every job's kept entries to the front of its storage (one fused call).

    Each tensor is compacted in its memory order (``t.permute(order)`` is contiguous), so
    contiguous, ``channels_last`` and transposed tensors keep their layout. Returns the
    compacted views, in the tensors' logical dim order.
    """
    views: list[torch.Tensor] = []
    orders: list[tuple[int, ...]] = []
    entries: list[tuple[torch.Tensor, int, torch.Tensor]] = []
    last: list[int] = []  # index of each job's last entry
    for job in jobs:
        t = job.tensor
        order = memory_order(t)
        if order is None:  # gaps or overlap (a strided view): compact a dense copy
            t = t.contiguous()
            order = tuple(range(t.dim()))
        v = t.permute(order)
        for d, idx in sorted(((order.index(d), idx) for d, idx in job.moves), key=lambda x: x[0]):
            entries.append((v, d, idx.to(v.device)))
        orders.append(order)
        last.append(len(entries) - 1)
    outs = _compact_many([e[0] for e in entries], [e[1] for e in entries], [e[2] for e in entries])
    for i, order in zip(last, orders):
        views.append(outs[i].permute(inverse_order(order)))
    return views


def _set_param_data(p: nn.Parameter, data: torch.Tensor) -> None:
    """``p.data = data``, dropping ``p``'s cached gradient accumulator.

    An autograd graph built before the prune and still alive (a kept ``loss``) holds the
    parameter's AccumulateGrad node, which remembers the dense shape; the next forward would
    reuse it and backward would fail with "invalid gradient ... shape". PyTorch drops that
    cache when ``.data`` is re-assigned with another dtype, so assign an empty tensor of
    another dtype first.
    """
    other = torch.float32 if p.dtype == torch.float64 else torch.float64
    p.data = torch.empty(0, dtype=other, device=p.device)
    p.data = data


def _put(job: _Job, value: torch.Tensor, first: bool) -> None:
    if job.kind == "data":
        if first:
            _set_param_data(job.owner, value)
        else:
            job.owner.data = value
    elif job.kind == "grad":
        job.owner.grad = value
    elif job.kind == "buffer":
        job.owner._buffers[job.key] = value
    else:
        job.owner[job.key] = value


def _owning_copy(t: torch.Tensor) -> torch.Tensor:
    """``t`` in a storage of exactly its size (same strides); ``t`` itself if it already is."""
    if t.storage_offset() == 0 and t.untyped_storage().nbytes() == t.numel() * t.element_size():
        return t
    out = torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device=t.device)
    out.copy_(t)
    return out


def _release(jobs: list[_Job], views: list[torch.Tensor]) -> None:
    """Give every compacted tensor a storage of its own size, one tensor at a time."""
    for i, job in enumerate(jobs):
        try:
            _put(job, _owning_copy(views[i]), first=False)
        except torch.OutOfMemoryError:
            warnings.warn(
                "prune_channels: out of memory while releasing the pruned channels' memory; the model is "
                "pruned correctly but some tensors still hold their dense storage", RuntimeWarning, stacklevel=3)
            return
        views[i] = None  # type: ignore[call-overload]  # drop the dense view: frees its storage


def _moves_per_tensor(masks: Mapping[tuple[str, int], torch.Tensor]) -> dict[str, list[tuple[int, torch.Tensor]]]:
    by_tensor: dict[str, list[tuple[int, torch.Tensor]]] = {}
    for (name, dim), m in masks.items():
        if not bool(m.all()):
            by_tensor.setdefault(name, []).append((dim, m.nonzero().flatten()))
    return by_tensor


def _check_grads(params: Mapping[str, nn.Parameter], by_tensor: Mapping[str, Any]) -> None:
    for name in by_tensor:
        p = params.get(name)
        if p is None or p.grad is None:
            continue
        if p.grad.layout != torch.strided or tuple(p.grad.shape) != tuple(p.shape):
            raise ValueError(
                f"prune_channels: .grad of '{name}' ({p.grad.layout}, shape {tuple(p.grad.shape)}) is not a dense "
                f"tensor of the parameter's shape {tuple(p.shape)}; zero the gradients with "
                "optimizer.zero_grad(set_to_none=True) before the prune")


def _check_no_shared_memory(plans: list["_Plan"]) -> None:
    """Refuse tensors to compact whose memory another tensor of the prune uses.

    Compaction moves entries inside each tensor's own storage: a second tensor on the same
    memory (aliased or tied-by-view parameters, a flat parameter buffer, a "copy" of the model
    that shares its tensors) would be corrupted.
    """
    owners: dict[tuple[Any, int], str] = {}  # (device, storage address) -> the tensor using it

    def claim(t: Optional[torch.Tensor], label: str, compacted: bool) -> None:
        if t is None or t.layout != torch.strided or t.device.type == "meta":
            return
        st = t.untyped_storage()
        if st.nbytes() == 0:
            return
        key = (t.device, st.data_ptr())
        other = owners.get(key)
        if other is not None and other != label and (compacted or other.endswith("*")):
            a, b = other.rstrip("*"), label
            raise ValueError(
                f"prune_channels: {a} and {b} share memory (aliased parameters, views of one flat buffer, "
                "or tensors tied by view), so neither can be compacted in place; nothing was pruned. Give each "
                "its own storage (p.data = p.data.clone()), or keep these layers out of the prune "
                "(ignored_layers)")
        if other is None or compacted:
            owners[key] = label + ("*" if compacted else "")

    for plan in plans:
        name_of = {id(p): n for n, p in plan.params.items()}
        pre = plan.label
        for name, p in plan.params.items():
            hit = name in plan.by_tensor
            claim(p.detach(), f"{pre}'{name}'", hit)
            claim(p.grad, f"the .grad of {pre}'{name}'", hit)
        for name, b in plan.buffers.items():
            claim(b, f"{pre}buffer '{name}'", name in plan.by_tensor)
        if plan.optimizer is not None:
            for p, key in plan.state_keys:
                n = name_of.get(id(p))
                claim(plan.optimizer.state[p][key], f"optimizer state '{key}' of '{n}'", n in plan.by_tensor)


def _new_groups(groups: ChannelGroups, masks: Mapping[tuple[str, int], torch.Tensor],
                kept_idx: Mapping[int, list[int]]) -> ChannelGroups:
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


@dataclass
class _Plan:
    """One module's part of a prune, validated: what moves, nothing changed yet."""

    model: nn.Module
    label: str  # "" for the model, "copy 0's " for a mirror (message prefix)
    params: dict[str, nn.Parameter]
    buffers: dict[str, torch.Tensor]
    shapes: dict[str, tuple[int, ...]]
    by_tensor: dict[str, list[tuple[int, torch.Tensor]]]
    optimizer: Optional[torch.optim.Optimizer]
    state_keys: list[tuple[nn.Parameter, str]]


def _tensors(model: nn.Module) -> tuple[dict[str, nn.Parameter], dict[str, torch.Tensor], dict[str, tuple[int, ...]]]:
    params = dict(model.named_parameters())
    buffers = dict(model.named_buffers())
    shapes = {n: tuple(t.shape) for n, t in {**buffers, **params}.items()}
    return params, buffers, shapes


def _plan_mirror(i: int, mirror: nn.Module, model_shapes: Mapping[str, tuple[int, ...]],
                 by_tensor: dict[str, list[tuple[int, torch.Tensor]]]) -> _Plan:
    """A copy of the model loses the model's channels: it must have every tensor the prune moves,
    with the model's shape (dtype, device and memory format may differ)."""
    if not isinstance(mirror, nn.Module):
        raise ValueError(f"prune_channels: mirrors[{i}] is a {type(mirror).__name__}, not an nn.Module (pass the "
                         "copy itself: AveragedModel(...).module, ModelEMA(...).ema)")
    params, buffers, shapes = _tensors(mirror)
    for name in by_tensor:
        if name not in shapes:
            raise ValueError(f"prune_channels: mirrors[{i}] ({type(mirror).__name__}) has no tensor '{name}'; a "
                             "mirror must be a copy of the model")
        if shapes[name] != model_shapes[name]:
            raise ValueError(f"prune_channels: mirrors[{i}] ({type(mirror).__name__}): '{name}' has shape "
                             f"{list(shapes[name])}, the model's has {list(model_shapes[name])}; a mirror must be a "
                             "copy of the model with its shapes")
    _check_grads(params, by_tensor)
    return _Plan(mirror, f"mirrors[{i}]'s ", params, buffers, shapes, by_tensor, None, [])


def _apply(plan: _Plan) -> None:
    """Compact every tensor of one validated plan, in place."""
    params, by_tensor = plan.params, plan.by_tensor
    jobs = _collect_jobs(plan.model, params, plan.buffers, by_tensor, plan.optimizer, plan.state_keys)
    views = _compact_in_place(jobs)
    # A graph of the dense model that is still alive can no longer be back-propagated: bump the
    # version counters its saved tensors check, so such a backward raises instead of reading
    # compacted data (best effort: e.g. inference tensors have no version counter).
    try:
        torch.autograd.graph.increment_version(
            [params[n] for n in by_tensor if n in params] + [j.tensor for j in jobs if j.kind == "buffer"])
    except RuntimeError:
        pass
    for job in jobs:
        job.tensor = None  # type: ignore[assignment]  # no reference to a dense storage stays here
    # Phase 1: the compacted views (a consistent pruned model). Data before grads: a grad
    # must match its parameter's new shape, so clear it first.
    for job in jobs:
        if job.kind == "data":
            job.owner.grad = None
    for job, v in zip(jobs, views):
        _put(job, v, first=True)
    # Phase 2: exact-size storages; each dense one is freed as its last view goes.
    _release(jobs, views)
    del jobs, views
    _update_module_attrs(plan.model, plan.shapes, set(by_tensor))


def prune_channels(
    model: nn.Module,
    groups: ChannelGroups,
    keep: Mapping[int, Sequence[int] | torch.Tensor] | Sequence[Sequence[int] | torch.Tensor | None],
    optimizer: torch.optim.Optimizer | None = None,
    *,
    mirrors: Sequence[nn.Module] = (),
) -> ChannelGroups:
    """Remove every channel not kept, in place, and return the updated groups.

    Parameters stay the same objects; their ``.data``, ``.grad`` (never created for a
    parameter without one, e.g. a frozen one), the BN buffers and the optimizer's
    per-parameter state get the kept entries, each in a storage of exactly its new size and
    in its own memory format (``channels_last`` stays ``channels_last``). Safe while an
    autograd graph of the dense model is alive (see the module docs).

    Args:
        model: the network the groups were traced from (current shapes).
        groups: its channel groups.
        keep: group index -> sorted, distinct kept channel indices (ints or a 1-D
            integer tensor); groups not listed keep all channels. Or a list with one
            entry per group, in the groups' order (``None`` keeps a group whole), e.g. a
            :class:`~oneprune_ext.pruning.selection.Selection`'s ``kept_indices``.
        optimizer: optional; its per-parameter state tensors of the parameter's shape are
            compacted along the same dims (any ``torch.optim`` optimizer with per-element
            state: SGD, Adam, AdamW, NAdam, RAdam, Adamax, Adagrad, RMSprop, ...).
        mirrors: copies of ``model`` (an EMA or SWA average's network: the same parameter and
            buffer names and shapes; any device, dtype or memory format) that lose the same
            channels. Their own memory; no optimizer state.

    Returns:
        New :class:`ChannelGroups` with sizes ``len(keep[i])`` and slice offsets
        recomputed (concat offsets shift when earlier channels go).

    Raises:
        ValueError: a bad ``keep`` (unknown group, empty, unsorted, duplicate, out of
            range), groups that do not match the model, a gradient that is not a dense
            tensor of its parameter's shape, an optimizer whose state cannot be sliced
            (:func:`check_optimizer`), or a mirror that is not a copy of the model (a tensor
            missing or of another shape, memory shared with the model); nothing is changed
            then, in the model or in any mirror.
    """
    kept_idx = _validate_keep(groups, keep)
    params, buffers, shapes = _tensors(model)
    masks = _kept_per_dim(groups, kept_idx, shapes)
    by_tensor = _moves_per_tensor(masks)
    state_keys = check_optimizer(optimizer, model) if optimizer is not None else []
    _check_grads(params, by_tensor)
    plans = [_Plan(model, "", params, buffers, shapes, by_tensor, optimizer, state_keys)]
    plans += [_plan_mirror(i, m, shapes, by_tensor) for i, m in enumerate(mirrors)]
    if len({id(p.model) for p in plans}) != len(plans):
        raise ValueError("prune_channels: a mirror is the model itself or is listed twice; pass each copy once")
    _check_no_shared_memory(plans)
    if not by_tensor:  # every group keeps every channel: nothing to move
        return _new_groups(groups, masks, kept_idx)

    # everything is validated: from here on the model and its mirrors change
    with torch.no_grad():
        for plan in plans:
            _apply(plan)
    return _new_groups(groups, masks, kept_idx)


def prune_to_kept(model: nn.Module, dense_groups: ChannelGroups, keep: Sequence[torch.Tensor],
                  optimizer: Optional[torch.optim.Optimizer], layout: Any,
                  mirrors: Sequence[nn.Module] = ()) -> ChannelGroups:
    """Cut ``model`` (traced into ``dense_groups``) and its ``mirrors`` (copies: EMA / SWA networks)
    to the ``keep`` channels of each group and rebuild the kernels' ``layout`` for it (None: no
    layout); returns the groups of the pruned model.

    The whole cut is validated before anything changes (see :func:`prune_channels`). Runs inside
    the profiler ranges ``oneprune::compaction`` and ``oneprune::layout_rebuild``.
    """
    cut = {gi: k for gi, k in enumerate(keep) if int(k.numel()) < dense_groups[gi].size}
    with torch.no_grad(), profiling.span("compaction"):
        groups = prune_channels(model, dense_groups, cut, optimizer, mirrors=mirrors)
    if layout is not None:
        with profiling.span("layout_rebuild"):
            layout.rebuild(groups)  # the dense cost model stays exact: it is a polynomial of kept counts
    return groups
