"""Trace a model into channel groups (the sets of slices removed together).

:func:`trace_groups` traces the model with ``torch.fx`` (symbolic tracing), runs the traced
graph once on the example inputs under ``torch.no_grad()`` to learn every value's shape (no
autograd graph is built or kept; convolutions, linears and attention are not even computed:
their registry entries give their output shapes), then walks the graph in topological order.  For every
node it runs the coupling rule of the node's entry in the layer registry
(:mod:`oneprune_ext.graph.registry`; built-in entries in :mod:`oneprune_ext.graph.entries.layers` and
:mod:`oneprune_ext.graph.entries.tensor_ops`), which says which channels the output carries and which
tensor slices belong to them (:mod:`oneprune_ext.graph.propagation`).  Residual adds,
element-wise products, gates and concats along other dims join channels; grouped
convolutions and attention heads make the same within-group positions go together.  The
sets left unconstrained become :class:`~oneprune_ext.graph.groups.ChannelGroup` objects.

A model ``torch.fx`` cannot trace whole (data-dependent control flow, loops over list inputs:
torchvision's detectors, ultralytics' YOLO) is run once on the example inputs instead, and its
executed forward recorded as the same kind of graph (:mod:`oneprune_ext.graph.capture`, chosen
by :func:`capture_graph`; :attr:`TraceReport.capture` says which was used).  The rest is the same.

What the tracer cannot understand is **kept fixed**, never pruned wrongly: an op or module
type without a registry entry, channel shuffles and reshapes that split the channel dim,
reshapes / views / expands giving the channel dim a literal size (``x.view(n, 8*7*7)``: it
would not follow a prune), recurrent layers, and branches taken on values computed from
prunable channels (in an executed forward).  All such places are
collected into one :class:`TraceReport`; with ``on_unsupported="freeze"`` (the default) one
warning lists them all, with ``"error"`` one :class:`UnsupportedOpError` does.

Never pruned either: channels that reach the model's output, the model inputs, and
``ignored_layers``: a module the tracer keeps as one node (``torch.nn`` modules, registered
classes) keeps its *output* channels; any other module is treated as a black box whose
inputs and outputs are kept.
"""

from __future__ import annotations

import operator
import warnings
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import torch
import torch.nn as nn
from torch import fx
from torch.fx.node import map_arg

from .capture import RecordedForward, is_leaf, module_state, record_forward
from .groups import ChannelGroups
from .propagation import OPAQUE, Call, ChannelInfo, FrozenPlace, ParamRef, Propagation, SizeRef, TMeta
from .registry import function_entry, is_registered_leaf, method_entry, module_entry, size_attr_sites

__all__ = [
    "trace_groups",
    "trace_report",
    "TraceReport",
    "FrozenPlace",
    "UnsupportedOpError",
    "UnsupportedOpWarning",
    "channel_multiplicity",
]

_MAX_WALKS = 8


class UnsupportedOpError(RuntimeError):
    """The tracer met ops it cannot reason about on prunable channels (``on_unsupported="error"``).

    Attributes:
        report: the :class:`TraceReport` listing every such place.
    """

    def __init__(self, message: str, report: "TraceReport | None" = None) -> None:
        super().__init__(message)
        self.report = report


class UnsupportedOpWarning(UserWarning):
    """Channels were kept fixed because the tracer does not understand how they are used.

    Attributes:
        report: the :class:`TraceReport` listing every such place.
    """

    def __init__(self, message: str, report: "TraceReport | None" = None) -> None:
        super().__init__(message)
        self.report = report


@dataclass
class TraceReport:
    """Result of tracing: the prunable groups and every place kept fixed.

    Attributes:
        groups: the prunable channel groups.
        frozen: the places the tracer did not understand that kept prunable channels fixed
            (op, node, reason, and the names of the groups kept fixed).
        capture: how the graph was captured: ``"torch.fx"`` (symbolic tracing) or
            ``"executed forward"`` (the forward run once on the example inputs and followed,
            for models ``torch.fx`` cannot trace whole; see :mod:`oneprune_ext.graph.capture`).
    """

    groups: ChannelGroups
    frozen: list[FrozenPlace] = field(default_factory=list)
    capture: str = "torch.fx"

    def frozen_groups(self) -> list[str]:
        """Names of every group kept fixed, in order of first appearance."""
        out: list[str] = []
        for p in self.frozen:
            out.extend(n for n in p.frozen if n not in out)
        return out

    def __str__(self) -> str:
        lines = [f"{len(self.groups)} prunable groups ({self.groups.num_channels} channels)"]
        if self.frozen:
            lines.append(f"{len(self.frozen)} places kept fixed:")
            lines.extend(f"  - {p}" for p in self.frozen)
        return "\n".join(lines)


