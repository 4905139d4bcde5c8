"""Sub-network search and stability indicator against hand-computed cases (the published rules)."""

from __future__ import annotations

import io
import math
import time

import numpy as np
import pytest
import torch

from oneprune_ext.pruning.selection import (
    cost_share,
    layer_limits,
    per_channel_cost,
    round_kept_counts,
    select_subnetwork,
)
from oneprune_ext.pruning.stability import StabilityTracker, auto_sl_start, jaccard_per_group


def linear_cost(k: list[int]) -> int:
    """Two groups: a channel of group 0 costs 10, of group 1 costs 30, plus 20 fixed."""
    return 10 * k[0] + 30 * k[1] + 20


def chain_cost(a: list[int], c_in: int = 3, c_out: int = 10):
    """A chain of layers: MACs = a_0*c_in*k_0 + sum_i a_i*k_{i-1}*k_i + a_last*k_last*c_out."""

    def f(k: list[int]) -> int:
        tot = a[0] * c_in * k[0]
        for i in range(1, len(k)):
            tot += a[i] * k[i - 1] * k[i]
        return tot + a[-1] * k[-1] * c_out

    return f


# -- cost share / layer limits ------------------------------------------------------------------


def test_cost_share_softmax_in_millions():
    share = cost_share([1e6, 2e6, 0.0])
    z = math.exp(1) + math.exp(2) + math.exp(0)
    assert share.tolist() == pytest.approx([math.exp(1) / z, math.exp(2) / z, 1 / z], rel=1e-12)
    huge = cost_share([1e12, 0.0])  # no overflow
    assert torch.isfinite(huge).all() and huge.tolist() == pytest.approx([1.0, 0.0])
    with pytest.raises(ValueError):
        cost_share([])


def test_layer_limits_hand_values():
    # C=1: 0.75*(1-e^-1)=0.474 -> 0; C=2: 2*0.75*(1-e^-2)=1.297 -> 1; C=4: 2.945 -> 2;
    # C=10: 7.4997 -> 7; C=64: 48*(1-e^-64) == 48.0 in float -> 48
    assert layer_limits([1, 2, 4, 10, 64]) == [0, 1, 2, 7, 48]
    # k shrinks the limit of small groups: C=4, k=0.5: 4*0.75*(1-e^-2)=2.594 -> 2; C=2: 0.948 -> 0
    assert layer_limits([2, 4], k=0.5) == [0, 2]
    # layer_limit=1 never removes a whole group
    assert layer_limits([50, 3], layer_limit=1.0) == [49, 2]
    with pytest.raises(ValueError, match="layer_limit"):
        layer_limits([4], layer_limit=1.5)


def test_per_channel_cost_matches_published_measure():
    f = chain_cost([1, 2, 4])
    sizes = [4, 6, 8]
    dense = f(sizes)
    got = per_channel_cost(f, sizes)
    for g, c in enumerate(sizes):
        probe = list(sizes)
        probe[g] = 1
        assert got[g] == pytest.approx((dense - f(probe)) / (c - 1))
    assert per_channel_cost(f, [1, 6, 8])[0] == 0.0


# -- selection -------------------------------------------------------------------------------------

# Two groups of 4 (limit 2 each).  Unprotected: g0 {c0: 0.1, c3: 0.7}, g1 {c0: 0.2, c1: 0.3}.
# Equal cost shares keep the order: g0c0, g1c0, g1c1, g0c3; removal gains 10, 30, 30, 10 of 180.
SAL = torch.tensor([0.1, 0.9, 0.8, 0.7, 0.2, 0.3, 0.95, 0.85])


