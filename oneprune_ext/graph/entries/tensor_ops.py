"""Registry entries of parameter-free tensor ops: how channels flow through them.

Each op gets one :class:`~oneprune_ext.graph.registry.LayerEntry` whose coupling rule maps the
channel information of its inputs to its output (see :mod:`oneprune_ext.graph.propagation`):

* element-wise activations, dropout, casts, ``torchvision.ops.stochastic_depth``: the
  output carries the input's channels;
* binary arithmetic with broadcasting (residual adds, squeeze-and-excitation gates,
  a parameter multiplying channels such as ConvNeXt's layer scale): the operands'
  channels are the same channels; a parameter operand covering them is sliced with them;
* ``view`` / ``reshape`` / ``flatten`` / ``squeeze`` / ``unsqueeze``: a flatten of
  ``[C, H, W]`` maps channel ``c`` to ``H*W`` consecutive entries (``Slice.block``); a
  reshape that splits or mixes the channel dim, or gives it a **literal size** (``x.view(n,
  8*7*7)``, ``reshape(n, self.C, -1)``: it would not follow a prune), is unsupported;
* ``permute`` / ``transpose`` / ``swapaxes`` / ``expand`` / basic indexing on other dims,
  reductions and softmax over other dims, pooling, ``F.pad``, ``F.interpolate`` /
  ``nn.Upsample``;
* ``torch.cat`` along the channel dim (channel offsets) or along another dim (the operands'
  channels are the same channels; a parameter operand, e.g. a ViT class token, is sliced);
* ``torch.chunk`` / ``Tensor.chunk`` (and ``split`` with a size computed from the input's
  shape) along the channel dim: each piece is a range of the channels, and the pieces lose
  the same positions so they stay equal;
* channel shuffle (``nn.ChannelShuffle``, or a ``view`` that splits the channel dim) and
  anything else not listed: unsupported, so the channels involved are kept fixed.
"""

from __future__ import annotations

import operator
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import fx

from ..propagation import OPAQUE, Call, ChannelInfo, ParamRef, Propagation, SizeRef, TMeta
from ..registry import LayerEntry, register_function, register_method, register_module

__all__: list[str] = []


def _prod(xs: Any) -> int:
    out = 1
    for x in xs:
        out *= int(x)
    return out


def _chan(x: Any) -> bool:
    return isinstance(x, ChannelInfo) and x.dim is not None


def _first(call: Call) -> Any:
    return call.infos[0] if call.infos else None


def _meta0(call: Call) -> Any:
    return call.args[0] if call.args else None


# ----------------------------------------------------------------------------------
# element-wise
# ----------------------------------------------------------------------------------


def _couple_passthrough(ctx: Propagation, call: Call) -> Any:
    x = _first(call)
    if isinstance(x, (ChannelInfo, ParamRef)):
        return x
    return ctx.opaque_like(call.out)


def _couple_elementwise(ctx: Propagation, call: Call) -> Any:
    extra = [i for i in list(call.infos[1:]) + list(call.ikwargs.values()) if isinstance(i, (ChannelInfo, ParamRef))]
    if extra:
        return _binary(ctx, call, weight=False)
    return _couple_passthrough(ctx, call)


def _same_shape(m: nn.Module, args: tuple, kwargs: dict) -> Any:
    x = args[0] if len(args) == 1 and not kwargs else None
    return x if isinstance(x, torch.Tensor) else None  # same shape: no need to compute while tracing


_ELEMENTWISE = LayerEntry("element-wise", _couple_elementwise, handles_params=True, output_shape=_same_shape)
_PASSTHROUGH = LayerEntry("cast / copy", _couple_passthrough, handles_params=True)

register_module(
    nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.Hardswish, nn.Hardsigmoid,
    nn.Hardtanh, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.Mish, nn.Softplus, nn.Softsign,
    nn.Tanhshrink, nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d,
    nn.AlphaDropout, nn.FeatureAlphaDropout, nn.Threshold,
    entry=_ELEMENTWISE)
