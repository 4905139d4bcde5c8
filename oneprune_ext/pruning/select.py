"""Sub-network search and stability indicator, as pure functions.

Nothing here touches a model or the compiled extension: the inputs are the
per-channel saliency vector the kernels produce (all groups concatenated in
group order), the group sizes and an exact cost function of the per-group kept
counts (``oneprune_ext.graph.cost``).  One search for a ResNet-50-sized model
(~50 groups, ~20k channels) is a few hundred microseconds of numpy plus
``log2(#candidates)`` calls of the cost function.

Units used throughout:

* **reduction**: fraction of the dense cost removed, in ``(0, 1)`` (0.5 = half the MACs gone);
* **cost**: whatever ``cost_fn`` counts (MACs or parameters), an integer;
* **per-channel MAC cost**: MACs (not millions) that one channel of a group costs;
* **epoch**: 0-based training epoch.

Published behaviour followed here (OCSPruner, Ghimire et al., WACV 2026) is
noted where a choice had to be made; deviations are called out explicitly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence, Union

import numpy as np
import torch

__all__ = [
    "cost_share",
    "layer_limits",
    "per_channel_cost",
    "round_kept_counts",
    "Selection",
    "select_subnetwork",
    "jaccard_per_group",
    "StabilityTracker",
    "auto_sl_start",
]

IndexSet = Union[Sequence[int], torch.Tensor, np.ndarray]

#: Two reductions closer than this are treated as equal (absorbs float rounding of ``1 - cost/dense``).
_REDUCTION_EPS = 1e-12


# ---------------------------------------------------------------------------
# Cost share and per-layer limit
# ---------------------------------------------------------------------------


def cost_share(per_channel_mac_cost: Sequence[float]) -> torch.Tensor:
    """Softmax across groups of each group's per-channel MAC cost in millions.

    Args:
        per_channel_mac_cost: for each group, the MACs one of its channels costs
            (in MACs; divided by 1e6 here, as in the published code).

    Returns:
        float64 tensor of shape ``[num_groups]`` summing to 1.  A channel's
        saliency is multiplied by ``1 - share`` of its group, so channels of
        expensive groups are removed first when saliencies are close.  The
        softmax subtracts the maximum first, so huge costs do not overflow.
    """
    return torch.from_numpy(_cost_share_np(per_channel_mac_cost))


def _cost_share_np(per_channel_mac_cost: Sequence[float]) -> np.ndarray:
    c = np.asarray(per_channel_mac_cost, dtype=np.float64)
    if c.ndim != 1 or c.size == 0:
        raise ValueError("per_channel_mac_cost must be a non-empty 1-D sequence (one value per group)")
    if not np.isfinite(c).all():
        raise ValueError("per_channel_mac_cost contains NaN or infinity")
    e = np.exp(c / 1e6 - (c / 1e6).max())
    return e / e.sum()


def layer_limits(sizes: Sequence[int], layer_limit: float = 0.75, k: float = 1.0,
                 multiplicity: Sequence[int] | None = None) -> list[int]:
    """Most channels removable from each group: ``floor(C * L(C))``.

    ``L(C) = layer_limit * (1 - exp(-k * C))`` (the published limit; published
    defaults ``layer_limit=0.75``, ``k=1.0``: the most salient rest of a group is protected).  The result is additionally capped
    at ``C - 1`` so a group always keeps at least one channel (only reachable
    with ``layer_limit=1``, where float rounding would otherwise allow ``C``).

    Args:
        sizes: channel count of each group.
        layer_limit: asymptotic fraction of a group that may be removed, in ``[0, 1]``.
        k: how fast the limit approaches ``layer_limit`` with the group size (> 0).
        multiplicity: per group, how many layer channels one of its channels stands for
            (``G`` through a grouped conv with ``G`` conv groups, see
            :func:`oneprune_ext.graph.channel_multiplicity`); the limit is then taken on the
            layer's ``G * C`` channels and rounded down to whole group channels.
    """
    if not 0.0 <= layer_limit <= 1.0:
        raise ValueError(f"layer_limit must be in [0, 1], got {layer_limit}")
    if not k > 0.0:
        raise ValueError(f"layer_limit_k must be > 0, got {k}")
    mult = [1] * len(sizes) if multiplicity is None else [int(m) for m in multiplicity]
    if len(mult) != len(sizes) or any(m < 1 for m in mult):
        raise ValueError("multiplicity must give a positive int per group")
    out: list[int] = []
    for c, f in zip(sizes, mult):
        c = int(c)
        if c < 0:
            raise ValueError(f"group sizes must be >= 0, got {c}")
        lim = math.floor(f * c * layer_limit * (1.0 - math.exp(-k * f * c))) // f
        out.append(max(0, min(lim, c - 1)))
    return out


def per_channel_cost(cost_fn: Callable[[list[int]], int], group_sizes: Sequence[int]) -> list[float]:
    """Per-channel cost of each group, as the published code measures it.

    For group ``g`` of size ``C > 1``: ``(cost(dense) - cost(dense with g cut to 1 channel)) / (C - 1)``;
    0 for groups of one channel (they can never be pruned).  ``len(group_sizes) + 1``
    calls of ``cost_fn``.  Pass the MACs cost function to get the input of
    :func:`cost_share` (the cost share is MAC-based even when the target is parameters).
    """
    sizes = [int(s) for s in group_sizes]
    dense = cost_fn(list(sizes))
    out: list[float] = []
    for g, c in enumerate(sizes):
        if c <= 1:
            out.append(0.0)
            continue
        probe = list(sizes)
        probe[g] = 1
        out.append(float(dense - cost_fn(probe)) / (c - 1))
    return out


# ---------------------------------------------------------------------------
# round_to
# ---------------------------------------------------------------------------


def _round_bounds(sizes: np.ndarray, limits: np.ndarray, n: int | np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    min_kept = sizes - limits
    lo = np.maximum(n, -(-min_kept // n) * n)  # smallest multiple of n >= max(n, min_kept)
    hi = (sizes // n) * n  # largest multiple of n <= size
    fixed = lo > hi  # no multiple of n fits between the layer limit and the size
    return lo, hi, fixed


def round_kept_counts(
    kept: Sequence[int] | np.ndarray,
    sizes: Sequence[int] | np.ndarray,
    limits: Sequence[int] | np.ndarray,
    round_to: int,
    multiplicity: Sequence[int] | np.ndarray | None = None,
) -> np.ndarray:
    """Round per-group kept counts to multiples of ``round_to``.

    Rule, per group of size ``C`` with kept count ``k`` and removal limit ``l``:

    * ``k == C`` (nothing removed) stays ``C``, multiple of ``round_to`` or not;
    * otherwise ``k`` goes to the **nearest** multiple of ``round_to`` (an exact half
      rounds up, i.e. keeps more), clipped to ``[lo, hi]`` where ``lo`` is the
      smallest multiple ``>= max(round_to, C - l)`` (never below ``round_to``, never
      past the layer limit) and ``hi`` the largest multiple ``<= C``;
    * if no multiple fits (``lo > hi``, e.g. ``C < round_to``) the group keeps all ``C``.

    With ``multiplicity`` (per group, the layer channels one group channel stands for, e.g.
    ``G`` through a grouped conv) it is the layers' channel counts ``G * k`` that become
    multiples of ``round_to``: ``k`` is rounded to multiples of ``round_to / gcd(round_to, G)``.

    The map is monotone non-decreasing in ``k``, so the prefix search stays a binary search.
    """
    n = int(round_to)
    if n < 1:
        raise ValueError(f"round_to must be a positive integer, got {round_to}")
    k = np.asarray(kept, dtype=np.int64)
    s = np.asarray(sizes, dtype=np.int64)
    lim = np.asarray(limits, dtype=np.int64)
    step: int | np.ndarray = n
    if multiplicity is not None:
        step = n // np.gcd(n, np.asarray(multiplicity, dtype=np.int64))
    lo, hi, fixed = _round_bounds(s, lim, step)
    r = ((2 * k + step) // (2 * step)) * step  # nearest multiple, halves up
    r = np.minimum(np.maximum(r, lo), hi)
    return np.where((k >= s) | fixed, s, r)


# ---------------------------------------------------------------------------
# Selection
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Selection:
    """The sub-network chosen by :func:`select_subnetwork`.

    Attributes:
        kept_indices: per group, the kept channel indices (sorted int64 CPU tensors, group-local).
        removal_mask: bool CPU tensor over all channels (groups concatenated): True = chosen for removal.
        kept_counts: per group, number of channels kept.
        removed_counts: per group, number of channels chosen for removal.
        reduction: achieved fraction of the dense cost removed (``1 - cost / dense_cost``).
        cost: ``cost_fn(kept_counts)``.
        dense_cost: the cost with nothing removed.
        target_reduction: the requested reduction.
        prefix_length: length of the chosen prefix of the ranked candidates (before ``round_to``).
        num_candidates: channels not protected by the per-layer limit.
        tolerance: the accepted overshoot (fraction, absolute).
    """

    kept_indices: list[torch.Tensor]
    removal_mask: torch.Tensor
    kept_counts: list[int]
    removed_counts: list[int]
    reduction: float
    cost: int
    dense_cost: int
    target_reduction: float
    prefix_length: int
    num_candidates: int
    tolerance: float

    @property
    def overshoot(self) -> float:
        """``reduction - target_reduction`` (>= 0)."""
        return self.reduction - self.target_reduction

    @property
    def within_tolerance(self) -> bool:
        """Whether the overshoot is at most ``tolerance``.

        False only when the next candidate (one channel, or one ``round_to`` step)
        costs more than ``tolerance`` of the dense cost: a coarse model, not a search error.
        """
        return self.overshoot <= self.tolerance + _REDUCTION_EPS


def _ordered_bits(x: np.ndarray) -> np.ndarray:
    """uint32 keys whose unsigned order is the float32 order of ``x`` (no NaN; -0.0 == 0.0)."""
    u = (x.astype(np.float32, copy=False) + np.float32(0.0)).view(np.uint32)
    neg = (u >> np.uint32(31)).astype(bool)
    return np.where(neg, ~u, u | np.uint32(0x80000000))


def select_subnetwork(
    saliency: torch.Tensor,
    group_sizes: Sequence[int],
    cost_fn: Callable[[list[int]], int],
    target_reduction: float,
    *,
    per_channel_mac_cost: Sequence[float],
    dense_cost: int | None = None,
    layer_limit: float = 0.75,
    layer_limit_k: float = 1.0,
    round_to: int | None = None,
    tolerance: float = 1e-3,
    multiplicity: Sequence[int] | None = None,
) -> Selection:
    """Choose the channels to remove so the cost drops by ``target_reduction``.

    Steps (the published selection, with an exact cost function instead of pruning copies):

    1. adjusted saliency = saliency x ``(1 - cost_share(group))`` (computed in float32);
    2. in each group the ``size - limit`` channels of highest adjusted saliency are protected
       (:func:`layer_limits`);
    3. the unprotected channels are ranked by adjusted saliency ascending; **ties are broken
       by global channel index** (lower index = considered less salient = removed first;
       the same order decides which tied channels a group protects);
    4. the shortest prefix of that ranking whose removal gives ``1 - cost/dense_cost >=
       target_reduction`` is found by binary search on the prefix length (one ``cost_fn``
       call per probe, ``cost_fn`` must be non-decreasing in every count);
    5. with ``round_to``, every probe's kept counts go through :func:`round_kept_counts`;
       the final removed set of a group is its ``size - kept`` least salient candidates
       (i.e. extra least salient channels are removed, or the most salient channels of
       the prefix restored).

    Args:
        saliency: 1-D tensor over all channels, groups concatenated in order (any device/float dtype;
            copied to CPU float32).
        group_sizes: channel count of each group.
        cost_fn: maps per-group kept counts (list of int) to the exact cost (MACs or parameters).
        target_reduction: fraction of ``dense_cost`` to remove, in ``(0, 1)``.
        per_channel_mac_cost: per group, MACs of one channel (see :func:`per_channel_cost`).
        dense_cost: ``cost_fn(group_sizes)``; computed when not given.
        layer_limit, layer_limit_k: per-layer limit (see :func:`layer_limits`).
        round_to: keep channel counts multiples of this (None = no rounding).
        multiplicity: per group, the layer channels one of its channels stands for (see
            :func:`oneprune_ext.graph.channel_multiplicity`; ``None``: 1 each), used by the
            per-layer limit and ``round_to``.
        tolerance: accepted overshoot of the reduction (absolute fraction); see
            :attr:`Selection.within_tolerance`.  The result is always the shortest prefix
            reaching the target, so it overshoots by less than the last candidate's cost.

    Raises:
        ValueError: bad arguments, or the target is unreachable even when every unprotected
            channel is removed (the message gives the largest reachable reduction).
    """
    sizes = np.asarray([int(s) for s in group_sizes], dtype=np.int64)
    num_groups = int(sizes.size)
    if num_groups == 0:
        raise ValueError("no channel groups to select from")
    if (sizes < 1).any():
        raise ValueError(f"every group needs at least one channel, got sizes {sizes.tolist()}")
    if not 0.0 < float(target_reduction) < 1.0:
        raise ValueError(f"reduction must be in (0, 1) (fraction of the cost removed), got {target_reduction}")
    if not tolerance >= 0.0:
        raise ValueError(f"tolerance must be >= 0, got {tolerance}")
    if round_to is not None and int(round_to) < 1:
        raise ValueError(f"round_to must be a positive integer or None, got {round_to}")
    total = int(sizes.sum())
    sal_t = saliency.detach()
    if sal_t.ndim != 1 or sal_t.numel() != total:
        raise ValueError(
            f"saliency must be a 1-D tensor of {total} channels (sum of group sizes), "
            f"got shape {tuple(sal_t.shape)}"
        )
    sal = sal_t.to(device="cpu", dtype=torch.float32).contiguous().numpy()
    if np.isnan(sal).any():
        raise ValueError("saliency contains NaN (a diverged or uninitialised model?)")
    if len(per_channel_mac_cost) != num_groups:
        raise ValueError(
            f"per_channel_mac_cost has {len(per_channel_mac_cost)} entries for {num_groups} groups"
        )
    target = float(target_reduction)
    dense = int(cost_fn(sizes.tolist())) if dense_cost is None else int(dense_cost)
    if dense <= 0:
        raise ValueError(f"dense cost must be > 0, got {dense}")

    limits = np.asarray(layer_limits(sizes.tolist(), layer_limit, layer_limit_k, multiplicity), dtype=np.int64)
    offsets = np.zeros(num_groups + 1, dtype=np.int64)
    np.cumsum(sizes, out=offsets[1:])

    # 1. adjusted saliency
    factor = (1.0 - _cost_share_np(per_channel_mac_cost)).astype(np.float32)
    gid = np.repeat(np.arange(num_groups, dtype=np.int64), sizes)
    adj = sal * np.repeat(factor, sizes)

    # 2. protection: sort group-major by (group, adjusted saliency, index); the first `limit`
    #    channels of each group's block are the candidates, the rest is protected.
    ordered = _ordered_bits(adj)
    base = np.repeat(offsets[:-1], sizes)  # global index of each channel's group start
    local = np.arange(total, dtype=np.int64) - base
    if num_groups <= 0xFFFF and int(sizes.max()) <= 0xFFFF:
        gm_keys = (
            (gid.astype(np.uint64) << np.uint64(48))
            | (ordered.astype(np.uint64) << np.uint64(16))
            | local.astype(np.uint64)
        )
        gm_keys.sort()
        gm_order = base + (gm_keys & np.uint64(0xFFFF)).astype(np.int64)  # blocks keep their place
    else:  # huge groups: slower but same order
        gm_order = np.lexsort((local, ordered, gid))
    is_cand = local < np.repeat(limits, sizes)  # positions of gm_order (its blocks are the groups' offsets)
    cand_gm = gm_order[is_cand]  # candidates, group-major, ascending within group
    cand_gid = gid[is_cand]
    n_cand = int(cand_gm.size)
    cand_starts = np.zeros(num_groups + 1, dtype=np.int64)
    np.cumsum(limits, out=cand_starts[1:])

    # 3. global ranking of the candidates by (adjusted saliency, global index)
    g_keys = (ordered[cand_gm].astype(np.uint64) << np.uint64(32)) | cand_gm.astype(np.uint64)
    g_keys.sort()
    cand_channels = (g_keys & np.uint64(0xFFFFFFFF)).astype(np.int64)  # removal order
    pos = np.empty(total, dtype=np.int64)
    pos[cand_channels] = np.arange(n_cand, dtype=np.int64)
    # (group, position in the ranking), increasing: counts a group's candidates in any prefix
    rank_keys = cand_gid * (n_cand + 1) + pos[cand_gm]
    query_base = np.arange(num_groups, dtype=np.int64) * (n_cand + 1)

    def kept_for(prefix: int) -> np.ndarray:
        removed = np.searchsorted(rank_keys, query_base + prefix, side="left") - cand_starts[:-1]
        kept = sizes - removed
        if round_to is not None:
            kept = round_kept_counts(kept, sizes, limits, int(round_to), multiplicity)
        return kept

    def evaluate(prefix: int) -> tuple[np.ndarray, int, float]:
        kept = kept_for(prefix)
        cost = int(cost_fn(kept.tolist()))
        return kept, cost, 1.0 - cost / dense

    # 4. shortest reaching prefix
    kept_hi, cost_hi, red_hi = evaluate(n_cand)
    if red_hi < target - _REDUCTION_EPS:
        raise ValueError(
            f"target reduction {target:.4f} is unreachable: removing every channel the per-layer limit "
            f"allows ({n_cand} of {total}) reduces the cost by at most {red_hi:.4f}"
            + (f" with round_to={round_to}" if round_to is not None else "")
            + f". Lower `reduction`, or raise `layer_limit` (now {layer_limit}) / `layer_limit_k` "
            f"(now {layer_limit_k})" + (" or lower `round_to`" if round_to is not None else "") + "."
        )
    lo, hi = 0, n_cand  # reach(lo) is False (reduction 0 < target), reach(hi) True
    best = (kept_hi, cost_hi, red_hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        res = evaluate(mid)
        if res[2] >= target - _REDUCTION_EPS:
            hi, best = mid, res
        else:
            lo = mid
    kept, cost, red = best

    # 5. removed set: per group the (size - kept) least salient candidates
    n_removed = sizes - kept
    mask_np = np.zeros(total, dtype=bool)
    mask_np[gm_order[local < np.repeat(n_removed, sizes)]] = True
    removal_mask = torch.from_numpy(mask_np)
    kept_global = np.flatnonzero(~mask_np)
    kept_local = torch.from_numpy(kept_global - base[kept_global])
    kept_indices = list(torch.split(kept_local, [int(k) for k in kept]))
    sel = Selection(
        kept_indices=kept_indices,
        removal_mask=removal_mask,
        kept_counts=[int(k) for k in kept],
        removed_counts=[int(r) for r in n_removed],
        reduction=float(red),
        cost=int(cost),
        dense_cost=dense,
        target_reduction=target,
        prefix_length=int(hi),
        num_candidates=n_cand,
        tolerance=float(tolerance),
    )
    return sel


# ---------------------------------------------------------------------------
# Stability indicator
# ---------------------------------------------------------------------------


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
