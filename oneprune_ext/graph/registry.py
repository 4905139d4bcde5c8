"""One registry of layer knowledge: everything the library knows about a module type or a function.

Each supported module type, function or tensor method has one :class:`LayerEntry`:

* ``couple`` -- its **coupling rule**: given one call in the traced graph, which channels the
  output carries and which tensor slices belong to which channels (the vocabulary is the
  :class:`~oneprune_ext.graph.propagation.Propagation` object passed in);
* ``in_published_saliency`` -- whether the weights it couples count in the published saliency,
  group lasso and shrink (conv / linear rows and columns and BatchNorm weights do; depthwise
  conv, LayerNorm and layer-scale weights do not); ``trace_groups(saliency_params="all")``
  counts every weight;
* ``update_attrs`` -- the **attributes to update** after a physical prune (``out_channels``,
  ``num_features``, ``normalized_shape``, ...), read back from the module's tensors;
* ``record_attrs`` -- the attributes saved in a pruned checkpoint's **structure record**;
* ``size_attrs`` -- attributes that hold the width of one of the module's tensor dims (a
  ViT's ``hidden_dim``): updated after a prune, recorded, and accepted by the tracer as a
  literal size in a reshape;
* ``cost`` -- its **cost terms**: the MACs of one call as exact products of tensor dims
  (see :class:`CostTerm`), checked against what ``torch.utils.flop_counter`` counted;
* ``output_shape`` -- its output shape without computing it: the tracer needs shapes only, so
  convolutions, linears and attention are not run while tracing;
* ``shape_only_outputs`` -- tensors of a module's output that its callers read only for their
  shape (ultralytics' ``Detect`` returns its input feature maps so that the loss can build its
  anchor grid): reaching the model's output does not keep their channels.

``graph.py`` (tracing), ``compact.py`` (attributes after a prune), ``saving.py`` (structure
record) and ``cost.py`` (MACs) look entries up here and test no module types themselves.
The built-in entries live in :mod:`oneprune_ext.graph.entries.layers` (modules and functions with
parameters) and :mod:`oneprune_ext.graph.entries.tensor_ops` (parameter-free tensor ops).

Lookup: a module's entry is the one registered for the nearest class in its MRO (so
``LayerNorm2d`` uses the ``nn.LayerNorm`` entry); classes and functions of optional
packages (torchvision) are registered by qualified name, so nothing is imported for them.
A module meets its coupling rule when the tracer keeps it as one node: modules of
``torch.nn`` (``torch.fx``'s leaves) and modules whose own class is registered with a
coupling rule.  Other modules (e.g. torchvision's ``LayerNorm2d``, a subclass of
``nn.LayerNorm`` with its own ``forward``) are traced through into the functions they call;
their entries (found through the class hierarchy) still update attributes, record structure
and count cost.

Adding a layer type
-------------------
One entry plus a test.  For a module ``Scale`` holding a per-channel ``weight`` of shape
``[C]`` that multiplies its input ``[N, C, H, W]``::

    from oneprune_ext.graph.registry import LayerEntry, register_module

    def _couple_scale(ctx, call):
        x = call.info(0, "input")                 # channels of the input
        if x.dim is not None and x.dim != 1:
            return ctx.unsupported(call.inputs(), "expects channels on dim 1")
        ctx.attach(x, f"{call.module_name}.weight", 0)   # weight entry c follows channel c
        return x                                  # output carries the input's channels

    register_module(Scale, LayerEntry(
        "Scale", _couple_scale, in_published_saliency=False,
        update_attrs=lambda m: setattr(m, "num_features", m.weight.shape[0]),
        record_attrs=("num_features",)))

Registering the class makes the tracer keep ``Scale`` as one node.  A plain function
(``torch.fx.wrap``-ed, so that it shows as one node) is registered the same way with
:func:`register_function`.  The test traces a small model using it, prunes half of every group with
:func:`oneprune_ext.prune_channels` and checks the output equals the dense model with the
removed channels zeroed, and that :class:`oneprune_ext.CostModel` matches
``FlopCounterMode`` (see ``python_tests/test_registry.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence, Union

import torch
import torch.nn as nn

if TYPE_CHECKING:
    from .propagation import Call, Propagation

__all__ = [
    "LayerEntry",
    "CostTerm",
    "CostCall",
    "register_module",
    "register_function",
    "register_method",
    "module_entry",
    "is_registered_leaf",
    "function_entry",
    "method_entry",
    "registered_functions",
    "update_module_attrs",
    "structure_attrs",
    "restore_attrs",
    "size_attr_sites",
]


@dataclass(frozen=True)
class CostTerm:
    """``scale * prod(size of tensor dim)`` over ``factors`` MACs (at most two prunable dims).

    Example: a conv call is ``CostTerm(N * H_out * W_out, ((w, 0), (w, 1), (w, 2), (w, 3)))``
    with ``w`` the weight's qualified name.
    """

    scale: int
    factors: tuple[tuple[str, int], ...]


@dataclass(frozen=True)
class CostCall:
    """One call, as a cost rule sees it (real tensors, after it ran under ``FlopCounterMode``).

    Attributes:
        module: the module (``None`` for a function).
        args, kwargs: the actual arguments.
        output: the actual output.
        flops: what ``FlopCounterMode`` counted for this call (FLOPs = 2 x MACs).
        tensor_name: qualified name of a parameter / buffer tensor (``None`` for others).
        shapes: qualified tensor name -> shape, for every parameter and buffer.
        module_name: qualified name of the module ('' for functions).
    """

    module: nn.Module | None
    args: tuple
    kwargs: dict
    output: Any
    flops: int
    tensor_name: Callable[[torch.Tensor], Union[str, None]]
    shapes: Mapping[str, tuple[int, ...]]
    module_name: str = ""

    def arg(self, i: int, name: str, default: Any = None) -> Any:
        """Positional argument ``i`` or keyword ``name``."""
        if len(self.args) > i:
            return self.args[i]
        return self.kwargs.get(name, default)

    def macs(self, terms: Sequence[CostTerm]) -> int:
        """MACs of ``terms`` with the tensors' current shapes."""
        total = 0
        for t in terms:
            v = int(t.scale)
            for name, dim in t.factors:
                v *= int(self.shapes[name][dim])
            total += v
        return total