register_function(
    F.relu, F.relu_, torch.relu, torch.relu_, F.relu6, F.gelu, F.silu, F.mish, torch.sigmoid,
    F.sigmoid, torch.tanh, F.tanh, F.hardswish, F.hardsigmoid, F.hardtanh, F.leaky_relu, F.elu,
    F.selu, F.celu, F.softplus, F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout,
    torch.abs, torch.neg, torch.exp, torch.clamp, torch.clip, torch.square, torch.sqrt,
    torch.rsqrt, operator.neg, operator.pos,
    "torchvision.ops.stochastic_depth.stochastic_depth",
    entry=_ELEMENTWISE)
register_method(
    "relu", "relu_", "sigmoid", "sigmoid_", "tanh", "tanh_", "clamp", "clamp_", "clamp_min",
    "clamp_min_", "clamp_max", "clamp_max_", "clip", "clip_", "abs", "neg", "exp", "sqrt",
    "rsqrt", "square", "pow", "hardswish", "hardsigmoid",
    entry=_ELEMENTWISE)
# x.type_as(y) / torch.zeros_like(x): y gives only a dtype; a *_like tensor has x's shape, so it
# follows x's channel count (its own values are constants)
register_method("type_as", entry=_PASSTHROUGH)
register_function(torch.zeros_like, torch.ones_like, torch.empty_like, torch.full_like, torch.rand_like,
                  torch.randn_like, entry=_PASSTHROUGH)


def _couple_new_tensor(ctx: Propagation, call: Call) -> Any:
    return ctx.opaque_like(call.out)  # x.new_zeros(size): only x's dtype and device are used


register_method("new_zeros", "new_ones", "new_full", "new_empty", "new_tensor",
                entry=LayerEntry("new tensor", _couple_new_tensor))
register_method("contiguous", "clone", "float", "half", "bfloat16", "double", "to", "type", "detach",
                entry=_PASSTHROUGH)


# ----------------------------------------------------------------------------------
# binary arithmetic
# ----------------------------------------------------------------------------------


def _binary(ctx: Propagation, call: Call, weight: bool) -> Any:
    """Broadcasting arithmetic: operands carrying channels carry the same channels."""
    out = call.out
    if not isinstance(out, TMeta):
        return ctx.opaque_like(out)
    nd = len(out.shape)
    operands = [(i, a) for i, a in zip(list(call.infos) + list(call.ikwargs.values()),
                                       list(call.args) + list(call.kwargs.values()))
                if isinstance(a, TMeta) and isinstance(i, (ChannelInfo, ParamRef))]
    chans = [(i, a) for i, a in operands if _chan(i)]
    if not chans:
        params = [i for i, _ in operands if isinstance(i, ParamRef)]
        if params:
            # a parameter in an expression without channels: whatever it is sliced with elsewhere
            # must stay, since its uses here are not followed
            return ctx.unsupported(params, "a parameter used in an expression the tracer does not follow")
        return OPAQUE
    dims = {i.dim + nd - len(a.shape) for i, a in chans}
    if len(dims) != 1:
        return ctx.unsupported(call.inputs(), "operands carry channels on different dims")
    d = dims.pop()
    ref = chans[0][0]
    for i, _ in chans[1:]:
        ctx.merge(ref, i)
    for i, a in operands:
        k = d - (nd - len(a.shape))
        if isinstance(i, ParamRef):
            ctx.claim(i, ref, k, weight=weight)
        elif i.dim is None and k >= 0 and a.shape[k] != 1:
            # an operand we cannot slice covers the channels: keep them
            for c, _ in chans:
                ctx.fix(c)
    return ChannelInfo(d, ref.segs)


def _couple_sum(ctx: Propagation, call: Call) -> Any:
    return _binary(ctx, call, weight=False)


def _couple_product(ctx: Propagation, call: Call) -> Any:
    return _binary(ctx, call, weight=True)


# A parameter added to channels (position embedding) is compacted with them, never counted;
# a parameter multiplying them (layer scale) counts in the saliency only with saliency_params="all".
_SUM = LayerEntry("add / subtract", _couple_sum, handles_params=True)
_PRODUCT = LayerEntry("multiply / divide", _couple_product, in_published_saliency=False, handles_params=True)
register_function(operator.add, operator.sub, operator.iadd, operator.isub, torch.add, torch.sub,
                  torch.maximum, torch.minimum, entry=_SUM)
