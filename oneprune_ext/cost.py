"""Exact MACs and parameter counts as closed forms of the kept channel counts.

Every tensor dimension a group touches has size ``rest + sum_g block_g * k_g`` (``k_g``
the kept channels of group ``g``, ``rest`` the entries no group covers), so the
element count of a tensor with at most two channel dimensions is a polynomial of
degree <= 2 in the kept counts.  Then

* ``params(k) = sum over parameters of numel(k)``;
* ``macs(k) = C + sum over conv / linear calls of mult * numel(weight)(k)``, where for a
  convolution ``mult = batch * prod(output spatial size)`` and for a linear
  ``mult = number of rows (batch x tokens)`` -- exactly the formula
  ``torch.utils.flop_counter.FlopCounterMode`` uses (its FLOPs are ``2 x`` MACs), and
  ``C`` is every other counted FLOP / 2 (e.g. attention matmuls, fixed-width layers
  called functionally), measured once on the dense model.

The polynomial's coefficients are computed once; evaluating it is a few microseconds
in Python (:meth:`CostModel.macs`) or one vectorised numpy expression for many
candidates (:meth:`CostModel.macs_many`).  MACs are for the given ``example_inputs``
(whole batch), counted in eval mode without autograd; use a batch of one for
per-image MACs.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from .groups import ChannelGroups

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
            raise ValueError("CostModel: a tensor with more than two channel dims is not supported")

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


class CostModel:
    """Exact MACs / parameter count of ``model`` as a function of each group's kept count.

    Args:
        model: the network, in the state ``groups`` describes (dense, or pruned
            consistently with the groups' current sizes).  Not modified.
        groups: the prunable channel groups (from :func:`oneprune_ext.graph.trace_groups`
            or returned by :func:`oneprune_ext.compact.prune_channels`).
        example_inputs: a tensor or a tuple of positional inputs; MACs are counted for
            this batch.

    Attributes:
        dense_macs: MACs of the model as it is now (kept = current sizes).
        dense_params: parameter count now (all parameters, ``numel`` sum).
        macs_per_channel: per group, MACs removed by removing one channel from the
            current (full) size, as exact ints.
        params_per_channel: the same for parameters.
    """

    def __init__(self, model: nn.Module, groups: ChannelGroups,
                 example_inputs: torch.Tensor | Sequence[torch.Tensor]) -> None:
        self.sizes = list(groups.sizes)
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

        def numel_forms(name: str) -> tuple[int, list[tuple[int, dict[int, int]]]]:
            shape = shapes[name]
            dims = touched.get(name, {})
            rest = 1
            forms = []
            for d, n in enumerate(shape):
                if d not in dims:
                    rest *= n
                    continue
                const = n
                co: dict[int, int] = {}
                for gi, blk in dims[d]:
                    const -= self.sizes[gi] * blk
                    co[gi] = co.get(gi, 0) + blk
                forms.append((const, co))
            return rest, forms

        pp = _Poly()
        for name in params:
            rest, forms = numel_forms(name)
            pp.add_product(rest, forms)
        self._params = pp.compile()

        # MACs: hook every conv / linear call while FlopCounterMode counts the total
        names = {m: n for n, m in model.named_modules()}
        wname = {id(p): n for n, p in params.items()}
        calls: list[tuple[str, int]] = []

        def hook(mod: nn.Module, inp: tuple, out: torch.Tensor) -> None:
            w = mod.weight
            if id(w) not in wname:
                return
            if isinstance(mod, nn.Linear):
                mult = out.numel() // max(out.shape[-1], 1)
            else:
                mult = out.shape[0] * int(np.prod(out.shape[2:], dtype=np.int64))
            calls.append((wname[id(w)], int(mult)))

        handles = [m.register_forward_hook(hook) for m in names
                   if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd))
                   and not getattr(m, "transposed", False)]
        inputs = (example_inputs,) if isinstance(example_inputs, torch.Tensor) else tuple(example_inputs)
        flags = [(m, m.training) for m in model.modules()]
        model.eval()
        try:
            with torch.no_grad(), FlopCounterMode(display=False) as fc:
                model(*inputs)
        finally:
            for h in handles:
                h.remove()
            for m, t in flags:
                m.training = t
        total_flops = int(fc.get_total_flops())
        mp = _Poly()
        modeled = 0
        for name, mult in calls:
            rest, forms = numel_forms(name)
            mp.add_product(mult * rest, forms)
            modeled += mult * int(np.prod(shapes[name], dtype=np.int64))
        fixed = total_flops // 2 - modeled
        if fixed < 0 or total_flops % 2:
            raise RuntimeError(
                f"CostModel: FlopCounterMode counted {total_flops} FLOPs, less than the conv/linear "
                f"layers account for ({2 * modeled}); cannot build an exact model")
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

    def _check(self, kept: Sequence[int]) -> None:
        if len(kept) != len(self.sizes):
            raise ValueError(f"CostModel: expected {len(self.sizes)} kept counts, got {len(kept)}")

    def macs(self, kept: Sequence[int]) -> int:
        """Exact MACs with ``kept[i]`` channels kept in group ``i`` (ints, group order)."""
        self._check(kept)
        return self._macs(kept)

    def params(self, kept: Sequence[int]) -> int:
        """Exact parameter count with ``kept[i]`` channels kept in group ``i``."""
        self._check(kept)
        return self._params(kept)

    def macs_many(self, kept: np.ndarray) -> np.ndarray:
        """MACs of many candidates at once: ``kept`` is ``[B, num_groups]`` ints -> ``[B]`` int64."""
        K = np.asarray(kept, dtype=np.int64)
        if K.ndim != 2 or K.shape[1] != len(self.sizes):
            raise ValueError(f"CostModel.macs_many: expected shape [B, {len(self.sizes)}], got {K.shape}")
        return self._macs.many(K)

    def params_many(self, kept: np.ndarray) -> np.ndarray:
        """Parameter counts of many candidates: ``[B, num_groups]`` -> ``[B]`` int64."""
        K = np.asarray(kept, dtype=np.int64)
        if K.ndim != 2 or K.shape[1] != len(self.sizes):
            raise ValueError(f"CostModel.params_many: expected shape [B, {len(self.sizes)}], got {K.shape}")
        return self._params.many(K)

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