CoupleFn = Callable[["Propagation", "Call"], Any]
CostFn = Callable[[CostCall], Union[Sequence[CostTerm], None]]


@dataclass(frozen=True)
class LayerEntry:
    """What the library knows about one module type or function (see the module docstring).

    Attributes:
        name: readable name (messages, reports).
        couple: coupling rule ``(ctx, call) -> channel info of the output``; ``None`` for
            module types only traced through (never leaves).
        in_published_saliency: whether the weights the rule attaches count in the published
            saliency; a callable gets the module (``None`` for functions).
        handles_params: the rule itself handles :class:`~oneprune_ext.graph.propagation.ParamRef`
            arguments (parameters used directly); otherwise such a parameter is kept as it is.
        handles_sizes: the rule itself checks :class:`~oneprune_ext.graph.propagation.SizeRef`
            arguments (sizes computed from channel counts); otherwise those channels are kept.
        update_attrs: sets the module's channel attributes from its tensors after a prune.
        record_attrs: attributes saved in the structure record (ints, or tuples of ints).
        size_attrs: attribute -> (tensor path relative to the module, dim) it equals.
        cost: MACs of one call as :class:`CostTerm` objects; ``None`` (or returning ``None``)
            means the call's counted FLOPs are a constant.
        output_shape: ``(module, args, kwargs) -> torch.Size`` of the output (or a tuple of
            sizes / ``None`` for a tuple output), computed without running the module, or the
            input tensor itself for a module that keeps its input's shape and dtype; returning
            ``None`` runs it.  Only for module types.
        shape_only_outputs: ``(module, output) -> tensors`` of its output used only for their
            shape by whoever calls it; only for module types traced through (executed-forward
            capture, :mod:`oneprune_ext.graph.capture`).
    """

    name: str
    couple: CoupleFn | None = None
    in_published_saliency: bool | Callable[[nn.Module | None], bool] = True
    handles_params: bool = False
    handles_sizes: bool = False
    update_attrs: Callable[[nn.Module], None] | None = None
    record_attrs: tuple[str, ...] = ()
    size_attrs: Mapping[str, tuple[str, int]] = field(default_factory=dict)
    cost: CostFn | None = None
    output_shape: Callable[[nn.Module, tuple, dict], Any] | None = None
    shape_only_outputs: Callable[[nn.Module, Any], Any] | None = None

    def weights_counted(self, module: nn.Module | None) -> bool:
        """Whether this call's weights count in the published saliency."""
        p = self.in_published_saliency
        return bool(p(module) if callable(p) else p)


_MODULES: dict[Any, LayerEntry] = {}  # class or qualified class name -> entry
_FUNCTIONS: dict[Any, LayerEntry] = {}  # function object or qualified name -> entry
_METHODS: dict[str, LayerEntry] = {}
_MODULE_CACHE: dict[type, LayerEntry | None] = {}


def _qualname(obj: Any) -> str:
    mod = getattr(obj, "__module__", None) or ""
    name = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None) or repr(obj)
    return f"{mod}.{name}" if mod else name


def register_module(*types: type | str, entry: LayerEntry) -> None:
    """Use ``entry`` for these module classes (or qualified class names) and their subclasses."""
    for t in types:
        _MODULES[t] = entry
    _MODULE_CACHE.clear()


