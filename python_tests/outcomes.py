"""What a one-cycle run guarantees, as assertions for the tests that train.

A CPU training run is deterministic on one machine, not across machines: oneDNN picks other
convolution kernels for each instruction set (``ONEDNN_MAX_CPU_ISA``, or simply another CPU), so
the floats differ in their last bits, the chaotic training amplifies that, and which channel of
the saliency ranking crosses the target, the exact accuracy and the prune epoch differ. A test of
a training outcome therefore asserts what the method guarantees whatever the floats:

* **the target, to one channel**: the selection removes the shortest prefix of the ranking whose
  removal reaches the target, so the reduction reached is at least the target and overshoots it by
  less than the last channel taken costs. A channel costs at most what one channel of its group
  costs in the dense model (costs are sums of products of kept counts, so removing other channels
  only makes it cheaper): :func:`one_channel_share` is the largest such cost, from the exact cost
  model, as a share of the dense cost;
* **a gentle prune**: with enough shrink (``reg="auto"`` follows the published curve on any
  schedule) the removed channels hold almost none of the weight norm right before the prune, so the
  prune costs (almost) no accuracy: :func:`assert_gentle_prune`;
* **accuracy near dense**: within a stated margin of a dense run of the same length and seed.

``ONEPRUNE_TEST_SEED`` (default 0) replaces the arbitrary seed of the training-outcome tests, to
check that they hold for other seeds too.
"""

from __future__ import annotations

import os
from typing import Any, Optional

import torch

from oneprune_ext import CostModel, trace_groups

#: The seed of the training-outcome tests (any seed must do: ``ONEPRUNE_TEST_SEED=3 make test``).
SEED = int(os.environ.get("ONEPRUNE_TEST_SEED", "0"))

#: Largest share of the squared weight norm the removed channels may still hold right before a
#: prune that sparsity learning prepared (the shrink factor ``exp(-S)`` with the published
#: ``S`` of about 8 leaves about 1e-7 of it; a prune without sparsity learning removes ~20 %).
GENTLE_SHARE = 1e-3
#: Largest prune shock (accuracy right before minus right after the prune, points) of a prepared
#: prune: a few test images of the digits split (360 images, 0.28 points each) that sat on a
#: decision boundary. A blind cut of the same channels loses tens of points.
GENTLE_SHOCK = 1.0


def one_channel_share(model: torch.nn.Module, example: Any, metric: str = "macs", groups: Optional[Any] = None
                      ) -> float:
    """Largest cost of one channel, as a share of the dense ``model``'s MACs (or parameters).

    ``groups``: the pruner's channel groups (``pruner.groups`` before the prune); traced from
    ``model`` with default options when omitted. Call it on the dense model, before the prune.
    """
    groups = trace_groups(model, example) if groups is None else groups
    cost = CostModel(model, groups, example)
    if metric == "macs":
        return max(cost.macs_per_channel) / cost.dense_macs
    return max(cost.params_per_channel) / cost.dense_params


def assert_reaches_target(reached: float, target: float, step: float) -> None:
    """``reached`` (fraction removed) is the target or above it by less than one channel (``step``)."""
    assert target - 1e-9 <= reached < target + step + 1e-9, (
        f"reduction {reached:.4f}: expected the target {target} or up to one channel ({step:.4f}) above it")


def assert_gentle_prune(removed_norm_share: Optional[float], prune_shock: Optional[float]) -> None:
    """The removed channels were nearly empty right before the prune, and the prune cost (almost) no
    accuracy (see :data:`GENTLE_SHARE`, :data:`GENTLE_SHOCK`)."""
    assert removed_norm_share is not None and 0 <= removed_norm_share < GENTLE_SHARE, removed_norm_share
    if prune_shock is not None:
        assert prune_shock <= GENTLE_SHOCK, f"the prune cost {prune_shock:.2f} points (removed norm share " \
                                            f"{removed_norm_share:.2e})"
