"""Typed Python wrappers over the compiled ops ``torch.ops.oneprune.*``.

Each op is defined once in C++ (``csrc/ops.cpp``, ``TORCH_LIBRARY``) with CPU and
CUDA kernels; the fake (meta) kernels below let the ops run under ``torch.compile``
and ``torch.library.opcheck``.  All per-channel vectors follow the channel order of
the :class:`~oneprune_ext.kernels.layout.ChannelLayout`: every group's channels, in group order.

The layout ops read the layout's one table (``ChannelLayout.table``), walk every tensor
row-major in fixed-size chunks, read each element once, and combine per-channel results in a
fixed order (deterministic, no atomics). On CUDA each op is a fixed number of kernel launches
for the whole model, whatever its depth:

=====================  ========  ==================================================
op                     launches  what
=====================  ========  ==================================================
``grouped_norms``      2         per-chunk partial sums; per-channel combine
``group_lasso_grad_``  3         partial sums (masked chunks); norms and
                                 coefficients; gradient update + penalty
``scale_channels_``    1         the scaling of the masked chunks
=====================  ========  ==================================================

They never synchronise with the host on CUDA (the group-lasso penalty is returned as a 0-d
device tensor) and can be captured in a CUDA graph after one eager call on the device (which
uploads the table). The compaction ops (once per run, at the prune) check device-resident keep
indices on the host first.

Every call checks the layout against the model first (a replaced, reshaped, re-formatted or
meta parameter raises "call layout.rebuild()"). ``reg`` and ``factor`` given as Python numbers
or CPU tensors must be finite; a CUDA tensor cannot be read without a host sync, so a
non-finite one is caught on the device instead: the op then changes nothing (and the returned
penalty is not finite). Parameters with ``requires_grad=False`` are read (norms, saliency,
penalty) but never written: they get no ``.grad`` and are not scaled.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Sequence, Union

import torch

from .. import _C  # noqa: F401  (registers torch.ops.oneprune.*)

if TYPE_CHECKING:
    from .layout import ChannelLayout

__all__ = ["grouped_norms", "group_lasso_grad_", "scale_channels_", "compact_", "compact_many_"]

_ops = torch.ops.oneprune
Scalar = Union[float, torch.Tensor]
_GRAD_FORMAT = "(a different memory format)"  # in the C++ refusal of a .grad with other strides


def _scalar(value: Scalar, device: torch.device, name: str) -> torch.Tensor:
    """A float32 one-element tensor on ``device`` (no host sync for device tensors)."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"{name} must be a scalar, got a tensor of shape {tuple(value.shape)}")
        if value.device.type == "cpu" and not math.isfinite(float(value)):
            raise ValueError(f"{name} must be finite, got {float(value)}")
        return value.detach().to(device=device, dtype=torch.float32).reshape(())
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return torch.full((), float(value), dtype=torch.float32, device=device)


def _mask(layout: "ChannelLayout", mask: torch.Tensor, op: str) -> torch.Tensor:
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
        raise ValueError(f"{op}: mask must be a bool tensor with one entry per channel of the layout")
    if mask.shape != (layout.num_channels,):
        raise ValueError(
            f"{op}: mask has shape {tuple(mask.shape)}, the layout has {layout.num_channels} channels"
        )
    return mask.to(layout.device).contiguous()