def register_function(*functions: Callable | str, entry: LayerEntry) -> None:
    """Use ``entry`` for calls of these functions (objects, or ``'module.qualname'`` strings)."""
    for f in functions:
        _FUNCTIONS[f] = entry
        if not isinstance(f, str):
            try:
                _FUNCTIONS.setdefault(_qualname(f), entry)
            except TypeError:
                pass


def register_method(*names: str, entry: LayerEntry) -> None:
    """Use ``entry`` for calls of these ``torch.Tensor`` methods (``x.view(...)``)."""
    for n in names:
        _METHODS[n] = entry


def module_entry(m: nn.Module | type) -> LayerEntry | None:
    """The entry of a module (nearest registered class in its MRO), or ``None``."""
    cls = m if isinstance(m, type) else type(m)
    try:
        return _MODULE_CACHE[cls]
    except KeyError:
        pass
    found = None
    for c in cls.__mro__:
        found = _MODULES.get(c) or _MODULES.get(_qualname(c))
        if found is not None:
            break
    _MODULE_CACHE[cls] = found
    return found


def is_registered_leaf(m: nn.Module) -> bool:
    """Whether ``m``'s own class (not a base class) is registered with a coupling rule: the
    tracer then keeps it as one node instead of tracing into its ``forward``."""
    cls = type(m)
    e = _MODULES.get(cls) or _MODULES.get(_qualname(cls))
    return e is not None and e.couple is not None


def function_entry(fn: Any) -> LayerEntry | None:
    """The entry of a function called in the graph, or ``None``."""
    try:
        e = _FUNCTIONS.get(fn)
    except TypeError:
        e = None
    if e is None:
        e = _FUNCTIONS.get(_qualname(fn))
    return e


def registered_functions() -> list[Any]:
    """Every function registered with an entry: function objects and qualified-name strings
    (the executed-forward recorder records the Python ones as one call, as ``torch.fx`` does)."""
    return list(_FUNCTIONS)


def method_entry(name: str) -> LayerEntry | None:
    """The entry of a tensor method, or ``None``."""
    return _METHODS.get(name)


def _get_tensor(m: nn.Module, path: str) -> torch.Tensor | None:
    owner, _, attr = path.rpartition(".")
    try:
        mod = m.get_submodule(owner) if owner else m
    except AttributeError:
        return None
    t = getattr(mod, attr, None)
    return t if isinstance(t, torch.Tensor) else None


def update_module_attrs(model: nn.Module, touched: set[str]) -> None:
    """After a prune: update the attributes of every module whose tensors (or the tensors its
    ``size_attrs`` follow) are in ``touched`` (qualified tensor names)."""
    for mname, m in model.named_modules():
        e = module_entry(m)
        if e is None:
            continue
        prefix = f"{mname}." if mname else ""
        own = any(f"{prefix}{n}" in touched for n, _ in m.named_parameters(recurse=False)) or any(
            f"{prefix}{n}" in touched for n, _ in m.named_buffers(recurse=False))
        if own and e.update_attrs is not None:
            e.update_attrs(m)
        for attr, (path, dim) in e.size_attrs.items():
            if f"{prefix}{path}" in touched:
                t = _get_tensor(m, path)
                if t is not None:
                    setattr(m, attr, int(t.shape[dim]))


def structure_attrs(m: nn.Module) -> dict[str, Any] | None:
    """The structure-record attributes of a module (JSON-able), or ``None`` if it has none."""
    e = module_entry(m)
    if e is None:
        return None
    names = tuple(e.record_attrs) + tuple(a for a in e.size_attrs if a not in e.record_attrs)
    if not names:
        return None
    out: dict[str, Any] = {}
    for a in names:
        v = getattr(m, a, None)
        if isinstance(v, (tuple, list)):
            out[a] = [int(x) for x in v]
        elif isinstance(v, bool) or v is None:
            continue
        else:
            out[a] = int(v)
    return out


def restore_attrs(m: nn.Module, attrs: Mapping[str, Any]) -> None:
    """Set recorded attributes back (lists become tuples, numbers ints)."""
    for a, v in attrs.items():
        setattr(m, a, tuple(int(x) for x in v) if isinstance(v, (list, tuple)) else int(v))


def size_attr_sites(modules: Mapping[str, nn.Module]) -> dict[str, list[tuple[str, Any, str, int]]]:
    """Per qualified module name (of ``dict(model.named_modules())``): ``(attribute, module,
    tensor qualified name, dim)`` of its ``size_attrs`` (what the tracer accepts as literal
    channel counts)."""
    out: dict[str, list[tuple[str, Any, str, int]]] = {}
    for mname, m in modules.items():
        e = module_entry(m)
        if e is None or not e.size_attrs:
            continue
        prefix = f"{mname}." if mname else ""
        out[mname] = [(a, m, f"{prefix}{path}", dim) for a, (path, dim) in e.size_attrs.items()]
    return out
