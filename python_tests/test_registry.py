"""The layer registry: lookups, adding a layer type (one entry + this test), saliency_params."""

from __future__ import annotations

import copy

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from torch.utils.flop_counter import FlopCounterMode

from oneprune_ext.graph import registry
from oneprune_ext.pruning.compaction import prune_channels
from oneprune_ext.graph.cost import CostModel
from oneprune_ext.graph.trace import trace_groups
from oneprune_ext.kernels.layout import ChannelLayout
from oneprune_ext.graph.registry import LayerEntry, module_entry, register_module
from oneprune_ext.storage.saving import load_pruned, save_pruned, structure_record

from _pruning_cases import build, zero_removed


def test_lookups() -> None:
    conv = module_entry(nn.Conv2d(2, 2, 1))
    assert conv is not None and conv is module_entry(nn.Conv1d(2, 2, 1))
    # subclasses use their base's entry: torchvision's LayerNorm2d, MHA's out_proj
    assert module_entry(torchvision.models.convnext.LayerNorm2d(4)) is module_entry(nn.LayerNorm(4))
    assert module_entry(nn.MultiheadAttention(4, 2).out_proj) is module_entry(nn.Linear(2, 2))
    # optional packages are registered by qualified name
    assert registry.function_entry(torchvision.ops.stochastic_depth) is registry.function_entry(F.relu)
    assert module_entry(torchvision.models.VisionTransformer(32, 8, 1, 2, 8, 16)).size_attrs == {
        "hidden_dim": ("conv_proj.weight", 0)}
    assert module_entry(nn.Module()) is None
    assert registry.method_entry("view") is not None and registry.method_entry("no_such_method") is None
    # a registered class of its own with a coupling rule is one node for the tracer; LayerNorm2d is not
    assert not registry.is_registered_leaf(torchvision.models.convnext.LayerNorm2d(4))


# -- the module docstring's recipe: one entry plus this test ------------------------------


class Scale(nn.Module):
    """Multiplies each channel of [N, C, H, W] by a learned weight."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features
        self.weight = nn.Parameter(torch.rand(num_features) + 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight.view(1, -1, 1, 1)


def _couple_scale(ctx, call):
    x = call.info(0, "input")
    if x.dim is not None and x.dim != 1:
        return ctx.unsupported(call.inputs(), "expects channels on dim 1")
    ctx.attach(x, f"{call.module_name}.weight", 0)
    return x


register_module(Scale, entry=LayerEntry(
    "Scale", _couple_scale, in_published_saliency=False,
    update_attrs=lambda m: setattr(m, "num_features", int(m.weight.shape[0])),
    record_attrs=("num_features",)))


class _WithScale(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.scale = Scale(8)
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.scale(self.conv(x))))


def test_adding_a_layer_type(tmp_path) -> None:
    torch.manual_seed(0)
    model, x = _WithScale().eval(), torch.randn(2, 3, 6, 6)
    groups = trace_groups(model, x)
    assert [g.name for g in groups] == ["conv"]
    assert ("scale.weight", 0) in groups[0].coupled_params()
    assert not [s for s in groups[0].slices if s.name == "scale.weight"][0].in_norm  # published saliency
    cost = CostModel(model, groups, x)
    keep = {0: [0, 2, 3, 7]}
    ref = copy.deepcopy(model)
    zero_removed(ref, groups, keep)
    prune_channels(model, groups, keep)
    assert model.scale.num_features == 4  # update_attrs
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x))
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        model(x)
    assert cost.macs([4]) == fc.get_total_flops() // 2
    assert structure_record(model)["layers"]["scale"] == {"type": "Scale", "num_features": 4}
    save_pruned(model, tmp_path / "m.pt")
    fresh = load_pruned(_WithScale(), tmp_path / "m.pt")
    assert fresh.scale.num_features == 4
    with torch.no_grad():
        torch.testing.assert_close(fresh.eval()(x), model(x))


def test_saliency_params_published_and_all() -> None:
    """Published: depthwise-conv (and LayerNorm, layer-scale) weights are only compacted."""
    model, x = build("mobilenet_v2")
    published = trace_groups(model, x)
    everything = trace_groups(model, x, saliency_params="all")
    assert [(g.name, g.size) for g in published] == [(g.name, g.size) for g in everything]
    depthwise = {f"{n}.weight" for n, m in model.named_modules()
                 if isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels}
    assert depthwise
    params = dict(model.named_parameters())
    for g_pub, g_all in zip(published, everything):
        for a, b in zip(g_pub.slices, g_all.slices):
            assert (a.name, a.dim, a.offset, a.block) == (b.name, b.dim, b.offset, b.block)
            weight = not a.is_buffer and not a.name.endswith(".bias")
            assert b.in_norm == weight  # "all": every weight slice counts
            assert a.in_norm == (weight and a.name not in depthwise)
    dw_slices = [s for g in published for s in g.slices if s.name in depthwise]
    assert dw_slices and not any(s.in_norm for s in dw_slices)
    # the saliency differs only through the depthwise weights: compare with the kernels' reference
    from oneprune_ext import reference
    pub, _ = reference.grouped_norms(ChannelLayout(model, published))
    every, _ = reference.grouped_norms(ChannelLayout(model, everything))
    g = published.groups.index(next(g for g in published if any(s.name in depthwise for s in g.slices)))
    lo, hi = published.offsets[g], published.offsets[g + 1]
    extra = sum(params[s.name].detach().float().flatten(1)[s.offset: s.offset + published[g].size].square().sum(1)
                for s in published[g].slices if s.name in depthwise)
    torch.testing.assert_close(every[lo:hi] - pub[lo:hi], extra)
