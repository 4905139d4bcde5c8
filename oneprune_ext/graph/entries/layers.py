"""Registry entries of layers with parameters: convolutions, linears, norms, attention.

Each entry (see :mod:`oneprune_ext.graph.registry`) holds the coupling rule, the attributes to
update after a prune, the structure-record attributes and the cost terms of one layer type:

* ``nn.Conv1d/2d/3d``: ``groups == 1``: output channels are new channels, input channels the
  weight's ``dim=1`` columns.  Depthwise (``groups == in == out``): input and output are the
  same channels (the weight appears once, ``dim=0``; not counted in the published saliency).
  Grouped (``1 < groups``): input and output are each used in ``groups`` equal groups, so
  the same within-group positions go in every group (a channel group's size is the
  per-conv-group width).  Transposed convolutions are unsupported.
* ``nn.Linear`` on the last dim, any number of leading (token) dims.
* ``nn.BatchNorm*`` / ``nn.InstanceNorm*`` on the channel dim (weight, bias, running stats).
* ``nn.LayerNorm`` and ``F.layer_norm`` (torchvision's ``LayerNorm2d`` traced into its
  pieces) over the last (channel) dim with one normalised dim; after a prune the statistics
  run over the kept channels, as in Torch-Pruning.  A literal ``normalized_shape`` is fine
  when it is the owning ``nn.LayerNorm``'s own attribute (updated after a prune).
* ``nn.MultiheadAttention`` (self-attention, packed projections): the embedding width is
  pruned with the same positions in every head (so ``head_dim`` shrinks); q, k, v and the
  output follow the input's channels.  torchvision Swin's ``shifted_window_attention`` and
  ``_patch_merging_pad`` likewise.
* torchvision ``VisionTransformer``: its ``hidden_dim`` (a literal size in a reshape) follows
  ``conv_proj``'s output channels.
* Recurrent layers (``nn.RNN/LSTM/GRU``) and ``nn.GroupNorm``: unsupported (kept fixed).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import fx

from ..propagation import OPAQUE, Call, ChannelInfo, ParamRef, Propagation, TMeta
from ..registry import CostCall, CostTerm, LayerEntry, module_entry, register_function, register_module

__all__: list[str] = []


def _chan(x: Any) -> bool:
    return isinstance(x, ChannelInfo) and x.dim is not None


def _input(call: Call) -> tuple[ChannelInfo, Any]:
    x = call.infos[0] if call.infos else OPAQUE
    return (x if isinstance(x, ChannelInfo) else OPAQUE), (call.args[0] if call.args else None)


def _all_dims(name: str, ndim: int) -> tuple[tuple[str, int], ...]:
    return tuple((name, d) for d in range(ndim))


# ----------------------------------------------------------------------------------
# convolutions
# ----------------------------------------------------------------------------------


def _is_depthwise(m: nn.Module) -> bool:
    return m.groups > 1 and m.groups == m.in_channels == m.out_channels


def _couple_conv(ctx: Propagation, call: Call) -> Any:
    m = call.module
    if m.transposed:
        return ctx.unsupported(call.inputs(), "transposed convolutions are not supported")
    if len(call.infos) != 1 or call.ikwargs:
        return ctx.unsupported(call.inputs(), "unexpected extra arguments")
    x, xm = _input(call)
    cdim = len(xm.shape) - len(m.kernel_size) - 1
    if x.dim is not None and x.dim != cdim:
        return ctx.unsupported(x, f"expects channels on dim {cdim}, got them on dim {x.dim}")
    w = f"{call.module_name}.weight"
    groups = m.groups
    if groups == 1:
        ctx.attach(x, w, 1)
        out = ctx.new_channels(m.out_channels, cdim)
    elif _is_depthwise(m):
        if x.dim is None:
            return ctx.new_channels(m.out_channels, cdim, fixed=True)
        out = x
    else:
        if x.dim is not None and ctx.require_groups(x, groups):
            ctx.attach_grouped(x, w, 1, groups)
        out = ctx.new_channels(m.out_channels, cdim)
        ctx.require_groups(out, groups)
    ctx.attach(out, w, 0)
    if m.bias is not None:
        ctx.attach(out, f"{call.module_name}.bias", 0, weight=False)
    return out


def _update_conv(m: nn.Module) -> None:
    out = int(m.weight.shape[0])
    if _is_depthwise(m):  # (attributes still hold the sizes before the prune)
        m.groups = m.in_channels = m.out_channels = out
    else:
        m.out_channels = out
        m.in_channels = int(m.weight.shape[1]) * m.groups


def _cost_conv(c: CostCall) -> Any:
    m = c.module
    name = c.tensor_name(m.weight)
    if m.transposed or name is None:
        return None
    return [CostTerm(c.output.numel() // int(m.weight.shape[0]), _all_dims(name, m.weight.dim()))]


def _conv_shape(m: nn.Module, args: tuple, kwargs: dict) -> Any:
    x = args[0] if len(args) == 1 and not kwargs else None
    k = len(m.kernel_size)
    if m.transposed or not isinstance(x, torch.Tensor) or x.dim() not in (k + 1, k + 2):
        return None
    if x.shape[-k - 1] != m.in_channels:
        return None  # let the module raise its own error
    out = []
    for i in range(k):
        n = x.shape[x.dim() - k + i]
        if m.padding == "same":
            out.append(n)
            continue
        pad = 0 if m.padding == "valid" else m.padding[i]
        out.append((n + 2 * pad - m.dilation[i] * (m.kernel_size[i] - 1) - 1) // m.stride[i] + 1)
    return torch.Size((*x.shape[:-k - 1], m.out_channels, *out))


register_module(nn.modules.conv._ConvNd, entry=LayerEntry(
    "convolution", _couple_conv, in_published_saliency=lambda m: m is None or not _is_depthwise(m),
    update_attrs=_update_conv, record_attrs=("in_channels", "out_channels", "groups"), cost=_cost_conv,
    output_shape=_conv_shape))


# ----------------------------------------------------------------------------------
# linear
# ----------------------------------------------------------------------------------


def _couple_linear(ctx: Propagation, call: Call) -> Any:
    m = call.module
    x, xm = _input(call)
    if len(call.infos) != 1 or call.ikwargs or not isinstance(xm, TMeta) or not isinstance(call.out, TMeta):
        return ctx.unsupported(call.inputs(), "unexpected arguments")
    last = len(xm.shape) - 1
    if x.dim is not None and x.dim != last:
        return ctx.unsupported(x, f"expects channels on the last dim, got them on dim {x.dim}")
    w = f"{call.module_name}.weight"
    ctx.attach(x, w, 1)
    out = ctx.new_channels(m.out_features, len(call.out.shape) - 1)
    ctx.attach(out, w, 0)
    if m.bias is not None:
        ctx.attach(out, f"{call.module_name}.bias", 0, weight=False)
    return out


def _update_linear(m: nn.Module) -> None:
    m.out_features, m.in_features = (int(n) for n in m.weight.shape)


def _cost_linear(c: CostCall) -> Any:
    name = c.tensor_name(c.module.weight)
    if name is None:
        return None
    out = c.output
    return [CostTerm(out.numel() // max(int(out.shape[-1]), 1), ((name, 0), (name, 1)))]


def _linear_shape(m: nn.Module, args: tuple, kwargs: dict) -> Any:
    x = args[0] if len(args) == 1 and not kwargs else None
    if not isinstance(x, torch.Tensor) or x.dim() < 1 or x.shape[-1] != m.in_features:
        return None
    return torch.Size((*x.shape[:-1], m.out_features))


register_module(nn.Linear, entry=LayerEntry(
    "linear", _couple_linear, update_attrs=_update_linear, record_attrs=("in_features", "out_features"),
    cost=_cost_linear, output_shape=_linear_shape))


# ----------------------------------------------------------------------------------
# batch / instance norm
# ----------------------------------------------------------------------------------


def _couple_channel_norm(ctx: Propagation, call: Call) -> Any:
    m = call.module
    x, xm = _input(call)
    if x.dim is None:
        return x
    if isinstance(m, nn.modules.instancenorm._InstanceNorm):
        cdim = len(xm.shape) - m._get_no_batch_dim()
    else:
        cdim = 1
    if x.dim != cdim:
        return ctx.unsupported(x, f"expects channels on dim {cdim}, got them on dim {x.dim}")
    name = call.module_name
    if m.weight is not None:
        ctx.attach(x, f"{name}.weight", 0)
    if m.bias is not None:
        ctx.attach(x, f"{name}.bias", 0, weight=False)
    for buf in ("running_mean", "running_var"):
        if getattr(m, buf, None) is not None:
            ctx.attach(x, f"{name}.{buf}", 0, weight=False, is_buffer=True)
    return x


def _update_channel_norm(m: nn.Module) -> None:
    t = m.weight if m.weight is not None else m.running_mean
    if t is not None:
        m.num_features = int(t.shape[0])


def _channel_norm_shape(m: nn.Module, args: tuple, kwargs: dict) -> Any:
    x = args[0] if len(args) == 1 and not kwargs else None
    if isinstance(m, nn.modules.instancenorm._InstanceNorm):
        return None
    if not isinstance(x, torch.Tensor) or x.dim() < 2 or x.shape[1] != m.num_features:
        return None
    return x  # same shape: no need to normalise while tracing


register_module(nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm, entry=LayerEntry(
    "batch / instance norm", _couple_channel_norm, update_attrs=_update_channel_norm,
    record_attrs=("num_features",), output_shape=_channel_norm_shape))


# ----------------------------------------------------------------------------------
# layer norm (module and functional)
# ----------------------------------------------------------------------------------


def _layer_norm(ctx: Propagation, call: Call, x: ChannelInfo, xm: Any, nshape: Any,
                weight: ParamRef | None, bias: ParamRef | None) -> Any:
    if x.dim is None or not isinstance(xm, TMeta):
        return x
    nd = len(nshape)
    ndim = len(xm.shape)
    if x.dim < ndim - nd:
        return x  # normalises other dims only: element-wise for the channels
    if nd != 1 or x.dim != ndim - 1:
        return ctx.unsupported(x, "layer norm over the channel dim together with other dims")
    for ref, is_weight in ((weight, True), (bias, False)):
        if ref is not None:
            ctx.claim(ref, x, 0, weight=is_weight)
    return x


def _couple_layer_norm_module(ctx: Propagation, call: Call) -> Any:
    m = call.module
    x, xm = _input(call)
    name = call.module_name

    def ref(attr: str) -> ParamRef | None:
        p = getattr(m, attr)
        return None if p is None else ParamRef(f"{name}.{attr}", tuple(range(p.dim())), tuple(p.shape))

    return _layer_norm(ctx, call, x, xm, m.normalized_shape, ref("weight"), ref("bias"))


def _owner_keeps_shape(ctx: Propagation, ref: Any, literal: tuple) -> bool:
    """A literal ``normalized_shape`` is the (updated-after-prune) attribute of the weight's owner."""
    if not isinstance(ref, ParamRef):
        return False
    owner = ctx.modules.get(ref.name.rpartition(".")[0])
    e = module_entry(owner) if owner is not None else None
    return (e is not None and "normalized_shape" in e.record_attrs
            and tuple(getattr(owner, "normalized_shape", ())) == literal)


