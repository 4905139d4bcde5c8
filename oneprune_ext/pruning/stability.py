"""The stability indicator of the chosen sub-network, and the automatic sparsity-learning start.

Each monitored epoch records the kept channels of every group; the indicator ``psi`` says how much
the chosen sub-network still changes (Jaccard similarity to the one of two epochs earlier, averaged
over three epochs). The pruner prunes when it is stable; ``sl_start="auto"`` starts sparsity
learning at its first plateau. Pure functions of index sets: nothing here touches a model.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence, Union

import numpy as np
import torch

__all__ = ["jaccard_per_group", "StabilityTracker", "auto_sl_start", "IndexSet"]

IndexSet = Union[Sequence[int], torch.Tensor, np.ndarray]


def _as_flat(kept_sets: Sequence[IndexSet]) -> tuple[np.ndarray, np.ndarray]:
    """Per-group index sets -> (concatenated int64 indices, per-group lengths)."""
    parts: list[np.ndarray] = []
    for g, s in enumerate(kept_sets):
        if isinstance(s, torch.Tensor):
            a = s.detach().to("cpu", torch.int64).reshape(-1).numpy()
        else:
            a = np.asarray(s, dtype=np.int64).reshape(-1)
        if a.size and a.min() < 0:
            raise ValueError(f"kept set of group {g} has a negative channel index")
        parts.append(a)
    lengths = np.asarray([p.size for p in parts], dtype=np.int64)
    flat = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    return flat, lengths


def _jaccard_flat(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    (fa, la), (fb, lb) = a, b
    if la.size != lb.size:
        raise ValueError(f"sub-networks have different group counts ({la.size} vs {lb.size})")
    g = int(la.size)
    width = int(max(fa.max(initial=-1), fb.max(initial=-1))) + 1
    if width == 0:
        return np.ones(g)
    ma = np.zeros(g * width, dtype=bool)
    mb = np.zeros(g * width, dtype=bool)
    ma[np.repeat(np.arange(g, dtype=np.int64), la) * width + fa] = True
    mb[np.repeat(np.arange(g, dtype=np.int64), lb) * width + fb] = True
    ma2, mb2 = ma.reshape(g, width), mb.reshape(g, width)
    inter = (ma2 & mb2).sum(1)
    union = ma2.sum(1) + mb2.sum(1) - inter
    return np.where(union > 0, inter / np.maximum(union, 1), 1.0)


def jaccard_per_group(a: Sequence[IndexSet], b: Sequence[IndexSet]) -> list[float]:
    """Per group, ``|A ∩ B| / |A ∪ B|`` of two sub-networks (two empty sets count as 1.0)."""
    return [float(x) for x in _jaccard_flat(_as_flat(a), _as_flat(b))]


class StabilityTracker:
    """Stability indicator of the chosen sub-network, as published.

    Call :meth:`update` once per monitored epoch with that epoch's kept sets.

    * ``sim(t)``: mean over groups of the Jaccard similarity between the kept sets of
      update ``t`` and update ``t - 2``; **0 for the first two updates** (fewer than three
      sub-networks exist).
    * ``psi(t)``: mean of the last ``min(3, number of sims)`` sim values (the two leading
      zeros included), as the published ``running_average`` does: after the first update
      ``psi = 0``, after the second ``0``, after the third ``sim(2) / 3``, then a true
      running mean of three.  (The published code also appends ``sim = 0`` for epochs before
      monitoring starts; those only ever average with other zeros, so the values from the
      first monitored epoch on are identical.)
    * :meth:`is_stable`: ``psi >= threshold``, as the published loop tests it (a strict ``>``
      would differ only at exact equality).

    Attributes:
        sims: every ``sim`` value so far, one per update.
        history: every ``psi`` value so far, one per update (the indicator curve).
    """

    window: int = 3

    def __init__(self) -> None:
        self._nets: list[tuple[np.ndarray, np.ndarray]] = []
        self.sims: list[float] = []
        self.history: list[float] = []

    @property
    def indicator(self) -> float:
        """The latest ``psi`` (0.0 before the first update)."""
        return self.history[-1] if self.history else 0.0

    def update(self, kept_sets: Sequence[IndexSet]) -> float:
        """Record one epoch's sub-network (per group, kept channel indices); return ``psi``."""
        net = _as_flat(kept_sets)
        if self._nets and self._nets[-1][1].size != net[1].size:
            raise ValueError(
                f"sub-network has {net[1].size} groups, previous ones had {self._nets[-1][1].size}"
            )
        self._nets.append(net)
        if len(self._nets) > self.window:
            self._nets.pop(0)
        if len(self._nets) < self.window:
            sim = 0.0
        else:
            sim = float(_jaccard_flat(self._nets[-1], self._nets[0]).mean())
        self.sims.append(sim)
        last = self.sims[-self.window :]
        psi = float(sum(last) / len(last))
        self.history.append(psi)
        return psi

    def is_stable(self, threshold: float = 0.999) -> bool:
        """True once the latest indicator is ``>= threshold`` (``stability_threshold``)."""
        return bool(self.history) and self.history[-1] >= threshold

    def state_dict(self) -> dict[str, Any]:
        """Plain lists, floats and int64 tensors only (readable with ``torch.load(weights_only=True)``)."""
        return {
            "window": self.window,
            "kept_flat": [torch.from_numpy(f.copy()) for f, _ in self._nets],
            "kept_lengths": [torch.from_numpy(l.copy()) for _, l in self._nets],
            "sims": list(self.sims),
            "history": list(self.history),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        if int(state.get("window", self.window)) != self.window:
            raise ValueError(f"state has window {state['window']}, this tracker uses {self.window}")
        flats, lens = list(state["kept_flat"]), list(state["kept_lengths"])
        if len(flats) != len(lens) or len(flats) > self.window:
            raise ValueError("corrupt StabilityTracker state: kept_flat / kept_lengths mismatch")
        nets = []
        for f, l in zip(flats, lens):
            fa = torch.as_tensor(f, dtype=torch.int64).numpy().copy()
            la = torch.as_tensor(l, dtype=torch.int64).numpy().copy()
            if int(la.sum()) != fa.size:
                raise ValueError("corrupt StabilityTracker state: lengths do not add up")
            nets.append((fa, la))
        self._nets = nets
        self.sims = [float(x) for x in state["sims"]]
        self.history = [float(x) for x in state["history"]]


def auto_sl_start(
    psi_history: Sequence[float],
    epoch: int,
    *,
    after_epoch: int = 3,
    max_rise: float = 1e-4,
) -> bool:
    """Whether ``sl_start="auto"`` fires at ``epoch`` (published rule).

    True when ``epoch > after_epoch`` and ``psi(epoch) - psi(epoch - 2) <= max_rise``: the
    indicator has risen by at most 1e-4 over two epochs (a plateau; a fall also counts).
    The caller starts sparsity learning at the first epoch this returns True and stops asking.

    Args:
        psi_history: indicator values of consecutive epochs, the last one being ``epoch``'s
            (e.g. ``StabilityTracker.history`` when it is updated every epoch from
            ``monitor_start``).  Epochs before the history count as ``psi = 0``, as in the
            published code where the indicator is 0 before monitoring starts.
        epoch: the current 0-based epoch.

    Note: as published, if monitoring starts after epoch 2 the indicator is still flat at 0
    at epoch 4, so the rule fires there.
    """
    if epoch <= after_epoch:
        return False
    now = float(psi_history[-1]) if len(psi_history) >= 1 else 0.0
    before = float(psi_history[-3]) if len(psi_history) >= 3 else 0.0
    return now - before <= max_rise