def channel_multiplicity(groups: ChannelGroups) -> list[int]:
    """Per group, how many layer channels each of its channels stands for.

    1 for ordinary groups; ``G`` for a group through a grouped conv with ``G`` conv groups
    (or attention with ``G`` heads), whose channel ``c`` is channel ``c`` of every conv
    group: a layer of the group then has ``G * kept`` channels.  Computed as the gcd, over the
    tensors whose dim 0 the group touches, of the number of its slices there.
    """
    out: list[int] = []
    for g in groups:
        counts: dict[tuple[str, int], int] = {}
        for s in g.slices:
            if s.dim == 0 and s.block == 1:
                counts[(s.name, 0)] = counts.get((s.name, 0), 0) + 1
        m = 0
        for c in counts.values():
            m = c if m == 0 else _gcd(m, c)
        out.append(max(m, 1))
    return out


def _gcd(a: int, b: int) -> int:
    while b:
        a, b = b, a % b
    return a


# ----------------------------------------------------------------------------------
# torch.fx tracing, with untraceable submodules as black boxes
# ----------------------------------------------------------------------------------


class _Tracer(fx.Tracer):
    """fx tracer with extra leaves; remembers the innermost submodule whose tracing failed."""

    def __init__(self, leaves: set[nn.Module]) -> None:
        super().__init__()
        self.leaves = leaves
        self.failed: nn.Module | None = None

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return m in self.leaves or is_registered_leaf(m) or super().is_leaf_module(m, module_qualified_name)

    def call_module(self, m: nn.Module, forward: Any, args: Any, kwargs: Any) -> Any:
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception:
            if self.failed is None and m not in self.leaves:
                self.failed = m
            raise


def _fx_leaf(m: nn.Module) -> bool:
    return is_registered_leaf(m) or fx.Tracer().is_leaf_module(m, "")


def trace_graph(model: nn.Module, leaves: Iterable[nn.Module] = (), *,
                whole: bool = False) -> tuple[fx.Graph, dict[nn.Module, str]]:
    """``torch.fx`` graph of ``model``; submodules fx cannot trace become leaves.

    Returns the graph and, per such submodule, why it could not be traced.  ``whole=True``:
    one attempt, raising :class:`UnsupportedOpError` as soon as anything cannot be traced.
    """
    extra = set(leaves)
    untraceable: dict[nn.Module, str] = {}
    for _ in range(1 if whole else 1000):
        tracer = _Tracer(extra)
        try:
            with module_state(model):  # a forward caching on its modules would leave proxies there
                graph = tracer.trace(model)
                # tensor constants fx stores on the root module (the graph reads them back)
                consts = {n.target: getattr(model, n.target) for n in graph.nodes
                          if n.op == "get_attr" and str(n.target).startswith("_tensor_constant")}
            for name, value in consts.items():
                setattr(model, name, value)
            return graph, untraceable
        except Exception as exc:  # noqa: BLE001 - re-raised below with context
            bad = tracer.failed
            if whole or bad is None or bad is model or bad in extra:
                raise UnsupportedOpError(
                    f"trace_groups: torch.fx could not trace {type(model).__name__}: {exc}. Put the "
                    f"untraceable submodule in ignored_layers to treat it as a black box.") from exc
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            untraceable[bad] = f"torch.fx cannot trace it ({first[:200]})"
            extra.add(bad)
    raise UnsupportedOpError(f"trace_groups: torch.fx could not trace {type(model).__name__}")