@pytest.mark.parametrize(
    "target, prefix, kept, removed_mask",
    [
        (0.05, 1, [[1, 2, 3], [0, 1, 2, 3]], [1, 0, 0, 0, 0, 0, 0, 0]),  # 10/180 = 0.0556
        (0.2, 2, [[1, 2, 3], [1, 2, 3]], [1, 0, 0, 0, 1, 0, 0, 0]),  # 40/180 = 0.222
        (40 / 180, 2, [[1, 2, 3], [1, 2, 3]], [1, 0, 0, 0, 1, 0, 0, 0]),  # exactly reached
        (0.35, 3, [[1, 2, 3], [2, 3]], [1, 0, 0, 0, 1, 1, 0, 0]),  # 70/180 = 0.389
        (0.4, 4, [[1, 2], [2, 3]], [1, 0, 0, 1, 1, 1, 0, 0]),  # 80/180 = 0.444
    ],
)
def test_shortest_prefix(target, prefix, kept, removed_mask):
    sel = select_subnetwork(SAL, [4, 4], linear_cost, target, per_channel_mac_cost=[0.0, 0.0])
    assert sel.prefix_length == prefix
    assert [k.tolist() for k in sel.kept_indices] == kept
    assert sel.removal_mask.tolist() == [bool(x) for x in removed_mask]
    assert sel.kept_counts == [len(k) for k in kept]
    assert sel.removed_counts == [4 - len(k) for k in kept]
    assert sel.cost == linear_cost(sel.kept_counts)
    assert sel.dense_cost == 180
    assert sel.reduction == pytest.approx(1 - sel.cost / 180)
    assert sel.reduction >= target
    assert sel.num_candidates == 4


def test_cost_share_reorders_candidates():
    # share = softmax([0, 2]) -> factors [1 - 1/(1+e^2), 1 - e^2/(1+e^2)] = [0.881, 0.119]:
    # g1's candidates (0.2*0.119, 0.3*0.119) now come before g0c0 (0.1*0.881).
    sel = select_subnetwork(SAL, [4, 4], linear_cost, 0.2, per_channel_mac_cost=[0.0, 2e6])
    assert sel.removal_mask.tolist() == [False] * 4 + [True, True, False, False]
    assert sel.reduction == pytest.approx(60 / 180)


def test_ties_broken_by_global_index():
    # All equal: within a group the highest indices are protected; candidates ranked by index.
    sal = torch.ones(8)
    sel = select_subnetwork(sal, [4, 4], linear_cost, 0.2, per_channel_mac_cost=[0.0, 0.0])
    # ranking g0c0 (10), g0c1 (20), g1c0 (50 >= 36)
    assert sel.removal_mask.tolist() == [True, True, False, False, True, False, False, False]
    assert [k.tolist() for k in sel.kept_indices] == [[2, 3], [1, 2, 3]]
    again = select_subnetwork(sal.clone(), [4, 4], linear_cost, 0.2, per_channel_mac_cost=[0.0, 0.0])
    assert torch.equal(again.removal_mask, sel.removal_mask)
    # -0.0 and 0.0 are a tie too
    sel0 = select_subnetwork(
        torch.tensor([0.0, -0.0, 1.0, 1.0]), [4], lambda k: k[0], 0.25, per_channel_mac_cost=[0.0]
    )
    assert sel0.removal_mask.tolist() == [True, False, False, False]


def test_round_kept_counts_rule():
    sizes, kept = [5, 8, 3, 8, 8], [2, 6, 1, 7, 5]
    limits = layer_limits(sizes)  # [3, 5, 2, 5, 5]
    # g0: min kept 2 -> lo = 4 = hi -> 4; g1: 6 -> nearest 8 (half up); g2: size 3 < 4 -> stays 3;
    # g3: 7 -> 8; g4: 5 -> 4
    assert round_kept_counts(kept, sizes, limits, 4).tolist() == [4, 8, 3, 8, 4]
    assert round_kept_counts([8, 3], [8, 8], [5, 5], 4).tolist() == [8, 4]  # 3 -> lo 4 (limit)
    assert round_kept_counts([7], [9], [6], 4).tolist() == [8]
    assert round_kept_counts([9], [9], [6], 4).tolist() == [9]  # untouched group keeps its size
    with pytest.raises(ValueError, match="round_to"):
        round_kept_counts([1], [2], [1], 0)


def test_round_to_adjusts_removed_set():
    # g0 = 0.01..0.08, g1 = 0.015..0.085 interleave; limit 5 each; dense = 80 + 240 + 20 = 340.
    sal = torch.tensor([0.01 * i for i in range(1, 9)] + [0.01 * i + 0.005 for i in range(1, 9)])
    plain = select_subnetwork(sal, [8, 8], linear_cost, 0.1, per_channel_mac_cost=[0.0, 0.0])
    assert plain.kept_counts == [7, 7] and plain.reduction == pytest.approx(40 / 340)
    # With round_to=4 prefixes 1..4 round back to (8, 8); prefix 5 = (5, 6) -> (4, 8): cost 300.
    sel = select_subnetwork(sal, [8, 8], linear_cost, 0.1, per_channel_mac_cost=[0.0, 0.0], round_to=4)
    assert sel.prefix_length == 5
    assert sel.kept_counts == [4, 8]
    assert sel.reduction == pytest.approx(40 / 340)
    # g0's 4 least salient go (c3 is the extra one), g1's prefix channels c0, c1 are restored
    assert sel.removal_mask.tolist() == [True] * 4 + [False] * 12
    assert [k.tolist() for k in sel.kept_indices] == [[4, 5, 6, 7], list(range(8))]