def _couple_layer_norm_function(ctx: Propagation, call: Call) -> Any:
    x, xm = _input(call)
    weight, bias = call.info(2, "weight"), call.info(3, "bias")
    for r in (weight, bias):
        if r is not None and not isinstance(r, ParamRef):
            return ctx.unsupported(call.inputs(), "layer norm with computed affine weights")
    shape = call.arg(1, "normalized_shape")
    nshape = (int(shape),) if isinstance(shape, int) else tuple(int(n) for n in shape)
    literal = call.raw(1, "normalized_shape")
    dynamic = isinstance(literal, fx.Node) or (
        isinstance(literal, (tuple, list)) and any(isinstance(v, fx.Node) for v in literal))
    if (_chan(x) and isinstance(xm, TMeta) and x.dim >= len(xm.shape) - len(nshape) and not dynamic
            and not _owner_keeps_shape(ctx, weight, nshape)):
        return ctx.unsupported(call.inputs(), f"layer norm with the literal normalized_shape {nshape}, "
                                              "which would not follow a prune")
    return _layer_norm(ctx, call, x, xm, nshape, weight, bias)


def _update_layer_norm(m: nn.Module) -> None:
    t = m.weight if m.weight is not None else m.bias
    if t is not None:
        m.normalized_shape = tuple(int(n) for n in t.shape)