def _fetch(model: nn.Module, target: str) -> Any:
    obj: Any = model
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def run_graph(model: nn.Module, graph: fx.Graph, inputs: tuple, modules: dict[str, nn.Module],
              after: Any = None, shortcut: Any = None) -> Any:
    """Run ``graph`` on ``inputs`` (a lean ``fx.Interpreter``): values are freed after their last
    use, and ``after(node, value, args, kwargs)`` is called after every node (``args`` /
    ``kwargs``: the call's actual arguments, the tensor first for a method; empty for
    placeholders and attributes).  ``shortcut(module, args, kwargs)``, if given, may return a
    module call's output instead of running the module (``None``: run it).  Returns the
    graph's output."""
    last_use: dict[fx.Node, list[fx.Node]] = {}
    seen: set[fx.Node] = set()
    for node in reversed(graph.nodes):
        for n in node.all_input_nodes:
            if n not in seen:
                seen.add(n)
                last_use.setdefault(node, []).append(n)
    env: dict[fx.Node, Any] = {}
    load = env.__getitem__
    it = iter(inputs)
    for node in graph.nodes:
        op = node.op
        args, kwargs = (), {}
        if op == "placeholder":
            try:
                value = next(it)
            except StopIteration:
                value = node.args[0] if node.args else None  # a default argument
        elif op == "get_attr":
            value = _fetch(model, node.target)
        elif op == "output":
            return map_arg(node.args[0], load)
        else:
            args = map_arg(node.args, load)
            kwargs = map_arg(node.kwargs, load)
            if op == "call_function":
                value = node.target(*args, **kwargs)
            elif op == "call_method":
                value = getattr(args[0], node.target)(*args[1:], **kwargs)
            else:
                module = modules[node.target]
                value = shortcut(module, args, kwargs) if shortcut is not None else None
                if value is None:
                    value = module(*args, **kwargs)
        env[node] = value
        if after is not None:
            after(node, value, args, kwargs)
        for n in last_use.get(node, ()):
            env.pop(n, None)
    return None


def _to_meta(v: Any) -> Any:
    if isinstance(v, torch.Tensor):
        return TMeta(tuple(v.shape))
    if isinstance(v, (tuple, list)):
        return type(v)(_to_meta(x) for x in v) if not hasattr(v, "_fields") else tuple(_to_meta(x) for x in v)
    if isinstance(v, dict):
        return {k: _to_meta(x) for k, x in v.items()}
    return v


def _zeros_instead(module: nn.Module, args: tuple, kwargs: dict) -> Any:
    """Zeros of the output's shape for modules whose registry entry knows it (no arithmetic)."""
    entry = module_entry(module)
    if entry is None or entry.output_shape is None:
        return None
    shape = entry.output_shape(module, args, kwargs)
    if shape is None or isinstance(shape, torch.Tensor):
        return shape  # run it / its input passes through
    x = next(a for a in list(args) + list(kwargs.values()) if isinstance(a, torch.Tensor))

    def zeros(s: Any) -> Any:
        if isinstance(s, torch.Size):
            return torch.zeros(s, dtype=x.dtype, device=x.device)
        return tuple(zeros(v) for v in s) if isinstance(s, tuple) else s

    return zeros(shape)


def _record_shapes(model: nn.Module, graph: fx.Graph, inputs: tuple,
                   modules: dict[str, nn.Module]) -> dict[fx.Node, Any]:
    """Every node's output shape (and non-tensor values), from one run of the graph in eval
    mode under ``torch.no_grad()`` (train / eval flags are restored).

    Only shapes are needed, so convolutions, linears and attention are not computed (their
    outputs are zeros of the shape their registry entry gives) and norms and activations pass
    their input through; the little arithmetic left runs on one thread.  If anything fails on
    those values, the graph is run again for real.
    """
    meta: dict[fx.Node, Any] = {}

    def keep(node: fx.Node, value: Any, args: Any, kwargs: Any) -> None:
        meta[node] = _to_meta(value)

    with evaluating(modules.values()), torch.no_grad():
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # what is left is small: no waiting on busy cores at every op
        try:
            run_graph(model, graph, inputs, modules, keep, _zeros_instead)
            fast = True
        except Exception:  # noqa: BLE001 - e.g. an op that checks values: run everything
            fast = False
        finally:
            torch.set_num_threads(threads)
        if not fast:
            meta.clear()
            try:
                run_graph(model, graph, inputs, modules, keep)
            except Exception as e:  # the model's own forward fails on these inputs
                raise _forward_failed(model, inputs, e) from e
    return meta


def _forward_failed(model: nn.Module, inputs: tuple, e: Exception) -> ValueError:
    what = ", ".join(f"tensor of shape {list(t.shape)}" if isinstance(t, torch.Tensor) else type(t).__name__
                     for t in inputs)
    return ValueError(f"trace_groups: {type(model).__name__}'s forward fails on the example inputs ({what}): "
                      f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}; pass inputs its forward "
                      "accepts (a tensor, or a tuple of positional inputs, e.g. one batch of the training data)")


