"""Registry entries of torchvision's detection layers (registered by qualified name: nothing is
imported for them).

* ``torchvision.ops.MultiScaleRoIAlign`` (the box, mask and keypoint heads' RoI pooling of
  Faster / Mask / Keypoint R-CNN): kept as one node.  It pools the feature maps named in
  ``featmap_names`` into one ``[rois, C, h, w]`` tensor, so those maps' channels are the same
  channels (FPN outputs are anyway: one RPN head convolves them all) and the output carries
  them on dim 1.  What it runs inside (``torch.zeros`` with the channel count, an indexed
  write per level) would otherwise keep the FPN's channels fixed.  No MACs
  (``FlopCounterMode`` counts none for RoI Align).
* ``torchvision.ops.roi_align`` / ``roi_pool``: ``[K, C, h, w]`` from ``[N, C, H, W]``: the
  output carries the input's channels.  The position-sensitive variants (``ps_roi_align``,
  ``ps_roi_pool``) mix channel blocks into bins and stay unsupported.
* ``torchvision.ops.misc.FrozenBatchNorm2d`` (the detectors' backbone norm when built from
  pre-trained weights; not an ``nn.BatchNorm`` subclass, its statistics and affine are
  buffers): a per-channel affine on dim 1; its four buffers are compacted with the channels
  and, being buffers (never trained), count in no saliency.
"""

from __future__ import annotations

from typing import Any

import torch.nn as nn

from ..propagation import OPAQUE, Call, ChannelInfo, Propagation, TMeta
from ..registry import LayerEntry, register_function, register_module

__all__: list[str] = []


def _chan(x: Any) -> bool:
    return isinstance(x, ChannelInfo) and x.dim is not None


def _no_channels_elsewhere(ctx: Propagation, call: Call, skip: int) -> bool:
    """Arguments other than the pooled features (boxes, sizes) must not carry prunable channels."""
    rest = [v for i, v in enumerate(call.infos) if i != skip] + [v for k, v in call.ikwargs.items()
                                                                  if k not in ("x", "input")]
    if ctx.sources_of(rest):
        ctx.unsupported(rest, "RoI boxes computed from prunable channels")
        return False
    return True


def _couple_multiscale_roi_align(ctx: Propagation, call: Call) -> Any:
    m = call.module
    feats, out = call.info(0, "x"), call.out
    if not isinstance(feats, dict) or not isinstance(out, TMeta):
        return ctx.unsupported(call.inputs(), "expects a dict of feature maps")
    chosen = [v for k, v in feats.items() if k in m.featmap_names]
    if not chosen:
        return OPAQUE
    _no_channels_elsewhere(ctx, call, 0)
    ref = chosen[0]
    for other in chosen[1:]:
        ctx.merge(ref, other)
    if not _chan(ref) or ref.dim != 1:
        ctx.fix(chosen)
        return ctx.new_channels(out.shape[1], 1, fixed=True)
    return ChannelInfo(1, ref.segs)


register_module("torchvision.ops.poolers.MultiScaleRoIAlign", entry=LayerEntry(
    "multi-scale RoI align", _couple_multiscale_roi_align))


def _couple_roi_pool(ctx: Propagation, call: Call) -> Any:
    x, out = call.info(0, "input"), call.out
    if not _chan(x):
        return ctx.opaque_like(out)
    if x.dim != 1 or not isinstance(out, TMeta):
        return ctx.unsupported(x, f"expects channels on dim 1, got them on dim {x.dim}")
    _no_channels_elsewhere(ctx, call, 0)
    return x


register_function("torchvision.ops.roi_align.roi_align", "torchvision.ops.roi_pool.roi_pool",
                  entry=LayerEntry("RoI align / pool", _couple_roi_pool))


def _couple_frozen_batch_norm(ctx: Propagation, call: Call) -> Any:
    x = call.info(0, "x")
    if not _chan(x):
        return x if isinstance(x, ChannelInfo) else OPAQUE
    if x.dim != 1:
        return ctx.unsupported(x, f"expects channels on dim 1, got them on dim {x.dim}")
    for buf in ("weight", "bias", "running_mean", "running_var"):
        ctx.attach(x, f"{call.module_name}.{buf}", 0, weight=False, is_buffer=True)
    return x


def _same_shape(m: nn.Module, args: tuple, kwargs: dict) -> Any:
    return args[0] if len(args) == 1 and not kwargs else None


register_module("torchvision.ops.misc.FrozenBatchNorm2d", entry=LayerEntry(
    "frozen batch norm", _couple_frozen_batch_norm, output_shape=_same_shape))
