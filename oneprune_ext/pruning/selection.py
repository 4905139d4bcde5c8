"""Choosing the sub-network: cost share, per-layer limits, ``round_to`` and the global selection.

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
from typing import Callable, Sequence

import numpy as np
import torch

__all__ = [
    "cost_share",
    "layer_limits",
    "per_channel_cost",
    "round_kept_counts",
    "Selection",
    "select_subnetwork",
]

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
    sizes, sal, dense = _checked_inputs(saliency, group_sizes, cost_fn, target_reduction, per_channel_mac_cost,
                                        dense_cost, tolerance, round_to)
    target = float(target_reduction)
    limits = np.asarray(layer_limits(sizes.tolist(), layer_limit, layer_limit_k, multiplicity), dtype=np.int64)
    adjusted = _adjusted_saliency(sal, sizes, per_channel_mac_cost)                     # step 1
    ranking = _CandidateRanking(adjusted, sizes, limits)                                  # steps 2 and 3

    def evaluate(prefix: int) -> tuple[np.ndarray, int, float]:
        kept = ranking.kept_for(prefix)
        if round_to is not None:                                                          # step 5
            kept = round_kept_counts(kept, sizes, limits, int(round_to), multiplicity)
        cost = int(cost_fn(kept.tolist()))
        return kept, cost, 1.0 - cost / dense

    prefix, (kept, cost, red) = _shortest_reaching_prefix(evaluate, ranking.num_candidates, target)  # step 4
    if prefix is None:
        raise ValueError(
            f"target reduction {target:.4f} is unreachable: removing every channel the per-layer limit "
            f"allows ({ranking.num_candidates} of {ranking.total}) reduces the cost by at most {red:.4f}"
            + (f" with round_to={round_to}" if round_to is not None else "")
            + f". Lower `reduction`, or raise `layer_limit` (now {layer_limit}) / `layer_limit_k` "
            f"(now {layer_limit_k})" + (" or lower `round_to`" if round_to is not None else "") + "."
        )
    removal_mask, kept_indices = ranking.removal(kept)
    return Selection(
        kept_indices=kept_indices,
        removal_mask=removal_mask,
        kept_counts=[int(k) for k in kept],
        removed_counts=[int(r) for r in sizes - kept],
        reduction=float(red),
        cost=int(cost),
        dense_cost=dense,
        target_reduction=target,
        prefix_length=int(prefix),
        num_candidates=ranking.num_candidates,
        tolerance=float(tolerance),
    )


def _checked_inputs(saliency: torch.Tensor, group_sizes: Sequence[int], cost_fn: Callable[[list[int]], int],
                    target_reduction: float, per_channel_mac_cost: Sequence[float], dense_cost: int | None,
                    tolerance: float, round_to: int | None) -> tuple[np.ndarray, np.ndarray, int]:
    """The group sizes (int64), the saliency (CPU float32) and the dense cost, every argument checked."""
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
    dense = int(cost_fn(sizes.tolist())) if dense_cost is None else int(dense_cost)
    if dense <= 0:
        raise ValueError(f"dense cost must be > 0, got {dense}")
    return sizes, sal, dense


def _adjusted_saliency(sal: np.ndarray, sizes: np.ndarray, per_channel_mac_cost: Sequence[float]) -> np.ndarray:
    """Step 1: saliency x ``(1 - cost_share(group))``, in float32."""
    factor = (1.0 - _cost_share_np(per_channel_mac_cost)).astype(np.float32)
    return sal * np.repeat(factor, sizes)


class _CandidateRanking:
    """Steps 2 and 3: the channels the layer limits leave removable, ranked for removal.

    Built once per selection; :meth:`kept_for` then answers "how many channels does each group keep
    if the first ``prefix`` ranked candidates go" in ``O(groups * log(candidates))``, and
    :meth:`removal` turns final kept counts into the removal mask and the kept indices.
    """

    def __init__(self, adjusted: np.ndarray, sizes: np.ndarray, limits: np.ndarray) -> None:
        num_groups = int(sizes.size)
        self.sizes = sizes
        self.total = int(sizes.sum())
        offsets = np.zeros(num_groups + 1, dtype=np.int64)
        np.cumsum(sizes, out=offsets[1:])
        self._gid = np.repeat(np.arange(num_groups, dtype=np.int64), sizes)
        self._base = np.repeat(offsets[:-1], sizes)  # global index of each channel's group start
        self._local = np.arange(self.total, dtype=np.int64) - self._base
        ordered = _ordered_bits(adjusted)
        self._gm_order = self._group_major_order(ordered)
        # step 2: the first `limit` channels of each group's block are the candidates, the rest is protected
        is_cand = self._local < np.repeat(limits, sizes)  # positions of gm_order (its blocks are the groups' offsets)
        cand_gm = self._gm_order[is_cand]  # candidates, group-major, ascending within group
        self.num_candidates = int(cand_gm.size)
        self._cand_starts = np.zeros(num_groups + 1, dtype=np.int64)
        np.cumsum(limits, out=self._cand_starts[1:])
        # step 3: global ranking of the candidates by (adjusted saliency, global index)
        g_keys = (ordered[cand_gm].astype(np.uint64) << np.uint64(32)) | cand_gm.astype(np.uint64)
        g_keys.sort()
        removal_order = (g_keys & np.uint64(0xFFFFFFFF)).astype(np.int64)
        pos = np.empty(self.total, dtype=np.int64)
        pos[removal_order] = np.arange(self.num_candidates, dtype=np.int64)
        # (group, position in the ranking), increasing: counts a group's candidates in any prefix
        n = self.num_candidates + 1
        self._rank_keys = self._gid[is_cand] * n + pos[cand_gm]
        self._query_base = np.arange(num_groups, dtype=np.int64) * n

    def _group_major_order(self, ordered: np.ndarray) -> np.ndarray:
        """Channels sorted by (group, adjusted saliency, index): each group's block in its own place."""
        sizes, gid, local = self.sizes, self._gid, self._local
        if int(sizes.size) <= 0xFFFF and int(sizes.max()) <= 0xFFFF:
            keys = (gid.astype(np.uint64) << np.uint64(48)) | (ordered.astype(np.uint64) << np.uint64(16)) \
                | local.astype(np.uint64)
            keys.sort()
            return self._base + (keys & np.uint64(0xFFFF)).astype(np.int64)
        return np.lexsort((local, ordered, gid))  # huge groups: slower but same order

    def kept_for(self, prefix: int) -> np.ndarray:
        """Per group, the channels kept when the first ``prefix`` ranked candidates are removed."""
        removed = np.searchsorted(self._rank_keys, self._query_base + prefix, side="left") - self._cand_starts[:-1]
        return self.sizes - removed

    def removal(self, kept: np.ndarray) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The removal mask over all channels and the per-group kept indices for ``kept`` counts:
        a group loses its ``size - kept`` least salient candidates."""
        n_removed = self.sizes - kept
        mask_np = np.zeros(self.total, dtype=bool)
        mask_np[self._gm_order[self._local < np.repeat(n_removed, self.sizes)]] = True
        kept_global = np.flatnonzero(~mask_np)
        kept_local = torch.from_numpy(kept_global - self._base[kept_global])
        return torch.from_numpy(mask_np), list(torch.split(kept_local, [int(k) for k in kept]))


def _shortest_reaching_prefix(
    evaluate: Callable[[int], tuple[np.ndarray, int, float]], num_candidates: int, target: float,
) -> tuple[int | None, tuple[np.ndarray, int, float]]:
    """Step 4: binary search for the shortest prefix whose reduction reaches ``target``.

    Returns the prefix length and its ``evaluate`` result, or ``(None, evaluate(num_candidates))``
    when even removing every candidate falls short. Needs ``evaluate``'s reduction to be
    non-decreasing in the prefix (a cost function non-decreasing in every kept count).
    """
    best = evaluate(num_candidates)
    if best[2] < target - _REDUCTION_EPS:
        return None, best
    lo, hi = 0, num_candidates  # reach(lo) is False (reduction 0 < target), reach(hi) True
    while hi - lo > 1:
        mid = (lo + hi) // 2
        res = evaluate(mid)
        if res[2] >= target - _REDUCTION_EPS:
            hi, best = mid, res
        else:
            lo = mid
    return hi, best