register_method("add", "add_", "sub", "sub_", "maximum", "minimum", entry=_SUM)
register_function(operator.mul, operator.truediv, operator.imul, operator.itruediv, torch.mul, torch.div,
                  entry=_PRODUCT)
register_method("mul", "mul_", "div", "div_", entry=_PRODUCT)


# ----------------------------------------------------------------------------------
# reshapes
# ----------------------------------------------------------------------------------


def _reshape_dim(ins: tuple[int, ...], outs: tuple[int, ...], cd: int) -> tuple[int, int] | None:
    """Output dim holding input channel dim ``cd`` and how many entries each channel spans."""
    lead = _prod(ins[:cd])
    acc = 1
    for k in range(len(outs)):
        if acc == lead:
            span = 1
            for j in range(cd, len(ins)):
                span *= ins[j]
                if span == outs[k]:
                    return k, span // ins[cd] if ins[cd] else 1
                if span > outs[k]:
                    break
        acc *= outs[k]
        if acc > lead and lead != 0:
            break
    return None


def _size_specs(call: Call) -> list[tuple[Any, Any]] | None:
    """Per output dim of a view / reshape / expand: (the size as written, its SizeRef if any)."""
    node = call.node
    if node.op == "call_method" and node.target in ("view", "reshape", "expand"):
        raw, inf = list(node.args[1:]), list(call.infos[1:])
        if not raw and node.kwargs:
            key = "size" if "size" in node.kwargs else "shape"
            raw, inf = [node.kwargs.get(key)], [call.ikwargs.get(key)]
    elif node.op == "call_function" and node.target is torch.reshape:
        raw = [node.args[1] if len(node.args) > 1 else node.kwargs.get("shape")]
        inf = [call.info(1, "shape")]
    else:
        return None
    if len(raw) == 1 and isinstance(raw[0], (tuple, list)):
        raw, inf = list(raw[0]), list(inf[0]) if isinstance(inf[0], (tuple, list)) else [None] * len(raw[0])
    elif len(raw) == 1 and isinstance(inf[0], (tuple, list)):
        inf = list(inf[0])  # a whole shape tuple from x.shape / x.size()
        raw = [None] * len(inf)
    if len(inf) != len(raw):
        inf = [None] * len(raw)
    return list(zip(raw, inf))


def _sizes_ok(ctx: Propagation, call: Call, x: ChannelInfo, out_dim: int) -> bool:
    """Whether the sizes written in a view / reshape / expand still hold after a prune.

    The channel dim's size must be -1, the channel count itself (``x.size(1)``), or a literal
    module attribute the registry updates.  A size computed from a channel count anywhere else
    keeps those channels fixed.
    """
    specs = _size_specs(call)
    if specs is None:
        return True
    ok = True
    for k, (raw, inf) in enumerate(specs):
        if isinstance(inf, SizeRef):
            if k == out_dim and inf.exact and len(inf.infos) == 1 and inf.infos[0].segs == x.segs:
                continue
            ctx.unsupported(inf, "a size computed from a prunable channel count is given to another dim")
            ok = ok and k != out_dim
        elif k == out_dim:
            if isinstance(raw, fx.Node):
                ok = False  # a computed size that does not follow the channel count
            elif isinstance(raw, int) and not isinstance(raw, bool) and raw != -1:
                ok = ctx.accept_literal(raw, x)
    return ok


def _param_view(ctx: Propagation, call: Call, x: ParamRef, xm: Any, out: Any) -> Any:
    """A parameter viewed with size-1 dims added or dropped (``w.view(1, -1, 1, 1)`` to broadcast
    a per-channel weight): the same parameter dims in the same order, each of size -1 in the
    view (so it follows a prune)."""
    _sizes_ok(ctx, call, OPAQUE, -1)
    if not isinstance(xm, TMeta) or not isinstance(out, TMeta):
        return ctx.unsupported(x, "reshape of a parameter")
    kept = [d for d, n in enumerate(xm.shape) if n != 1]
    dims: list[int | None] = []
    it = iter(kept)
    for k, n in enumerate(out.shape):
        if n == 1:
            dims.append(None)
            continue
        d = next(it, None)
        if d is None or xm.shape[d] != n:
            return ctx.unsupported(x, "reshape of a parameter that changes its dims")
        dims.append(x.dims[d])
    if next(it, None) is not None:
        return ctx.unsupported(x, "reshape of a parameter that changes its dims")
    specs = _size_specs(call)
    if specs is not None and any(raw != -1 for (raw, _), n in zip(specs, out.shape) if n != 1):
        return ctx.unsupported(x, "reshape of a parameter to a literal size that would not follow a prune")
    return ParamRef(x.name, tuple(dims), x.shape, x.is_buffer)