class evaluating:
    """Context manager: modules in eval mode inside, their own train / eval flags restored after."""

    def __init__(self, modules: Iterable[nn.Module]) -> None:
        self.modules = list(modules)

    def __enter__(self) -> None:
        self.flags = [(m, m.training) for m in self.modules if m.training]
        for m, _ in self.flags:
            m.training = False

    def __exit__(self, *exc: Any) -> None:
        for m, t in self.flags:
            m.training = t


# ----------------------------------------------------------------------------------
# the walk
# ----------------------------------------------------------------------------------


def _has_tensor(val: Any) -> bool:
    if isinstance(val, TMeta):
        return True
    if isinstance(val, (tuple, list)):
        return any(_has_tensor(v) for v in val)
    if isinstance(val, dict):
        return any(_has_tensor(v) for v in val.values())
    return False


_ARITHMETIC = {
    operator.add, operator.sub, operator.mul, operator.floordiv, operator.truediv, operator.mod,
    operator.pow, operator.neg, operator.pos, operator.eq, operator.ne, operator.lt, operator.le,
    operator.gt, operator.ge, int, float, abs, max, min,
}


def describe(node: fx.Node, module: nn.Module | None) -> tuple[str, str]:
    """(op name, place) of a node, for reports: ``('Tensor.view', "node 'view' in 'stage2.0'")``."""
    if module is not None:
        return type(module).__name__, f"module '{node.target}'"
    if node.op == "call_method":
        name = f"Tensor.{node.target}"
    else:
        mod = getattr(node.target, "__module__", "") or ""
        name = f"{mod + '.' if mod else ''}{getattr(node.target, '__name__', str(node.target))}"
        for prefix, short in (("torch._VariableFunctionsClass.", "torch."), ("torch._C._VariableFunctions.", "torch."),
                              ("_operator.", "operator."), ("builtins.", "")):
            name = name.replace(prefix, short)
    stack = node.meta.get("nn_module_stack")
    inside = f" in '{list(stack.values())[-1][0]}'" if stack else ""
    return name, f"node '{node.name}'{inside}"


_CHANNELS, _PARAMS, _SIZES = 1, 2, 4


def _scan(x: Any) -> int:
    """Bit flags: the structure holds channel infos / parameter refs / channel-count sizes."""
    if isinstance(x, ChannelInfo):
        return _CHANNELS if x.dim is not None else 0
    if isinstance(x, ParamRef):
        return _PARAMS
    if isinstance(x, SizeRef):
        return _SIZES
    if isinstance(x, (tuple, list)):
        f = 0
        for v in x:
            f |= _scan(v)
        return f
    if isinstance(x, dict):
        f = 0
        for v in x.values():
            f |= _scan(v)
        return f
    if isinstance(x, slice):
        return _scan((x.start, x.stop, x.step))
    return 0


def _collect_sizes(x: Any, out: list) -> None:
    if isinstance(x, SizeRef):
        out.append(x)
    elif isinstance(x, (tuple, list)):
        for v in x:
            _collect_sizes(v, out)
    elif isinstance(x, dict):
        for v in x.values():
            _collect_sizes(v, out)
    elif isinstance(x, slice):
        _collect_sizes((x.start, x.stop, x.step), out)


def _without_sizes(x: Any) -> Any:
    if isinstance(x, SizeRef):
        return None
    if isinstance(x, (tuple, list)):
        return type(x)(_without_sizes(v) for v in x)
    if isinstance(x, dict):
        return {k: _without_sizes(v) for k, v in x.items()}
    return x


def _without_params(x: Any) -> tuple[Any, list[ParamRef]]:
    refs: list[ParamRef] = []

    def repl(v: Any) -> Any:
        if isinstance(v, ParamRef):
            refs.append(v)
            return OPAQUE
        if isinstance(v, (tuple, list)):
            return type(v)(repl(i) for i in v)
        if isinstance(v, dict):
            return {k: repl(i) for k, i in v.items()}
        return v

    return repl(x), refs


