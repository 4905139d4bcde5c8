"""Follow a model's executed forward and record it as a ``torch.fx`` graph.

``torch.fx`` traces with symbolic values, so it stops at the first data-dependent branch, loop
over a tensor or list input: every torchvision detector (the transform loops over the images),
ultralytics' YOLO (its layers are wired by a Python loop over ``self.model``) and many other
real models.  :func:`record_forward` instead runs the model once on the example inputs and
writes down what actually ran, in the same form ``torch.fx`` would have produced, so the
tracer's walk, the layer registry's coupling rules and the cost model work on it unchanged:

* a ``TorchFunctionMode`` sees every ``torch`` function, ``torch.nn.functional`` function,
  tensor method and operator (``x + y``, ``x[i]``) called on a tensor, and records it as a
  ``call_function`` / ``call_method`` node (operators as ``operator.add`` etc., as fx does);
* forward hooks keep the modules the tracer treats as one node (``torch.nn`` modules, classes
  registered with a coupling rule, black boxes) as ``call_module`` nodes: what runs inside
  them is not recorded;
* registered functions (``torch.fx.wrap``-style functions with a registry entry, such as
  torchvision's ``stochastic_depth``) are recorded as one call;
* parameters and buffers used directly become ``get_attr`` nodes, model inputs
  ``placeholder`` nodes, and tensors no recorded call produced (created from literals, or
  outside ``torch``) constants that carry no channels;
* sizes read from a tensor's shape (``x.shape[1]``, ``x.size(1)``, ``len(x)``, ``x.numel()``)
  are ints that remember where they came from (arithmetic on them too), so a reshape whose
  channel dim is the input's channel count (``x.view(n, c, -1)`` with ``c = x.shape[1]``)
  is told apart from one with a literal size, as with fx proxies;
* an in-place op makes the tensor a new graph value (later uses see the updated one);
  writing into a *view* of a tensor (``x[i].copy_(y)``) marks the tensor as changed in a way
  the tracer does not follow, so its channels are kept fixed.

This is how Torch-Pruning captures models too (it follows the autograd graph of one executed
forward), and for the same reason: it works on any model that runs.  The price is the same as
there: the graph is the path these inputs took.  A branch not taken is not seen, so
:mod:`~oneprune_ext.graph.trace` records in eval mode (deterministic, no targets needed by
detectors, no batch-norm statistics updated) and, if a module with parameters did not run,
records once more in train mode; a module that runs in neither is unused.

Nothing about the model changes: hooks are removed, and attributes that a forward caches on
its modules (torchvision's ``MultiScaleRoIAlign`` scales, YOLO's anchor grid) are put back.
"""

from __future__ import annotations

import functools
import operator
import sys
import types
import weakref
from contextlib import contextmanager
from typing import Any, Callable, Iterable, Iterator

import torch
import torch.nn as nn
from torch import fx
from torch.overrides import TorchFunctionMode

from .propagation import TMeta
from .registry import is_registered_leaf, module_entry, registered_functions

__all__ = ["record_forward", "RecordedForward", "constant", "write_through_view", "shape_only", "is_leaf",
           "module_state"]


def constant() -> None:
    """Graph target of a tensor no recorded call produced (made from literals, or outside torch)."""


def write_through_view(base: Any, write: Any) -> None:
    """Graph target: ``base`` changed because a view of it was written in place by ``write``."""


def shape_only(x: Any) -> None:
    """Graph target: ``x`` as a module returns it for its shape only (registry ``shape_only_outputs``)."""


