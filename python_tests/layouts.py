"""Random channel layouts covering every slice kind, for the op tests and benchmarks."""

from __future__ import annotations

import random

import torch
from torch import nn

from oneprune_ext.graph.groups import ChannelGroup, ChannelGroups, Slice


class ParamBag(nn.Module):
    """A module holding named parameters of arbitrary shapes (names use '_' not '.')."""

    def __init__(self, shapes: dict[str, tuple[int, ...]], dtype: torch.dtype, device: str,
                 channels_last: bool = False) -> None:
        super().__init__()
        for name, shape in shapes.items():
            t = torch.randn(shape, dtype=torch.float32).to(dtype).to(device)
            if channels_last and t.dim() == 4:
                t = t.contiguous(memory_format=torch.channels_last)
            self.register_parameter(name, nn.Parameter(t))


def random_layout(seed: int, dtype: torch.dtype = torch.float32, device: str = "cpu",
                  zero_channels: bool = True, channels_last: bool = False,
                  conv_groups: int | None = None) -> tuple[ParamBag, ChannelGroups]:
    """A model with conv rows/columns, BN weights, linear rows/columns, a flatten block,
    concat offsets, a depthwise conv, one-channel groups (alone and one per column), and a
    grouped conv whose channel group has one slice per conv group (``conv_groups`` of them,
    random when None) on its weight, its BN and its consumer, plus its channel groups.
    ``channels_last`` converts every 4-d parameter."""
    rng = random.Random(seed)
    c1, c2, c3, c4 = (rng.randint(1, 9) for _ in range(4))
    c_one = 1
    k = rng.choice([1, 3])
    hw = rng.choice([1, 4, 9])
    cin = rng.randint(1, 5)
    out = rng.randint(2, 6)
    G = conv_groups if conv_groups is not None else rng.choice([1, 2, 3, 4])
    w = rng.randint(1, 4)  # channels per conv group
    ncol = rng.randint(1, 5)  # one-channel groups, one per column of col_w
    shapes = {
        "conv1_w": (c1, cin, k, k),          # rows: group A
        "bn1_w": (c1,),                      # BN weight: group A
        "dw_w": (c1, 1, 3, 3),               # depthwise: group A passes through
        "conv2_w": (c2, c1, k, k),           # columns: group A; rows: group B
        "conv3_w": (c3, c1, 1, 1),           # columns: group A; rows: group C
        "bn3_w": (c3,),
        "cat_w": (c4, c2 + c3 + c_one, k, k),  # concat [B, C, one]: offsets; rows: group D
        "one_w": (c_one, cin, k, k),         # one-channel group E
        "fc1_w": (out * 2, c4 * hw),         # flatten block of hw columns: group D
        "fc2_w": (out, out * 2),             # hidden width of an MLP: group F
        "fc1_b": (out * 2,),
        "gconv_w": (G * w, cin, k, k),       # grouped conv: group H, one slice per conv group
        "gbn_w": (G * w,),
        "gcons_w": (c1, G * w, 1, 1),        # consumer of the grouped conv (columns: H), rows: group A
        "col_w": (out, ncol),                # one one-channel group per column
    }
    model = ParamBag(shapes, dtype, device, channels_last)
    S = Slice
    H = tuple(S("gconv_w", 0, offset=g * w) for g in range(G)) + tuple(
        S("gbn_w", 0, offset=g * w) for g in range(G)) + tuple(S("gcons_w", 1, offset=g * w) for g in range(G))
    groups = ChannelGroups([
        ChannelGroup(c1, (S("conv1_w", 0), S("bn1_w", 0), S("dw_w", 0), S("conv2_w", 1), S("conv3_w", 1),
                          S("gcons_w", 0)), "A"),
        ChannelGroup(c2, (S("conv2_w", 0), S("cat_w", 1, offset=0)), "B"),
        ChannelGroup(c3, (S("conv3_w", 0), S("bn3_w", 0), S("cat_w", 1, offset=c2)), "C"),
        ChannelGroup(c4, (S("cat_w", 0), S("fc1_w", 1, block=hw)), "D"),
        ChannelGroup(c_one, (S("one_w", 0), S("cat_w", 1, offset=c2 + c3)), "E"),
        ChannelGroup(out * 2, (S("fc1_w", 0), S("fc1_b", 0, in_norm=False), S("fc2_w", 1)), "F"),
        ChannelGroup(w, H, "H"),
    ] + [ChannelGroup(1, (S("col_w", 1, offset=j),), f"col{j}") for j in range(ncol)])
    if zero_channels:
        with torch.no_grad():
            model.conv1_w[0].zero_()
            model.bn1_w[0] = 0
            model.dw_w[0].zero_()
            model.conv2_w[:, 0].zero_()
            model.conv3_w[:, 0].zero_()
            model.gcons_w[0].zero_()
    return model, groups


def set_grads(model: nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        grad = torch.randn(p.shape, generator=g).to(p.dtype).to(p.device)
        p.grad = torch.empty_like(p).copy_(grad)  # the parameter's memory format


def random_mask(n: int, seed: int, kind: str = "random") -> torch.Tensor:
    if kind == "empty":
        return torch.zeros(n, dtype=torch.bool)
    if kind == "full":
        return torch.ones(n, dtype=torch.bool)
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, generator=g) < 0.5