def grouped_norms(layout: "ChannelLayout") -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel fp32 sum of squares and saliency, over every coupled slice, in one pass.

    Frozen parameters (``requires_grad=False``) count like the others.

    Returns:
        ``(sq_norm, saliency)``, two fp32 vectors of length ``layout.num_channels`` on the
        layout's device: ``sq_norm[c] = ||g_c||^2`` (all slices of channel ``c`` concatenated)
        and ``saliency[c] = (1/M) * sum_m ||s_m(c)||^2 / sqrt(len(s_m(c)))`` over its M slices.
    """
    tensors = layout.tensors()
    if not tensors:
        z = torch.zeros(layout.num_channels, dtype=torch.float32, device=layout.device)
        return z, z.clone()
    with torch.no_grad():
        return _ops.grouped_norms.default(tensors, layout.table, layout.num_channels)


def group_lasso_grad_(
    layout: "ChannelLayout", mask: torch.Tensor, reg: Scalar, eps: float = 1e-12
) -> torch.Tensor:
    """Adds the group-lasso gradient ``reg * w / max(||g_c||, eps)`` to ``.grad`` of every
    slice of the channels in ``mask``, in place.

    Parameters without a ``.grad`` get a zero one first; frozen parameters
    (``requires_grad=False``) get none and are skipped (their slices still count in the
    norms). ``reg`` may be a float or a one-element tensor (keep it a device tensor to make
    the call CUDA-graph capturable). A ``.grad`` in another memory format than its parameter
    is replaced by a copy in the parameter's format.

    Returns:
        The penalty ``reg * sum_{c in mask} ||g_c||`` as a 0-d fp32 tensor on the layout's
        device (not synchronised).
    """
    frozen, grads, pending = layout._live(True)
    tensors = layout._params
    m, r = _mask(layout, mask, "group_lasso_grad_"), _scalar(reg, layout.device, "group_lasso_grad_: reg")
    if not tensors:
        return torch.zeros((), dtype=torch.float32, device=layout.device)
    try:
        with torch.no_grad():
            pen = _ops.group_lasso_grad_.default(tensors, grads, layout.table, m, r, float(eps), frozen)
    except ValueError as exc:  # refused before anything was written
        if _GRAD_FORMAT not in str(exc):
            raise
        # only the grads' memory format was wrong (checked last): convert them and retry
        layout.fix_grad_layouts()
        frozen, grads, pending = layout._live(True)
        with torch.no_grad():
            pen = _ops.group_lasso_grad_.default(tensors, grads, layout.table, m, r, float(eps), frozen)
    for p, g in pending:
        p.grad = g
    return pen


def scale_channels_(layout: "ChannelLayout", mask: torch.Tensor, factor: Scalar) -> None:
    """Multiplies every slice of the channels in ``mask`` by ``factor``, in place.

    An entry that belongs to two masked channels (row of one, column of another) is
    scaled twice, as a per-slice loop would. Frozen parameters are not scaled.
    """
    frozen, _, _ = layout._live(False)
    tensors = layout._params
    m, f = _mask(layout, mask, "scale_channels_"), _scalar(factor, layout.device, "scale_channels_: factor")
    if not tensors:
        return
    with torch.no_grad():
        _ops.scale_channels_.default(tensors, layout.table, m, f, frozen)


def compact_(tensor: torch.Tensor, dim: int, keep: torch.Tensor | list[int]) -> torch.Tensor:
    """Keeps the slices ``keep`` along ``dim`` of ``tensor``, in its own storage.

    The kept slices move, in order, to the front of the storage (no second full-size
    allocation); the result is a contiguous view of that storage with
    ``result.size(dim) == len(keep)``. Use the result in place of ``tensor`` afterwards
    (for a Parameter: ``p.data = compact_(p.data, dim, keep)``).

    Args:
        tensor: a contiguous tensor (weights, biases, BN buffers, optimizer state...).
        dim: the dimension to compact.
        keep: sorted, unique indices in ``[0, tensor.size(dim))``.
    """
    dim, keep_t = _compact_args(tensor, dim, keep)
    _ops.compact_.default(tensor, dim, keep_t)
    shape = list(tensor.shape)
    shape[dim] = keep_t.numel()
    return tensor.view(-1)[: math.prod(shape)].view(shape)


def compact_many_(
    tensors: Sequence[torch.Tensor], dims: Sequence[int], keeps: Sequence[torch.Tensor | list[int]]
) -> list[torch.Tensor]:
    """:func:`compact_` of many tensors in one call (CPU: several tensors in parallel).

    Entry ``i`` keeps ``keeps[i]`` along ``dims[i]`` of ``tensors[i]``. A tensor named by
    several *consecutive* entries (dims in increasing order) is compacted along all of them
    (two dims in a single pass on the CPU: a conv weight losing rows and columns moves only
    its kept entries, once). Otherwise the tensors must not share memory.

    Returns:
        One view per entry; the entries of one tensor all get its final, fully narrowed view.
    """
    if not (len(tensors) == len(dims) == len(keeps)):
        raise ValueError("compact_many_: pass one dim and one keep vector per tensor")
    args = [_compact_args(t, d, k) for t, d, k in zip(tensors, dims, keeps)]
    _ops.compact_many_.default(list(tensors), [d for d, _ in args], [k for _, k in args])
    outs: list[torch.Tensor] = []
    start = 0
    for i in range(1, len(tensors) + 1):
        if i < len(tensors) and _same_tensor(tensors[i], tensors[i - 1]):
            continue  # same tensor as the previous entry: one job (as the C++ op groups them)
        shape = list(tensors[start].shape)
        for d, k in args[start:i]:
            shape[d] = k.numel()
        view = tensors[start].view(-1)[: math.prod(shape)].view(shape)
        outs.extend([view] * (i - start))
        start = i
    return outs


def _same_tensor(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether two compact_many_ entries name one tensor (as the C++ op groups them): the same
    object, or the same non-empty memory and shape (distinct empty tensors may share a null
    data pointer)."""
    return a is b or (a.numel() > 0 and a.data_ptr() == b.data_ptr() and a.shape == b.shape)


