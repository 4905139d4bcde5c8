"""Exact MAC / parameter cost model (issue 4, item 3)."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from oneprune_ext.pruning.compaction import prune_channels
from oneprune_ext.graph.cost import CostModel
from oneprune_ext.graph.trace import trace_groups

from _pruning_cases import CASES, build, counted_macs, random_keep


def _counted_macs(model: torch.nn.Module, x: torch.Tensor) -> int:
    model.eval()
    return counted_macs(model, x)  # FlopCounterMode where it sees attention (fast path off)


@pytest.mark.parametrize("name", list(CASES))
def test_cost_matches_flop_counter_after_pruning(name: str) -> None:
    model, x = build(name)
    groups = trace_groups(model, x)
    cost = CostModel(model, groups, x)
    assert cost.dense_macs == _counted_macs(model, x)
    assert cost.dense_params == sum(p.numel() for p in model.parameters())
    keep = random_keep(groups, seed=hash(name) % 1000)
    kept = [len(keep[i]) for i in range(len(groups))]
    predicted = (cost.macs(kept), cost.params(kept))
    prune_channels(model, groups, keep)
    assert predicted == (_counted_macs(model, x), sum(p.numel() for p in model.parameters()))
    assert isinstance(predicted[0], int) and isinstance(predicted[1], int)


@pytest.mark.parametrize("name", ["resnet56", "densenet121", "vit", "mobilenet_v2"])
def test_vectorised_and_marginal(name: str) -> None:
    model, x = build(name)
    groups = trace_groups(model, x)
    cost = CostModel(model, groups, x)
    rng = np.random.default_rng(0)
    sizes = np.array(groups.sizes)
    K = rng.integers(1, sizes + 1, size=(16, len(sizes)))
    assert cost.macs_many(K).tolist() == [cost.macs(k.tolist()) for k in K]
    assert cost.params_many(K).tolist() == [cost.params(k.tolist()) for k in K]
    for gi in range(len(groups)):
        k = list(groups.sizes)
        k[gi] -= 1
        assert cost.macs_per_channel[gi] == cost.dense_macs - cost.macs(k)
        assert cost.params_per_channel[gi] == cost.dense_params - cost.params(k)
    assert cost.macs_per_channel_m[0] == pytest.approx(cost.macs_per_channel[0] / 1e6)
    assert cost.reduction(groups.sizes) == 0.0
    with pytest.raises(ValueError, match="expected"):
        cost.macs([1] * (len(groups) + 1))


def test_cost_on_pruned_model_and_groups() -> None:
    """A cost model built after a prune (from the returned groups) is exact as well."""
    model, x = build("densenet121")
    groups = trace_groups(model, x)
    groups = prune_channels(model, groups, random_keep(groups, seed=3))
    cost = CostModel(model, groups, x)
    assert cost.dense_macs == _counted_macs(model, x)
    keep = random_keep(groups, seed=4)
    kept = [len(keep[i]) for i in range(len(groups))]
    predicted = cost.macs(kept)
    prune_channels(model, groups, keep)
    assert predicted == _counted_macs(model, x)


def test_evaluation_is_fast() -> None:
    model, x = build("resnet50")
    groups = trace_groups(model, x)
    cost = CostModel(model, groups, x)
    kept = [s // 2 for s in groups.sizes]
    cost.macs(kept)
    n = 2000
    t = time.perf_counter()
    for _ in range(n):
        cost.macs(kept)
    per_call = (time.perf_counter() - t) / n
    assert per_call < 1e-3  # typically ~10-30 us on one CPU core
