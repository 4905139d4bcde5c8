"""The executed-forward capture (``oneprune_ext.graph.capture``): models ``torch.fx`` cannot trace.

Small models, one per mechanism: data-dependent control flow, list inputs, sizes read from
shapes, in-place ops and writes through views, a registered function recorded as one call,
parameters viewed to broadcast (SSD's L2 norm scale), modules that run only in train mode, and
that the model is left as it was, whether tracing succeeds or fails.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from oneprune_ext.graph import CostModel, UnsupportedOpError, trace_groups, trace_report
from oneprune_ext.graph.trace import trace_graph
from oneprune_ext.pruning import prune_channels

from _detection_cases import counted_macs, output_error, random_half
from _pruning_cases import randomize_inits, zero_removed


def _prune_and_check(model: nn.Module, inputs: tuple) -> list[str]:
    """Trace, prune a random half of every group: equal to the masked dense model, MACs exact,
    backward runs.  Returns the group names."""
    torch.manual_seed(0)
    randomize_inits(model)
    model.eval()
    report = trace_report(model, inputs)
    assert report.capture == "executed forward"
    groups = report.groups
    cost = CostModel(model, groups, inputs)
    assert cost.dense_macs == counted_macs(model, inputs)
    keep = random_half(groups, 0)
    ref = copy.deepcopy(model)
    zero_removed(ref, groups, keep)
    predicted = cost.macs([len(keep[i]) for i in range(len(groups))])
    prune_channels(model, groups, keep)
    with torch.no_grad():
        assert output_error(model(*inputs), ref(*inputs)) < 1e-5
    assert predicted == counted_macs(model, inputs)
    model.train()
    out = model(*inputs)
    sum(t.sum() for t in (out if isinstance(out, (list, tuple)) else [out])).backward()
    return [g.name for g in groups]


class _Branchy(nn.Module):
    """Data-dependent control flow and a loop over a list input: torch.fx fails on both."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, images: list[torch.Tensor]) -> list[torch.Tensor]:
        out = []
        for img in images:
            y = torch.relu(self.a(img[None]))
            if img.mean() > -10:  # data-dependent (on the input: a test on channels would keep them)
                y = y + self.b(y)
            out.append(self.head(y))
        return out


def test_fx_untraceable_model_is_followed() -> None:
    model, inputs = _Branchy(), ([torch.randn(3, 6, 6), torch.randn(3, 5, 7)],)
    with pytest.raises(UnsupportedOpError):
        trace_graph(model, whole=True)
    names = _prune_and_check(model, inputs)
    assert names == ["a"]  # a and b joined by the residual add; the head feeds the output


class _Sizes(nn.Module):
    """``view(n, c, -1)`` with ``c`` read from the shape follows a prune; a literal does not."""

    def __init__(self, literal: bool) -> None:
        super().__init__()
        self.literal = literal
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        if float(x.abs().sum()) < 0:  # never: only makes torch.fx fail
            y = -y
        n, c, h, w = y.shape
        y = y.view(n, 8 if self.literal else c, h * w)
        return self.fc(y.flatten(1))


def test_sizes_read_from_shapes_are_followed() -> None:
    x = (torch.randn(2, 3, 4, 4),)
    assert _prune_and_check(_Sizes(literal=False), x) == ["conv"]
    report = trace_report(_Sizes(literal=True), x)
    assert len(report.groups) == 0
    (place,) = report.frozen
    assert place.frozen == ("conv",) and "would not follow a prune" in place.reason


class _InPlace(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 1)
        self.b = nn.Conv2d(3, 8, 1)
        self.c = nn.Conv2d(3, 8, 1)
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.a(x)
        y += self.b(x)  # in place: a and b become one group
        y.relu_()
        z = self.c(x)
        buf = torch.zeros_like(z)
        buf[:, :4].copy_(z[:, :4])  # a write through a view: kept fixed
        if x.sum() > 1e9:
            buf = -buf
        return self.head(y) + self.head(buf)


