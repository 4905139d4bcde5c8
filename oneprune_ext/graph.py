"""Trace a model into channel groups (the sets of slices removed together).

:func:`trace_groups` traces the model with ``torch.fx`` (symbolic tracing), runs the
traced graph once on the example inputs under ``torch.no_grad()`` to learn every
value's shape (no autograd graph is built or kept), and then walks the graph in
topological order propagating *channel information*: for every tensor, which of its
dimensions carries channels and which channel sources (outputs of convs / linears)
occupy it, in what order (concat) and with what block size (flatten).  Residual
adds, element-wise products and concats along other dimensions merge sources with a
union-find; the sets that end up unconstrained become :class:`ChannelGroup` objects.

What is supported (anything else raises :class:`UnsupportedOpError` if it touches
prunable channels):

* ``nn.Conv1d/2d/3d``: ``groups == 1`` (output channels are a new source, input
  channels are the weight's ``dim=1`` columns); depthwise (``groups == in_channels ==
  out_channels``: input and output channels are the same group, the weight appears
  once with ``dim=0``); grouped convolutions with ``1 < groups`` otherwise, or a
  channel multiplier: their input and output channels are kept fixed (in no group).
* ``nn.Linear`` on the last dimension, on any number of leading (token) dimensions.
* ``nn.BatchNorm1d/2d/3d`` on dimension 1, ``nn.LayerNorm`` with affine weights over
  the last (channel) dimension.  A LayerNorm over prunable channels is pruned like
  Torch-Pruning does, but note that its statistics then run over fewer channels.
* Element-wise activations / dropout / identity, binary arithmetic with
  broadcasting (merges the operands' groups), residual adds.
* ``torch.cat`` along the channel dimension (channel offsets) or along another
  dimension (merges), ``F.pad``.
* ``view`` / ``reshape`` / ``flatten`` / ``squeeze`` / ``unsqueeze``: a flatten of
  ``[C, H, W]`` maps channel ``c`` to ``H*W`` consecutive columns (``Slice.block``);
  ``permute`` / ``transpose`` / ``expand`` / indexing on non-channel dimensions;
  ``mean`` / ``sum`` / ``amax`` over non-channel dimensions; softmax over other dims.
* Max / average / adaptive pooling (modules and functionals).
* ``nn.MultiheadAttention``: its embedding width is kept fixed (its input and output
  channels are in no group).

Never pruned: channels that reach the model's output (the output layer's out
channels), the model inputs, parameters used directly in the forward (``get_attr``,
e.g. a ViT's class token and position embedding: whatever they are added to or
concatenated with stays fixed), and ``ignored_layers``: a module of a type listed
above keeps its *output* channels; any other module (a container or a custom module)
is treated as a black box whose inputs and outputs are kept.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import fx
from torch.fx.node import map_aggregate, map_arg

from .groups import ChannelGroup, ChannelGroups, Slice

__all__ = ["trace_groups", "UnsupportedOpError"]


class UnsupportedOpError(RuntimeError):
    """The tracer met an op it cannot reason about on prunable channels."""


# ----------------------------------------------------------------------------------
# op tables
# ----------------------------------------------------------------------------------

_ELEMENTWISE_MODULES: tuple[type, ...] = (
    nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.Hardswish,
    nn.Hardsigmoid, nn.Hardtanh, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.Mish,
    nn.Softplus, nn.Softsign, nn.Tanhshrink, nn.Identity,
    nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
)

_POOL_MODULES: dict[type, int] = {
    nn.MaxPool1d: 1, nn.MaxPool2d: 2, nn.MaxPool3d: 3,
    nn.AvgPool1d: 1, nn.AvgPool2d: 2, nn.AvgPool3d: 3,
    nn.AdaptiveAvgPool1d: 1, nn.AdaptiveAvgPool2d: 2, nn.AdaptiveAvgPool3d: 3,
    nn.AdaptiveMaxPool1d: 1, nn.AdaptiveMaxPool2d: 2, nn.AdaptiveMaxPool3d: 3,
}

_POOL_FUNCTIONS: dict[Any, int] = {
    F.max_pool1d: 1, F.max_pool2d: 2, F.max_pool3d: 3,
    F.avg_pool1d: 1, F.avg_pool2d: 2, F.avg_pool3d: 3,
    F.adaptive_avg_pool1d: 1, F.adaptive_avg_pool2d: 2, F.adaptive_avg_pool3d: 3,
    F.adaptive_max_pool1d: 1, F.adaptive_max_pool2d: 2, F.adaptive_max_pool3d: 3,
    torch.max_pool1d: 1, torch.max_pool2d: 2, torch.max_pool3d: 3,
    torch.avg_pool1d: 1, torch.adaptive_avg_pool1d: 1,
}

_ELEMENTWISE_FUNCTIONS: set[Any] = {
    F.relu, F.relu_, torch.relu, torch.relu_, F.relu6, F.gelu, F.silu, F.mish,
    torch.sigmoid, F.sigmoid, torch.tanh, F.tanh, F.hardswish, F.hardsigmoid,
    F.hardtanh, F.leaky_relu, F.elu, F.selu, F.celu, F.softplus,
    F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout,
    torch.abs, torch.neg, torch.exp, torch.clamp, torch.clip, torch.square, torch.sqrt,
    operator.neg, operator.pos,
}

_ELEMENTWISE_METHODS: set[str] = {
    "relu", "relu_", "sigmoid", "sigmoid_", "tanh", "tanh_", "contiguous", "clone",
    "float", "half", "bfloat16", "double", "to", "type", "detach", "clamp", "clamp_",
    "clamp_min", "clamp_min_", "clamp_max", "clip", "abs", "neg", "exp", "sqrt",
    "square", "pow",
}

_BINARY_FUNCTIONS: set[Any] = {
    operator.add, operator.sub, operator.mul, operator.truediv, operator.iadd,
    operator.isub, operator.imul, operator.itruediv,
    torch.add, torch.sub, torch.mul, torch.div, torch.maximum, torch.minimum,
}

_BINARY_METHODS: set[str] = {
    "add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_", "maximum", "minimum",
}

_RESHAPE_FUNCTIONS: set[Any] = {torch.flatten, torch.reshape, torch.squeeze, torch.unsqueeze}
_RESHAPE_METHODS: set[str] = {"view", "reshape", "flatten", "squeeze", "unsqueeze", "view_as", "reshape_as"}
_REDUCE_FUNCTIONS: set[Any] = {torch.mean, torch.sum, torch.amax, torch.amin}
_REDUCE_METHODS: set[str] = {"mean", "sum", "amax", "amin"}
_CAT_FUNCTIONS: set[Any] = {torch.cat, torch.concat, torch.concatenate}
_SOFTMAX_FUNCTIONS: set[Any] = {F.softmax, torch.softmax, F.log_softmax, torch.log_softmax}


# ----------------------------------------------------------------------------------
# value / channel bookkeeping
# ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _TMeta:
    """Shape of a tensor value recorded during the shape pass."""

    shape: tuple[int, ...]


@dataclass(frozen=True)
class _Info:
    """Channel information of one tensor value.

    ``dim is None`` means *opaque*: the tensor carries no prunable channel (a model
    input, a parameter used directly, the result of an op that mixes fixed channels).
    Otherwise the channel dimension ``dim`` is the concatenation of ``segs``: each
    ``(source id, block)`` occupies ``source.size * block`` consecutive entries.
    """

    dim: int | None
    segs: tuple[tuple[int, int], ...] = ()


_OPAQUE = _Info(None)


class _ShapeRecorder(fx.Interpreter):
    """Runs the traced graph once and keeps only shapes / non-tensor values."""

    def __init__(self, gm: fx.GraphModule) -> None:
        super().__init__(gm)
        self.meta: dict[fx.Node, Any] = {}

    def run_node(self, n: fx.Node) -> Any:
        result = super().run_node(n)
        self.meta[n] = map_aggregate(
            result, lambda v: _TMeta(tuple(v.shape)) if isinstance(v, torch.Tensor) else v
        )
        return result


class _Tracer(fx.Tracer):
    """fx tracer that also treats ignored black-box modules as leaves."""

    def __init__(self, black_boxes: set[nn.Module]) -> None:
        super().__init__()
        self._black_boxes = black_boxes

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return m in self._black_boxes or super().is_leaf_module(m, module_qualified_name)


def _is_known_module(m: nn.Module) -> bool:
    return isinstance(
        m,
        (nn.modules.conv._ConvNd, nn.Linear, nn.modules.batchnorm._BatchNorm, nn.LayerNorm,
         nn.MultiheadAttention, nn.Flatten, nn.Softmax, nn.LogSoftmax)
        + _ELEMENTWISE_MODULES + tuple(_POOL_MODULES),
    )


def _arg(args: Sequence[Any], kwargs: dict[str, Any], i: int, name: str, default: Any = None) -> Any:
    if len(args) > i:
        return args[i]
    return kwargs.get(name, default)


def _prod(xs: Iterable[int]) -> int:
    out = 1
    for x in xs:
        out *= int(x)
    return out


class _Analysis:
    """Channel propagation over one traced graph (internal)."""

    def __init__(self, gm: fx.GraphModule, meta: dict[fx.Node, Any], ignored: set[nn.Module]) -> None:
        self.gm = gm
        self.meta = meta
        self.ignored = ignored
        self.modules = dict(gm.named_modules())
        # sources
        self.size: list[int] = []
        self.producer: list[str] = []
        self.parent: list[int] = []
        self.fixed: list[bool] = []
        self.slices: list[list[Slice]] = []
        # deferred checks: (message, sources that must end up fixed)
        self.uses: list[tuple[str, list[int]]] = []
        self.infos: dict[fx.Node, Any] = {}

    # -- union-find -----------------------------------------------------------------
    def new_source(self, size: int, producer: str, fixed: bool = False) -> int:
        sid = len(self.size)
        self.size.append(int(size))
        self.producer.append(producer)
        self.parent.append(sid)
        self.fixed.append(fixed)
        self.slices.append([])
        return sid

    def find(self, s: int) -> int:
        while self.parent[s] != s:
            self.parent[s] = self.parent[self.parent[s]]
            s = self.parent[s]
        return s

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        if self.size[ra] != self.size[rb]:
            self.fix(ra)
            self.fix(rb)
            return
        lo, hi = min(ra, rb), max(ra, rb)
        self.parent[hi] = lo
        self.fixed[lo] = self.fixed[lo] or self.fixed[hi]

    def fix(self, s: int) -> None:
        self.fixed[self.find(s)] = True

    def fix_info(self, info: Any) -> None:
        for s in self.sources_of(info):
            self.fix(s)

    def sources_of(self, info: Any) -> list[int]:
        out: list[int] = []

        def visit(v: Any) -> Any:
            if isinstance(v, _Info) and v.dim is not None:
                out.extend(s for s, _ in v.segs)
            return v

        map_aggregate(info, visit)
        return out

    # -- helpers --------------------------------------------------------------------
    def where(self, node: fx.Node) -> str:
        stack = node.meta.get("nn_module_stack")
        inside = ""
        if stack:
            inside = f" inside module '{list(stack.values())[-1][0]}'"
        if node.op == "call_module":
            m = self.modules[node.target]
            return f"module '{node.target}' ({type(m).__name__})"
        if node.op == "call_method":
            return f"node '{node.name}' (method Tensor.{node.target}){inside}"
        tgt = getattr(node.target, "__qualname__", None) or str(node.target)
        mod = getattr(node.target, "__module__", "") or ""
        return f"node '{node.name}' (function {mod + '.' if mod else ''}{tgt}){inside}"

    def opaque_use(self, node: fx.Node, infos: Any, reason: str) -> _Info:
        """Record that ``node`` consumes ``infos`` in a way we cannot prune through.

        Fine if all those channels end up fixed anyway; otherwise an error is raised at
        the end of the analysis.  The result is opaque.
        """
        srcs = self.sources_of(infos)
        if srcs:
            self.uses.append((f"{self.where(node)}: {reason}", srcs))
        return _OPAQUE

    def length(self, info: _Info) -> int:
        return sum(self.size[s] * b for s, b in info.segs)

    def checked(self, node: fx.Node, info: _Info, shape: tuple[int, ...], inputs: Any) -> _Info:
        """Sanity check: the channel dim of ``shape`` must hold exactly the segments."""
        if info.dim is None:
            return info
        if info.dim >= len(shape) or shape[info.dim] != self.length(info):
            return self.opaque_use(node, inputs, "channel bookkeeping does not match the output shape")
        return info

    def merge(self, a: _Info, b: _Info) -> None:
        """Channels of ``a`` and ``b`` are identified element-wise (same dim)."""
        if a.dim is None or b.dim is None:
            self.fix_info(a)
            self.fix_info(b)
            return
        sa = [(self.size[s], blk) for s, blk in a.segs]
        sb = [(self.size[s], blk) for s, blk in b.segs]
        if sa != sb:
            self.fix_info(a)
            self.fix_info(b)
            return
        for (x, _), (y, _) in zip(a.segs, b.segs):
            self.union(x, y)

    def consume(self, node: fx.Node, info: _Info, pname: str, pdim: int, expect_dim: int) -> None:
        """Add the column slices of parameter ``pname`` (dim ``pdim``) for every segment."""
        if info.dim is None:
            return
        if info.dim != expect_dim:
            self.opaque_use(node, info, f"expects channels on dim {expect_dim}, got them on dim {info.dim}")
            return
        off = 0
        for s, blk in info.segs:
            self.slices[s].append(Slice(pname, pdim, offset=off, block=blk))
            off += self.size[s] * blk

    # -- main loop ------------------------------------------------------------------
    def run(self) -> None:
        for node in self.gm.graph.nodes:
            if node.op == "output":
                self.fix_info(map_arg(node.args, lambda n: self.infos[n]))
                continue
            val = self.meta.get(node)
            if not self._has_tensor(val):
                self.infos[node] = None
                continue
            if node.op in ("placeholder", "get_attr"):
                self.infos[node] = map_aggregate(val, lambda v: _OPAQUE if isinstance(v, _TMeta) else None)
                continue
            args = map_arg(node.args, lambda n: self.meta.get(n))
            kwargs = map_arg(node.kwargs, lambda n: self.meta.get(n))
            iargs = map_arg(node.args, lambda n: self.infos.get(n))
            ikwargs = map_arg(node.kwargs, lambda n: self.infos.get(n))
            if node.op == "call_module":
                out = self.do_module(node, args, kwargs, iargs, ikwargs, val)
            elif node.op == "call_method":
                out = self.do_function(node, ("method", node.target), args, kwargs, iargs, ikwargs, val)
            else:
                out = self.do_function(node, node.target, args, kwargs, iargs, ikwargs, val)
            if isinstance(out, _Info) and isinstance(val, _TMeta):
                out = self.checked(node, out, val.shape, (iargs, ikwargs))
            self.infos[node] = out
        self.resolve_shared_slices()

    @staticmethod
    def _has_tensor(val: Any) -> bool:
        found = [False]

        def visit(v: Any) -> Any:
            if isinstance(v, _TMeta):
                found[0] = True
            return v

        map_aggregate(val, visit)
        return found[0]

    # -- modules --------------------------------------------------------------------
    def do_module(self, node, args, kwargs, iargs, ikwargs, val) -> Any:
        name: str = node.target
        m = self.modules[name]
        x: _Info = iargs[0] if iargs else _OPAQUE
        xm: _TMeta | None = args[0] if args and isinstance(args[0], _TMeta) else None
        if m in self.ignored and not _is_known_module(m):
            # black box: keep everything that flows in and out
            self.fix_info((iargs, ikwargs))
            return map_aggregate(val, lambda v: _OPAQUE if isinstance(v, _TMeta) else None)
        out = self._do_known_module(node, name, m, x, xm, args, kwargs, iargs, ikwargs, val)
        if m in self.ignored:
            self.fix_info(out)
        return out

    def _do_known_module(self, node, name, m, x, xm, args, kwargs, iargs, ikwargs, val) -> Any:
        if isinstance(m, nn.modules.conv._ConvNd):
            if m.transposed:
                return self.opaque_use(node, (iargs, ikwargs), "transposed convolutions are not supported")
            if len(iargs) != 1 or ikwargs:
                return self.opaque_use(node, (iargs, ikwargs), "unexpected extra arguments")
            if m.groups == 1:
                self.consume(node, x, f"{name}.weight", 1, expect_dim=1)
                sid = self.new_source(m.out_channels, name)
                self.slices[sid].append(Slice(f"{name}.weight", 0))
                if m.bias is not None:
                    self.slices[sid].append(Slice(f"{name}.bias", 0, in_norm=False))
                return _Info(1, ((sid, 1),))
            if m.groups == m.in_channels == m.out_channels:
                if x.dim is None:
                    sid = self.new_source(m.out_channels, name, fixed=True)
                    return _Info(1, ((sid, 1),))
                if x.dim != 1:
                    return self.opaque_use(node, x, "expects channels on dim 1")
                off = 0
                for s, blk in x.segs:
                    if blk != 1:
                        return self.opaque_use(node, x, "block channels into a depthwise conv")
                    self.slices[s].append(Slice(f"{name}.weight", 0, offset=off))
                    if m.bias is not None:
                        self.slices[s].append(Slice(f"{name}.bias", 0, offset=off, in_norm=False))
                    off += self.size[s]
                return x
            # grouped convolution (or depthwise with channel multiplier): kept fixed
            self.fix_info(x)
            sid = self.new_source(m.out_channels, name, fixed=True)
            return _Info(1, ((sid, 1),))
        if isinstance(m, nn.Linear):
            if len(iargs) != 1 or ikwargs or xm is None:
                return self.opaque_use(node, (iargs, ikwargs), "unexpected arguments")
            self.consume(node, x, f"{name}.weight", 1, expect_dim=len(xm.shape) - 1)
            sid = self.new_source(m.out_features, name)
            self.slices[sid].append(Slice(f"{name}.weight", 0))
            if m.bias is not None:
                self.slices[sid].append(Slice(f"{name}.bias", 0, in_norm=False))
            return _Info(len(val.shape) - 1, ((sid, 1),))
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            if x.dim is None:
                return x
            if x.dim != 1:
                return self.opaque_use(node, x, "BatchNorm expects channels on dim 1")
            off = 0
            for s, blk in x.segs:
                if m.weight is not None:
                    self.slices[s].append(Slice(f"{name}.weight", 0, off, blk))
                if m.bias is not None:
                    self.slices[s].append(Slice(f"{name}.bias", 0, off, blk, in_norm=False))
                if m.running_mean is not None:
                    self.slices[s].append(Slice(f"{name}.running_mean", 0, off, blk, True, False))
                if m.running_var is not None:
                    self.slices[s].append(Slice(f"{name}.running_var", 0, off, blk, True, False))
                off += self.size[s] * blk
            return x
        if isinstance(m, nn.LayerNorm):
            if x.dim is None or xm is None:
                return x
            nd = len(m.normalized_shape)
            ndim = len(xm.shape)
            if x.dim < ndim - nd:
                return x  # normalises other dims only: element-wise for channels
            if nd != 1 or x.dim != ndim - 1 or m.weight is None:
                return self.opaque_use(
                    node, x, "LayerNorm over the channel dim is supported only with one normalised "
                    "dim and affine weights")
            off = 0
            for s, blk in x.segs:
                self.slices[s].append(Slice(f"{name}.weight", 0, off, blk))
                if m.bias is not None:
                    self.slices[s].append(Slice(f"{name}.bias", 0, off, blk, in_norm=False))
                off += self.size[s] * blk
            return x
        if isinstance(m, nn.MultiheadAttention):
            # the embedding width is split into heads: keep it fixed
            self.fix_info((iargs, ikwargs))
            return map_aggregate(val, lambda v: _OPAQUE if isinstance(v, _TMeta) else None)
        if isinstance(m, _ELEMENTWISE_MODULES):
            return x
        if isinstance(m, tuple(_POOL_MODULES)):
            return self.pool(node, x, xm, _POOL_MODULES[type(m)] if type(m) in _POOL_MODULES else
                             next(k for t, k in _POOL_MODULES.items() if isinstance(m, t)))
        if isinstance(m, nn.Flatten):
            return self.reshape(node, x, xm, val)
        if isinstance(m, (nn.Softmax, nn.LogSoftmax)):
            return self.softmax(node, x, xm, m.dim)
        return self.opaque_use(
            node, (iargs, ikwargs), "module type not understood by the tracer")

    # -- functions and methods ------------------------------------------------------
    def do_function(self, node, target, args, kwargs, iargs, ikwargs, val) -> Any:
        is_method = isinstance(target, tuple)
        mname = target[1] if is_method else None
        x: Any = iargs[0] if iargs else None
        xm: Any = args[0] if args else None
        if target is operator.getitem:
            if not isinstance(xm, _TMeta):
                # indexing a tuple / list of values
                idx = args[1]
                return x[idx] if isinstance(x, (tuple, list)) else map_aggregate(
                    val, lambda v: _OPAQUE if isinstance(v, _TMeta) else None)
            return self.getitem(node, x, xm, args[1], val)
        if (is_method and mname in _ELEMENTWISE_METHODS) or (not is_method and target in _ELEMENTWISE_FUNCTIONS):
            tensors = [i for i in list(iargs[1:]) + list(ikwargs.values()) if isinstance(i, _Info)]
            if tensors:
                return self.binary(node, iargs, ikwargs, args, kwargs, val)
            return x if isinstance(x, _Info) else _OPAQUE
        if (is_method and mname in _BINARY_METHODS) or (not is_method and target in _BINARY_FUNCTIONS):
            return self.binary(node, iargs, ikwargs, args, kwargs, val)
        if (is_method and mname in _RESHAPE_METHODS) or (not is_method and target in _RESHAPE_FUNCTIONS):
            return self.reshape(node, x, xm, val)
        if (is_method and mname in ("permute", "transpose", "swapaxes", "t")) or (
                not is_method and target in (torch.permute, torch.transpose, torch.swapaxes, torch.t)):
            return self.permute(node, x, xm, mname or target.__name__, args, kwargs)
        if is_method and mname == "expand" or (is_method and mname == "expand_as"):
            return self.expand(node, x, xm, val)
        if (is_method and mname in _REDUCE_METHODS) or (not is_method and target in _REDUCE_FUNCTIONS):
            dims = _arg(args, kwargs, 1, "dim", None)
            keep = bool(_arg(args, kwargs, 2, "keepdim", False))
            return self.reduce(node, x, xm, dims, keep)
        if not is_method and target in _CAT_FUNCTIONS:
            tensors = _arg(args, kwargs, 0, "tensors")
            infos = _arg(iargs, ikwargs, 0, "tensors")
            dim = _arg(args, kwargs, 1, "dim", 0)
            return self.cat(node, list(infos), list(tensors), dim, val)
        if not is_method and target in _POOL_FUNCTIONS:
            return self.pool(node, x, xm, _POOL_FUNCTIONS[target])
        if (is_method and mname in ("softmax", "log_softmax")) or (not is_method and target in _SOFTMAX_FUNCTIONS):
            return self.softmax(node, x, xm, _arg(args, kwargs, 1, "dim", None))
        if not is_method and target is F.pad:
            return self.pad(node, x, xm, _arg(args, kwargs, 1, "pad"), val)
        name = f"Tensor.{mname}" if is_method else getattr(target, "__name__", str(target))
        return self.opaque_use(node, (iargs, ikwargs), f"op '{name}' is not understood by the tracer")

    def binary(self, node, iargs, ikwargs, args, kwargs, val) -> _Info:
        out_shape = val.shape
        nd = len(out_shape)
        operands = [(i, a) for i, a in zip(list(iargs) + list(ikwargs.values()),
                                           list(args) + list(kwargs.values()))
                    if isinstance(i, _Info) and isinstance(a, _TMeta)]
        chans = [(i, a) for i, a in operands if i.dim is not None]
        if not chans:
            return _OPAQUE
        od = {i.dim + nd - len(a.shape) for i, a in chans}
        if len(od) != 1:
            return self.opaque_use(node, [i for i, _ in chans], "operands carry channels on different dims")
        d = od.pop()
        ref = chans[0][0]
        for i, _ in chans[1:]:
            self.merge(ref, i)
        for i, a in operands:
            if i.dim is None:
                k = d - (nd - len(a.shape))
                if k >= 0 and a.shape[k] != 1:
                    # an operand we cannot slice covers the channels: keep them
                    for c, _ in chans:
                        self.fix_info(c)
        return _Info(d, ref.segs)

    def reshape(self, node, x: Any, xm: Any, val: Any) -> _Info:
        if not isinstance(x, _Info) or x.dim is None:
            return _OPAQUE
        ins, outs = xm.shape, val.shape
        cd = x.dim
        lead = _prod(ins[:cd])
        acc = 1
        for k in range(len(outs) + 1):
            if acc == lead and k < len(outs):
                # does out[k] cover in[cd:j] exactly for some j?
                span = 1
                for j in range(cd, len(ins)):
                    span *= ins[j]
                    if span == outs[k]:
                        mult = span // ins[cd]
                        if mult == 1 or ins[cd] > 0:
                            return _Info(k, tuple((s, b * mult) for s, b in x.segs))
                    if span > outs[k]:
                        break
            if k < len(outs):
                acc *= outs[k]
            if acc > lead and lead != 0:
                break
        return self.opaque_use(node, x, f"reshape {tuple(ins)} -> {tuple(outs)} splits or mixes the channel dim")

    def permute(self, node, x: Any, xm: Any, op: str, args, kwargs) -> _Info:
        if not isinstance(x, _Info) or x.dim is None:
            return _OPAQUE
        nd = len(xm.shape)
        cd = x.dim
        if op == "permute":
            dims = args[1:] if len(args) > 1 else [kwargs.get("dims")]
            if len(dims) == 1 and isinstance(dims[0], (tuple, list)):
                dims = dims[0]
            dims = [int(d) % nd for d in dims]
            return _Info(dims.index(cd), x.segs)
        if op == "t":
            return _Info(nd - 1 - cd if nd == 2 else cd, x.segs)
        d0 = int(_arg(args, kwargs, 1, "dim0")) % nd
        d1 = int(_arg(args, kwargs, 2, "dim1")) % nd
        return _Info(d1 if cd == d0 else d0 if cd == d1 else cd, x.segs)

    def expand(self, node, x: Any, xm: Any, val: Any) -> _Info:
        if not isinstance(x, _Info) or x.dim is None:
            return _OPAQUE
        d = x.dim + len(val.shape) - len(xm.shape)
        if val.shape[d] != xm.shape[x.dim]:
            return self.opaque_use(node, x, "expand broadcasts the channel dim")
        return _Info(d, x.segs)

    def reduce(self, node, x: Any, xm: Any, dims: Any, keep: bool) -> _Info:
        if not isinstance(x, _Info) or x.dim is None:
            return _OPAQUE
        nd = len(xm.shape)
        if dims is None:
            return self.opaque_use(node, x, "reduction over all dims mixes channels")
        dims = [dims] if isinstance(dims, int) else list(dims)
        dims = {int(d) % nd for d in dims}
        if x.dim in dims:
            return self.opaque_use(node, x, "reduction over the channel dim mixes channels")
        return _Info(x.dim if keep else x.dim - sum(1 for d in dims if d < x.dim), x.segs)

    def pool(self, node, x: Any, xm: Any, k: int) -> _Info:
        if not isinstance(x, _Info) or x.dim is None:
            return _OPAQUE
        if x.dim >= len(xm.shape) - k:
            return self.opaque_use(node, x, "pooling over the channel dim")
        return x

    def softmax(self, node, x: Any, xm: Any, dim: Any) -> _Info:
        if not isinstance(x, _Info) or x.dim is None:
            return _OPAQUE
        if dim is None or int(dim) % len(xm.shape) == x.dim:
            return self.opaque_use(node, x, "softmax over the channel dim mixes channels")
        return x

    def getitem(self, node, x: Any, xm: _TMeta, idx: Any, val: Any) -> _Info:
        if not isinstance(x, _Info) or x.dim is None:
            return _OPAQUE
        items = list(idx) if isinstance(idx, tuple) else [idx]
        if any(isinstance(i, (_TMeta, list)) for i in items):
            return self.opaque_use(node, x, "advanced (tensor) indexing")
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
                        return self.opaque_use(node, x, "slicing the channel dim")
                    out_cd = out_d
                in_d += 1
                out_d += 1
            elif isinstance(it, int):
                if in_d == x.dim:
                    return self.opaque_use(node, x, "indexing the channel dim")
                in_d += 1
            else:
                return self.opaque_use(node, x, f"index of type {type(it).__name__}")
        if out_cd is None:
            out_cd = out_d + (x.dim - in_d)
        return _Info(out_cd, x.segs)

    def cat(self, node, infos: list, metas: list, dim: int, val: Any) -> _Info:
        nd = len(val.shape)
        dim = int(dim) % nd
        chans = [i for i in infos if isinstance(i, _Info) and i.dim is not None]
        if not chans:
            return _OPAQUE
        cdims = {i.dim for i in chans}
        if len(cdims) != 1:
            return self.opaque_use(node, chans, "operands carry channels on different dims")
        cd = cdims.pop()
        if cd == dim:
            segs: list[tuple[int, int]] = []
            for i, mt in zip(infos, metas):
                if i.dim is None:
                    if mt.shape[dim] > 0:
                        segs.append((self.new_source(mt.shape[dim], node.name, fixed=True), 1))
                else:
                    segs.extend(i.segs)
            return _Info(cd, tuple(segs))
        for i in infos[1:]:
            self.merge(infos[0], i)
        return _Info(cd, chans[0].segs)

    def pad(self, node, x: Any, xm: Any, pad: Sequence[int], val: Any) -> _Info:
        if not isinstance(x, _Info) or x.dim is None:
            return _OPAQUE
        nd = len(xm.shape)
        k = nd - 1 - x.dim
        before = after = 0
        if 2 * k + 1 < len(pad):
            before, after = int(pad[2 * k]), int(pad[2 * k + 1])
        if before < 0 or after < 0:
            return self.opaque_use(node, x, "negative padding of the channel dim")
        segs = list(x.segs)
        if before:
            segs.insert(0, (self.new_source(before, node.name, fixed=True), 1))
        if after:
            segs.append((self.new_source(after, node.name, fixed=True), 1))
        return _Info(x.dim, tuple(segs))

    # -- finishing ------------------------------------------------------------------
    def resolve_shared_slices(self) -> None:
        """Sources touching the same entries of a tensor (shared weights) are merged.

        Identical ranges (a module called twice) are unioned; partial overlaps are kept
        fixed.  Repeats until nothing changes (fixed-ness and unions only grow).
        """
        changed = True
        while changed:
            changed = False
            by_tensor: dict[tuple[str, int], list[tuple[int, int, int, int]]] = {}
            for s, sl in enumerate(self.slices):
                for x in sl:
                    by_tensor.setdefault((x.name, x.dim), []).append(
                        (x.offset, x.offset + self.size[s] * x.block, x.block, s))
            for entries in by_tensor.values():
                entries.sort()
                for i, (a0, a1, ab, sa) in enumerate(entries):
                    for b0, b1, bb, sb in entries[i + 1:]:
                        if b0 >= a1:
                            break
                        ra, rb = self.find(sa), self.find(sb)
                        if ra == rb or (self.fixed[ra] and self.fixed[rb]):
                            continue
                        if (a0, a1, ab) == (b0, b1, bb) and self.size[ra] == self.size[rb]:
                            self.union(ra, rb)
                        else:
                            self.fix(ra)
                            self.fix(rb)
                        changed = True

    def check_uses(self) -> None:
        for msg, srcs in self.uses:
            live = sorted({self.find(s) for s in srcs if not self.fixed[self.find(s)]})
            if live:
                prods = sorted({self.producer[s] for s in live})
                raise UnsupportedOpError(
                    f"trace_groups: cannot reason about {msg}. Its input carries prunable channels "
                    f"produced by {prods}. To keep them unpruned, pass those modules (or this module, "
                    f"if it is one) in ignored_layers=[...]."
                )

    def groups(self) -> ChannelGroups:
        members: dict[int, list[int]] = {}
        for s in range(len(self.size)):
            r = self.find(s)
            if not self.fixed[r]:
                members.setdefault(r, []).append(s)
        out: list[ChannelGroup] = []
        for r in sorted(members, key=lambda r: min(members[r])):
            srcs = sorted(members[r])
            seen: set[Slice] = set()
            sl: list[Slice] = []
            for s in srcs:
                for x in self.slices[s]:
                    if x not in seen:
                        seen.add(x)
                        sl.append(x)
            if not sl:
                continue
            out.append(ChannelGroup(size=self.size[r], slices=tuple(sl), name=self.producer[srcs[0]]))
        return ChannelGroups(out)


def trace_groups(
    model: nn.Module,
    example_inputs: torch.Tensor | Sequence[torch.Tensor],
    ignored_layers: Iterable[nn.Module] = (),
) -> ChannelGroups:
    """Find every prunable channel group of ``model``.

    Args:
        model: the network (not modified; its train/eval flags are restored).
        example_inputs: a tensor, or a tuple of positional inputs, for one forward pass
            (small is fine: only shapes are used, e.g. one 32x32 image).
        ignored_layers: modules whose output channels must never be pruned (see the
            module docstring for containers and custom modules).

    Returns:
        The prunable groups, ordered by the topological position of their first
        producing module.  Each group's ``name`` is that module's qualified name.

    Raises:
        UnsupportedOpError: an op the tracer cannot reason about touches prunable
            channels; the message names the node / module and the producing layers to
            put in ``ignored_layers``.
    """
    ignored = set(ignored_layers)
    all_modules = set(model.modules())
    for m in ignored:
        if not isinstance(m, nn.Module) or m not in all_modules:
            raise ValueError(f"trace_groups: ignored_layers entry {type(m).__name__} is not a submodule of the model")
    black_boxes = {m for m in ignored if not _is_known_module(m)}
    tracer = _Tracer(black_boxes)
    try:
        graph = tracer.trace(model)
    except Exception as exc:  # noqa: BLE001 - re-raised with context
        raise UnsupportedOpError(
            f"trace_groups: torch.fx could not trace {type(model).__name__}: {exc}. Put the "
            f"untraceable submodule in ignored_layers to treat it as a black box."
        ) from exc
    gm = fx.GraphModule(tracer.root, graph, type(model).__name__)
    inputs = (example_inputs,) if isinstance(example_inputs, torch.Tensor) else tuple(example_inputs)
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            rec = _ShapeRecorder(gm)
            rec.run(*inputs)
    finally:
        for m, t in flags:
            m.training = t
    ana = _Analysis(gm, rec.meta, ignored)
    ana.run()
    ana.check_uses()
    return ana.groups()