def test_unreachable_target_names_options():
    with pytest.raises(ValueError, match=r"at most 0\.4444.*layer_limit"):
        select_subnetwork(SAL, [4, 4], linear_cost, 0.5, per_channel_mac_cost=[0.0, 0.0])
    with pytest.raises(ValueError, match="reduction must be in"):
        select_subnetwork(SAL, [4, 4], linear_cost, 1.0, per_channel_mac_cost=[0.0, 0.0])
    with pytest.raises(ValueError, match="saliency"):
        select_subnetwork(SAL[:7], [4, 4], linear_cost, 0.2, per_channel_mac_cost=[0.0, 0.0])
    with pytest.raises(ValueError, match="NaN"):
        select_subnetwork(
            torch.full((8,), float("nan")), [4, 4], linear_cost, 0.2, per_channel_mac_cost=[0.0, 0.0]
        )


def _brute_force(sal, sizes, cost, target, pcm, round_to):
    """Linear scan over prefix lengths with plain Python sorting (the specification, slowly)."""
    share = cost_share(pcm).numpy()
    limits = layer_limits(sizes)
    offs = np.cumsum([0] + sizes)
    adj = [float(np.float32(sal[i]) * np.float32(1 - share[g])) for g in range(len(sizes)) for i in range(offs[g], offs[g + 1])]
    cands = []
    for g in range(len(sizes)):
        members = sorted(range(offs[g], offs[g + 1]), key=lambda i: (adj[i], i))
        cands += members[: limits[g]]
    cands.sort(key=lambda i: (adj[i], i))
    gid = np.repeat(np.arange(len(sizes)), sizes)
    dense = cost(sizes)
    for p in range(len(cands) + 1):
        kept = np.array(sizes) - np.bincount(gid[cands[:p]], minlength=len(sizes))
        if round_to:
            kept = round_kept_counts(kept, sizes, limits, round_to)
        red = 1 - cost(kept.tolist()) / dense
        if red >= target - 1e-12:
            return p, kept.tolist(), red
    return None


@pytest.mark.parametrize("seed", range(12))
def test_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    sizes = [int(x) for x in rng.integers(1, 20, size=int(rng.integers(2, 6)))]
    a = [int(x) for x in rng.integers(1, 9, size=len(sizes))]
    f = chain_cost(a)
    sal = torch.from_numpy(rng.choice([0.1, 0.2, 0.3, 0.5], size=sum(sizes)).astype(np.float32))
    pcm = per_channel_cost(f, sizes)
    round_to = [None, 2, 4][seed % 3]
    target = float(rng.uniform(0.05, 0.5))
    expected = _brute_force(sal.numpy(), sizes, f, target, pcm, round_to)
    if expected is None:
        with pytest.raises(ValueError, match="unreachable"):
            select_subnetwork(sal, sizes, f, target, per_channel_mac_cost=pcm, round_to=round_to)
        return
    sel = select_subnetwork(sal, sizes, f, target, per_channel_mac_cost=pcm, round_to=round_to)
    assert (sel.prefix_length, sel.kept_counts) == expected[:2]
    assert sel.reduction == pytest.approx(expected[2])
    assert int(sel.removal_mask.sum()) == sum(sizes) - sum(sel.kept_counts)