register_module(nn.LayerNorm, entry=LayerEntry(
    "layer norm", _couple_layer_norm_module, in_published_saliency=False, update_attrs=_update_layer_norm,
    record_attrs=("normalized_shape",)))
register_function(F.layer_norm, entry=LayerEntry(
    "layer norm", _couple_layer_norm_function, in_published_saliency=False, handles_params=True))


# ----------------------------------------------------------------------------------
# attention
# ----------------------------------------------------------------------------------


def _attention(ctx: Propagation, x: ChannelInfo, heads: int, qkv: str, qkv_bias: str | None,
               proj: str, proj_bias: str | None) -> bool:
    """Self-attention with packed ``[3C, C]`` projection ``qkv`` and ``[C, C]`` output ``proj``:
    q, k, v and the output follow the input's channels, the same positions in every head."""
    if not ctx.require_groups(x, heads):
        return False
    width = ctx.length(x)
    ctx.attach(x, qkv, 1)
    for base in (0, width, 2 * width):
        ctx.attach(x, qkv, 0, base=base)
        if qkv_bias is not None:
            ctx.attach(x, qkv_bias, 0, weight=False, base=base)
    ctx.attach(x, proj, 1)
    ctx.attach(x, proj, 0)
    if proj_bias is not None:
        ctx.attach(x, proj_bias, 0, weight=False)
    return True


