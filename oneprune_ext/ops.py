"""Typed Python wrappers over the compiled ops ``torch.ops.oneprune.*``.

Each op is defined once in C++ (``csrc/ops.cpp``, ``TORCH_LIBRARY``) with CPU and
CUDA kernels; the fake (meta) kernels below let the ops run under ``torch.compile``
and ``torch.library.opcheck``.  All per-channel vectors follow the channel order of
the :class:`~oneprune_ext.layout.ChannelLayout`: every group's channels, in group order.

The per-step ops (grouped_norms, group_lasso_grad_, scale_channels_) never synchronise with
the host on CUDA: the group-lasso penalty is returned as a 0-d device tensor. The compaction ops
(once per run, at the prune) check device-resident keep indices on the host first.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Sequence, Union

import torch

from . import _C  # noqa: F401  (registers torch.ops.oneprune.*)

if TYPE_CHECKING:
    from .layout import ChannelLayout

__all__ = ["grouped_norms", "group_lasso_grad_", "scale_channels_", "compact_", "compact_many_"]

_ops = torch.ops.oneprune
Scalar = Union[float, torch.Tensor]


def _scalar(value: Scalar, device: torch.device, name: str) -> torch.Tensor:
    """A float32 one-element tensor on ``device`` (no host sync for device tensors)."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"{name} must be a scalar, got a tensor of shape {tuple(value.shape)}")
        return value.detach().to(device=device, dtype=torch.float32).reshape(())
    return torch.full((), float(value), dtype=torch.float32, device=device)


def _mask(layout: "ChannelLayout", mask: torch.Tensor) -> torch.Tensor:
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
        raise ValueError("mask must be a bool tensor with one entry per channel of the layout")
    if mask.shape != (layout.num_channels,):
        raise ValueError(
            f"mask has shape {tuple(mask.shape)}, the layout has {layout.num_channels} channels"
        )
    return mask.to(layout.device).contiguous()


def grouped_norms(layout: "ChannelLayout") -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel fp32 sum of squares and saliency, over every coupled slice, in one pass.

    Returns:
        ``(sq_norm, saliency)``, two fp32 vectors of length ``layout.num_channels``:
        ``sq_norm[c] = ||g_c||^2`` (all slices of channel ``c`` concatenated) and
        ``saliency[c] = (1/M) * sum_m ||s_m(c)||^2 / sqrt(len(s_m(c)))`` over its M slices.
    """
    tensors, numels, segs, seg_ptr, runs = layout.kernel_args()
    return _ops.grouped_norms.default(tensors, numels, segs, seg_ptr, runs)


def group_lasso_grad_(
    layout: "ChannelLayout", mask: torch.Tensor, reg: Scalar, eps: float = 1e-12
) -> torch.Tensor:
    """Adds the group-lasso gradient ``reg * w / max(||g_c||, eps)`` to ``.grad`` of every
    slice of the channels in ``mask``, in place.

    Parameters without a ``.grad`` get a zero one first. ``reg`` may be a float or a
    one-element tensor (keep it a device tensor to make the call CUDA-graph capturable).

    Returns:
        The penalty ``reg * sum_{c in mask} ||g_c||`` as a 0-d fp32 tensor on the layout's
        device (not synchronised).
    """
    tensors, numels, segs, seg_ptr, runs = layout.kernel_args()
    grads = layout.grads()
    return _ops.group_lasso_grad_.default(
        tensors, grads, numels, segs, seg_ptr, runs, _mask(layout, mask), _scalar(reg, layout.device, "reg"),
        float(eps),
    )


def scale_channels_(layout: "ChannelLayout", mask: torch.Tensor, factor: Scalar) -> None:
    """Multiplies every slice of the channels in ``mask`` by ``factor``, in place.

    An entry that belongs to two masked channels (row of one, column of another) is
    scaled twice, as a per-slice loop would.
    """
    tensors, numels, segs, seg_ptr, runs = layout.kernel_args()
    _ops.scale_channels_.default(
        tensors, numels, segs, seg_ptr, runs, _mask(layout, mask), _scalar(factor, layout.device, "factor")
    )


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
        if (i < len(tensors) and tensors[i].data_ptr() == tensors[i - 1].data_ptr()
                and tensors[i].shape == tensors[i - 1].shape):
            continue  # same tensor as the previous entry: one job (as the C++ op groups them)
        shape = list(tensors[start].shape)
        for d, k in args[start:i]:
            shape[d] = k.numel()
        view = tensors[start].view(-1)[: math.prod(shape)].view(shape)
        outs.extend([view] * (i - start))
        start = i
    return outs


def _compact_args(tensor: torch.Tensor, dim: int, keep: torch.Tensor | list[int]) -> tuple[int, torch.Tensor]:
    """Normalised (dim, keep) for the compaction ops; checks what C++ cannot check cheaply."""
    if not isinstance(tensor, torch.Tensor):
        raise TypeError("compact_: tensor must be a torch.Tensor")
    if tensor.dim() == 0:
        raise ValueError("compact_: tensor must have at least one dimension")
    if not -tensor.dim() <= dim < tensor.dim():
        raise IndexError(f"compact_: dim {dim} is out of range for a {tensor.dim()}-d tensor")
    dim = dim % tensor.dim()
    keep_t = keep if isinstance(keep, torch.Tensor) and keep.dtype == torch.long else torch.as_tensor(
        keep, dtype=torch.long)
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
def _grouped_norms_fake(tensors, numels, segs, seg_ptr, runs):
    n = seg_ptr.shape[1] - 1
    return seg_ptr.new_empty((n,), dtype=torch.float32), seg_ptr.new_empty((n,), dtype=torch.float32)


@torch.library.register_fake("oneprune::group_lasso_grad_")
def _group_lasso_grad_fake(tensors, grads, numels, segs, seg_ptr, runs, mask, reg, eps):
    return segs.new_empty((), dtype=torch.float32)


@torch.library.register_fake("oneprune::scale_channels_")
def _scale_channels_fake(tensors, numels, segs, seg_ptr, runs, mask, factor):
    return None


@torch.library.register_fake("oneprune::compact_")
def _compact_fake(tensor, dim, keep):
    return None


@torch.library.register_fake("oneprune::compact_many_")
def _compact_many_fake(tensors, dims, keeps):
    return None