def _couple_reshape(ctx: Propagation, call: Call) -> Any:
    x, xm, out = _first(call), _meta0(call), call.out
    if isinstance(x, ParamRef):
        return _param_view(ctx, call, x, xm, out)
    if not _chan(x) or not isinstance(xm, TMeta) or not isinstance(out, TMeta):
        _sizes_ok(ctx, call, OPAQUE, -1)  # sizes computed from channel counts go to other channels
        return ctx.opaque_like(out)
    found = _reshape_dim(xm.shape, out.shape, x.dim)
    if found is None:
        ctx.unsupported(x, f"reshape {tuple(xm.shape)} -> {tuple(out.shape)} splits or mixes the "
                           "channel dim (e.g. a channel shuffle)")
        _sizes_ok(ctx, call, OPAQUE, -1)
        return OPAQUE
    k, mult = found
    if not _sizes_ok(ctx, call, x, k):
        return ctx.unsupported(x, f"reshape to {tuple(out.shape)} gives the channel dim a size "
                                  f"({out.shape[k]}) that would not follow a prune")
    return ChannelInfo(k, tuple((s, b * mult) for s, b in x.segs))


_RESHAPE = LayerEntry("reshape", _couple_reshape, handles_sizes=True, handles_params=True)
register_function(torch.flatten, torch.reshape, torch.squeeze, torch.unsqueeze, torch.unflatten, entry=_RESHAPE)
register_method("view", "reshape", "flatten", "squeeze", "unsqueeze", "view_as", "reshape_as", "unflatten",
                entry=_RESHAPE)
register_module(nn.Flatten, nn.Unflatten, entry=_RESHAPE)


def _couple_permute(ctx: Propagation, call: Call) -> Any:
    x, xm = _first(call), _meta0(call)
    if isinstance(x, ParamRef):
        return ctx.unsupported(x, "permute of a parameter")
    if not _chan(x) or not isinstance(xm, TMeta):
        return ctx.opaque_like(call.out)
    nd = len(xm.shape)
    cd = x.dim
    node = call.node
    op = node.target if node.op == "call_method" else getattr(node.target, "__name__", "")
    if op == "permute":
        dims = list(call.args[1:])
        if not dims and "dims" in call.kwargs:
            dims = [call.kwargs["dims"]]
        if len(dims) == 1 and isinstance(dims[0], (tuple, list)):
            dims = list(dims[0])
        dims = [int(d) % nd for d in dims]
        return x.at(dims.index(cd))
    if op == "t":
        return x.at(nd - 1 - cd if nd == 2 else cd)
    d0 = int(call.arg(1, "dim0" if op == "transpose" else "axis0")) % nd
    d1 = int(call.arg(2, "dim1" if op == "transpose" else "axis1")) % nd
    return x.at(d1 if cd == d0 else d0 if cd == d1 else cd)


_PERMUTE = LayerEntry("permute / transpose", _couple_permute)
register_function(torch.permute, torch.transpose, torch.swapaxes, torch.swapdims, torch.t, entry=_PERMUTE)
register_method("permute", "transpose", "swapaxes", "swapdims", "t", entry=_PERMUTE)


def _couple_expand(ctx: Propagation, call: Call) -> Any:
    x, xm, out = _first(call), _meta0(call), call.out
    if not isinstance(xm, TMeta) or not isinstance(out, TMeta):
        return ctx.opaque_like(out)
    new = len(out.shape) - len(xm.shape)
    if isinstance(x, ParamRef):
        _sizes_ok(ctx, call, OPAQUE, -1)
        return ParamRef(x.name, (None,) * new + x.dims, x.shape, x.is_buffer)
    if not _chan(x):
        _sizes_ok(ctx, call, OPAQUE, -1)
        return OPAQUE
    d = x.dim + new
    if out.shape[d] != xm.shape[x.dim]:
        return ctx.unsupported(x, "expand broadcasts the channel dim")
    if not _sizes_ok(ctx, call, x, d):
        return ctx.unsupported(x, f"expand gives the channel dim a size ({out.shape[d]}) that would not "
                                  "follow a prune")
    return x.at(d)


