"""Memory order of dense tensors, so the kernels and the compaction handle ``channels_last``.

A tensor whose elements fill its storage without gaps or overlap, in *some* order of its
dimensions (contiguous, ``channels_last``, ``channels_last_3d``, any permutation), is a
permutation of a contiguous tensor. :func:`memory_order` finds that permutation, so code that
walks memory row-major can work on ``t.permute(order)`` (contiguous) and map a logical
dimension ``d`` to the memory-order dimension ``order.index(d)``.
"""

from __future__ import annotations

from typing import Optional

import torch

__all__ = ["memory_order", "dense_view", "inverse_order", "is_dense"]


def _order(t: torch.Tensor) -> tuple[int, ...]:
    # Outermost (largest stride) first; ties (size-1 dims, whose stride is arbitrary) keep
    # logical order so a contiguous tensor always gets the identity.
    return tuple(sorted(range(t.dim()), key=lambda d: (-t.stride(d), d)))


def memory_order(t: torch.Tensor) -> Optional[tuple[int, ...]]:
    """The dims of ``t`` from outermost to innermost in memory, or None if ``t`` is not dense.

    ``t.permute(memory_order(t))`` is contiguous. The identity for a contiguous tensor;
    ``(0, 2, 3, 1)`` for a 4-d ``channels_last`` tensor with more than one channel.
    """
    if t.is_contiguous():
        return tuple(range(t.dim()))
    order = _order(t)
    return order if t.permute(order).is_contiguous() else None


def is_dense(t: torch.Tensor) -> bool:
    """Whether ``t`` fills its elements' memory without gaps or overlap, in some dim order."""
    return memory_order(t) is not None


def inverse_order(order: tuple[int, ...]) -> tuple[int, ...]:
    """The permutation that undoes ``order`` (``t.permute(order).permute(inverse_order(order))`` is ``t``)."""
    inv = [0] * len(order)
    for i, d in enumerate(order):
        inv[d] = i
    return tuple(inv)


def dense_view(t: torch.Tensor, what: str = "tensor") -> tuple[torch.Tensor, tuple[int, ...]]:
    """``(t.permute(order), order)`` with the permuted view contiguous (a view: same storage).

    Raises:
        ValueError: ``t`` has gaps or overlapping elements (a slice or an expanded tensor);
            the message names ``what`` and says to make it contiguous.
    """
    order = memory_order(t)
    if order is None:
        raise ValueError(
            f"{what} (shape {tuple(t.shape)}, strides {tuple(t.stride())}) is not dense in memory; "
            "make it contiguous (.contiguous() or .to(memory_format=...)) first")
    return t.permute(order), order