def test_resnet50_sized_search_is_fast():
    rng = np.random.default_rng(0)
    sizes = [int(x) for x in rng.choice([64, 128, 256, 512, 1024, 2048], size=50)]
    sizes = [max(1, s * 20000 // sum(sizes)) for s in sizes]
    f = chain_cost([int(x) for x in rng.integers(1, 50, size=50)])
    pcm = per_channel_cost(f, sizes)
    sal = torch.rand(sum(sizes), generator=torch.Generator().manual_seed(0))
    sel = select_subnetwork(sal, sizes, f, 0.5, per_channel_mac_cost=pcm)
    assert 0.5 <= sel.reduction and sel.within_tolerance
    times = []
    for _ in range(20):
        t0 = time.perf_counter()
        select_subnetwork(sal, sizes, f, 0.5, per_channel_mac_cost=pcm)
        times.append(time.perf_counter() - t0)
    # ~1 ms on a 2-core CI box (incl. ~16 calls of this Python cost function); loose bound vs noise
    assert sorted(times)[len(times) // 2] < 0.02


# -- stability indicator ------------------------------------------------------------------------

EPOCHS = [
    [[0, 1, 2], [0, 1]],
    [[0, 1, 3], [0, 1]],
    [[0, 1, 2], [0, 2]],  # vs t-2: g0 1, g1 {0,2}/{0,1} = 1/3 -> sim 2/3
    [[0, 1, 3], [0, 2]],  # vs t-2: 1, 1/3 -> 2/3
    [[0, 1, 2], [0, 2]],  # vs t-2: 1, 1 -> 1
    [[0, 1, 2], [0, 2]],  # vs t-2: {0,1,2}/{0,1,3} = 2/4, 1 -> 0.75
]
SIMS = [0.0, 0.0, 2 / 3, 2 / 3, 1.0, 0.75]
PSI = [0.0, 0.0, 2 / 9, 4 / 9, 7 / 9, (2 / 3 + 1 + 0.75) / 3]


def test_jaccard_per_group():
    assert jaccard_per_group([[0, 1, 2], [0, 2]], [[0, 1, 3], [0, 1]]) == pytest.approx([0.5, 1 / 3])
    assert jaccard_per_group([torch.tensor([5])], [[5]]) == [1.0]
    assert jaccard_per_group([[]], [[]]) == [1.0]


def test_indicator_values_over_epochs():
    tr = StabilityTracker()
    for t, net in enumerate(EPOCHS):
        psi = tr.update([torch.tensor(s) for s in net] if t % 2 else net)
        assert psi == pytest.approx(PSI[t])
    assert tr.sims == pytest.approx(SIMS)
    assert tr.history == pytest.approx(PSI)
    assert not tr.is_stable(0.999)
    for _ in range(2):
        tr.update(EPOCHS[-1])
    assert tr.history[-1] == pytest.approx((0.75 + 1 + 1) / 3)
    tr.update(EPOCHS[-1])
    assert tr.history[-1] == 1.0 and tr.is_stable(0.999) and tr.is_stable(1.0)
    with pytest.raises(ValueError, match="groups"):
        tr.update([[0]])


def test_tracker_state_roundtrip_weights_only():
    full, part = StabilityTracker(), StabilityTracker()
    for net in EPOCHS[:4]:
        full.update(net)
        part.update(net)
    buf = io.BytesIO()
    torch.save(part.state_dict(), buf)
    buf.seek(0)
    resumed = StabilityTracker()
    resumed.load_state_dict(torch.load(buf, weights_only=True))
    assert resumed.history == part.history
    for net in EPOCHS[4:]:
        assert resumed.update(net) == full.update(net)
    assert resumed.history == full.history


# -- sl_start="auto" ----------------------------------------------------------------------------


def test_auto_sl_start_plateau():
    # indicator by epoch, monitoring from epoch 2
    psi = [0.0, 0.0, 0.0, 0.0, 0.2, 0.3, 0.30005, 0.30008, 0.5]
    fired = [e for e in range(len(psi)) if auto_sl_start(psi[: e + 1], e)]
    # epoch 6: 0.30005 - 0.2 > 1e-4; epoch 7: 0.30008 - 0.3 = 8e-5 <= 1e-4 -> first plateau
    assert fired[0] == 7
    assert not auto_sl_start([0.0, 0.0, 0.0, 0.0], 3)  # never at or before epoch 3
    assert auto_sl_start([0.0, 0.0, 0.0, 0.0, 0.0], 4)  # flat at 0 counts (published behaviour)
    assert auto_sl_start([0.5, 0.6, 0.4], 9)  # a fall counts as a plateau
    # a history that starts at monitor_start: missing earlier epochs are psi = 0
    assert not auto_sl_start([0.2], 4)
    assert not auto_sl_start([0.0, 0.2], 5)
    assert auto_sl_start([0.0, 0.0], 5)