def _keep_tensor(keep: torch.Tensor | list[int]) -> torch.Tensor:
    """``keep`` as an int64 tensor; bool masks and float values are refused, not converted."""
    k = keep if isinstance(keep, torch.Tensor) else torch.as_tensor(keep)
    if k.numel() == 0:
        return k.new_zeros(k.shape, dtype=torch.long) if isinstance(keep, torch.Tensor) else torch.zeros(0, dtype=torch.long)
    if k.dtype == torch.bool or k.is_floating_point() or k.is_complex():
        raise TypeError(
            f"compact_: keep must hold integer indices, got {k.dtype} values (for a bool mask pass "
            "mask.nonzero().flatten())")
    return k if k.dtype == torch.long else k.long()


def _compact_args(tensor: torch.Tensor, dim: int, keep: torch.Tensor | list[int]) -> tuple[int, torch.Tensor]:
    """Normalised (dim, keep) for the compaction ops; checks what C++ cannot check cheaply."""
    if not isinstance(tensor, torch.Tensor):
        raise TypeError("compact_: tensor must be a torch.Tensor")
    if tensor.dim() == 0:
        raise ValueError("compact_: tensor must have at least one dimension")
    if isinstance(dim, bool) or not isinstance(dim, int):
        raise TypeError(f"compact_: dim must be an int, got {dim!r}")
    if not -tensor.dim() <= dim < tensor.dim():
        raise IndexError(f"compact_: dim {dim} is out of range for a {tensor.dim()}-d tensor")
    dim = dim % tensor.dim()
    keep_t = _keep_tensor(keep)
    if keep_t.dim() != 1:
        raise ValueError("compact_: keep must be a 1-d sequence of indices")
    if keep_t.device != tensor.device or keep_t.device.type != "cpu":
        # Host indices for a host tensor are range- and order-checked in C++ (no copy);
        # everything else is checked here on the host before any data moves.
        keep_cpu = keep_t.cpu()
        size = tensor.size(dim)
        if keep_cpu.numel():
            if int(keep_cpu.min()) < 0 or int(keep_cpu.max()) >= size:
                raise IndexError(f"compact_: keep has indices outside [0, {size}) along dim {dim}")
            if keep_cpu.numel() > 1 and not bool((keep_cpu[1:] > keep_cpu[:-1]).all()):
                raise ValueError("compact_: keep must be sorted in increasing order, without duplicates")
        keep_t = keep_t.to(tensor.device)
    return dim, keep_t.contiguous()


# --- fake kernels: shapes only, for torch.compile / FakeTensor / opcheck -----------------


@torch.library.register_fake("oneprune::grouped_norms")
def _grouped_norms_fake(tensors, table, nchan):
    dev = tensors[0].device if tensors else table.device
    return (torch.empty((nchan,), dtype=torch.float32, device=dev),
            torch.empty((nchan,), dtype=torch.float32, device=dev))


@torch.library.register_fake("oneprune::group_lasso_grad_")
def _group_lasso_grad_fake(tensors, grads, table, mask, reg, eps, frozen):
    return mask.new_empty((), dtype=torch.float32)


@torch.library.register_fake("oneprune::scale_channels_")
def _scale_channels_fake(tensors, table, mask, factor, frozen):
    return None


@torch.library.register_fake("oneprune::compact_")
def _compact_fake(tensor, dim, keep):
    return None


@torch.library.register_fake("oneprune::compact_many_")
def _compact_many_fake(tensors, dims, keeps):
    return None