register_method("expand", "expand_as", entry=LayerEntry("expand", _couple_expand, handles_params=True,
                                                      handles_sizes=True))


def _couple_normalize(ctx: Propagation, call: Call) -> Any:
    x = _first(call)
    return x if isinstance(x, ChannelInfo) else ctx.opaque_like(call.out)


# F.normalize divides by a p-norm: over another dim it is per channel; over the channel dim the
# kept channels are divided by their own norm after a prune (as a layer norm then normalises over
# the kept channels), which is the masked dense model's when the removed channels are zero.
register_function(F.normalize, entry=LayerEntry("normalize", _couple_normalize))


def _couple_view_write(ctx: Propagation, call: Call) -> Any:
    return ctx.unsupported(call.inputs(), "written in place through a view (the tracer does not follow such writes)")


def _couple_shape_only(ctx: Propagation, call: Call) -> Any:
    return OPAQUE  # read for its shape only: its channels are not used


# markers of the executed-forward capture (oneprune_ext.graph.capture)
register_function("oneprune_ext.graph.capture.write_through_view",
                  entry=LayerEntry("in-place write through a view", _couple_view_write))
register_function("oneprune_ext.graph.capture.shape_only", entry=LayerEntry("shape only", _couple_shape_only))


# ----------------------------------------------------------------------------------
# reductions, softmax, pooling, padding, resizing
# ----------------------------------------------------------------------------------


def _couple_reduce(ctx: Propagation, call: Call) -> Any:
    x, xm = _first(call), _meta0(call)
    if not _chan(x) or not isinstance(xm, TMeta):
        return ctx.opaque_like(call.out)
    nd = len(xm.shape)
    dims = call.arg(1, "dim", None)
    keep = bool(call.arg(2, "keepdim", False))
    if dims is None:
        return ctx.unsupported(x, "reduction over all dims mixes channels")
    dims = {int(d) % nd for d in ([dims] if isinstance(dims, int) else dims)}
    if x.dim in dims:
        return ctx.unsupported(x, "reduction over the channel dim mixes channels")
    return x.at(x.dim if keep else x.dim - sum(1 for d in dims if d < x.dim))


_REDUCE = LayerEntry("reduction", _couple_reduce)
register_function(torch.mean, torch.sum, torch.amax, torch.amin, entry=_REDUCE)
register_method("mean", "sum", "amax", "amin", entry=_REDUCE)


def _couple_softmax(ctx: Propagation, call: Call) -> Any:
    x, xm = _first(call), _meta0(call)
    if not _chan(x) or not isinstance(xm, TMeta):
        return ctx.opaque_like(call.out)
    dim = call.module.dim if call.module is not None else call.arg(1, "dim", None)
    if dim is None or int(dim) % len(xm.shape) == x.dim:
        return ctx.unsupported(x, "softmax over the channel dim mixes channels")
    return x


_SOFTMAX = LayerEntry("softmax", _couple_softmax)
register_function(F.softmax, torch.softmax, F.log_softmax, torch.log_softmax, entry=_SOFTMAX)
register_method("softmax", "log_softmax", entry=_SOFTMAX)
register_module(nn.Softmax, nn.LogSoftmax, entry=_SOFTMAX)


def _spatial_op(reason: str, spatial: int | None):
    """Entry rule for ops acting on the last ``spatial`` dims (None: all dims from 2 on)."""

    def couple(ctx: Propagation, call: Call) -> Any:
        x, xm = _first(call), _meta0(call)
        if not _chan(x) or not isinstance(xm, TMeta):
            return ctx.opaque_like(call.out)
        first = 2 if spatial is None else len(xm.shape) - spatial
        if x.dim >= first:
            return ctx.unsupported(x, reason)
        return x

    return couple