def _couple_mha(ctx: Propagation, call: Call) -> Any:
    m = call.module
    q, k, v = (call.info(i, n) for i, n in ((0, "query"), (1, "key"), (2, "value")))
    masks = [call.info(i, n) for i, n in ((3, "key_padding_mask"), (5, "attn_mask"))]
    if any(_chan(i) for i in masks):
        return ctx.unsupported(call.inputs(), "an attention mask carries channels")
    if not m._qkv_same_embed_dim or m.in_proj_weight is None:
        return ctx.unsupported(call.inputs(), "attention with separate q / k / v projection weights")
    qm = call.arg(0, "query")
    if not all(_chan(i) for i in (q, k, v)):
        ctx.fix((q, k, v))
        return ctx.opaque_like(call.out)
    last = len(qm.shape) - 1
    if any(i.dim != last for i in (q, k, v)):
        return ctx.unsupported((q, k, v), "attention expects channels on the last dim")
    ctx.merge(q, k)
    ctx.merge(q, v)
    name = call.module_name
    ok = _attention(ctx, q, m.num_heads, f"{name}.in_proj_weight",
                    f"{name}.in_proj_bias" if m.in_proj_bias is not None else None,
                    f"{name}.out_proj.weight",
                    f"{name}.out_proj.bias" if m.out_proj.bias is not None else None)
    if ok and m.bias_k is not None:
        ctx.attach(q, f"{name}.bias_k", 2, weight=False)
        ctx.attach(q, f"{name}.bias_v", 2, weight=False)
    out = call.out
    first = q.at(len(out[0].shape) - 1) if ok else OPAQUE
    return (first, ctx.opaque_like(out[1]))


def _update_mha(m: nn.Module) -> None:
    e = int(m.in_proj_weight.shape[1])
    m.embed_dim = m.kdim = m.vdim = e
    m.head_dim = e // m.num_heads