_BINARY = {
    "__add__": operator.add, "__sub__": operator.sub, "__mul__": operator.mul, "__truediv__": operator.truediv,
    "__div__": operator.truediv, "__floordiv__": operator.floordiv, "__mod__": operator.mod,
    "__pow__": operator.pow, "__matmul__": operator.matmul, "__and__": operator.and_, "__or__": operator.or_,
    "__xor__": operator.xor, "__lshift__": operator.lshift, "__rshift__": operator.rshift,
    "__eq__": operator.eq, "__ne__": operator.ne, "__lt__": operator.lt, "__le__": operator.le,
    "__gt__": operator.gt, "__ge__": operator.ge, "__getitem__": operator.getitem,
    "__setitem__": operator.setitem, "__iadd__": operator.iadd, "__isub__": operator.isub,
    "__imul__": operator.imul, "__itruediv__": operator.itruediv, "__idiv__": operator.itruediv,
    "__ifloordiv__": operator.ifloordiv, "__imod__": operator.imod, "__ipow__": operator.ipow,
    "__iand__": operator.iand, "__ior__": operator.ior, "__ixor__": operator.ixor,
    "__ilshift__": operator.ilshift, "__irshift__": operator.irshift,
}
_REFLECTED = {
    "__radd__": operator.add, "__rsub__": operator.sub, "__rmul__": operator.mul, "__rtruediv__": operator.truediv,
    "__rdiv__": operator.truediv, "__rfloordiv__": operator.floordiv, "__rmod__": operator.mod,
    "__rpow__": operator.pow, "__rmatmul__": operator.matmul, "__rand__": operator.and_, "__ror__": operator.or_,
    "__rxor__": operator.xor, "__rlshift__": operator.lshift, "__rrshift__": operator.rshift,
}
_UNARY = {"__neg__": operator.neg, "__pos__": operator.pos, "__abs__": operator.abs, "__invert__": operator.invert}
_FLAGS_ONLY = {"requires_grad_", "share_memory_", "retain_grad_"}  # in place, but no value changes
_MUTATING = {operator.setitem, operator.iadd, operator.isub, operator.imul, operator.itruediv, operator.ifloordiv,
             operator.imod, operator.ipow, operator.iand, operator.ior, operator.ixor, operator.ilshift,
             operator.irshift}


# ----------------------------------------------------------------------------------
# sizes that remember where they came from
# ----------------------------------------------------------------------------------


class _Size(int):
    """An int read from a recorded tensor's shape (or computed from such ints).

    Passed to a recorded call it becomes the graph value it was computed as, as a ``torch.fx``
    proxy of a size would."""

    def __new__(cls, value: int, rec: "_Recorder", make: Callable[[], fx.Node]) -> "_Size":
        self = int.__new__(cls, value)
        self._rec = rec
        self._make = make
        self._node = None
        return self

    def node(self) -> fx.Node:
        if self._node is None:
            self._node = self._make()
        return self._node


def _size_binary(op: Callable, reflected: bool) -> Callable:
    def method(self: _Size, other: Any) -> Any:
        if not isinstance(other, int) or isinstance(other, bool):
            return NotImplemented
        a, b = (other, self) if reflected else (self, other)
        value = op(int(a), int(b))
        rec = self._rec
        return _Size(value, rec, lambda: rec.size_node(op, (a, b), value))

    return method


def _size_unary(op: Callable) -> Callable:
    def method(self: _Size) -> Any:
        value = op(int(self))
        rec = self._rec
        return _Size(value, rec, lambda: rec.size_node(op, (self,), value))

    return method


for _op in (operator.add, operator.sub, operator.mul, operator.floordiv, operator.mod):
    setattr(_Size, f"__{_op.__name__}__", _size_binary(_op, False))
    setattr(_Size, f"__r{_op.__name__}__", _size_binary(_op, True))
for _op in (operator.neg, operator.pos, operator.abs):
    setattr(_Size, f"__{_op.__name__}__", _size_unary(_op))


# ----------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------


def _getset_name(func: Any) -> str | None:
    """``'shape'`` for ``Tensor.shape.__get__`` (any tensor attribute getter), else None."""
    owner = getattr(func, "__self__", None)
    if type(owner).__name__ == "getset_descriptor" and getattr(func, "__name__", "") == "__get__":
        return owner.__name__
    return None


def _method_name(func: Any) -> str | None:
    """``'view'`` for ``Tensor.view`` (any tensor method), else None."""
    q = getattr(func, "__qualname__", None) or ""
    if q.startswith(("TensorBase.", "Tensor.")) and q.count(".") == 1:
        return q.split(".", 1)[1]
    return None


def _scan(a: Any, kinds: tuple) -> bool:
    if isinstance(a, kinds):
        return True
    if isinstance(a, (tuple, list)):
        return any(_scan(v, kinds) for v in a)
    if isinstance(a, dict):
        return any(_scan(v, kinds) for v in a.values())
    if isinstance(a, slice):
        return _scan((a.start, a.stop, a.step), kinds)
    return False


def _to_meta(v: Any) -> Any:
    if isinstance(v, torch.Tensor):
        return TMeta(tuple(v.shape))
    if isinstance(v, _Size):
        return int(v)
    if isinstance(v, torch.Size):
        return tuple(int(s) for s in v)
    if isinstance(v, (tuple, list)):
        return type(v)(_to_meta(x) for x in v) if not hasattr(v, "_fields") else tuple(_to_meta(x) for x in v)
    if isinstance(v, dict):
        return {k: _to_meta(x) for k, x in v.items()}
    return v


