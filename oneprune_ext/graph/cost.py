"""Exact MACs and parameter counts as closed forms of the kept channel counts.

Every tensor dimension a group touches has size ``rest + sum_g block_g * k_g`` (``k_g``
the kept channels of group ``g``, ``rest`` the entries no group covers), so the
element count of a tensor with at most two channel dimensions is a polynomial of
degree <= 2 in the kept counts.  Then

* ``params(k) = sum over parameters of numel(k)``;
* ``macs(k) = C + sum over calls of their cost terms``: each module or function type with
  MACs has a cost rule in the layer registry (:mod:`oneprune_ext.graph.registry`) giving a call's
  MACs as ``scale * product of tensor dims`` (a conv: ``batch * output pixels * numel(weight)``;
  a linear: ``rows * numel(weight)``; attention: its projections and, where counted, its
  products).  ``C`` is every other counted FLOP / 2 (e.g. fixed-width layers called
  functionally), measured once on the current model.

The model is traced with ``torch.fx`` and its graph run once under
``torch.utils.flop_counter.FlopCounterMode`` (eval mode, no autograd); a model ``torch.fx``
cannot trace whole (a detector, YOLO) is run once instead, following its executed forward
(:mod:`oneprune_ext.graph.capture`).  Every call's terms are checked against the FLOPs the
counter attributed to that call (its FLOPs are ``2 x`` MACs), so the closed form equals what
the counter counts on the pruned model.  The count is for the example inputs in eval mode: for
a detector, the RoI heads run on the proposals (and detections) the model keeps for those
images at inference.

Attention is counted in full: projections and the products ``Q K^T`` and ``A V``.  Plain
``FlopCounterMode`` in eval mode counts nothing for ``nn.MultiheadAttention`` (PyTorch's fused
fast path, ``torch._native_multi_head_attention``, has no formula), and on CPU not the products
of ``F.scaled_dot_product_attention``; counting either way would leave a transformer's
attention out of the dense MACs, so a MACs target would remove the wrong fraction and a
projection's channels would look cheaper than they are.  The counting pass therefore runs with
the fast path off and the CPU attention kernel given the counter's own CUDA formula
(:func:`oneprune_ext.graph.flops.counting_flops`): the MACs equal ``FlopCounterMode`` on the model
run where it sees every matmul (fast path off or train mode, math attention backend), on CPU
and CUDA alike.  The polynomial's coefficients are computed once; evaluating it is a few microseconds
in Python (:meth:`CostModel.macs`) or one vectorised numpy expression for many candidates
(:meth:`CostModel.macs_many`).  MACs are for the given ``example_inputs`` (whole batch); use a
batch of one for per-image MACs.
"""

from __future__ import annotations

import operator
import warnings
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn as nn
from torch import fx
from torch.utils.flop_counter import FlopCounterMode

from .capture import record_forward
from .flops import counting_flops
from .trace import UnsupportedOpError, evaluating, run_graph, trace_graph
from .groups import ChannelGroups
from .registry import CostCall, CostTerm, function_entry, method_entry, module_entry

__all__ = ["CostModel"]


class _Poly:
    """``const + sum lin[g] k_g + sum quad[(g, h)] k_g k_h`` with exact ints."""

    def __init__(self) -> None:
        self.const = 0
        self.lin: dict[int, int] = {}
        self.quad: dict[tuple[int, int], int] = {}

    def add_product(self, scale: int, forms: list[tuple[int, dict[int, int]]]) -> None:
        """Add ``scale * prod(forms)`` where each form is ``(const, {g: coef})`` (<= 2 forms)."""
        if len(forms) == 0:
            self.const += scale
        elif len(forms) == 1:
            c, co = forms[0]
            self.const += scale * c
            for g, a in co.items():
                self.lin[g] = self.lin.get(g, 0) + scale * a
        elif len(forms) == 2:
            (c1, co1), (c2, co2) = forms
            self.const += scale * c1 * c2
            for g, a in co1.items():
                self.lin[g] = self.lin.get(g, 0) + scale * a * c2
            for g, a in co2.items():
                self.lin[g] = self.lin.get(g, 0) + scale * a * c1
            for g, a in co1.items():
                for h, b in co2.items():
                    key = (min(g, h), max(g, h))
                    self.quad[key] = self.quad.get(key, 0) + scale * a * b
        else:
            raise ValueError("CostModel: a cost term with more than two channel dims is not supported")

    def compile(self) -> "_Compiled":
        return _Compiled(self)