def test_in_place_ops_and_writes_through_views() -> None:
    report = trace_report(_InPlace(), (torch.randn(1, 3, 4, 4),))
    assert [g.name for g in report.groups] == ["a"]
    assert sum(1 for s in report.groups[0].slices if s.name in ("a.weight", "b.weight")) == 2
    assert report.frozen_groups() == ["c"]


class _L2Scale(nn.Module):
    """SSD's VGG feature map: ``scale.view(1, -1, 1, 1) * F.normalize(x)`` (a per-channel
    parameter used directly, viewed to broadcast)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.scale = nn.Parameter(torch.rand(8) + 0.5)
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.conv(x))
        if len(x) > 100:  # never: only makes torch.fx fail
            y = y * 0
        return self.head(self.scale.view(1, -1, 1, 1) * F.normalize(y))


def test_parameter_view_and_l2_normalize() -> None:
    model = _L2Scale()
    names = _prune_and_check(model, (torch.randn(2, 3, 5, 5),))
    assert names == ["conv"]
    assert model.scale.shape == (4,)


class _TrainOnly(nn.Module):
    """An auxiliary head that runs only in train mode (as Inception's, or YOLO's one-to-many head)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.aux = nn.Conv2d(8, 3, 1)
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        y = torch.relu(self.stem(x))
        if x.sum() > 1e9:
            y = -y
        if self.training:
            return self.head(y), self.aux(y)
        return self.head(y)


def test_modules_that_run_only_in_train_mode_are_recorded_too() -> None:
    model = _TrainOnly().train()
    report = trace_report(model, (torch.randn(1, 3, 4, 4),))
    (g,) = report.groups
    assert {s.name for s in g.slices} >= {"stem.weight", "head.weight", "aux.weight"}
    assert all(m.training for m in model.modules())


class _NeedsTargets(_TrainOnly):
    def forward(self, x: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        if self.training and targets is None:
            raise ValueError("targets are needed in train mode")
        return super().forward(x)[0] if self.training else super().forward(x)


def test_a_module_that_ran_in_no_mode_keeps_everything() -> None:
    report = trace_report(_NeedsTargets(), (torch.randn(1, 3, 4, 4),))
    assert len(report.groups) == 0
    (place,) = report.frozen
    assert place.node == "module 'aux'" and "targets are needed" in place.reason and place.frozen == ("stem",)


class _Caches(nn.Module):
    """A forward that caches a tensor on the module (as YOLO's anchor grid and torchvision's
    MultiScaleRoIAlign scales do)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)
        self.bn = nn.BatchNorm2d(4)
        self.grid = None

    def forward(self, x: list[torch.Tensor]) -> torch.Tensor:
        y = self.bn(self.conv(x[0]))
        self.grid = torch.arange(y.shape[-1])
        return y


def test_tracing_leaves_the_model_as_it_was() -> None:
    model = _Caches().train()
    before = copy.deepcopy(model.state_dict())
    trace_report(model, ([torch.randn(2, 3, 4, 4)],))
    CostModel(model, trace_report(model, ([torch.randn(2, 3, 4, 4)],)).groups, ([torch.randn(2, 3, 4, 4)],))
    assert model.grid is None and all(m.training for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not model._forward_hooks and not model.conv._forward_pre_hooks


def test_a_forward_that_fails_raises_and_changes_nothing() -> None:
    model = _Caches().train()
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match="forward fails on the example inputs"):
        trace_groups(model, ([torch.randn(2, 5, 4, 4)],))
    assert model.grid is None and all(m.training for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_freeze_never_raises_for_untraceability() -> None:
    """A model fx cannot trace whose forward also defeats the recorder's size tracking still
    traces (the forward is followed with plain sizes)."""

    class Picky(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if type(x.shape[1]) is not int:  # code that insists on plain ints
                raise TypeError("plain ints only")
            for _ in x:  # iterating a tensor: torch.fx fails
                pass
            return self.conv(x)

    report = trace_report(Picky(), (torch.randn(1, 3, 4, 4),))
    assert report.capture == "executed forward"
