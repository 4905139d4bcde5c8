"""The tracer's bookkeeping: which channels every value carries, and which must go together.

The tracer (:mod:`oneprune_ext.graph.trace`) walks a ``torch.fx`` graph once in topological
order and asks, for every node, the coupling rule of that node's registry entry
(:mod:`oneprune_ext.graph.registry`) what the node's output carries.  The rules talk to one
:class:`Propagation` object, whose methods are the whole vocabulary a rule needs:

* :meth:`~Propagation.new_channels`: the node produces new channels (a conv's output);
* :meth:`~Propagation.attach`, :meth:`~Propagation.attach_grouped`,
  :meth:`~Propagation.claim`: a tensor slice belongs to those channels (rows, columns,
  norm weights, a layer-scale or embedding parameter);
* :meth:`~Propagation.merge`: two values' channels are the same channels (residual add);
* :meth:`~Propagation.require_groups`: the channels are used in ``G`` equal groups (a
  grouped conv, attention heads), so the same positions must go in every group;
* :meth:`~Propagation.sub`: a contiguous range of the channels (chunk / split / slicing);
* :meth:`~Propagation.unsupported`: the node uses channels in a way no rule understands:
  they are kept fixed and the place is reported.

Values
------
A tensor value is described by a :class:`ChannelInfo`: the dimension that carries
channels (``None`` when the value carries no prunable channel) and the *segments* along
it, each ``(source, block)``: a *source* is a run of ``width`` channels created together
(one conv's output), ``block`` consecutive entries per channel (``H*W`` after a flatten).
A parameter or buffer used directly in the forward (a ViT class token, a ConvNeXt layer
scale) is a :class:`ParamRef` until an op claims it.

Sources and conv groups
-----------------------
Sources that must be removed together are joined with a union-find.  Every set has an
*effective width* ``e``: channel ``p`` of the resulting channel group (``0 <= p < e``) is
entry ``m * e + p`` of every member source, for all ``m < width / e``.  A plain conv has
``e == width``; a grouped conv with ``G`` groups (or attention with ``G`` heads) lowers
it to ``width / G`` so the same within-group positions go in every group.  Unions take
the gcd of the effective widths.  At the end each member's recorded slices are expanded
into ``width / e`` :class:`~oneprune_ext.graph.groups.Slice` objects of the same tensor dim, at
offsets ``k * e * block``.

Sources are split when a later op needs only part of them (``x.chunk(2, dim=1)``, a
residual add of a concat with one conv): the cut is recorded against the node that
created the source and the walk runs again with the source created in pieces.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple, Sequence

import torch.nn as nn
from torch import fx
from torch.fx.node import map_aggregate

from .groups import ChannelGroup, Slice

__all__ = ["TMeta", "ChannelInfo", "OPAQUE", "ParamRef", "SizeRef", "Call", "Propagation", "FrozenPlace", "visit_infos"]


@dataclass(frozen=True)
class TMeta:
    """Shape of a tensor value, recorded when the traced graph ran once."""

    shape: tuple[int, ...]


@dataclass(frozen=True)
class ChannelInfo:
    """Channels a tensor value carries: along ``dim``, the concatenation of ``segs``.

    ``dim is None`` means the value carries no prunable channel (a model input, the result
    of an op that mixes channels).  Each segment ``(source, block)`` occupies
    ``width(source) * block`` consecutive entries of ``dim``.
    """

    dim: int | None
    segs: tuple[tuple[int, int], ...] = ()

    def at(self, dim: int) -> "ChannelInfo":
        """The same channels on another dimension."""
        return ChannelInfo(dim, self.segs)


OPAQUE = ChannelInfo(None)


@dataclass(frozen=True)
class ParamRef:
    """A parameter or buffer used directly in the forward (or a broadcast view of one).

    ``dims[i]`` is the tensor dimension that dimension ``i`` of the value shows, ``None``
    for a dimension the view added.
    """

    name: str
    dims: tuple[int | None, ...]
    shape: tuple[int, ...]
    is_buffer: bool = False


@dataclass(frozen=True)
class SizeRef:
    """An integer computed from the channel count of ``infos`` (``x.shape[1]``, ``C // heads``).

    ``exact``: it is that count itself (not arithmetic on it).  Such a size may only give
    the same channels' dim its size in a reshape; anywhere else the channels are kept fixed,
    since the number would change with a prune.
    """

    infos: tuple[ChannelInfo, ...]
    exact: bool = True


@dataclass(frozen=True)
class FrozenPlace:
    """One place the tracer did not understand: its channels are kept fixed.

    Attributes:
        op: the module type or function (``'GroupNorm'``, ``'Tensor.view'``, ``'torch.roll'``).
        node: the fx node name, with the qualified name of the module it is in.
        reason: what the tracer could not reason about.
        frozen: names of the channel groups kept fixed because of this place (the
            qualified names of the modules producing them); empty when nothing prunable
            reached it.
    """

    op: str
    node: str
    reason: str
    frozen: tuple[str, ...]

    def __str__(self) -> str:
        what = ", ".join(self.frozen) if self.frozen else "nothing prunable"
        return f"{self.op} at {self.node}: {self.reason} -> kept fixed: {what}"


class _Raw(NamedTuple):
    """A slice recorded against one source, before conv-group folding."""

    name: str
    dim: int
    offset: int
    block: int
    is_buffer: bool
    in_norm: bool
    rep: int  # the slice covers width / rep channels: channel i shows at entry i mod (width / rep)


@dataclass
class Call:
    """One node of the traced graph, as a coupling rule sees it.

    Attributes:
        node: the fx node.
        module: the module for ``call_module`` nodes, else ``None``.
        module_name: its qualified name ('' for functions and methods).
        args, kwargs: the node's arguments with tensors replaced by :class:`TMeta` and other
            nodes by their (recorded) values.
        infos, ikwargs: the same arguments as channel information (:class:`ChannelInfo`,
            :class:`ParamRef`, ``None`` for non-tensors).
        out: the node's recorded output (a :class:`TMeta` or a structure of them).
    """

    node: fx.Node
    module: nn.Module | None
    module_name: str
    args: tuple
    kwargs: dict
    infos: tuple
    ikwargs: dict
    out: Any

    def arg(self, i: int, name: str, default: Any = None) -> Any:
        """Recorded value of positional argument ``i`` / keyword ``name``."""
        if len(self.args) > i:
            return self.args[i]
        return self.kwargs.get(name, default)

    def info(self, i: int, name: str) -> Any:
        """Channel information of positional argument ``i`` / keyword ``name`` (``None`` if absent)."""
        if len(self.infos) > i:
            return self.infos[i]
        return self.ikwargs.get(name)

    def raw(self, i: int, name: str, default: Any = None) -> Any:
        """The argument as written in the graph: an ``fx.Node`` or a literal."""
        if len(self.node.args) > i:
            return self.node.args[i]
        return self.node.kwargs.get(name, default)

    def inputs(self) -> tuple:
        """Every argument's channel information (for :meth:`Propagation.unsupported`)."""
        return (self.infos, self.ikwargs)


@dataclass
class _Place:
    node: fx.Node
    op: str
    where: str
    reason: str
    sources: list[int]
    params: tuple[str, ...] = ()


@dataclass
class _Site:
    """Where sources are created: (node name, n-th creation at that node)."""

    key: tuple[str, int]
    start: int  # first channel of this piece within the site


def _visit(x: Any, fn: Callable[[Any], None]) -> None:
    if isinstance(x, (ChannelInfo, ParamRef)):
        fn(x)
    elif isinstance(x, SizeRef):
        for i in x.infos:
            fn(i)
    elif isinstance(x, (tuple, list)):
        for v in x:
            _visit(v, fn)
    elif isinstance(x, dict):
        for v in x.values():
            _visit(v, fn)


class Propagation:
    """Union-find over channel sources plus the slices and unsupported places recorded so far.

    Args:
        plan: cuts to make in sources at creation, by site (from earlier walks).
        saliency_params: ``"published"`` or ``"all"`` (see :func:`oneprune_ext.graph.trace.trace_groups`).
        modules: qualified name -> module, of the traced model.
        size_attr_sites: module qualified name -> ``[(attribute, module, tensor name, dim)]``
            for module attributes that hold a channel count (accepted as literal sizes; see
            :func:`oneprune_ext.graph.registry.size_attr_sites`).
        describe: ``(node, module) -> (op name, place)`` for the report.
    """

    def __init__(self, plan: dict[tuple[str, int], tuple[int, ...]], saliency_params: str,
                 modules: dict[str, nn.Module],
                 size_attr_sites: dict[str, list[tuple[str, Any, str, int]]],
                 describe: Callable[[fx.Node, Any], tuple[str, str]]) -> None:
        self.plan = plan
        self.describe = describe
        self.saliency_params = saliency_params
        self.modules = modules
        self.size_attr_sites = size_attr_sites
        self.new_cuts: dict[tuple[str, int], set[int]] = {}
        self.width: list[int] = []
        self.producer: list[str] = []
        self.parent: list[int] = []
        self.fixed: list[bool] = []
        self.eff: list[int] = []
        self.raw: list[list[_Raw]] = []
        self.site: list[_Site] = []
        self.places: list[_Place] = []
        # current node (set by the tracer before each rule runs)
        self.node: fx.Node | None = None
        self.module: nn.Module | None = None
        self.weights_counted = True  # whether the current entry's weights count in the saliency
        self.quiet = False  # inside an ignored module: keep fixed without reporting
        self._creations = 0

    # ------------------------------------------------------------------ per node
    def begin(self, node: fx.Node, module: nn.Module | None, weights_counted: bool) -> None:
        """Called by the tracer before a node's coupling rule."""
        self.node = node
        self.module = module
        self.weights_counted = weights_counted or self.saliency_params == "all"
        self.quiet = False
        self._creations = 0

    # ------------------------------------------------------------------ sources
    def new_channels(self, width: int, dim: int, fixed: bool = False, producer: str | None = None) -> ChannelInfo:
        """``width`` new channels on ``dim``, produced by the current node."""
        assert self.node is not None
        key = (self.node.name, self._creations)
        self._creations += 1
        name = producer or self._producer_name()
        cuts = [c for c in self.plan.get(key, ()) if 0 < c < width]
        bounds = [0, *cuts, int(width)]
        segs = []
        for a, b in zip(bounds, bounds[1:]):
            label = name if len(bounds) == 2 else f"{name}[{a}:{b}]"
            segs.append((self._source(b - a, label, fixed, _Site(key, a)), 1))
        return ChannelInfo(dim, tuple(segs))

    def _producer_name(self) -> str:
        assert self.node is not None
        return str(self.node.target) if self.node.op == "call_module" else self.node.name

    def _source(self, width: int, producer: str, fixed: bool, site: _Site) -> int:
        sid = len(self.width)
        self.width.append(int(width))
        self.producer.append(producer)
        self.parent.append(sid)
        self.fixed.append(fixed)
        self.eff.append(int(width))
        self.raw.append([])
        self.site.append(site)
        return sid

    def find(self, s: int) -> int:
        parent = self.parent
        while parent[s] != s:
            parent[s] = parent[parent[s]]
            s = parent[s]
        return s

    def union(self, a: int, b: int) -> None:
        """Sources ``a`` and ``b`` lose the same positions (effective widths: gcd)."""
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        lo, hi = min(ra, rb), max(ra, rb)
        self.parent[hi] = lo
        self.fixed[lo] = self.fixed[lo] or self.fixed[hi]
        self.eff[lo] = math.gcd(self.eff[lo], self.eff[hi])

    def _require_fold(self, s: int, g: int) -> bool:
        """Source ``s`` must be cut into ``g`` equal groups that lose the same positions."""
        r = self.find(s)
        if g <= 1:
            return True
        if self.width[s] % g:
            self.fixed[r] = True
            return False
        self.eff[r] = math.gcd(self.eff[r], self.width[s] // g)
        return True

    def sources_of(self, x: Any) -> list[int]:
        """Every source carried by a value structure (infos, tuples, dicts)."""
        out: list[int] = []

        def take(v: Any) -> None:
            if isinstance(v, ChannelInfo) and v.dim is not None:
                out.extend(s for s, _ in v.segs)

        _visit(x, take)
        return out

    def fix(self, x: Any) -> None:
        """Keep every channel of ``x`` (any structure of infos) fixed, silently."""
        for s in self.sources_of(x):
            self.fixed[self.find(s)] = True

    def length(self, info: ChannelInfo) -> int:
        """Entries the channels occupy along ``info.dim``."""
        return sum(self.width[s] * b for s, b in info.segs)

    # ------------------------------------------------------------------ slices
    def _in_norm(self, weight: bool) -> bool:
        return bool(weight and self.weights_counted)

    def attach(self, info: ChannelInfo, tensor: str, tdim: int, *, weight: bool = True,
               is_buffer: bool = False, base: int = 0) -> None:
        """Entries ``base + ...`` of ``tensor``'s dim ``tdim`` belong to ``info``'s channels, in order.

        ``weight``: a weight (counted in saliency / group lasso / shrink when the current
        entry's weights count); ``False`` for biases, embeddings and buffers.
        """
        if info.dim is None:
            return
        off = base
        in_norm = self._in_norm(weight) and not is_buffer
        for s, blk in info.segs:
            self.raw[s].append(_Raw(tensor, tdim, off, blk, is_buffer, in_norm, 1))
            off += self.width[s] * blk

    def attach_grouped(self, info: ChannelInfo, tensor: str, tdim: int, groups: int, *, weight: bool = True) -> None:
        """The ``width / groups`` columns of a grouped conv's weight: column ``j`` of conv group ``k``
        is channel ``k * width / groups + j`` (call :meth:`require_groups` first)."""
        if info.dim is None:
            return
        w = self.length(info) // groups
        in_norm = self._in_norm(weight)
        for s, _ in info.segs:
            self.raw[s].append(_Raw(tensor, tdim, 0, 1, False, in_norm, self.width[s] // w))

    def require_groups(self, info: ChannelInfo, groups: int) -> bool:
        """The channels are used in ``groups`` equal consecutive groups (grouped conv, heads).

        Keeps them fixed (returns False) when a segment is not a whole number of groups.
        """
        if info.dim is None or groups <= 1:
            return info.dim is not None
        total = self.length(info)
        if total % groups:
            self.fix(info)
            return False
        w = total // groups
        off = 0
        for s, blk in info.segs:
            width = self.width[s] * blk
            if blk != 1 or off % w or width % w:
                self.fix(info)
                return False
            off += width
        first = info.segs[0][0]
        for s, _ in info.segs:
            if not self._require_fold(s, self.width[s] // w):
                self.fix(info)
                return False
            self.union(first, s)
        return True

    # ------------------------------------------------------------------ relations
    def merge(self, a: ChannelInfo, b: ChannelInfo) -> None:
        """The channels of ``a`` and ``b`` are identified entry by entry (same dim)."""
        if a.dim is None or b.dim is None:
            self.fix(a)
            self.fix(b)
            return
        if a.segs == b.segs:
            return
        la, lb = self.length(a), self.length(b)
        if la != lb:
            self.fix(a)
            self.fix(b)
            return
        ba, bb = self._bounds(a), self._bounds(b)
        if ba != bb:
            # cut both sides at each other's boundaries; the next walk identifies the pieces
            self._cut(a, bb)
            self._cut(b, ba)
            self.fix(a)
            self.fix(b)
            return
        for (x, bx), (y, by) in zip(a.segs, b.segs):
            if bx != by or self.width[x] != self.width[y]:
                self.fix(a)
                self.fix(b)
                return
            self.union(x, y)

    def _bounds(self, info: ChannelInfo) -> list[int]:
        out = []
        off = 0
        for s, blk in info.segs:
            off += self.width[s] * blk
            out.append(off)
        return out

    def _cut(self, info: ChannelInfo, positions: Sequence[int]) -> bool:
        """Record cuts of ``info``'s sources at entry positions (for the next walk)."""
        off = 0
        for s, blk in info.segs:
            end = off + self.width[s] * blk
            for p in positions:
                if off < p < end:
                    rel = p - off
                    if rel % blk:
                        return False
                    site = self.site[s]
                    cut = site.start + rel // blk
                    if cut not in self.plan.get(site.key, ()):
                        self.new_cuts.setdefault(site.key, set()).add(cut)
            off = end
        return True

    def sub(self, info: ChannelInfo, start: int, stop: int) -> ChannelInfo | None:
        """Entries ``[start, stop)`` of ``info``'s channel dim as their own info.

        ``None`` when a source has to be cut first (recorded; the walk runs again) or the
        range splits a block.
        """
        if info.dim is None:
            return OPAQUE
        if not self._cut(info, (start, stop)):
            return None
        segs = []
        off = 0
        for s, blk in info.segs:
            end = off + self.width[s] * blk
            if off >= start and end <= stop:
                segs.append((s, blk))
            elif off < stop and end > start:
                return None  # needs the cut recorded above
            off = end
        return ChannelInfo(info.dim, tuple(segs))

    def claim(self, ref: ParamRef, info: ChannelInfo, value_dim: int, *, weight: bool) -> bool:
        """A parameter broadcast against ``info`` covers its channels along ``value_dim``.

        Attaches the parameter's slices (False, and the channels are kept fixed, when the
        parameter's dimension there is not the channel width).
        """
        if info.dim is None:
            return True
        if not 0 <= value_dim < len(ref.dims):
            return True  # broadcast along a dim the parameter does not have
        pdim = ref.dims[value_dim]
        size = ref.shape[pdim] if pdim is not None else 1
        if pdim is None or size == 1:
            return True  # broadcast: the same value for every channel
        if size != self.length(info):
            self.fix(info)
            return False
        self.attach(info, ref.name, pdim, weight=weight, is_buffer=ref.is_buffer)
        return True

    # ------------------------------------------------------------------ unsupported
    def unsupported(self, x: Any, reason: str) -> ChannelInfo:
        """The current node uses the channels of ``x`` in a way no rule understands.

        They are kept fixed (and the place reported, if any of them was prunable).  Any
        :class:`ParamRef` in ``x`` is kept as it is.  Returns :data:`OPAQUE`.
        """
        params: list[str] = []

        def take(v: Any) -> None:
            if isinstance(v, ParamRef):
                params.append(v.name)

        _visit(x, take)
        assert self.node is not None
        if self.quiet:
            self.fix(x)
            return OPAQUE
        op, where = self.describe(self.node, self.module)
        self.places.append(_Place(self.node, op, where, reason, self.sources_of(x), tuple(params)))
        return OPAQUE

    def opaque_like(self, val: Any) -> Any:
        """:data:`OPAQUE` for every tensor of a recorded output structure."""
        return map_aggregate(val, lambda v: OPAQUE if isinstance(v, TMeta) else None)

    def accept_literal(self, value: int, info: ChannelInfo) -> bool:
        """A literal size ``value`` on ``info``'s channel dim is fine if it is a module attribute
        the registry updates after a prune (e.g. a ViT's ``hidden_dim``) and equals the width of
        the tensor dim that attribute follows."""
        assert self.node is not None
        stack = self.node.meta.get("nn_module_stack") or {}
        for path in [p for p, _ in reversed(list(stack.values()))] + [""]:
            for attr, mod, tensor, tdim in self.size_attr_sites.get(path, ()):
                if getattr(mod, attr, None) != value or len(info.segs) != 1:
                    continue
                s, blk = info.segs[0]
                if blk == 1 and self.width[s] == value and any(
                        r.name == tensor and r.dim == tdim and r.offset == 0 and r.rep == 1 for r in self.raw[s]):
                    return True
        return False

    # ------------------------------------------------------------------ finishing
    def resolve_shared_slices(self) -> None:
        """Sources touching the same entries of one tensor dim (a module called twice, a
        shared weight) are joined; partial overlaps are kept fixed.  Repeats until stable."""
        changed = True
        while changed:
            changed = False
            by_tensor: dict[tuple[str, int], list[tuple[int, int, int, int]]] = {}
            for s, raws in enumerate(self.raw):
                for r in raws:
                    by_tensor.setdefault((r.name, r.dim), []).append(
                        (r.offset, r.offset + (self.width[s] // r.rep) * r.block, r.block, s))
            for entries in by_tensor.values():
                if len(entries) < 2:
                    continue
                entries.sort()
                for i, (a0, a1, ab, sa) in enumerate(entries):
                    for b0, b1, bb, sb in entries[i + 1:]:
                        if b0 >= a1:
                            break
                        ra, rb = self.find(sa), self.find(sb)
                        if ra == rb or (self.fixed[ra] and self.fixed[rb]):
                            continue
                        if (a0, a1, ab) == (b0, b1, bb):
                            self.union(ra, rb)
                        else:
                            self.fixed[ra] = self.fixed[rb] = True
                        changed = True

    def frozen_places(self) -> list[FrozenPlace]:
        """Every unsupported place with the groups it keeps fixed; then keeps them fixed.

        Each group is attributed to the first place (in graph order) that needs it fixed, so
        the report lists every frozen group once; places that freeze nothing new list none.
        """
        by_param: dict[str, list[int]] = {}
        for s, raws in enumerate(self.raw):
            for r in raws:
                by_param.setdefault(r.name, []).append(s)
        first: dict[int, int] = {}
        for s in range(len(self.width)):
            first.setdefault(self.find(s), s)
        out: list[FrozenPlace] = []
        taken: set[int] = set()
        frozen: set[int] = set()
        for p in self.places:
            srcs = list(p.sources)
            for name in p.params:
                srcs.extend(by_param.get(name, ()))
            live = {self.find(s) for s in srcs if not self.fixed[self.find(s)]}
            frozen |= live
            new = sorted(live - taken, key=lambda r: first[r])
            taken |= live
            out.append(FrozenPlace(p.op, p.where, p.reason, tuple(self.producer[first[r]] for r in new)))
        for r in frozen:
            self.fixed[r] = True
        return out

    def groups(self) -> list[ChannelGroup]:
        """The channel groups of the live (not fixed) sets, ordered by their first source."""
        members: dict[int, list[int]] = {}
        for s in range(len(self.width)):
            r = self.find(s)
            if not self.fixed[r]:
                members.setdefault(r, []).append(s)
        out: list[ChannelGroup] = []
        for r in sorted(members, key=lambda r: members[r][0]):
            srcs = members[r]
            e = self.eff[r]
            if e == 1 and any(self.width[s] > 1 for s in srcs):
                continue  # one position per conv group / head: nothing can be removed
            seen: set[tuple] = set()
            keys: list[tuple] = []
            for s in srcs:
                fold = self.width[s] // e
                for name, dim, offset, block, is_buffer, in_norm, rep in self.raw[s]:
                    step = e * block
                    for k in range(fold // rep):
                        key = (name, dim, offset + k * step, block, is_buffer, in_norm)
                        if key not in seen:
                            seen.add(key)
                            keys.append(key)
            if keys:
                out.append(ChannelGroup(size=e, slices=tuple(map(_slice, keys)), name=self.producer[srcs[0]]))
        return out


_SLICE_FIELDS = ("name", "dim", "offset", "block", "is_buffer", "in_norm")


def _slice(key: tuple) -> Slice:
    """``Slice(*key)`` without the frozen dataclass's per-field ``__init__`` (thousands per trace)."""
    s = object.__new__(Slice)
    s.__dict__.update(zip(_SLICE_FIELDS, key))
    return s


def visit_infos(x: Any, fn: Callable[[Any], None]) -> None:
    """Call ``fn`` on every :class:`ChannelInfo` / :class:`ParamRef` of a value structure."""
    _visit(x, fn)
