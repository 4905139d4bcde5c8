"""Coupling rules of the ops issue 10 added, and what the tracer keeps fixed (and reports)."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from torch.utils.flop_counter import FlopCounterMode

from oneprune_ext.graph.trace import UnsupportedOpError, UnsupportedOpWarning, trace_groups, trace_report

from _pruning_cases import prune_against_masked, random_keep


def _macs(model: nn.Module, x: torch.Tensor) -> int:
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        model(x)
    return fc.get_total_flops() // 2


def _prune_and_check(model: nn.Module, x: torch.Tensor, seed: int = 0) -> None:
    """Prune a random part of every group: output == masked dense model, MACs exact."""
    model.eval()
    groups = trace_report(model, x).groups  # (the same groups as trace_groups, without its warning)
    dense = _macs(model, x)
    res = prune_against_masked(model, x, groups, random_keep(groups, seed))
    assert res.dense_macs == dense
    assert res.rel_error < 1e-4
    assert res.predicted_macs == _macs(model, x)


class _TwoBranch(nn.Module):
    """A hand-written two-branch block: half the channels pass, half go through a conv."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.bn = nn.BatchNorm2d(16)
        self.a = nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Conv2d(16, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn(self.stem(x)))
        x1, x2 = x.chunk(2, dim=1)
        return self.head(torch.cat([x1, F.relu(self.a(x2))], dim=1))


def test_chunk_pieces_lose_the_same_positions() -> None:
    model, x = _TwoBranch(), torch.randn(2, 3, 8, 8)
    groups = trace_groups(model, x)
    assert [g.name for g in groups] == ["stem[0:8]", "a"]
    halves = groups[0]
    assert halves.size == 8
    sl = {(s.name, s.dim, s.offset) for s in halves.slices}
    assert {("stem.weight", 0, 0), ("stem.weight", 0, 8), ("bn.running_var", 0, 8), ("a.weight", 1, 0),
            ("head.weight", 1, 0)} <= sl
    assert ("head.weight", 1, 8) in {(s.name, s.dim, s.offset) for s in groups[1].slices}
    _prune_and_check(model, x)