class _Walk:
    """One walk over the graph (repeated when sources must be created in pieces)."""

    def __init__(self, graph: fx.Graph, meta: dict[fx.Node, Any], ignored: set[nn.Module],
                 untraceable: dict[nn.Module, str], plan: dict[tuple[str, int], tuple[int, ...]],
                 saliency_params: str, sizes: dict[str, list], modules: dict[str, nn.Module],
                 tensors: dict[str, tuple[tuple[int, ...], bool]]) -> None:
        self.graph = graph
        self.meta = meta
        self.ignored = ignored
        self.untraceable = untraceable
        self.modules = modules
        self.params = tensors
        self.ctx = Propagation(plan, saliency_params, modules, sizes, describe)

    def run(self) -> Propagation:
        ctx = self.ctx
        infos: dict[fx.Node, Any] = {}
        for node in self.graph.nodes:
            op = node.op
            if op == "output":
                ctx.fix(map_arg(node.args, lambda n: infos.get(n)))
                continue
            val = self.meta.get(node)
            if not _has_tensor(val):
                infos[node] = self.size_value(node, infos)
                continue
            if op == "placeholder":
                infos[node] = ctx.opaque_like(val)
                continue
            if op == "get_attr":
                p = self.params.get(node.target)
                infos[node] = (ParamRef(node.target, tuple(range(len(p[0]))), p[0], p[1])
                               if p is not None and isinstance(val, TMeta) else ctx.opaque_like(val))
                continue
            iargs = map_arg(node.args, lambda n: infos.get(n))
            ikwargs = map_arg(node.kwargs, lambda n: infos.get(n))
            infos[node] = self.visit(node, val, iargs, ikwargs)
        return ctx

    def size_value(self, node: fx.Node, infos: dict[fx.Node, Any]) -> Any:
        """Track integers computed from channel counts (``x.shape[1]``, ``C // heads``)."""
        op, target = node.op, node.target
        iargs = map_arg(node.args, lambda n: infos.get(n))
        ikwargs = map_arg(node.kwargs, lambda n: infos.get(n))
        if op == "call_function" and target is getattr and len(node.args) == 2 and node.args[1] == "shape":
            return self._shape_sizes(iargs[0], node.args[0])
        if op == "call_method" and target == "size":
            sizes = self._shape_sizes(iargs[0], node.args[0])
            d = self.meta.get(node.args[1]) if len(node.args) > 1 and isinstance(node.args[1], fx.Node) else (
                node.args[1] if len(node.args) > 1 else node.kwargs.get("dim"))
            if sizes is None or d is None:
                return sizes
            return sizes[int(d) % len(sizes)]
        if op == "call_method" and target == "numel":
            x = iargs[0]
            return SizeRef((x,), exact=False) if isinstance(x, ChannelInfo) and x.dim is not None else None
        if op == "call_function" and target is operator.getitem and isinstance(iargs[0], (tuple, list)):
            idx = self.meta.get(node.args[1]) if isinstance(node.args[1], fx.Node) else node.args[1]
            try:
                return iargs[0][idx]
            except (TypeError, IndexError):
                return None
        refs: list[SizeRef] = []
        _collect_sizes((iargs, ikwargs), refs)
        if not refs:
            return None
        if op == "call_function" and target in _ARITHMETIC:
            return SizeRef(tuple(i for r in refs for i in r.infos), exact=False)
        self.ctx.begin(node, None, True)
        self.ctx.unsupported(refs, "a size computed from a prunable channel count is used by an op "
                                   "the tracer does not follow")
        return None

    def _shape_sizes(self, x: Any, xnode: Any) -> tuple | None:
        xm = self.meta.get(xnode) if isinstance(xnode, fx.Node) else None
        if not isinstance(xm, TMeta) or not isinstance(x, ChannelInfo) or x.dim is None:
            return None
        return tuple(SizeRef((x,)) if d == x.dim else None for d in range(len(xm.shape)))

    def visit(self, node: fx.Node, val: Any, iargs: Any, ikwargs: Any) -> Any:
        ctx = self.ctx
        module = None
        found = _scan((iargs, ikwargs))
        if node.op == "call_module":
            module = self.modules[node.target]
            entry = None if module in self.untraceable else module_entry(module)
        else:
            if not found and node.target is not operator.getitem:
                return OPAQUE if isinstance(val, TMeta) else ctx.opaque_like(val)
            entry = method_entry(node.target) if node.op == "call_method" else function_entry(node.target)
        ctx.begin(node, module, entry.weights_counted(module) if entry is not None else True)
        ctx.quiet = module is not None and module in self.ignored
        if module is not None and module in self.untraceable:
            ctx.unsupported((iargs, ikwargs), self.untraceable[module])
            return ctx.opaque_like(val)
        if module is not None and module in self.ignored and (entry is None or entry.couple is None):
            ctx.fix((iargs, ikwargs))  # an ignored black box: keep what flows in and out
            return ctx.opaque_like(val)
        if entry is None or entry.couple is None:
            what = "module type" if module is not None else "op"
            ctx.unsupported((iargs, ikwargs), f"{what} '{describe(node, module)[0]}' is not understood by the tracer")
            return ctx.opaque_like(val)
        if found & _PARAMS and not entry.handles_params:
            (iargs, ikwargs), refs = _without_params((iargs, ikwargs))
            ctx.unsupported(refs, "a parameter used directly by an op that does not slice it")
        if found & _SIZES and not entry.handles_sizes:
            sizes: list[SizeRef] = []
            _collect_sizes((iargs, ikwargs), sizes)
            ctx.unsupported(sizes, "a size computed from a prunable channel count is passed to it")
            (iargs, ikwargs) = _without_sizes((iargs, ikwargs))
        meta = self.meta
        args = map_arg(node.args, meta.get)
        kwargs = map_arg(node.kwargs, meta.get)
        call = Call(node, module, node.target if module is not None else "", tuple(args), dict(kwargs),
                    tuple(iargs), dict(ikwargs), val)
        out = entry.couple(ctx, call)
        if module is not None and module in self.ignored:
            ctx.fix(out)
        return self.checked(out, val)

    def checked(self, out: Any, val: Any) -> Any:
        """Sanity check: a value's channel dim must hold exactly its segments."""
        if isinstance(out, ChannelInfo) and out.dim is not None:
            if not isinstance(val, TMeta) or out.dim >= len(val.shape) or val.shape[out.dim] != self.ctx.length(out):
                return self.ctx.unsupported(out, "channel bookkeeping does not match the output shape")
        elif isinstance(out, ParamRef):
            if not isinstance(val, TMeta) or len(out.dims) != len(val.shape):
                return self.ctx.unsupported(out, "parameter bookkeeping does not match the output shape")
        return out


