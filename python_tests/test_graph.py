"""Channel-group tracing (issue 4, items 1-2; issue 10: grouped convs, frozen places, report)."""

from __future__ import annotations

import time
import warnings

import pytest
import torch
import torch.nn as nn
import torchvision

from oneprune_ext.graph.trace import UnsupportedOpError, UnsupportedOpWarning, trace_groups, trace_report
from oneprune_ext import models

from _pruning_cases import CASES, build

EXPECTED_GROUPS = {
    "resnet18": 12,       # stem+layer1 residual, 3 more residual groups, 8 block-internal
    "resnet50": 37,       # stem, 4 residual groups, 32 block-internal
    "vgg16_bn": 15,       # 13 convs + 2 hidden linears of the classifier
    "mobilenet_v2": 25,   # stem, 16 expansions (with their depthwise), 7 stage outputs, last conv
    "densenet121": 120,   # conv0, 58 x (bottleneck, growth), 3 transitions
    "resnet56": 30,       # 3 residual groups + 27 block-internal
    "cifar_vgg16": 13,
    "mlp": 2,
    "digits_cnn": 4,      # stem conv1, residual (stem conv2 + block), block conv1, conv3
    "vit": 3,             # the residual stream (2 heads) + the MLP hidden width of each encoder layer
}


def _check_invariants(model: nn.Module, groups) -> None:
    shapes = {n: tuple(t.shape) for n, t in model.named_parameters()}
    shapes.update({n: tuple(t.shape) for n, t in model.named_buffers()})
    params = dict(model.named_parameters())
    covered: dict[tuple[str, int], list[tuple[int, int]]] = {}
    for g in groups:
        assert g.size > 0 and g.name
        assert g.norm_slices(), g.name
        for s in g.slices:
            assert s.name in shapes, s.name
            assert s.offset + g.size * s.block <= shapes[s.name][s.dim]
            assert s.is_buffer == (s.name not in params)
            if s.is_buffer or s.name.endswith(".bias"):
                assert not s.in_norm
            covered.setdefault((s.name, s.dim), []).append((s.offset, s.offset + g.size * s.block))
    for key, ranges in covered.items():
        ranges.sort()
        for (a0, a1), (b0, b1) in zip(ranges, ranges[1:]):
            assert b0 >= a1, f"overlapping slices in {key}"


@pytest.mark.parametrize("name", list(CASES))
def test_trace_models(name: str) -> None:
    model, x = build(name)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    groups = trace_groups(model, x)
    assert len(groups) == EXPECTED_GROUPS[name]
    _check_invariants(model, groups)
    # the model is untouched: mode, BN statistics, no grads / graphs
    assert model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(p.grad is None for p in model.parameters())
    # the output layer's out channels are never pruned
    last = [m for n, m in model.named_modules() if isinstance(m, nn.Linear)][-1]
    last_name = [n for n, m in model.named_modules() if m is last][0]
    assert all((f"{last_name}.weight", 0) not in g.coupled_params() for g in groups)
    # deterministic
    again = trace_groups(model, x)
    assert [(g.name, g.size, g.slices) for g in again] == [(g.name, g.size, g.slices) for g in groups]


def test_resnet18_residual_group() -> None:
    model, x = build("resnet18")
    groups = trace_groups(model, x)
    g = groups[0]
    assert g.name == "conv1" and g.size == 64
    cp = g.coupled_params()
    for key in [("conv1.weight", 0), ("bn1.weight", 0), ("bn1.running_var", 0), ("layer1.0.conv1.weight", 1),
                ("layer1.0.conv2.weight", 0), ("layer1.1.bn2.bias", 0), ("layer2.0.conv1.weight", 1),
                ("layer2.0.downsample.0.weight", 1)]:
        assert key in cp, key
    names = [g.name for g in groups]
    assert names[:3] == ["conv1", "layer1.0.conv1", "layer1.1.conv1"]  # topological order
    assert "layer2.0.conv2" in names  # residual group of stage 2 (merged with its downsample)
    stage2 = groups[names.index("layer2.0.conv2")]
    assert ("layer2.0.downsample.0.weight", 0) in stage2.coupled_params()
    assert ("fc.weight", 1) in groups[names.index("layer4.0.conv2")].coupled_params()