class _Mixed(nn.Module):
    """Resizing, stochastic depth, a layer-scale parameter, LayerNorm2d, an SE gate."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.up = nn.Upsample(scale_factor=2)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.scale = nn.Parameter(torch.rand(8, 1, 1) + 0.5)
        self.sd = torchvision.ops.StochasticDepth(0.2, "row")
        self.se = torchvision.ops.SqueezeExcitation(8, 4)
        self.norm = torchvision.models.convnext.LayerNorm2d(8)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.interpolate(self.up(self.conv1(x)), scale_factor=0.5)
        y = y + self.sd(self.scale * self.se(self.conv2(y)))
        return self.head(self.norm(y).mean((2, 3)))


def test_resize_stochastic_depth_layer_scale_layer_norm_se() -> None:
    model, x = _Mixed(), torch.randn(2, 3, 8, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnsupportedOpWarning)
        groups = trace_groups(model, x)
    assert [g.name for g in groups] == ["conv1", "se.fc1"]
    cp = groups[0].coupled_params()
    assert {("scale", 0), ("norm.weight", 0), ("norm.bias", 0), ("conv2.weight", 0), ("se.fc2.weight", 0),
            ("se.fc1.weight", 1), ("head.weight", 1)} <= cp
    _prune_and_check(model, x)
    assert model.norm.normalized_shape == (model.conv1.out_channels,)


class _LiteralView(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.fc = nn.Linear(8 * 7 * 7, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x).view(x.size(0), 8 * 7 * 7))


class _AttrReshape(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.C = 8
        self.conv = nn.Conv2d(3, 8, 3)
        self.conv2 = nn.Conv2d(3, 6, 3)
        self.fc = nn.Linear(8 + 6, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.conv(x).reshape(x.size(0), self.C, -1).mean(-1)
        b = self.conv2(x).flatten(2).mean(-1)
        return self.fc(torch.cat([a, b], 1))


def test_literal_sizes_on_the_channel_dim_are_frozen() -> None:
    x = torch.randn(2, 3, 9, 9)
    m = _LiteralView()
    with pytest.warns(UnsupportedOpWarning, match=r"Tensor.view.*literal|Tensor.view.*would not follow"):
        assert len(trace_groups(m, x)) == 0
    m = _AttrReshape()
    with pytest.warns(UnsupportedOpWarning, match=r"Tensor.reshape at node 'reshape'.*kept fixed: conv\n"):
        groups = trace_groups(m, x)
    assert [g.name for g in groups] == ["conv2"]  # reshape(n, self.C, -1) keeps conv; conv2 prunes
    _prune_and_check(m, x)  # and the pruned model still runs
    # the dynamic forms are fine: a flatten maps each channel to H*W columns
    ok = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Flatten(), nn.Linear(8 * 49, 4))
    assert len(trace_groups(ok, x)) == 1


class _Shape(nn.Module):
    """Sizes read from one tensor's channel count and used on another tensor."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 1)
        self.b = nn.Conv2d(3, 8, 1)
        self.c = nn.Conv2d(8, 8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = self.a(x).shape
        y = self.b(x)
        y = y.reshape(n, c, h * w)  # b's channels get a's count
        return self.c(y.reshape(n, -1, h, w))


def test_sizes_computed_from_channel_counts() -> None:
    x = torch.randn(2, 3, 4, 4)
    report = trace_report(_Shape(), x)
    assert [g.name for g in report.groups] == []  # a: its count sizes b's dim; b: given a's count
    assert set(report.frozen_groups()) == {"a", "b"}
    keep_dim = nn.Sequential(nn.Conv2d(3, 8, 1))

    class Own(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = keep_dim
            self.c = nn.Conv2d(8, 4, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.a(x)
            n, c, h, w = y.shape
            return self.c(y.view(n, c, h * w).view(n, c, h, w))  # its own count: fine

    assert len(trace_groups(Own(), x)) == 1
    _prune_and_check(Own(), x)


class _Recurrent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(3, 8, 3, padding=1)
        self.mid = nn.Conv1d(8, 8, 1)
        self.rnn = nn.LSTM(8, 5, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.mid(torch.relu(self.conv(x)))
        out, _ = self.rnn(y.transpose(1, 2))
        return out[:, -1]


class _Gate(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x if x.sum() > 0 else -x  # data-dependent control flow: torch.fx cannot trace it


class _DataDependent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.gate = _Gate()
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.conv3 = nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv3(torch.relu(self.conv2(self.gate(self.conv1(x)))))


def test_recurrent_and_data_dependent_are_frozen() -> None:
    report = trace_report(_Recurrent(), torch.randn(2, 3, 6))
    assert [g.name for g in report.groups] == ["conv"]
    assert [(p.op, p.frozen) for p in report.frozen] == [("LSTM", ("mid",))]
    assert "recurrent" in report.frozen[0].reason
    _prune_and_check(_Recurrent(), torch.randn(2, 3, 6))
    x = torch.randn(2, 3, 6, 6)
    report = trace_report(_DataDependent(), x)
    assert [g.name for g in report.groups] == ["conv2"]
    # torch.fx cannot trace the gate: the executed forward is followed, and the branch taken
    # tests the sum of conv1's channels, so those stay
    assert report.capture == "executed forward"
    (place,) = report.frozen
    assert place.op == "Tensor.sum" and place.frozen == ("conv1",) and "mixes channels" in place.reason
    _prune_and_check(_DataDependent(), x)


class _ManyProblems(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(3, 8, 3, padding=1)
        self.c = nn.Conv2d(3, 8, 3, padding=1)
        self.d = nn.Conv2d(3, 8, 3, padding=1)
        self.norm = nn.GroupNorm(2, 8)
        self.head = nn.Conv2d(32, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = torch.roll(self.a(x), 1, dims=1)
        b = self.norm(self.b(x))
        c = self.c(x)
        c = c.view(c.size(0), 2, 4, 6, 6).transpose(1, 2).reshape(c.size(0), 8, 6, 6)  # a shuffle
        return self.head(torch.cat([a, b, c, self.d(x)], 1))


def test_every_place_in_one_report() -> None:
    x = torch.randn(1, 3, 6, 6)
    with pytest.warns(UnsupportedOpWarning) as rec:
        groups = trace_groups(_ManyProblems(), x)
    assert len([w for w in rec if issubclass(w.category, UnsupportedOpWarning)]) == 1  # one warning
    assert [g.name for g in groups] == ["d"]
    report = rec[0].message.report
    assert [(p.op, p.frozen) for p in report.frozen] == [
        ("torch.roll", ("a",)), ("GroupNorm", ("b",)), ("Tensor.view", ("c",))]
    with pytest.raises(UnsupportedOpError) as err:
        trace_groups(_ManyProblems(), x, on_unsupported="error")
    msg = str(err.value)
    assert "3 place(s)" in msg and "torch.roll" in msg and "GroupNorm" in msg and "Tensor.view" in msg
    assert err.value.report.frozen_groups() == ["a", "b", "c"]


def test_shufflenet_channel_shuffle_is_frozen() -> None:
    """The shuffle's input channels stay; the branch-internal widths prune exactly."""
    torch.manual_seed(0)
    model = torchvision.models.shufflenet_v2_x0_5(num_classes=10)
    x = torch.randn(2, 3, 32, 32)
    report = trace_report(model, x)
    assert len(report.frozen) == 16  # one shuffle per block
    assert all("splits or mixes the channel dim" in p.reason for p in report.frozen)
    names = [g.name for g in report.groups]
    assert "stage2.1.branch2.0" in names and "stage2.1.branch2.5" not in names
    _prune_and_check(model, x)