def _run_walks(model: nn.Module, graph: fx.Graph, meta: dict[fx.Node, Any], ignored: set[nn.Module],
               untraceable: dict[nn.Module, str], saliency_params: str,
               modules: dict[str, nn.Module]) -> Propagation:
    plan: dict[tuple[str, int], tuple[int, ...]] = {}
    sizes = size_attr_sites(modules)
    tensors = {n: (tuple(p.shape), False) for n, p in model.named_parameters()}
    tensors.update({n: (tuple(b.shape), True) for n, b in model.named_buffers()})
    ctx = None
    for _ in range(_MAX_WALKS):
        ctx = _Walk(graph, meta, ignored, untraceable, plan, saliency_params, sizes, modules, tensors).run()
        if not ctx.new_cuts:
            break
        for key, cuts in ctx.new_cuts.items():
            plan[key] = tuple(sorted(set(plan.get(key, ())) | cuts))
    assert ctx is not None
    return ctx


def _validate(model: nn.Module, ignored_layers: Iterable[nn.Module], on_unsupported: str,
              saliency_params: str) -> set[nn.Module]:
    if not isinstance(model, nn.Module):
        raise TypeError(f"trace_groups: model must be an nn.Module, got {type(model).__name__}")
    if on_unsupported not in ("freeze", "error"):
        raise ValueError(f"trace_groups: on_unsupported must be 'freeze' or 'error', got {on_unsupported!r}")
    if saliency_params not in ("published", "all"):
        raise ValueError(f"trace_groups: saliency_params must be 'published' or 'all', got {saliency_params!r}")
    ignored = set(ignored_layers)
    all_modules = set(model.modules()) if ignored else set()
    for m in ignored:
        if not isinstance(m, nn.Module) or m not in all_modules:
            raise ValueError(f"trace_groups: ignored_layers entry {type(m).__name__} is not a submodule of the model")
    return ignored


def _check_input_count(model: nn.Module, graph: fx.Graph, inputs: tuple) -> None:
    """More example inputs than ``forward`` takes would be dropped silently: refuse them."""
    slots = [n for n in graph.nodes if n.op == "placeholder"]
    if len(inputs) > len(slots) and not any(str(n.target).startswith("*") for n in slots):
        raise ValueError(f"trace_groups: {type(model).__name__}'s forward takes {len(slots)} positional "
                         f"input(s), got {len(inputs)} example inputs; pass a tensor, or a tuple with one "
                         "entry per input")


@dataclass
class _Captured:
    """A model's graph, every value's shape, the submodules left as black boxes (fx only), how
    it was captured, and what the capture itself keeps fixed."""

    graph: fx.Graph
    meta: dict[fx.Node, Any]
    untraceable: dict[nn.Module, str]
    how: str
    frozen_everything: list[tuple[str, str, str]] = field(default_factory=list)  # (op, place, reason)