def _cost_mha(c: CostCall) -> Any:
    """The real work of one call, in every mode: the q / k / v projections (packed ``[3E, E]``
    or separate ``q/k/v_proj_weight`` when ``kdim`` / ``vdim`` differ), the output projection
    and the two attention products ``Q K^T`` and ``A V`` over all heads (``Lq * S * E`` MACs
    each, ``S`` the key length plus ``bias_k`` / ``add_zero_attn`` columns).  Biases are not
    MACs.  The cost model counts with attention visible (:mod:`oneprune_ext.graph.flops`), so this
    is checked against the counter even where PyTorch's fused fast path would hide it."""
    m = c.module
    q, k, v = c.arg(0, "query"), c.arg(1, "key"), c.arg(2, "value")
    w_out = c.tensor_name(m.out_proj.weight)
    tokens = [t.numel() // t.shape[-1] for t in (q, k, v)]
    if m.in_proj_weight is not None:
        w_in = c.tensor_name(m.in_proj_weight)
        if w_in is None or w_out is None:
            return None
        proj = [CostTerm(sum(tokens), ((w_in, 1), (w_out, 1)))]
    else:
        ws = [c.tensor_name(w) for w in (m.q_proj_weight, m.k_proj_weight, m.v_proj_weight)]
        if w_out is None or None in ws:
            return None
        proj = [CostTerm(n, ((w, 0), (w, 1))) for n, w in zip(tokens, ws)]
    proj.append(CostTerm(tokens[0], ((w_out, 0), (w_out, 1))))
    src = k.shape[1] if k.dim() == 3 and m.batch_first else k.shape[0]
    src += int(m.bias_k is not None) + int(m.add_zero_attn)
    return proj + [CostTerm(2 * tokens[0] * src, ((w_out, 1),))]


def _mha_shape(m: nn.Module, args: tuple, kwargs: dict) -> Any:
    names = ("query", "key", "value", "key_padding_mask", "need_weights")
    a = dict(zip(names, args), **kwargs)
    q = a.get("query")
    if a.get("need_weights", True) or not isinstance(q, torch.Tensor) or q.shape[-1] != m.embed_dim:
        return None
    return (q.shape, None)


register_module(nn.MultiheadAttention, entry=LayerEntry(
    "multi-head attention", _couple_mha, update_attrs=_update_mha,
    record_attrs=("embed_dim", "kdim", "vdim", "head_dim"), cost=_cost_mha, output_shape=_mha_shape))


def _plain(ref: Any, ndim: int) -> bool:
    return isinstance(ref, ParamRef) and ref.dims == tuple(range(ndim)) and len(ref.shape) == ndim


def _couple_swin_attention(ctx: Propagation, call: Call) -> Any:
    x, xm = _input(call)
    qkv, proj = call.info(1, "qkv_weight"), call.info(2, "proj_weight")
    qkv_b, proj_b = call.info(9, "qkv_bias"), call.info(10, "proj_bias")
    if not _chan(x):
        return ctx.opaque_like(call.out)
    if not (_plain(qkv, 2) and _plain(proj, 2) and (qkv_b is None or _plain(qkv_b, 1))
            and (proj_b is None or _plain(proj_b, 1))):
        return ctx.unsupported(call.inputs(), "attention weights that are not parameters")
    if x.dim != len(xm.shape) - 1:
        return ctx.unsupported(x, "attention expects channels on the last dim")
    ok = _attention(ctx, x, int(call.arg(5, "num_heads")), qkv.name, qkv_b.name if qkv_b else None,
                    proj.name, proj_b.name if proj_b else None)
    return x if ok else OPAQUE


def _cost_swin_attention(c: CostCall) -> Any:
    x = c.arg(0, "input")
    ws = c.arg(4, "window_size")
    qkv, proj = c.tensor_name(c.arg(1, "qkv_weight")), c.tensor_name(c.arg(2, "proj_weight"))
    if qkv is None or proj is None:
        return None
    b, h, w = x.shape[0], x.shape[1], x.shape[2]
    tokens = b * math.ceil(h / ws[0]) * ws[0] * math.ceil(w / ws[1]) * ws[1]  # after padding to windows
    window = ws[0] * ws[1]
    return [CostTerm(tokens, ((qkv, 0), (qkv, 1))), CostTerm(tokens, ((proj, 0), (proj, 1))),
            CostTerm(2 * tokens * window, ((proj, 1),))]


register_function("torchvision.models.swin_transformer.shifted_window_attention", entry=LayerEntry(
    "shifted-window attention", _couple_swin_attention, handles_params=True, cost=_cost_swin_attention))


def _couple_patch_merging_pad(ctx: Propagation, call: Call) -> Any:
    x, xm = _input(call)
    if not _chan(x):
        return ctx.opaque_like(call.out)
    if x.dim != len(xm.shape) - 1:
        return ctx.unsupported(x, "patch merging expects channels on the last dim")
    return ChannelInfo(x.dim, x.segs * 4)  # four spatial phases concatenated along channels


register_function("torchvision.models.swin_transformer._patch_merging_pad",
                  entry=LayerEntry("patch merging", _couple_patch_merging_pad))

register_module("torchvision.models.vision_transformer.VisionTransformer", entry=LayerEntry(
    "vision transformer", size_attrs={"hidden_dim": ("conv_proj.weight", 0)}))


# ----------------------------------------------------------------------------------
# kept fixed on purpose
# ----------------------------------------------------------------------------------


def _unsupported(reason: str):
    def couple(ctx: Propagation, call: Call) -> Any:
        ctx.unsupported(call.inputs(), reason)
        return ctx.opaque_like(call.out)

    return couple


register_module(nn.RNNBase, entry=LayerEntry(
    "recurrent layer", _unsupported("recurrent layers keep their input and hidden sizes")))
register_module(nn.GroupNorm, entry=LayerEntry(
    "group norm", _unsupported("group norm statistics span several channels")))
