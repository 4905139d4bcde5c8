"""One-cycle pruning under ``torch.distributed`` (DistributedDataParallel, ``torchrun``).

The pattern (the README shows it whole)::

    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")  # torchrun sets the ranks
    pruner = OneCyclePruner(model, x, config, process_group=dist.group.WORLD)
    ddp = DistributedDataParallel(model)          # forward through ddp; the pruner edits model
    ...
    if pruner.epoch_end(epoch, optimizer).pruned_now:
        ddp = rewrap(ddp)                         # DDP's buckets hold the dense shapes

What it guarantees:

* **the same sub-network on every rank**: the pruner broadcasts each epoch's channel
  saliencies from the group's rank 0 before choosing the sub-network, so every rank chooses
  rank 0's sub-network and their stability indicators are equal;
* **the same prune epoch**: the prune decision depends only on those indicators;
* **no silent divergence**: every ``epoch_start`` compares a checksum of every rank's
  prunable parameters (one all-reduce) and raises if they differ (a model trained without
  gradient synchronisation, e.g. a DDP wrapper that was not rebuilt after the prune);
* **DDP keeps working after the in-place prune**: :func:`rewrap` builds a new
  ``DistributedDataParallel`` with the old one's settings over the same, now smaller, module.

The helpers also work without an initialised process group (one process: rank 0 of 1).
"""

from __future__ import annotations

import inspect
from typing import Any, Optional, Sequence

import torch
import torch.distributed as dist
import torch.nn as nn

__all__ = ["rank", "world_size", "is_main_process", "rewrap", "broadcast_from_rank0", "check_same_on_all_ranks",
           "broadcast_buffers", "all_reduce_sum"]


def _active(group: Optional[Any] = None) -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1


def rank(group: Optional[Any] = None) -> int:
    """This process's rank in ``group`` (0 without an initialised process group)."""
    return dist.get_rank(group) if dist.is_available() and dist.is_initialized() else 0


def world_size(group: Optional[Any] = None) -> int:
    """The number of processes in ``group`` (1 without an initialised process group)."""
    return dist.get_world_size(group) if dist.is_available() and dist.is_initialized() else 1


def is_main_process(group: Optional[Any] = None) -> bool:
    """Whether this is rank 0 (the process that writes files and prints)."""
    return rank(group) == 0


def _comm_device(t: torch.Tensor, group: Optional[Any]) -> torch.device:
    """Where a collective of ``group`` can take ``t``: NCCL needs CUDA tensors, gloo host ones."""
    backend = str(dist.get_backend(group)).lower()
    if "nccl" in backend:
        return t.device if t.is_cuda else torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu") if "gloo" in backend else t.device


def _src(group: Optional[Any]) -> int:
    """The global rank of ``group``'s rank 0."""
    if group is None or group is dist.group.WORLD:
        return 0
    return dist.get_global_rank(group, 0)


def broadcast_from_rank0(t: torch.Tensor, group: Optional[Any] = None) -> torch.Tensor:
    """``t`` as the group's rank 0 has it, on every rank (same device and dtype as ``t``)."""
    if not _active(group):
        return t
    buf = t.detach().to(_comm_device(t, group)).contiguous().clone()
    dist.broadcast(buf, src=_src(group), group=group)
    return buf.to(t.device)


def all_reduce_sum(t: torch.Tensor, group: Optional[Any] = None) -> torch.Tensor:
    """The sum of ``t`` over the group's ranks (``t`` itself with one process)."""
    if not _active(group):
        return t
    buf = t.detach().to(_comm_device(t, group)).contiguous().clone()
    dist.all_reduce(buf, op=dist.ReduceOp.SUM, group=group)
    return buf.to(t.device)


def check_same_on_all_ranks(tensors: Sequence[torch.Tensor], names: Sequence[str],
                            group: Optional[Any] = None, what: str = "parameter") -> None:
    """Raise unless every rank holds the same ``tensors`` (one all-reduce of float64 checksums).

    The checksum of a tensor is its sum and its sum of squares, in float64; the all-reduce
    takes their maximum and minimum over the ranks (one ``MAX`` of ``[c, -c]``).

    Raises:
        RuntimeError: naming the first tensor that differs and what usually causes it.
    """
    if not _active(group) or not tensors:
        return
    with torch.no_grad():
        dev = tensors[0].device
        sums = torch.stack([torch.stack([t.double().sum(), t.double().square().sum()]).to(dev) for t in tensors])
        both = torch.cat([sums.reshape(-1), -sums.reshape(-1)])
        both = both.to(_comm_device(both, group))
        dist.all_reduce(both, op=dist.ReduceOp.MAX, group=group)
        n = sums.numel()
        differ = (both[:n] != -both[n:]).reshape(-1, 2).any(dim=1).cpu()
    if bool(differ.any()):
        first = names[int(differ.nonzero()[0])]
        raise RuntimeError(
            f"{what} '{first}' differs between the ranks (and {int(differ.sum()) - 1} more): they trained different "
            "models. Forward through a DistributedDataParallel wrapper of the model so gradients are averaged, "
            "and build a new wrapper after the prune (oneprune_ext.pruning.distributed.rewrap(ddp)): the old one's "
            "buckets hold the dense shapes.")


def broadcast_buffers(model: nn.Module, group: Optional[Any] = None) -> None:
    """Copy rank 0's buffers (BN running statistics, ...) to every rank, in place.

    DDP broadcasts them at the start of each training forward; after the last step every
    rank has updated them with its own batch, so call this before evaluating or saving.
    """
    if not _active(group):
        return
    with torch.no_grad():
        for b in model.buffers():
            b.copy_(broadcast_from_rank0(b, group))


def rewrap(ddp: nn.parallel.DistributedDataParallel) -> nn.parallel.DistributedDataParallel:
    """A new ``DistributedDataParallel`` over ``ddp.module`` with ``ddp``'s settings.

    Call it after the in-place prune (``pruner.epoch_end(...).pruned_now``): DDP's gradient
    buckets and hooks were built for the dense shapes. The new wrapper broadcasts rank 0's
    parameters and buffers, as DDP's constructor does. Kept: ``device_ids``,
    ``output_device``, ``dim``, ``broadcast_buffers``, ``process_group``, the bucket size,
    ``find_unused_parameters``, ``gradient_as_bucket_view``, ``static_graph``; a
    communication hook registered on the old wrapper must be registered again. Drop the
    old wrapper (``ddp = rewrap(ddp)``): its dense-sized buckets are freed with it.
    """
    module = ddp.module
    kwargs: dict[str, Any] = dict(
        device_ids=ddp.device_ids, output_device=ddp.output_device, dim=ddp.dim, process_group=ddp.process_group,
        bucket_cap_mb=ddp.bucket_bytes_cap / (1024 * 1024), find_unused_parameters=ddp.find_unused_parameters,
        gradient_as_bucket_view=ddp.gradient_as_bucket_view, static_graph=ddp.static_graph,
    )
    if "forward_sync_buffers" in inspect.signature(nn.parallel.DistributedDataParallel).parameters:
        kwargs["forward_sync_buffers"] = ddp.forward_sync_buffers  # newer torch; syncs at init either way
    else:
        kwargs["broadcast_buffers"] = ddp.broadcast_buffers
    return nn.parallel.DistributedDataParallel(module, **kwargs)