def _plain_forward_error(model: nn.Module, inputs: tuple) -> Exception | None:
    """The exception the model's own forward raises on ``inputs`` (eval mode, no autograd), if any."""
    try:
        with evaluating(model.modules()), torch.no_grad(), module_state(model):
            model(*inputs)
    except Exception as e:  # noqa: BLE001 - returned to the caller
        return e
    return None


def _silent_modules(model: nn.Module, rec: RecordedForward,
                    black_boxes: set[nn.Module]) -> list[tuple[str, nn.Module]]:
    """Modules holding parameters or buffers that neither ran (alone or inside a leaf that ran)
    nor had a tensor read directly by the recorded forward."""
    used = {n.target for n in rec.graph.nodes if n.op == "get_attr"}
    covered = set(rec.ran)
    for m in rec.ran:
        if m is not model and is_leaf(m, black_boxes):
            covered.update(m.modules())  # a leaf may use its children's tensors without calling them
    out = []
    for name, m in model.named_modules():
        own = [f"{name}.{t}" if name else t for t, _ in (*m.named_parameters(recurse=False),
                                                          *m.named_buffers(recurse=False))]
        if own and m not in covered and not any(t in used for t in own):
            out.append((name, m))
    return out


def _record(model: nn.Module, inputs: tuple, black_boxes: set[nn.Module]) -> _Captured:
    """Follow the executed forward (eval mode; then train mode too when some module did not run).

    Sizes read from shapes are tracked; should the forward refuse them (code that insists on
    plain ``int``), it is followed again with plain sizes (literal sizes: kept fixed where they
    size a channel dim)."""
    sizes = True
    try:
        rec = record_forward(model, [(False, inputs)], black_boxes)
    except Exception:  # noqa: BLE001 - retried without tracked sizes; a real failure raises again
        sizes = False
        rec = record_forward(model, [(False, inputs)], black_boxes, sizes=False)
    silent = _silent_modules(model, rec, black_boxes)
    note: list[tuple[str, str, str]] = []
    if silent:
        try:
            rec = record_forward(model, [(False, inputs), (True, inputs)], black_boxes, sizes=sizes)
        except Exception as e:  # noqa: BLE001 - e.g. a detector asking for targets in train mode
            why = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            note = [(type(m).__name__, f"module '{name}'",
                     f"did not run on the example inputs in eval mode, and the train-mode forward failed ({why}), "
                     "so the channels it reads are unknown: nothing is pruned; pass example inputs the "
                     "train-mode forward accepts, or put it in ignored_layers") for name, m in silent]
    return _Captured(rec.graph, rec.meta, {}, "executed forward", note)


def capture_graph(model: nn.Module, inputs: tuple, black_boxes: set[nn.Module]) -> _Captured:
    """The model's graph: ``torch.fx``'s when it traces the whole model, else the executed forward.

    ``torch.fx`` is tried first (fast: shapes come from a run that skips the arithmetic of
    convolutions and linears).  When it cannot trace the model's own ``forward``, or only with
    some submodules as black boxes, the forward is run once and followed instead
    (:mod:`oneprune_ext.graph.capture`): nothing is a black box there.  Should following it
    fail where the plain forward works, the fx graph with black boxes is used, or, without
    one, nothing is pruned and the report says why.
    """
    modules = dict(model.named_modules())
    try:
        graph, _ = trace_graph(model, black_boxes, whole=True)
    except UnsupportedOpError:
        graph = None
    if graph is not None:
        _check_input_count(model, graph, inputs)
        return _Captured(graph, _record_shapes(model, graph, inputs, modules), {}, "torch.fx")
    try:
        return _record(model, inputs, black_boxes)
    except Exception as e:  # noqa: BLE001 - told apart below
        failed = _plain_forward_error(model, inputs)
        if failed is not None:
            raise _forward_failed(model, inputs, failed) from failed
        try:
            graph, untraceable = trace_graph(model, black_boxes)
        except UnsupportedOpError:
            graph = None
        if graph is not None:
            _check_input_count(model, graph, inputs)
            return _Captured(graph, _record_shapes(model, graph, inputs, modules), untraceable, "torch.fx")
        why = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        return _Captured(fx.Graph(), {}, {}, "none", [(
            type(model).__name__, "the whole model",
            f"torch.fx cannot trace its forward and following the executed forward failed ({why})")])


