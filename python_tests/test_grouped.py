"""Grouped convolutions (issue 10, item 1): the same within-group positions in every conv group.

(``test_torchvision.py`` prunes resnext50_32x4d and regnet_y_400mf exactly.)"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
import torchvision

from oneprune_ext import ops, reference
from oneprune_ext.pruning.compaction import prune_channels
from oneprune_ext.graph.cost import CostModel
from oneprune_ext.graph.trace import channel_multiplicity, trace_groups
from oneprune_ext.kernels.layout import ChannelLayout
from oneprune_ext.pruning.selection import layer_limits, round_kept_counts, select_subnetwork

import _torchvision_cases as tv
from _pruning_cases import counted_macs


@pytest.mark.parametrize("name", ["resnext50_32x4d", "regnet_y_400mf", "regnet_x_400mf"])
def test_group_count_close_to_torch_pruning(name: str) -> None:
    pytest.importorskip("torch_pruning")
    model, x = tv.build(name)
    ours = len(trace_groups(model, x))
    theirs = tv._tp_count(model, x)
    assert abs(ours - theirs) <= 0.1 * theirs, (ours, theirs)


def _resnext() -> tuple[nn.Module, torch.Tensor]:
    """A small ResNeXt (one bottleneck per stage, 32 conv groups of 4 in stage 1)."""
    torch.manual_seed(0)
    model = torchvision.models.resnet.ResNet(torchvision.models.resnet.Bottleneck, [1, 1, 1, 1], groups=32,
                                             width_per_group=4, num_classes=10)
    return model.eval(), torch.randn(1, 3, 32, 32)


def test_every_conv_group_keeps_the_same_count() -> None:
    model, x = _resnext()
    groups = trace_groups(model, x)
    by = {g.name: g for g in groups}
    g = by["layer1.0.conv1"]  # conv1's output = conv2's input: 32 conv groups of 4
    assert g.size == 4
    rows = sorted(s.offset for s in g.slices if (s.name, s.dim) == ("layer1.0.conv1.weight", 0))
    assert rows == list(range(0, 128, 4))
    assert [s.offset for s in g.slices if (s.name, s.dim) == ("layer1.0.conv2.weight", 1)] == [0]
    mult = channel_multiplicity(groups)
    assert mult[groups.groups.index(g)] == 32
    assert mult[groups.groups.index(by["layer1.0.conv3"])] == 1  # (the residual stream)
    keep = {i: list(range(0, grp.size, 2)) for i, grp in enumerate(groups)}
    prune_channels(model, groups, keep)
    conv2 = model.layer1[0].conv2
    assert conv2.groups == 32 and conv2.in_channels == conv2.out_channels == 64
    assert tuple(conv2.weight.shape) == (64, 2, 3, 3)
    model(x)


def test_saliency_combines_a_position_across_conv_groups() -> None:
    model, x = _resnext()
    groups = trace_groups(model, x)
    layout = ChannelLayout(model, groups)
    gi = [g.name for g in groups].index("layer1.0.conv1")
    sq, sal = ops.grouped_norms(layout)
    ref_sq, ref_sal = reference.grouped_norms(layout)
    torch.testing.assert_close(sq, ref_sq)
    torch.testing.assert_close(sal, ref_sal)
    # position p of the group: rows p, 4 + p, ... of conv1 (and bn1), column p of conv2
    w1 = model.layer1[0].conv1.weight.detach()
    w2 = model.layer1[0].conv2.weight.detach()
    bn = model.layer1[0].bn1.weight.detach()
    p = 3
    expected = w1[p::4].square().sum() + bn[p::4].square().sum() + w2[:, p].square().sum()
    torch.testing.assert_close(sq[groups.offsets[gi] + p], expected)


def test_layer_limit_and_round_to_count_layer_channels() -> None:
    # 32 conv groups of 4: the per-layer limit is taken on the layer's 128 channels
    assert layer_limits([4], 0.75) == [2]
    assert layer_limits([4], 0.75, multiplicity=[32]) == [3]
    assert layer_limits([64, 4], 0.75, multiplicity=[1, 32]) == [48, 3]
    # round_to=8: 32 * k is always a multiple of 8, so any k is fine there
    kept = round_kept_counts([3, 3], [4, 4], [3, 3], 8, multiplicity=[32, 1])
    assert kept.tolist() == [3, 4]
    kept = round_kept_counts([5, 5], [12, 12], [9, 9], 8, multiplicity=[2, 1])
    assert kept.tolist() == [4, 8]  # 2 * 4 = 8 channels; a plain group needs a multiple of 8


def test_selection_on_resnext_keeps_layers_whole() -> None:
    model, x = _resnext()
    groups = trace_groups(model, x)
    cost = CostModel(model, groups, x)
    mult = channel_multiplicity(groups)
    sal = torch.rand(groups.num_channels)
    sel = select_subnetwork(sal, groups.sizes, cost.macs, 0.5, per_channel_mac_cost=cost.macs_per_channel,
                            round_to=8, multiplicity=mult)
    assert sel.reduction >= 0.5
    limits = layer_limits(groups.sizes, 0.75, multiplicity=mult)
    for k, size, m, lim in zip(sel.kept_counts, groups.sizes, mult, limits):
        assert size - k <= lim
        assert k == size or (m * k) % 8 == 0
    prune_channels(model, groups, {i: t.tolist() for i, t in enumerate(sel.kept_indices)})
    with torch.no_grad(), torch.utils.flop_counter.FlopCounterMode(display=False) as fc:
        model.eval()(x)
    assert fc.get_total_flops() // 2 == sel.cost
    for m in model.modules():
        if isinstance(m, nn.Conv2d) and m.groups > 1:
            assert m.in_channels % m.groups == 0 and m.out_channels % 8 == 0
    assert np.all(np.asarray(sel.kept_counts) >= 1)


def _tiny_vit() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = torchvision.models.VisionTransformer(image_size=16, patch_size=8, num_layers=1, num_heads=2,
                                                 hidden_dim=16, mlp_dim=32, num_classes=4)
    return model, torch.randn(4, 3, 16, 16)


@pytest.mark.parametrize("build", [_resnext, _tiny_vit], ids=["resnext", "vit"])
def test_one_cycle_pruner_on_grouped_and_attention_models(build) -> None:
    """The whole loop (fused regularizer on many slices per tensor, search, prune) on models with
    grouped convs and attention heads."""
    from oneprune_ext.pruning.pruner import OneCyclePruner

    model, x = build()
    x = x.expand(4, *x.shape[1:]).clone()
    y = torch.randint(0, 4, (4,))
    pruner = OneCyclePruner(model, x, reduction=0.3, total_epochs=4, monitor_start=0, sl_start=0, sl_end=2,
                            regularizer="both")
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    for epoch in range(4):
        pruner.epoch_start(epoch)
        for _ in range(2):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x)[:, :4], y)
            loss.backward()
            del loss
            pruner.before_step()
            opt.step()
            pruner.after_step(0.01)
        pruner.epoch_end(epoch, opt)
    assert pruner.pruned
    assert pruner.macs() <= pruner.dense_macs * (1 - 0.3) + 1
    assert counted_macs(model, x) == pruner.macs()  # attention included (fast path off)
    for m in model.modules():
        if isinstance(m, nn.Conv2d) and m.groups > 1:
            assert m.in_channels % m.groups == 0 and m.out_channels % m.groups == 0
        if isinstance(m, nn.MultiheadAttention):
            assert m.embed_dim % m.num_heads == 0 and m.head_dim * m.num_heads == m.embed_dim