class _Compiled:
    def __init__(self, p: _Poly) -> None:
        self.const = int(p.const)
        self.lin = tuple((g, int(a)) for g, a in sorted(p.lin.items()) if a)
        self.quad = tuple((g, h, int(a)) for (g, h), a in sorted(p.quad.items()) if a)
        self.lin_idx = np.array([g for g, _ in self.lin], dtype=np.int64)
        self.lin_coef = np.array([a for _, a in self.lin], dtype=np.int64)
        self.quad_i = np.array([g for g, _, _ in self.quad], dtype=np.int64)
        self.quad_j = np.array([h for _, h, _ in self.quad], dtype=np.int64)
        self.quad_coef = np.array([a for _, _, a in self.quad], dtype=np.int64)

    def __call__(self, k: Sequence[int]) -> int:
        total = self.const
        for g, a in self.lin:
            total += a * k[g]
        for g, h, a in self.quad:
            total += a * k[g] * k[h]
        return int(total)

    def many(self, K: np.ndarray) -> np.ndarray:
        out = np.full(K.shape[0], self.const, dtype=np.int64)
        if len(self.lin):
            out += K[:, self.lin_idx] @ self.lin_coef
        if len(self.quad):
            out += (K[:, self.quad_i] * K[:, self.quad_j]) @ self.quad_coef
        return out


def _run_counted(model: nn.Module, inputs: tuple, shapes: dict[str, tuple[int, ...]]
                 ) -> tuple[list[CostTerm], int, list[str]]:
    """Run ``model`` once under ``FlopCounterMode``; collect the registry's cost terms of every
    call whose counted FLOPs they explain, and the FLOPs of everything else.

    Returns ``(terms, other_flops, names of calls whose terms did not match the count)``.
    """
    names = {id(t): n for n, t in model.named_parameters()}
    names.update({id(t): n for n, t in model.named_buffers()})

    def tensor_name(t: Any) -> str | None:
        return names.get(id(t)) if isinstance(t, torch.Tensor) else None

    terms: list[CostTerm] = []
    other = [0]
    mismatched: list[str] = []

    def account(entry: Any, module: nn.Module | None, label: str, args: tuple, kwargs: dict,
                out: Any, flops: int) -> None:
        found = None
        if entry is not None and entry.cost is not None:
            call = CostCall(module, tuple(args), dict(kwargs), out, flops, tensor_name, shapes, label)
            found = entry.cost(call)
            if found is not None and 2 * call.macs(found) != flops:
                mismatched.append(label)
                found = None
        if found is None:
            other[0] += flops
        else:
            terms.extend(found)

    try:
        graph, _ = trace_graph(model, whole=True)
    except UnsupportedOpError:
        graph = None
    modules = dict(model.named_modules())
    if graph is not None:
        with evaluating(modules.values()), torch.no_grad(), counting_flops() as fc:
            _count_graph(model, graph, inputs, modules, fc, account)
        return terms, other[0], mismatched
    try:
        with counting_flops() as fc:
            _count_recorded(model, inputs, modules, fc, account)
    except Exception:  # noqa: BLE001 - following the forward failed: count per leaf module instead
        terms.clear()
        mismatched.clear()
        other[0] = 0
        with evaluating(modules.values()), torch.no_grad(), counting_flops() as fc:
            _count_with_hooks(model, inputs, fc, account)
    return terms, other[0], mismatched