for _k, _mods, _fns in (
    (1, (nn.MaxPool1d, nn.AvgPool1d, nn.AdaptiveAvgPool1d, nn.AdaptiveMaxPool1d),
     (F.max_pool1d, F.avg_pool1d, F.adaptive_avg_pool1d, F.adaptive_max_pool1d, torch.max_pool1d,
      torch.avg_pool1d, torch.adaptive_avg_pool1d)),
    (2, (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d),
     (F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d, F.adaptive_max_pool2d, torch.max_pool2d)),
    (3, (nn.MaxPool3d, nn.AvgPool3d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool3d),
     (F.max_pool3d, F.avg_pool3d, F.adaptive_avg_pool3d, F.adaptive_max_pool3d, torch.max_pool3d)),
):
    _pool = LayerEntry(f"pooling ({_k}-d)", _spatial_op("pooling over the channel dim", _k))
    register_module(*_mods, entry=_pool)
    register_function(*_fns, entry=_pool)

_RESIZE = LayerEntry("interpolate / upsample", _spatial_op("resizing the channel dim", None))
register_function(F.interpolate, F.upsample, F.upsample_nearest, F.upsample_bilinear, entry=_RESIZE)
register_module(nn.Upsample, entry=_RESIZE)


def _couple_pad(ctx: Propagation, call: Call) -> Any:
    x, xm = _first(call), _meta0(call)
    if not _chan(x) or not isinstance(xm, TMeta):
        return ctx.opaque_like(call.out)
    pad = call.arg(1, "pad")
    k = len(xm.shape) - 1 - x.dim
    before = after = 0
    if 2 * k + 1 < len(pad):
        before, after = int(pad[2 * k]), int(pad[2 * k + 1])
    if before < 0 or after < 0:
        return ctx.unsupported(x, "negative padding of the channel dim")
    segs = list(x.segs)
    if before:
        segs = list(ctx.new_channels(before, x.dim, fixed=True).segs) + segs
    if after:
        segs = segs + list(ctx.new_channels(after, x.dim, fixed=True).segs)
    return ChannelInfo(x.dim, tuple(segs))


register_function(F.pad, entry=LayerEntry("pad", _couple_pad))


# ----------------------------------------------------------------------------------
# indexing, concatenation, splitting
# ----------------------------------------------------------------------------------


def _couple_getitem(ctx: Propagation, call: Call) -> Any:
    x, xm, idx = _first(call), _meta0(call), call.arg(1, "idx")
    if not isinstance(xm, TMeta):
        # indexing a tuple / list of values
        if isinstance(x, (tuple, list)):
            return x[idx]
        return ctx.opaque_like(call.out)
    if isinstance(x, ParamRef):
        return ctx.unsupported(x, "indexing a parameter")
    if not _chan(x):
        return ctx.opaque_like(call.out)
    items = list(idx) if isinstance(idx, tuple) else [idx]
    if any(isinstance(i, (TMeta, list)) for i in items):
        return ctx.unsupported(x, "advanced (tensor) indexing")
    nd = len(xm.shape)
    n_real = sum(1 for i in items if i is not None and i is not Ellipsis)
    in_d = out_d = 0
    out_cd = None
    for it in items:
        if it is None:
            out_d += 1
        elif it is Ellipsis:
            span = nd - n_real
            if in_d <= x.dim < in_d + span:
                out_cd = out_d + (x.dim - in_d)
            in_d += span
            out_d += span
        elif isinstance(it, slice):
            if in_d == x.dim:
                if slice(*it.indices(xm.shape[in_d])) != slice(0, xm.shape[in_d], 1):
                    return ctx.unsupported(x, "slicing the channel dim with literal bounds")
                out_cd = out_d
            in_d += 1
            out_d += 1
        elif isinstance(it, int):
            if in_d == x.dim:
                return ctx.unsupported(x, "indexing the channel dim")
            in_d += 1
        else:
            return ctx.unsupported(x, f"index of type {type(it).__name__}")
    if out_cd is None:
        out_cd = out_d + (x.dim - in_d)
    return x.at(out_cd)


register_function(operator.getitem, entry=LayerEntry("indexing", _couple_getitem))


