"""Bad input to the cost model, the tracer and the ops' scalar arguments (issue 11, item 5; the
cost-model and tracing rows of the README's "what happens on bad input" table).

``CostModel.macs`` / ``.params`` (and the ``_many`` forms) take one whole number per group in
``[0, group size]``: anything else (negative, too large, bool, float, None, wrong length) is a
``ValueError`` naming the group, never a silently extrapolated polynomial. ``trace_groups``
refuses bad options, a non-module and example inputs the model's forward cannot run with one
line naming them, and leaves the model's train / eval flags as they were. A non-finite ``eps``
is refused by the group-lasso op like ``reg``; a sparse ``.grad`` by ``prune_channels``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
from hypothesis import given, settings
from hypothesis import strategies as st

from oneprune_ext import models, ops
from oneprune_ext.pruning.compaction import prune_channels
from oneprune_ext.graph.cost import CostModel
from oneprune_ext.graph.trace import UnsupportedOpError, UnsupportedOpWarning, trace_groups
from oneprune_ext.kernels.layout import ChannelLayout

X = torch.randn(1, 64, generator=torch.Generator().manual_seed(0))


# tiny models: on a loaded 2-core machine more threads only add contention
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def cost() -> CostModel:
    torch.manual_seed(0)
    model = models.mlp(64, (16, 12), 10)
    return CostModel(model, trace_groups(model, X), X)


@pytest.mark.parametrize("kept, needle", [
    ([-1, 12], "group 0 (1): kept count -1 is outside [0, 16]"),
    ([16, 13], "group 1 (3): kept count 13 is outside [0, 12]"),
    ([True, 12], "group 0 (1): kept count True is not an int (bool)"),
    ([16.0, 12], "kept count 16.0 is not an int (float)"),
    ([np.float32(3), 12], "is not an int (float32)"),
    ([torch.tensor(True), 12], "is not an int (Tensor)"),
    ([None, 12], "is not an int (NoneType)"),
    ([16], "expected 2 kept counts"),
    ([16, 12, 1], "expected 2 kept counts"),
    (16, "kept must be a sequence of 2 ints"),
    ("ab", "kept must be a sequence of 2 ints"),
])
@pytest.mark.parametrize("method", ["macs", "params"])
def test_bad_kept_counts_are_refused_naming_the_group(cost: CostModel, method: str, kept, needle: str) -> None:
    with pytest.raises(ValueError) as e:
        getattr(cost, method)(kept)
    msg = str(e.value)
    assert msg.startswith(f"CostModel.{method}: ") and needle in msg and "\n" not in msg


@pytest.mark.parametrize("K, needle", [
    (np.array([[1.0, 2.0]]), "must be integers, got dtype float64"),
    (np.array([[True, False]]), "must be integers, got dtype bool"),
    (np.array([[1, 2], [17, 2]]), "group 0 (1): kept count 17 (row 1) is outside [0, 16]"),
    ([[1, 2], [3, -1]], "group 1 (3): kept count -1 (row 1) is outside [0, 12]"),
    (np.array([1, 2]), "expected shape [B, 2]"),
])
@pytest.mark.parametrize("method", ["macs_many", "params_many"])
def test_bad_candidate_arrays_are_refused(cost: CostModel, method: str, K, needle: str) -> None:
    with pytest.raises(ValueError, match=None) as e:
        getattr(cost, method)(K)
    assert str(e.value).startswith(f"CostModel.{method}: ") and needle in str(e.value)


INT_LIKE = st.one_of(st.integers(-3, 20), st.integers(-3, 20).map(np.int64), st.integers(-3, 20).map(torch.tensor))
ANY_COUNT = st.one_of(INT_LIKE, st.booleans(), st.floats(-3, 20), st.none())


@settings(max_examples=150, deadline=None)
@given(kept=st.lists(ANY_COUNT, min_size=0, max_size=3))
def test_any_counts_give_the_polynomial_or_a_refusal(cost: CostModel, kept: list) -> None:
    """Valid counts (whole numbers within the sizes, any int type) give the same exact int as
    plain ints; everything else is refused. Never a value for a count outside the model."""
    def whole(k) -> bool:
        if isinstance(k, torch.Tensor):
            return k.dtype != torch.bool and not k.dtype.is_floating_point
        return isinstance(k, (int, np.integer)) and not isinstance(k, bool)

    valid = len(kept) == 2 and all(whole(k) and 0 <= int(k) <= s for k, s in zip(kept, cost.sizes))
    for method, many in (("macs", "macs_many"), ("params", "params_many")):
        if valid:
            value = getattr(cost, method)(kept)
            plain = [int(k) for k in kept]
            assert value == getattr(cost, method)(plain) == int(getattr(cost, many)(np.array([plain]))[0])
            assert isinstance(value, int)
        else:
            with pytest.raises(ValueError, match=f"CostModel.{method}: "):
                getattr(cost, method)(kept)


def test_zero_and_full_counts_are_accepted(cost: CostModel) -> None:
    assert cost.macs(cost.sizes) == cost.dense_macs and cost.params(cost.sizes) == cost.dense_params
    assert 0 <= cost.macs([0, 0]) < cost.dense_macs


# ------------------------------------------------------------------------------------ tracing


class _Shuffle(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.a(x)
        n, c, h, w = x.shape
        return self.b(x.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w))


class _DataDependent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.a(x) if x.sum() > 0 else -self.a(x)


def test_unsupported_places_are_kept_fixed_and_listed() -> None:
    with pytest.warns(UnsupportedOpWarning, match="(?s)kept channels fixed at 1 place.*splits or mixes the channel dim.*kept fixed: a"):
        groups = trace_groups(_Shuffle(), torch.randn(1, 3, 4, 4))
    assert len(groups) == 0  # the shuffled conv's channels are not pruned


@pytest.mark.parametrize("call, exc, needle", [
    (lambda m: trace_groups(m, X, on_unsupported="ignore"), ValueError, "on_unsupported must be 'freeze' or 'error'"),
    (lambda m: trace_groups(m, X, saliency_params="some"), ValueError, "saliency_params must be 'published' or 'all'"),
    (lambda m: trace_groups(m, X, ignored_layers=[nn.Linear(2, 2)]), ValueError, "ignored_layers entry Linear is not"),
    (lambda m: trace_groups(m, X, ignored_layers=["fc"]), ValueError, "ignored_layers entry str is not"),
    (lambda m: trace_groups(lambda t: t, X), TypeError, "model must be an nn.Module, got function"),
    (lambda m: trace_groups(m, torch.randn(1, 3)), ValueError, "forward fails on the example inputs (tensor of shape [1, 3])"),
    (lambda m: trace_groups(m, (X, X)), ValueError, "forward takes 1 positional input(s), got 2"),
    (lambda m: trace_groups(m, "x"), ValueError, "forward fails on the example inputs (str)"),
    (lambda m: trace_groups(_Shuffle(), torch.randn(1, 3, 4, 4), on_unsupported="error"), UnsupportedOpError,
     "splits or mixes the channel dim"),
    (lambda m: trace_groups(_DataDependent(), torch.randn(1, 5, 4, 4)), ValueError,
     "forward fails on the example inputs (tensor of shape [1, 5, 4, 4])"),
], ids=["on_unsupported", "saliency_params", "foreign-layer", "layer-name", "not-a-module", "input-shape",
        "input-count", "input-type", "unsupported-error", "untraceable-bad-input"])
def test_tracing_refuses_bad_input_and_leaves_the_model(call, exc, needle: str) -> None:
    torch.manual_seed(0)
    model = models.mlp(64, (16, 12), 10).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(exc) as e:
        call(model)
    assert needle in str(e.value) and str(e.value).startswith("trace_groups: ")
    assert all(m.training for m in model.modules())  # train / eval flags restored
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


# ------------------------------------------------------------------------------------ op scalars, grads


@pytest.mark.parametrize("eps", [float("nan"), float("inf"), -1.0, 0.0])
def test_group_lasso_refuses_a_bad_eps(eps: float) -> None:
    torch.manual_seed(0)
    model = models.mlp(64, (16, 12), 10)
    layout = ChannelLayout(model, trace_groups(model, X))
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    before = [(p.detach().clone(), p.grad.clone()) for p in model.parameters()]
    with pytest.raises(ValueError, match="eps must be positive and finite"):
        ops.group_lasso_grad_(layout, torch.ones(layout.num_channels, dtype=torch.bool), 0.1, eps=eps)
    assert all(torch.equal(p.detach(), d) and torch.equal(p.grad, g) for p, (d, g) in zip(model.parameters(), before))


def test_prune_refuses_a_sparse_grad() -> None:
    torch.manual_seed(0)
    model = models.mlp(64, (16, 12), 10)
    groups = trace_groups(model, X)
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    model[1].weight.grad = model[1].weight.grad.to_sparse()
    before = [(p, p.detach().clone()) for p in model.parameters()]
    with pytest.raises(ValueError, match=r"\.grad of '1\.weight' \(torch.sparse_coo.*set_to_none=True"):
        prune_channels(model, groups, {0: [0, 1]})
    assert all(q is p and torch.equal(q.detach(), d) and q.grad is not None
               for (p, d), q in zip(before, model.parameters()))