def test_densenet_concat_offsets() -> None:
    model, x = build("densenet121")
    groups = trace_groups(model, x)
    by_name = {g.name: g for g in groups}
    g = by_name["features.denseblock1.denselayer1.conv2"]
    assert g.size == 32
    sl = {(s.name, s.dim): s for s in g.slices}
    assert sl[("features.denseblock1.denselayer2.norm1.weight", 0)].offset == 64
    assert sl[("features.denseblock1.denselayer2.conv1.weight", 1)].offset == 64
    assert sl[("features.denseblock1.denselayer3.conv1.weight", 1)].offset == 64
    assert sl[("features.transition1.conv.weight", 1)].offset == 64
    g2 = by_name["features.denseblock1.denselayer2.conv2"]
    assert {(s.name, s.offset) for s in g2.slices if s.name.endswith("denselayer3.norm1.running_mean")} == {
        ("features.denseblock1.denselayer3.norm1.running_mean", 96)}
    stem = by_name["features.conv0"]
    assert ("features.norm5.weight", 0) not in stem.coupled_params()  # norm5 follows transition3's concat


def test_mobilenet_depthwise() -> None:
    model, x = build("mobilenet_v2")
    groups = trace_groups(model, x)
    by_name = {g.name: g for g in groups}
    g = by_name["features.2.conv.0.0"]  # expansion conv; its depthwise conv is features.2.conv.1.0
    cp = g.coupled_params()
    assert ("features.2.conv.1.0.weight", 0) in cp and ("features.2.conv.1.0.weight", 1) not in cp
    assert ("features.2.conv.1.1.weight", 0) in cp and ("features.2.conv.2.weight", 1) in cp


def test_flatten_blocks() -> None:
    model, x = build("vgg16_bn")
    groups = trace_groups(model, x)
    last_conv = {g.name: g for g in groups}["features.40"]
    (s,) = [s for s in last_conv.slices if s.name == "classifier.0.weight"]
    assert (s.dim, s.block, s.offset) == (1, 49, 0)
    model, x = build("digits_cnn")
    groups = trace_groups(model, x)
    (s,) = [s for g in groups for s in g.slices if s.name == "fc.weight"]
    assert (s.dim, s.block) == (1, 4)


def test_vit_groups() -> None:
    """The residual stream is one group (2 heads: the same positions in both), then each MLP."""
    model, x = build("vit")
    groups = trace_groups(model, x)
    assert [g.name for g in groups] == ["conv_proj"] + [f"encoder.layers.encoder_layer_{i}.mlp.0" for i in range(2)]
    stream = groups[0]
    assert stream.size == 16  # hidden 32 / 2 heads
    sl = {(s.name, s.dim, s.offset) for s in stream.slices}
    for key in [("conv_proj.weight", 0, 0), ("conv_proj.weight", 0, 16), ("class_token", 2, 16),
                ("encoder.pos_embedding", 2, 0), ("encoder.layers.encoder_layer_0.self_attention.in_proj_weight", 0, 48),
                ("encoder.layers.encoder_layer_0.self_attention.in_proj_weight", 1, 16),
                ("encoder.layers.encoder_layer_1.self_attention.out_proj.weight", 0, 0), ("heads.head.weight", 1, 16),
                ("encoder.ln.weight", 0, 16)]:
        assert key in sl, key
    for i, g in enumerate(groups[1:]):
        assert g.size == 64
        assert g.coupled_params() == {(f"encoder.layers.encoder_layer_{i}.mlp.0.weight", 0),
                                      (f"encoder.layers.encoder_layer_{i}.mlp.0.bias", 0),
                                      (f"encoder.layers.encoder_layer_{i}.mlp.3.weight", 1)}


class _Grouped(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 8, 3, padding=1, groups=2)    # grouped: 2 conv groups of 4
        self.c = nn.Conv2d(8, 16, 3, padding=1, groups=8)   # depthwise with multiplier 2
        self.d = nn.Conv2d(16, 6, 1)
        self.e = nn.Conv2d(6, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.e(torch.relu(self.d(self.c(self.b(self.a(x))))))


def test_grouped_conv_positions() -> None:
    """A grouped conv's input and output lose the same within-group positions in every group."""
    groups = trace_groups(_Grouped(), torch.randn(1, 3, 8, 8))
    by = {g.name: g for g in groups}
    # b's output feeds c, whose 8 conv groups have one input channel each: nothing prunable there
    assert list(by) == ["a", "c", "d"]
    a = by["a"]
    assert a.size == 4  # a channel = one position in each of b's two conv groups
    assert {(s.name, s.dim, s.offset) for s in a.slices} == {
        ("a.weight", 0, 0), ("a.weight", 0, 4), ("a.bias", 0, 0), ("a.bias", 0, 4), ("b.weight", 1, 0)}
    c = by["c"]
    assert c.size == 2  # c's 8 conv groups have 2 outputs each
    assert sorted(s.offset for s in c.slices if (s.name, s.dim) == ("c.weight", 0)) == list(range(0, 16, 2))
    assert sorted(s.offset for s in c.slices if (s.name, s.dim) == ("d.weight", 1)) == list(range(0, 16, 2))


class _Rolled(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.roll(self.conv(x), 1, dims=1))


class _Custom(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.norm = nn.GroupNorm(2, 8)
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.conv(x)))