class _Value:
    """The graph value a live tensor is: a node, or (made on first use) an element of one."""

    __slots__ = ("ref", "node", "parent", "path")

    def __init__(self, t: torch.Tensor, node: fx.Node | None, parent: fx.Node | None = None,
                 path: tuple = ()) -> None:
        self.ref = weakref.ref(t)
        self.node = node
        self.parent = parent
        self.path = path


def is_leaf(m: nn.Module, black_boxes: Iterable[nn.Module] = ()) -> bool:
    """Whether the tracer keeps ``m`` as one node: ``torch.nn`` modules (``torch.fx``'s leaves),
    classes registered with a coupling rule, and black boxes."""
    return m in black_boxes or is_registered_leaf(m) or fx.Tracer().is_leaf_module(m, "")


# ----------------------------------------------------------------------------------
# the recorder
# ----------------------------------------------------------------------------------


class _Recorder(TorchFunctionMode):
    """Writes one executed forward into an ``fx.Graph``; ``meta`` holds every value's shape."""

    def __init__(self, model: nn.Module, leaves: set[nn.Module], before: Callable | None, after: Callable | None,
                 sizes: bool) -> None:
        super().__init__()
        self.leaves = leaves
        self.before = before
        self.after = after
        self.sizes = sizes
        self.graph = fx.Graph()
        self.meta: dict[fx.Node, Any] = {}
        self.values: dict[int, _Value] = {}
        self.tensor_names: dict[int, str] = {}
        for n, p in model.named_parameters():
            self.tensor_names.setdefault(id(p), n)
        for n, b in model.named_buffers():
            self.tensor_names.setdefault(id(b), n)
        self.attr_nodes: dict[str, fx.Node] = {}
        self.names = {m: n for n, m in model.named_modules()}
        self.stack: list[tuple[str, type]] = []
        self.depth = 0  # > 0 while inside a leaf module or a recorded function
        self.leaf_args: list[tuple[Any, Any]] = []
        self.ran: set[nn.Module] = set()

    # ------------------------------------------------------------------ graph values
    def new_node(self, op: str, target: Any, args: tuple, kwargs: dict, value: Any) -> fx.Node:
        node = self.graph.create_node(op, target, args, kwargs)
        if self.stack:
            node.meta["nn_module_stack"] = {p: (p, t) for p, t in self.stack if p}
        self.meta[node] = _to_meta(value)
        return node

    def bind(self, value: Any, node: fx.Node, path: tuple = ()) -> None:
        """Remember which graph value every tensor in ``value`` (an output of ``node``) is."""
        if isinstance(value, torch.Tensor):
            self.values[id(value)] = _Value(value, node) if not path else _Value(value, None, node, path)
        elif isinstance(value, (tuple, list)):
            for i, v in enumerate(value):
                self.bind(v, node, path + (i,))
        elif isinstance(value, dict):
            for k, v in value.items():
                self.bind(v, node, path + (k,))

    def known(self, t: torch.Tensor) -> bool:
        v = self.values.get(id(t))
        return (v is not None and v.ref() is t) or id(t) in self.tensor_names

    def node_of(self, t: torch.Tensor) -> fx.Node:
        v = self.values.get(id(t))
        if v is not None and v.ref() is t:
            if v.node is None:  # an element of a tuple / dict output: getitem nodes, as fx makes them
                node = v.parent
                for k in v.path:
                    node = self.graph.create_node("call_function", operator.getitem, (node, k), {})
                    self.meta[node] = None
                self.meta[node] = _to_meta(t)
                v.node = node
            return v.node
        name = self.tensor_names.get(id(t))
        if name is not None:
            node = self.attr_nodes.get(name)
            if node is None:
                node = self.graph.create_node("get_attr", name, (), {})
                self.meta[node] = _to_meta(t)
                self.attr_nodes[name] = node
            return node
        node = self.new_node("call_function", constant, (), {}, t)
        self.values[id(t)] = _Value(t, node)
        return node

    def arg(self, a: Any) -> Any:
        """A call argument as a graph argument: tensors and remembered sizes become nodes."""
        if isinstance(a, torch.Tensor):
            return self.node_of(a)
        if isinstance(a, _Size):
            return a.node()
        if isinstance(a, torch.Size):
            return tuple(self.arg(v) for v in a)
        if isinstance(a, list):
            return [self.arg(v) for v in a]
        if isinstance(a, tuple):
            return tuple(self.arg(v) for v in a)
        if isinstance(a, dict):
            return {k: self.arg(v) for k, v in a.items()}
        if isinstance(a, slice):
            return slice(self.arg(a.start), self.arg(a.stop), self.arg(a.step))
        return a

    def size_node(self, op: Callable, args: tuple, value: int) -> fx.Node:
        node = self.graph.create_node("call_function", op, tuple(self.arg(a) for a in args), {})
        self.meta[node] = value
        return node

    def call_node(self, op: str, target: Any, args: tuple, kwargs: dict, value: Any) -> fx.Node:
        return self.new_node(op, target, tuple(self.arg(a) for a in args),
                             {k: self.arg(v) for k, v in kwargs.items()}, value)

    def tagged_shape(self, t: torch.Tensor, shape_node: Callable[[], fx.Node]) -> torch.Size:
        """``t.shape`` whose entries remember they are ``getitem(<shape node>, i)``."""
        memo: list[fx.Node] = []

        def whole() -> fx.Node:
            if not memo:
                memo.append(shape_node())
            return memo[0]

        def entry(i: int, value: int) -> Callable[[], fx.Node]:
            def make() -> fx.Node:
                n = self.graph.create_node("call_function", operator.getitem, (whole(), i), {})
                self.meta[n] = value
                return n

            return make

        return torch.Size([_Size(int(s), self, entry(i, int(s))) for i, s in enumerate(t.shape)])

    # ------------------------------------------------------------------ torch calls
    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if self.depth:
            return func(*args, **kwargs)
        getter = _getset_name(func)
        if getter is not None:
            return self._getter(func, getter, args, kwargs)
        name = _method_name(func)
        if name in ("size", "__len__", "numel"):
            return self._size(func, name, args, kwargs)
        if self.before is not None:
            self.before()
        out = func(*args, **kwargs)
        if name is None:
            op, target, cargs = "call_function", func, args
        elif name in _BINARY:
            op, target, cargs = "call_function", _BINARY[name], args
        elif name in _REFLECTED:
            op, target, cargs = "call_function", _REFLECTED[name], (args[1], args[0], *args[2:])
        elif name in _UNARY:
            op, target, cargs = "call_function", _UNARY[name], args
        else:
            op, target, cargs = "call_method", name, args
        if not _scan((args, kwargs), (torch.Tensor, _Size)):
            return out  # made from literals only: a constant if a recorded call uses it
        mutated = self._mutated(op, target, args, kwargs)
        if mutated is None:
            if isinstance(out, torch.Tensor) and (any(out is a for a in args) or any(out is a for a in kwargs.values())):
                return out  # a no-op (x.to(x.dtype), x.contiguous() of a contiguous x)
            if not _scan(out, (torch.Tensor,)):
                return out  # a Python value (x.item(), x.dim(), x.tolist()): used as a literal
        self.record(op, target, cargs, kwargs, out, mutated)
        return out

    def _getter(self, func: Any, getter: str, args: tuple, kwargs: dict) -> Any:
        out = func(*args, **kwargs)
        t = args[0] if args else None
        if not isinstance(t, torch.Tensor) or not self.known(t):
            return out
        if getter == "shape":
            if not self.sizes:
                return out
            return self.tagged_shape(t, lambda: self.call_node("call_function", getattr, (t, "shape"), {}, out))
        if isinstance(out, torch.Tensor):  # x.T, x.mT, x.data, ...
            self.record("call_function", getattr, (t, getter), {}, out)
        return out

    def _size(self, func: Any, name: str, args: tuple, kwargs: dict) -> Any:
        out = func(*args, **kwargs)
        t = args[0] if args else None
        if not self.sizes or not isinstance(t, torch.Tensor) or not self.known(t):
            return out
        if name == "numel":
            return _Size(out, self, lambda: self.call_node("call_method", "numel", (t,), {}, out))
        if name == "__len__":
            return _Size(out, self, lambda: self.call_node("call_method", "size", (t, 0), {}, out))
        if isinstance(out, torch.Size):
            return self.tagged_shape(t, lambda: self.call_node("call_method", "size", (t,), {}, out))
        return _Size(out, self, lambda: self.call_node("call_method", "size", args, kwargs, out))

    def _mutated(self, op: str, target: Any, args: tuple, kwargs: dict) -> torch.Tensor | None:
        """The tensor an in-place call writes (``x.add_``, ``x[i] = v``, ``out=``), or None."""
        out = kwargs.get("out")
        if isinstance(out, torch.Tensor):
            return out
        if not args or not isinstance(args[0], torch.Tensor):
            return None
        if op == "call_method" and target.endswith("_") and not target.endswith("__"):
            return None if target in _FLAGS_ONLY else args[0]
        if op == "call_function" and target in _MUTATING:
            return args[0]
        return None

    def record(self, op: str, target: Any, args: tuple, kwargs: dict, out: Any,
               mutated: torch.Tensor | None = None) -> fx.Node:
        value = out if mutated is None or isinstance(out, torch.Tensor) else mutated
        node = self.call_node(op, target, args, kwargs, value)
        if self.after is not None:
            self.after(node, value, args, kwargs)
        if mutated is not None:
            self.bind(mutated, node)
            base = mutated._base
            if base is not None and self.known(base):
                w = self.new_node("call_function", write_through_view, (self.node_of(base), node), {}, base)
                self.values[id(base)] = _Value(base, w)
        self.bind(out, node)
        return node

    # ------------------------------------------------------------------ module calls
    def pre_hook(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        self.ran.add(module)
        if self.depth:
            self.depth += 1
            return
        name = self.names.get(module, "")
        if module in self.leaves:
            self.leaf_args.append((self.arg(args), self.arg(kwargs)))
            self.depth = 1
            if self.before is not None:
                self.before()
            return
        self.stack.append((name, type(module)))

    def post_hook(self, module: nn.Module, args: tuple, kwargs: dict, out: Any) -> None:
        if self.depth > 1:
            self.depth -= 1
            return
        if self.depth == 1:
            self.depth = 0
            gargs, gkwargs = self.leaf_args.pop()
            node = self.new_node("call_module", self.names[module], gargs, gkwargs, out)
            if self.after is not None:
                self.after(node, out, args, kwargs)
            self.bind(out, node)
            return
        self.stack.pop()
        entry = module_entry(module)
        if entry is not None and entry.shape_only_outputs is not None:
            for t in entry.shape_only_outputs(module, out) or ():
                if isinstance(t, torch.Tensor) and self.known(t):
                    node = self.new_node("call_function", shape_only, (self.node_of(t),), {}, t)
                    self.values[id(t)] = _Value(t, node)

    def function_call(self, fn: Callable, args: tuple, kwargs: dict) -> Any:
        """A registered function: recorded as one call, what it does inside is not."""
        if self.depth:
            return fn(*args, **kwargs)
        if self.before is not None:
            self.before()
        self.depth += 1
        try:
            out = fn(*args, **kwargs)
        finally:
            self.depth -= 1
        if _scan((args, kwargs), (torch.Tensor, _Size)):
            self.record("call_function", fn, args, kwargs, out)
        return out


# ----------------------------------------------------------------------------------
# registered functions recorded as one call
# ----------------------------------------------------------------------------------


def _python_functions() -> list[Callable]:
    """Registered functions written in Python outside ``torch`` (fx-wrapped ones such as
    torchvision's ``stochastic_depth``); ``torch``'s own (``torch.nn.functional``) reach the
    ``TorchFunctionMode`` as one call anyway."""
    out = []
    for f in registered_functions():
        if isinstance(f, str):
            mod, _, name = f.rpartition(".")
            f = getattr(sys.modules.get(mod), name, None) if mod in sys.modules else None
        if (isinstance(f, types.FunctionType) and f not in out
                and not (f.__module__ or "").split(".")[0] == "torch"):
            out.append(f)
    return out


def _recorded_call(rec: "_Recorder", fn: Callable) -> Callable:
    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        return rec.function_call(fn, args, kwargs)

    return call


@contextmanager
def _functions_recorded(rec: _Recorder, model: nn.Module) -> Iterator[None]:
    """Registered Python functions, in their own module and in the modules that define the
    model's classes, call :meth:`_Recorder.function_call` while recording."""
    fns = _python_functions()
    if not fns:
        yield
        return
    spaces = {f.__module__ for f in fns} | {type(m).__module__ for m in model.modules()}
    patched: list[tuple[dict, str, Any]] = []
    try:
        for mod in spaces:
            g = getattr(sys.modules.get(mod), "__dict__", None)
            if g is None:
                continue
            for name, v in list(g.items()):
                if any(v is f for f in fns):
                    patched.append((g, name, v))
                    g[name] = _recorded_call(rec, v)
        yield
    finally:
        for g, name, v in reversed(patched):
            g[name] = v


# ----------------------------------------------------------------------------------
# module state a forward may change
# ----------------------------------------------------------------------------------

_MODULE_INTERNALS = frozenset({
    "_parameters", "_buffers", "_modules", "training", "_forward_hooks", "_forward_pre_hooks",
    "_forward_hooks_with_kwargs", "_forward_pre_hooks_with_kwargs", "_forward_hooks_always_called",
    "_backward_hooks", "_backward_pre_hooks", "_state_dict_hooks", "_state_dict_pre_hooks",
    "_load_state_dict_pre_hooks", "_load_state_dict_post_hooks", "_non_persistent_buffers_set",
    "_is_full_backward_hook",
})


@contextmanager
def module_state(model: nn.Module) -> Iterator[None]:
    """Put back, on exit, the attributes a forward caches on the model's modules (added,
    rebound or deleted plain attributes) and the values of every buffer (batch-norm statistics
    a train-mode forward updates), and the random number generators' states."""
    attrs = [(m, {k: v for k, v in vars(m).items() if k not in _MODULE_INTERNALS}) for m in model.modules()]
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    rng = torch.random.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    try:
        yield
    finally:
        for m, saved in attrs:
            now = vars(m)
            for k in [k for k in now if k not in _MODULE_INTERNALS and k not in saved]:
                del now[k]
            for k, v in saved.items():
                if now.get(k, _MISSING) is not v:
                    now[k] = v
        with torch.no_grad():
            for b, v in buffers:
                if b.shape == v.shape and not torch.equal(b, v):
                    b.copy_(v)
        torch.random.set_rng_state(rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)


_MISSING = object()


# ----------------------------------------------------------------------------------
# entry point
# ----------------------------------------------------------------------------------


class RecordedForward:
    """The graph of executed forwards, each value's shape (``meta``), and the modules that ran."""

    def __init__(self, graph: fx.Graph, meta: dict[fx.Node, Any], ran: set[nn.Module]) -> None:
        self.graph = graph
        self.meta = meta
        self.ran = ran


def record_forward(model: nn.Module, runs: Iterable[tuple[bool, tuple]], black_boxes: Iterable[nn.Module] = (),
                   *, before: Callable | None = None, after: Callable | None = None,
                   sizes: bool = True) -> RecordedForward:
    """Run ``model(*inputs)`` for each ``(train_mode, inputs)`` of ``runs`` under ``torch.no_grad()``
    and record what ran into one graph (the outputs of every run are the graph's output).

    ``after(node, value, args, kwargs)`` is called as each node completes (``args``: the
    call's real arguments, the tensor first for a method), as :func:`~.trace.run_graph` does;
    ``before()`` right before each call that may become a node starts (so that whatever ran
    between two nodes, e.g. arithmetic on constants, can be told apart from the node's own work).
    ``sizes=False`` records shapes as plain ints.  Exceptions of the forward propagate; the
    model's attributes, buffers, hooks and train / eval flags are as before in every case.
    """
    boxes = set(black_boxes)
    leaves = {m for m in model.modules() if m is not model and is_leaf(m, boxes)}
    rec = _Recorder(model, leaves, before, after, sizes)
    flags = [(m, m.training) for m in model.modules()]
    handles = []
    outputs = []
    try:
        with module_state(model), torch.no_grad(), _functions_recorded(rec, model):
            for m in model.modules():
                handles.append(m.register_forward_pre_hook(rec.pre_hook, with_kwargs=True))
                handles.append(m.register_forward_hook(rec.post_hook, with_kwargs=True, prepend=True))
            for k, (train, inputs) in enumerate(runs):
                for m, _ in flags:
                    m.training = train
                for i, x in enumerate(inputs):
                    n = rec.graph.create_node("placeholder", f"input_{i}" if k == 0 else f"input_{i}_run{k}", (), {})
                    rec.meta[n] = _to_meta(x)
                    rec.bind(x, n)
                rec.stack.clear()
                rec.depth = 0
                with rec:
                    outputs.append(model(*inputs))
            rec.graph.create_node("output", "output", (rec.arg(outputs[0] if len(outputs) == 1 else tuple(outputs)),), {})
    finally:
        for h in handles:
            h.remove()
        for m, t in flags:
            m.training = t
    return RecordedForward(rec.graph, rec.meta, rec.ran)