def _couple_cat(ctx: Propagation, call: Call) -> Any:
    out = call.out
    infos = list(call.info(0, "tensors") or ())
    metas = list(call.arg(0, "tensors") or ())
    if not isinstance(out, TMeta):
        return ctx.opaque_like(out)
    nd = len(out.shape)
    dim = int(call.arg(1, "dim", 0)) % nd
    chans = [i for i in infos if _chan(i)]
    if not chans:
        params = [i for i in infos if isinstance(i, ParamRef)]
        return ctx.unsupported(params, "a parameter concatenated without channels") if params else OPAQUE
    cdims = {i.dim for i in chans}
    if len(cdims) != 1:
        return ctx.unsupported(call.inputs(), "operands carry channels on different dims")
    cd = cdims.pop()
    if cd == dim:
        segs: list[tuple[int, int]] = []
        for i, mt in zip(infos, metas):
            if _chan(i):
                segs.extend(i.segs)
            elif mt.shape[dim] > 0:
                segs.extend(ctx.new_channels(mt.shape[dim], cd, fixed=True).segs)
        return ChannelInfo(cd, tuple(segs))
    ref = chans[0]
    for i, mt in zip(infos, metas):
        if _chan(i):
            ctx.merge(ref, i)
        elif isinstance(i, ParamRef):
            ctx.claim(i, ref, cd, weight=False)
        elif mt.shape[cd] != 0:
            ctx.fix(ref)
    return ref


register_function(torch.cat, torch.concat, torch.concatenate,
                  entry=LayerEntry("concatenate", _couple_cat, handles_params=True))


def _pieces(ctx: Propagation, call: Call, x: ChannelInfo, sizes: list[int]) -> Any:
    """Equal pieces of the channel dim: ranges of the channels that lose the same positions."""
    if len(set(sizes)) != 1:
        return ctx.unsupported(x, "pieces of unequal size along the channel dim")
    pieces = []
    start = 0
    for sz in sizes:
        sub = ctx.sub(x, start, start + sz)
        if sub is None:
            if ctx.new_cuts:
                ctx.fix(x)  # this walk is repeated with the sources cut at the piece boundaries
                return tuple(OPAQUE for _ in sizes)
            return ctx.unsupported(x, "a piece boundary falls inside a flattened channel")
        pieces.append(sub)
        start += sz
    whole = ChannelInfo(x.dim, tuple(seg for p in pieces for seg in p.segs))
    ctx.require_groups(whole, len(pieces))
    return tuple(pieces)


def _couple_chunk(ctx: Propagation, call: Call) -> Any:
    x, xm, out = _first(call), _meta0(call), call.out
    if isinstance(x, ParamRef):
        return ctx.unsupported(x, "splitting a parameter")
    if not _chan(x) or not isinstance(xm, TMeta) or not isinstance(out, (tuple, list)):
        return ctx.opaque_like(out)
    dim = int(call.arg(2, "dim", 0)) % len(xm.shape)
    if dim != x.dim:
        return tuple(x for _ in out)
    node = call.node
    is_split = (node.target == "split") if node.op == "call_method" else node.target is torch.split
    if is_split:
        size_arg = call.raw(1, "split_size_or_sections" if node.op == "call_function" else "split_size")
        if not isinstance(size_arg, fx.Node):
            return ctx.unsupported(x, "literal split sizes on the channel dim would not follow a prune")
    return _pieces(ctx, call, x, [o.shape[dim] for o in out])


register_function(torch.chunk, torch.split, entry=LayerEntry("chunk / split", _couple_chunk))
register_method("chunk", "split", entry=LayerEntry("chunk / split", _couple_chunk))


def _couple_shuffle(ctx: Propagation, call: Call) -> Any:
    return ctx.unsupported(call.inputs(), "channel shuffle permutes channels across groups")


register_module(nn.ChannelShuffle, nn.PixelShuffle, nn.PixelUnshuffle,
                entry=LayerEntry("channel shuffle", _couple_shuffle))
register_function(torch.channel_shuffle, torch.pixel_shuffle, torch.pixel_unshuffle, F.pixel_shuffle,
                  F.pixel_unshuffle, "torch.nn.functional.channel_shuffle",
                  entry=LayerEntry("channel shuffle", _couple_shuffle))