def test_unknown_ops_are_frozen_and_reported() -> None:
    x = torch.randn(1, 3, 8, 8)
    m = _Rolled()
    with pytest.warns(UnsupportedOpWarning, match=r"torch.roll at node 'roll'.*kept fixed: conv") as rec:
        assert len(trace_groups(m, x)) == 0
    assert len(rec) == 1
    report = rec[0].message.report
    assert [(p.op, p.frozen) for p in report.frozen] == [("torch.roll", ("conv",))]
    with pytest.raises(UnsupportedOpError, match=r"torch.roll.*kept fixed: conv"):
        trace_groups(m, x, on_unsupported="error")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(trace_groups(m, x, ignored_layers=[m.conv])) == 0
    c = _Custom()
    with pytest.raises(UnsupportedOpError, match=r"GroupNorm at module 'norm'.*kept fixed: conv"):
        trace_groups(c, x, on_unsupported="error")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(trace_groups(c, x, ignored_layers=[c.norm])) == 0  # black box: its input stays
    with pytest.raises(ValueError, match="on_unsupported"):
        trace_groups(c, x, on_unsupported="ignore")
    with pytest.raises(ValueError, match="saliency_params"):
        trace_groups(c, x, saliency_params="some")


def test_ignored_layers() -> None:
    model, x = build("resnet18")
    groups = trace_groups(model, x, ignored_layers=[model.layer1[0].conv1, model.layer4])
    names = [g.name for g in groups]
    assert "layer1.0.conv1" not in names and "layer1.1.conv1" in names
    assert not any(n.startswith("layer4") for n in names)
    # layer4 is a black box: its input (the stage-3 residual group) stays too
    assert not any(("layer4.0.conv1.weight", 1) in g.coupled_params() for g in groups)
    with pytest.raises(ValueError, match="not a submodule"):
        trace_groups(model, x, ignored_layers=[nn.Conv2d(1, 1, 1)])


def test_trace_resnet50_speed() -> None:
    model = torchvision.models.resnet50(weights=None)
    x = torch.randn(1, 3, 64, 64)
    trace_groups(model, x)  # warm-up
    t = time.perf_counter()
    trace_groups(model, x)
    assert time.perf_counter() - t < 10.0


def test_models_shapes() -> None:
    assert models.resnet56()(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert models.vgg16()(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert models.digits_cnn(width=4)(torch.randn(2, 1, 8, 8)).shape == (2, 10)
    assert models.mlp()(torch.randn(2, 1, 8, 8)).shape == (2, 10)
    assert sum(p.numel() for p in models.resnet56().parameters()) == pytest.approx(0.86e6, rel=0.02)


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2", "densenet121", "vit"])
def test_shape_pass_without_arithmetic(name: str) -> None:
    """Tracing skips conv / linear / attention arithmetic (zeros of the right shape) and passes
    norms and activations through: every recorded shape equals a real run's."""
    from oneprune_ext.graph import trace as g

    model, x = build(name)
    graph, _ = g.trace_graph(model)
    modules = dict(model.named_modules())
    fast = g._record_shapes(model, graph, (x,), modules)
    real: dict = {}
    with torch.no_grad():
        g.run_graph(model.eval(), graph, (x,), modules, lambda n, v, a, k: real.__setitem__(n, g._to_meta(v)))
    assert fast == real


class _Checks(nn.Module):
    """A forward that looks at values: the zeros of the fast shape pass fail it, the real run not."""

    def __init__(self) -> None:
        super().__init__()
        self.probe = nn.Conv2d(3, 1, 1)
        self.conv = nn.Conv2d(3, 8, 3)
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        torch._assert(self.probe(x).abs().sum() > 0, "all-zero input")
        return self.head(self.conv(x))


def test_shape_pass_falls_back_to_a_real_run() -> None:
    torch.manual_seed(0)
    report = trace_report(_Checks(), torch.randn(1, 3, 6, 6))
    assert [g.name for g in report.groups] == ["conv"]
    assert report.frozen_groups() == ["probe"]  # its sum over channels feeds the assert