def _attribute(modules: dict[str, nn.Module], fc: FlopCounterMode, account: Any) -> tuple[Any, Any]:
    """``after(node, out, args, kwargs)``: the FLOPs counted since the last node (or ``before()``)
    go to ``node``'s cost rule; ``before()``: those since the last node go to the fixed rest."""
    last = [fc.get_total_flops()]

    def before() -> None:
        now = fc.get_total_flops()
        if now != last[0]:
            account(None, None, "(between calls)", (), {}, None, now - last[0])
            last[0] = now

    def after(n: fx.Node, out: Any, args: tuple, kwargs: dict) -> None:
        now = fc.get_total_flops()
        flops, last[0] = now - last[0], now
        module = None
        if n.op == "call_module":
            module = modules[n.target]
            entry = module_entry(module)
        elif n.op == "call_function":
            entry = function_entry(n.target)
        elif n.op == "call_method":
            entry = method_entry(n.target)
            args = args[1:]
        else:
            entry = None
        if entry is not None and entry.cost is not None:
            account(entry, module, str(n.target) if module is not None else n.name, args, kwargs, out, flops)
        elif flops:
            account(None, None, n.name, (), {}, out, flops)

    return before, after


def _count_recorded(model: nn.Module, inputs: tuple, modules: dict[str, nn.Module], fc: FlopCounterMode,
                    account: Any) -> None:
    """Run the model once (eval mode) following its executed forward, attributing the counter's
    FLOPs to each recorded call (for models ``torch.fx`` cannot trace whole)."""
    before, after = _attribute(modules, fc, account)
    record_forward(model, [(False, inputs)], before=before, after=after, sizes=False)
    before()


def _count_graph(model: nn.Module, graph: fx.Graph, inputs: tuple, modules: dict[str, nn.Module],
                 fc: FlopCounterMode, account: Any) -> None:
    """Run the traced graph, attributing the counter's FLOPs to each node."""
    _, after = _attribute(modules, fc, account)
    run_graph(model, graph, inputs, modules, after)


def _count_with_hooks(model: nn.Module, inputs: tuple, fc: FlopCounterMode, account: Any) -> None:
    """Fallback for models torch.fx cannot trace: hooks on the leaf modules with cost rules."""
    names = {m: n for n, m in model.named_modules()}
    start: dict[int, int] = {}
    seen = [0]

    def pre(mod: nn.Module, args: tuple) -> None:
        start[id(mod)] = fc.get_total_flops()

    def post(mod: nn.Module, args: tuple, kwargs: dict, out: Any) -> None:
        flops = fc.get_total_flops() - start.pop(id(mod))
        seen[0] += flops
        account(module_entry(mod), mod, names[mod], args, kwargs, out, flops)

    handles = []
    for m in names:  # (leaf modules with a cost rule)
        e = module_entry(m)
        if e is not None and e.cost is not None and not any(
                module_entry(c) is not None and module_entry(c).cost is not None for c in m.children()):
            handles.append(m.register_forward_pre_hook(pre))
            handles.append(m.register_forward_hook(post, with_kwargs=True))
    try:
        model(*inputs)
    finally:
        for h in handles:
            h.remove()
    account(None, None, "(rest)", (), {}, None, fc.get_total_flops() - seen[0])