def trace_report(
    model: nn.Module,
    example_inputs: torch.Tensor | Sequence[torch.Tensor],
    ignored_layers: Iterable[nn.Module] = (),
    *,
    saliency_params: str = "published",
) -> TraceReport:
    """Trace ``model`` and return its groups together with every place kept fixed.

    The same as :func:`trace_groups` without the warning / error: the caller reads
    :attr:`TraceReport.frozen` (e.g. to print a coverage table).
    """
    ignored = _validate(model, ignored_layers, "freeze", saliency_params)
    black_boxes = {m for m in ignored if module_entry(m) is None or module_entry(m).couple is None
                   or not _fx_leaf(m)}
    inputs = (example_inputs,) if isinstance(example_inputs, torch.Tensor) else tuple(example_inputs)
    cap = capture_graph(model, inputs, black_boxes)
    modules = dict(model.named_modules())
    ctx = _run_walks(model, cap.graph, cap.meta, ignored, cap.untraceable, saliency_params, modules)
    ctx.resolve_shared_slices()
    frozen = [p for p in ctx.frozen_places() if p.frozen]
    groups = ChannelGroups(ctx.groups())
    if cap.frozen_everything:
        names = tuple(g.name for g in groups) or tuple(
            n for n, m in modules.items() if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)))
        frozen += [FrozenPlace(op, where, reason, names if i == 0 else ())
                   for i, (op, where, reason) in enumerate(cap.frozen_everything)]
        groups = ChannelGroups([])
    return TraceReport(groups, frozen, cap.how)


def trace_groups(
    model: nn.Module,
    example_inputs: torch.Tensor | Sequence[torch.Tensor],
    ignored_layers: Iterable[nn.Module] = (),
    *,
    on_unsupported: str = "freeze",
    saliency_params: str = "published",
) -> ChannelGroups:
    """Find every prunable channel group of ``model``.

    Args:
        model: the network (not modified; its train/eval flags are restored).
        example_inputs: a tensor, or a tuple of positional inputs, for one forward pass
            (small is fine: only shapes are used, e.g. one 32x32 image; a torchvision
            detector takes ``(images,)``, a list of ``[3, H, W]`` tensors).  The forward runs
            in eval mode.
        ignored_layers: modules whose output channels must never be pruned (see the
            module docstring for containers and custom modules).
        on_unsupported: what to do where the tracer does not understand how channels are
            used: ``"freeze"`` (default) keeps them fixed and warns once
            (:class:`UnsupportedOpWarning`) listing every such place; ``"error"`` raises one
            :class:`UnsupportedOpError` listing them all.
        saliency_params: ``"published"`` (default): only conv / linear rows and columns and
            BatchNorm weights count in the saliency, group lasso and shrink, as in the
            published code (depthwise-conv, LayerNorm and layer-scale weights are only
            compacted); ``"all"``: every weight slice counts (``Slice.in_norm``).

    Returns:
        The prunable groups, ordered by the topological position of their first producing
        module.  Each group's ``name`` is that module's qualified name.

    Raises:
        UnsupportedOpError: with ``on_unsupported="error"``, when some prunable channels
            had to be kept fixed (the message lists every place).  A model ``torch.fx`` cannot
            trace is followed through its executed forward instead, never an error.
        ValueError: a bad option, an ``ignored_layers`` entry that is not a submodule, or
            example inputs the model's forward fails on.
    """
    ignored_layers = list(ignored_layers)
    _validate(model, ignored_layers, on_unsupported, saliency_params)
    report = trace_report(model, example_inputs, ignored_layers, saliency_params=saliency_params)
    if report.frozen:
        places = "\n".join(f"  - {p}" for p in report.frozen)
        if on_unsupported == "error":
            raise UnsupportedOpError(
                f"trace_groups: the tracer does not understand how channels are used at "
                f"{len(report.frozen)} place(s):\n{places}\nTo keep those channels unpruned, pass "
                f"on_unsupported='freeze' (or put the named modules in ignored_layers=[...]).", report)
        warnings.warn(UnsupportedOpWarning(
            f"trace_groups: kept channels fixed at {len(report.frozen)} place(s) the tracer does not "
            f"understand:\n{places}\n(on_unsupported='error' raises instead; put the producing modules "
            f"in ignored_layers=[...] to keep them fixed silently.)", report), stacklevel=2)
    return report.groups

