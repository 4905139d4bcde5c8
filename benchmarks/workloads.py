"""The parameter sets the kernel benchmarks run on, shared by the pytest-benchmark suite
(``bench_kernels.py``) and the standalone GPU script (``gpu_kernels.py``)."""

from __future__ import annotations

import sys
from typing import Callable

import torch

from oneprune_ext import ChannelLayout
from oneprune_ext.graph.trace import trace_groups
from oneprune_ext.training.models import resnet56


def models() -> dict[str, tuple[Callable[[], torch.nn.Module], tuple[int, ...]]]:
    """name -> (builder, trace input shape): ResNet-50 (ImageNet shapes), CIFAR ResNet-56 and
    MobileNetV2; the torchvision ones are skipped (with a message) where torchvision is missing."""
    out: dict[str, tuple[Callable[[], torch.nn.Module], tuple[int, ...]]] = {}
    try:
        import torchvision

        out["resnet50"] = (lambda: torchvision.models.resnet50(weights=None), (1, 3, 64, 64))
    except Exception as exc:  # noqa: BLE001
        torchvision = None
        print(f"torchvision unavailable ({exc}); ResNet-50 / MobileNetV2 skipped", file=sys.stderr)
    out["resnet56"] = (lambda: resnet56(10), (1, 3, 32, 32))
    if torchvision is not None:
        out["mobilenet_v2"] = (lambda: torchvision.models.mobilenet_v2(weights=None), (1, 3, 64, 64))
    return out


def setup(build: Callable[[], torch.nn.Module], shape: tuple[int, ...], device: str):
    """(model, groups, layout, mask): random-init fp32 model on ``device`` with random grads,
    its channel groups and layout, and half of all channels chosen (fixed seeds)."""
    torch.manual_seed(0)
    model = build().eval()
    groups = trace_groups(model, torch.randn(shape))
    model.to(device)
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    layout = ChannelLayout(model, groups)
    mask = (torch.rand(layout.num_channels, generator=torch.Generator().manual_seed(1)) < 0.5).to(device)
    return model, groups, layout, mask