class CostModel:
    """Exact MACs / parameter count of ``model`` as a function of each group's kept count.

    Args:
        model: the network, in the state ``groups`` describes (dense, or pruned
            consistently with the groups' current sizes).  Not modified.
        groups: the prunable channel groups (from :func:`oneprune_ext.graph.trace.trace_groups`
            or returned by :func:`oneprune_ext.pruning.compaction.prune_channels`).
        example_inputs: a tensor or a tuple of positional inputs; MACs are counted for
            this batch.

    Attributes:
        dense_macs: MACs of the model as it is now (kept = current sizes).
        dense_params: parameter count now (all parameters, ``numel`` sum).
        fixed_macs: MACs that do not depend on any group.
        macs_per_channel: per group, MACs removed by removing one channel from the
            current (full) size, as exact ints.
        params_per_channel: the same for parameters.
    """

    def __init__(self, model: nn.Module, groups: ChannelGroups,
                 example_inputs: torch.Tensor | Sequence[torch.Tensor]) -> None:
        self.sizes = list(groups.sizes)
        self._group_names = [g.name for g in groups]
        params = dict(model.named_parameters())
        shapes: dict[str, tuple[int, ...]] = {n: tuple(p.shape) for n, p in params.items()}
        shapes.update({n: tuple(b.shape) for n, b in model.named_buffers()})
        # per (tensor, dim): the groups touching it
        touched: dict[str, dict[int, list[tuple[int, int]]]] = {}
        for gi, g in enumerate(groups):
            for s in g.slices:
                if s.name not in shapes:
                    raise ValueError(f"CostModel: group {gi} ({g.name}) touches unknown tensor '{s.name}'")
                if s.offset + g.size * s.block > shapes[s.name][s.dim]:
                    raise ValueError(
                        f"CostModel: group {gi} ({g.name}) slice of '{s.name}' dim {s.dim} exceeds its "
                        f"size {shapes[s.name][s.dim]}: groups and model do not match")
                touched.setdefault(s.name, {}).setdefault(s.dim, []).append((gi, s.block))

        def dim_form(name: str, d: int) -> tuple[int, dict[int, int]] | None:
            """``(const, {group: coef})`` of a touched dim's size, ``None`` if untouched."""
            if d not in touched.get(name, {}):
                return None
            const = shapes[name][d]
            co: dict[int, int] = {}
            for gi, blk in touched[name][d]:
                const -= self.sizes[gi] * blk
                co[gi] = co.get(gi, 0) + blk
            return const, co

        def add_term(poly: _Poly, scale: int, factors: Sequence[tuple[str, int]]) -> None:
            forms = []
            for name, d in factors:
                f = dim_form(name, d)
                if f is None:
                    scale *= shapes[name][d]
                else:
                    forms.append(f)
            poly.add_product(scale, forms)

        pp = _Poly()
        for name in params:
            add_term(pp, 1, [(name, d) for d in range(len(shapes[name]))])
        self._params = pp.compile()

        inputs = (example_inputs,) if isinstance(example_inputs, torch.Tensor) else tuple(example_inputs)
        terms, other_flops, mismatched = _run_counted(model, inputs, shapes)
        if mismatched:
            warnings.warn(
                f"CostModel: the MACs FlopCounterMode counted for {mismatched[:5]}"
                f"{' and more' if len(mismatched) > 5 else ''} differ from their registry cost rules; "
                f"they are counted as fixed, so MACs after pruning may be off.", RuntimeWarning, stacklevel=2)
        if other_flops < 0 or other_flops % 2:
            raise RuntimeError(f"CostModel: FlopCounterMode counted an odd or negative {other_flops} FLOPs "
                               "outside the modelled calls; cannot build an exact model")
        mp = _Poly()
        for t in terms:
            add_term(mp, int(t.scale), t.factors)
        fixed = other_flops // 2
        mp.const += fixed
        self._macs = mp.compile()
        self.fixed_macs: int = fixed
        self.dense_macs: int = self._macs(self.sizes)
        self.dense_params: int = self._params(self.sizes)
        self.macs_per_channel: list[int] = []
        self.params_per_channel: list[int] = []
        for gi in range(len(self.sizes)):
            k = list(self.sizes)
            k[gi] -= 1
            self.macs_per_channel.append(self.dense_macs - self._macs(k))
            self.params_per_channel.append(self.dense_params - self._params(k))

    def _check(self, kept: Sequence[int], what: str) -> list[int]:
        """``kept`` as a list of ints, or a ValueError naming the first bad group."""
        if isinstance(kept, (str, bytes)) or not hasattr(kept, "__len__"):
            raise ValueError(f"CostModel.{what}: kept must be a sequence of {len(self.sizes)} ints (one kept "
                             f"count per group, in group order), got {type(kept).__name__}")
        if len(kept) != len(self.sizes):
            raise ValueError(f"CostModel.{what}: expected {len(self.sizes)} kept counts (one per group, in group "
                             f"order), got {len(kept)}")
        out = []
        for gi, k in enumerate(kept):
            try:
                if isinstance(k, (bool, np.bool_)) or (isinstance(k, torch.Tensor) and k.dtype == torch.bool):
                    raise TypeError
                n = operator.index(k)
            except TypeError:
                raise ValueError(self._bad(what, gi, f"kept count {k!r} is not an int ({type(k).__name__})")) from None
            if not 0 <= n <= self.sizes[gi]:
                raise ValueError(self._bad(what, gi, f"kept count {n} is outside [0, {self.sizes[gi]}]"))
            out.append(n)
        return out

    def _check_many(self, kept: Any, what: str) -> np.ndarray:
        """``kept`` as a ``[B, num_groups]`` int64 array, or a ValueError naming the first bad group."""
        K = np.asarray(kept)
        if K.ndim != 2 or K.shape[1] != len(self.sizes):
            raise ValueError(f"CostModel.{what}: expected shape [B, {len(self.sizes)}], got {K.shape}")
        if K.dtype.kind not in "iu":
            raise ValueError(f"CostModel.{what}: kept counts must be integers, got dtype {K.dtype}")
        K = K.astype(np.int64, copy=False)
        bad = (K < 0) | (K > np.asarray(self.sizes, dtype=np.int64))
        if bad.any():
            b, gi = (int(i[0]) for i in np.nonzero(bad))
            raise ValueError(self._bad(what, gi, f"kept count {int(K[b, gi])} (row {b}) is outside "
                                                 f"[0, {self.sizes[gi]}]"))
        return K

    def _bad(self, what: str, gi: int, msg: str) -> str:
        return (f"CostModel.{what}: group {gi} ({self._group_names[gi]}): {msg}; give each group a whole "
                "number of kept channels between 0 and its size (CostModel.sizes)")

    def macs(self, kept: Sequence[int]) -> int:
        """Exact MACs with ``kept[i]`` channels kept in group ``i`` (ints in ``[0, sizes[i]]``,
        group order); raises ValueError naming the group for anything else."""
        return self._macs(self._check(kept, "macs"))

    def params(self, kept: Sequence[int]) -> int:
        """Exact parameter count with ``kept[i]`` channels kept in group ``i`` (checked as
        :meth:`macs` does)."""
        return self._params(self._check(kept, "params"))

    def macs_many(self, kept: np.ndarray) -> np.ndarray:
        """MACs of many candidates at once: ``kept`` is ``[B, num_groups]`` ints -> ``[B]`` int64."""
        return self._macs.many(self._check_many(kept, "macs_many"))

    def params_many(self, kept: np.ndarray) -> np.ndarray:
        """Parameter counts of many candidates: ``[B, num_groups]`` -> ``[B]`` int64."""
        return self._params.many(self._check_many(kept, "params_many"))

    @property
    def macs_per_channel_m(self) -> list[float]:
        """Per-group MACs of one channel at full size, in millions (for the cost share)."""
        return [m / 1e6 for m in self.macs_per_channel]

    def reduction(self, kept: Sequence[int], metric: str = "macs") -> float:
        """Fraction removed (0..1) of ``metric`` ('macs' or 'params') relative to now."""
        if metric == "macs":
            return 1.0 - self.macs(kept) / self.dense_macs
        if metric == "params":
            return 1.0 - self.params(kept) / self.dense_params
        raise ValueError(f"CostModel.reduction: metric must be 'macs' or 'params', got {metric!r}")
