"""Checked reading of a saved :class:`~oneprune_ext.pruning.pruner.OneCyclePruner` state.

:meth:`OneCyclePruner.load_state_dict <oneprune_ext.pruning.pruner.OneCyclePruner.load_state_dict>`
reads every entry through a :class:`StateReader` before it changes anything: a missing
entry, a value of the wrong type, an index outside its group, counts that disagree, a
corrupt stability tracker or history each raise a ValueError naming the entry, and the model
and the pruner stay as they were.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Optional, Sequence

import torch

from .config import is_int, is_real
from .selection import Selection
from .stability import StabilityTracker

__all__ = ["StateReader"]


class StateReader:
    """Typed, range-checked access to the entries of one saved pruner state."""

    def __init__(self, state: Mapping[str, Any], total_epochs: int) -> None:
        self.state = state
        self.total_epochs = total_epochs

    def bad(self, what: str) -> ValueError:
        return ValueError(f"OneCyclePruner.load_state_dict: corrupt state: {what}; nothing was changed")

    def get(self, key: str) -> Any:
        if key not in self.state:
            raise self.bad(f"no '{key}' entry")
        return self.state[key]

    # -------------------------------------------------------------------------------- scalars
    def int(self, v: Any, what: str, lo: Optional[int] = None, hi: Optional[int] = None) -> int:
        if isinstance(v, torch.Tensor) and v.dim() == 0 and not v.dtype.is_floating_point:
            v = v.item()
        if not is_int(v) or (lo is not None and v < lo) or (hi is not None and v > hi):
            rng = f" in [{lo if lo is not None else '-inf'}, {hi if hi is not None else 'inf'}]"
            raise self.bad(f"{what} must be an int{rng if lo is not None or hi is not None else ''}, got {v!r}")
        return int(v)

    def number(self, what: str, v: Any) -> float:
        """A finite float >= 0 (seconds, regularisation strengths)."""
        if not is_real(v) or not math.isfinite(float(v)) or v < 0:
            raise self.bad(f"{what} must be a finite number >= 0, got {v!r}")
        return float(v)

    def flag(self, key: str) -> bool:
        v = self.get(key)
        if not isinstance(v, bool):
            raise self.bad(f"{key} must be True or False, got {v!r}")
        return v

    def epoch(self, key: str) -> int:
        return self.int(self.get(key), key, 0, self.total_epochs - 1)

    def optional_epoch(self, key: str) -> Optional[int]:
        v = self.get(key)
        return None if v is None else self.int(v, key, 0, self.total_epochs - 1)

    # -------------------------------------------------------------------------------- containers
    def _seq(self, v: Any, what: str, n: Optional[int] = None) -> Sequence[Any]:
        if not isinstance(v, (list, tuple)) or (n is not None and len(v) != n):
            want = f"a list of {n} entries" if n is not None else "a list"
            got = f"{len(v)} entries" if isinstance(v, (list, tuple)) else type(v).__name__
            raise self.bad(f"{what} must be {want}, got {got}")
        return v

    def int_list(self, key: str, n: int, lo: int, his: Sequence[int]) -> list[int]:
        vals = self._seq(self.get(key), key, n)
        return [self.int(x, f"{key}[{i}]", lo, hi) for i, (x, hi) in enumerate(zip(vals, his))]

    def int_dict(self, key: str) -> dict[str, int]:
        v = self.get(key)
        if not isinstance(v, Mapping) or not all(isinstance(k, str) for k in v):
            raise self.bad(f"{key} must be a dict of ints")
        return {k: self.int(x, f"{key}[{k!r}]") for k, x in v.items()}

    def _index_set(self, v: Any, what: str, size: int) -> torch.Tensor:
        if isinstance(v, (list, tuple)) and all(is_int(x) for x in v):
            v = torch.tensor(list(v), dtype=torch.int64)
        if (not isinstance(v, torch.Tensor) or v.dim() != 1 or v.dtype.is_floating_point or v.dtype == torch.bool
                or v.is_complex()):
            raise self.bad(f"{what} must be a 1-D integer tensor of channel indices")
        t = v.to(torch.int64).cpu().clone()
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= size or bool((t[1:] <= t[:-1]).any())):
            raise self.bad(f"{what} must hold sorted, distinct channel indices in [0, {size})")
        return t

    def index_sets(self, key: str, sizes: Sequence[int], counts: Optional[Sequence[int]] = None,
                   value: Any = None) -> list[torch.Tensor]:
        vals = self._seq(self.get(key) if value is None else value, key, len(sizes))
        out = [self._index_set(x, f"{key}[{i}]", s) for i, (x, s) in enumerate(zip(vals, sizes))]
        if counts is not None and [int(t.numel()) for t in out] != list(counts):
            raise self.bad(f"{key} does not match the saved sizes {list(counts)}")
        return out

    def _mask(self, v: Any, what: str, n: int) -> torch.Tensor:
        if not isinstance(v, torch.Tensor) or v.dtype != torch.bool or v.dim() != 1 or v.numel() != n:
            raise self.bad(f"{what} must be a 1-D bool tensor over the {n} dense channels")
        return v.cpu().clone()

    def masks(self, key: str, n: int) -> list[torch.Tensor]:
        return [self._mask(m, f"{key}[{i}]", n) for i, m in enumerate(self._seq(self.get(key), key))]

    # -------------------------------------------------------------------------------- parts
    def tracker(self, key: str, sizes: Sequence[int]) -> StabilityTracker:
        t = StabilityTracker()
        try:
            t.load_state_dict(self.get(key))
        except (KeyError, TypeError, ValueError, RuntimeError, AttributeError, IndexError) as e:
            raise self.bad(f"{key}: {e}") from None
        for flat, lengths in t._nets:  # every sub-network: one kept set per group, in range
            if lengths.size != len(sizes) or (lengths < 0).any() or (lengths > list(sizes)).any():
                raise self.bad(f"{key}: a recorded sub-network does not fit the {len(sizes)} groups")
            start = 0
            for n, size in zip(lengths.tolist(), sizes):
                part = flat[start:start + n]
                start += n
                if part.size and (part.min() < 0 or part.max() >= size):
                    raise self.bad(f"{key}: a recorded channel index is outside its group")
        if len(t.sims) != len(t.history) or not all(math.isfinite(x) and -1e-9 <= x <= 1.0 + 1e-9 for x in t.history):
            raise self.bad(f"{key}: sims / history are not indicator values in [0, 1]")
        return t

    def history(self, key: str, groups: int) -> list[dict[str, Any]]:
        out = []
        for i, h in enumerate(self._seq(self.get(key), key)):
            what = f"{key}[{i}]"
            if not isinstance(h, Mapping) or not {"epoch", "indicator", "reduction", "kept_counts"} <= set(h):
                raise self.bad(f"{what} must be a dict with epoch, indicator, reduction, kept_counts")
            counts = [self.int(c, f"{what}.kept_counts", 0) for c in self._seq(h["kept_counts"], f"{what}.kept_counts",
                                                                                groups)]
            out.append(dict(h, epoch=self.int(h["epoch"], f"{what}.epoch", 0, self.total_epochs - 1),
                            indicator=self.number(f"{what}.indicator", h["indicator"]),
                            reduction=self.number(f"{what}.reduction", h["reduction"]), kept_counts=counts))
        return out

    def sparsity(self, key: str) -> dict[str, Any]:
        """The regulariser's running totals (absent in states written before ``reg="auto"``)."""
        sp = self.state.get(key)
        sp = {} if sp is None else sp
        if not isinstance(sp, Mapping):
            raise self.bad(f"{key} must be a dict")
        steps, lr = sp.get("steps_per_epoch"), sp.get("last_lr")
        auto = sp.get("auto")
        if auto is not None:
            if not isinstance(auto, Mapping):
                raise self.bad(f"{key}.auto must be a dict")
            auto = {"applied": self.number(f"{key}.auto.applied", auto.get("applied", 0.0)),
                    "per_step": self.number(f"{key}.auto.per_step", auto.get("per_step", 0.0)),
                    "left": self.int(auto.get("left", 0), f"{key}.auto.left", 0)}
        return {"steps_per_epoch": None if steps is None else self.int(steps, f"{key}.steps_per_epoch", 1),
                "last_lr": None if lr is None else self.number(f"{key}.last_lr", lr),
                "shrink_total": self.number(f"{key}.shrink_total", sp.get("shrink_total", 0.0)),
                "auto": auto}

    def selection(self, key: str, sizes: Sequence[int]) -> Optional[Selection]:
        s = self.get(key)
        if s is None:
            return None
        fields = ("kept_indices", "removal_mask", "kept_counts", "removed_counts", "reduction", "cost",
                  "dense_cost", "target_reduction", "prefix_length", "num_candidates", "tolerance")
        if not isinstance(s, Mapping) or not set(fields) <= set(s):
            raise self.bad(f"{key} must be a dict with {', '.join(fields)}")
        kept = self.index_sets(f"{key}.kept_indices", sizes, value=s["kept_indices"])
        counts = [self.int(c, f"{key}.kept_counts", 0) for c in self._seq(s["kept_counts"], f"{key}.kept_counts",
                                                                          len(sizes))]
        removed = [self.int(c, f"{key}.removed_counts", 0)
                   for c in self._seq(s["removed_counts"], f"{key}.removed_counts", len(sizes))]
        mask = self._mask(s["removal_mask"], f"{key}.removal_mask", sum(sizes))
        if counts != [int(k.numel()) for k in kept] or int(mask.sum()) != sum(removed):
            raise self.bad(f"{key}: kept / removed counts disagree with the indices and the mask")
        return Selection(
            kept_indices=kept, removal_mask=mask, kept_counts=counts, removed_counts=removed,
            reduction=self.number(f"{key}.reduction", s["reduction"]), cost=self.int(s["cost"], f"{key}.cost", 0),
            dense_cost=self.int(s["dense_cost"], f"{key}.dense_cost", 0),
            target_reduction=self.number(f"{key}.target_reduction", s["target_reduction"]),
            prefix_length=self.int(s["prefix_length"], f"{key}.prefix_length", 0),
            num_candidates=self.int(s["num_candidates"], f"{key}.num_candidates", 0),
            tolerance=self.number(f"{key}.tolerance", s["tolerance"]),
        )
