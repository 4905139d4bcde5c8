"""Shared model cases and helpers for the graph / cost / compact / saving tests."""

from __future__ import annotations

import copy
import random
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.overrides import TorchFunctionMode
from torch.utils.flop_counter import FlopCounterMode

from oneprune_ext import models
from oneprune_ext.pruning.compaction import prune_channels
from oneprune_ext.graph.cost import CostModel
from oneprune_ext.graph.groups import ChannelGroups


def _vit() -> nn.Module:
    return torchvision.models.VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64, num_classes=10)


# name -> (builder, input shape)
CASES: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    "resnet18": (lambda: torchvision.models.resnet18(weights=None, num_classes=10), (2, 3, 32, 32)),
    "resnet50": (lambda: torchvision.models.resnet50(weights=None, num_classes=10), (2, 3, 32, 32)),
    "vgg16_bn": (lambda: torchvision.models.vgg16_bn(weights=None, num_classes=10), (2, 3, 32, 32)),
    "mobilenet_v2": (lambda: torchvision.models.mobilenet_v2(weights=None, num_classes=10), (2, 3, 32, 32)),
    "densenet121": (lambda: torchvision.models.densenet121(weights=None, num_classes=10), (2, 3, 32, 32)),
    "resnet56": (lambda: models.resnet56(10), (2, 3, 32, 32)),
    "cifar_vgg16": (lambda: models.vgg16(10), (2, 3, 32, 32)),
    "mlp": (lambda: models.mlp(64, (48, 32), 10), (2, 1, 8, 8)),
    "digits_cnn": (lambda: models.digits_cnn(10, 8), (2, 1, 8, 8)),
    "vit": (_vit, (2, 3, 32, 32)),
}


def randomize_inits(model: nn.Module) -> None:
    """Replace inits that would hide pruning mistakes: zero heads, tiny layer scales, identity
    BN statistics and affine weights, unit LayerNorm weights."""
    with torch.no_grad():
        for n, p in model.named_parameters():
            if p.dim() >= 2 and not bool(p.any()):  # zero-initialised heads (ViT)
                p.normal_(0, 0.05)
            elif p.dim() >= 1 and n.endswith("layer_scale"):
                p.normal_(1.0, 0.2)  # 1e-6 at init would hide the residual branches
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.normal_(1, 0.2)
                m.bias.normal_(0, 0.1)
            elif isinstance(m, nn.LayerNorm) and m.weight is not None:
                m.weight.normal_(1, 0.2)
                if m.bias is not None:
                    m.bias.normal_(0, 0.1)


def build(name: str, seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
    """The model (random init, random BN statistics) and an input batch."""
    torch.manual_seed(seed)
    builder, shape = CASES[name]
    model = builder()
    randomize_inits(model)
    return model, torch.randn(*shape)


def counted_macs(model: nn.Module, x: torch.Tensor) -> int:
    """The reference MACs: plain ``FlopCounterMode`` (FLOPs / 2) on the model in eval mode, run
    where the counter sees every matmul: PyTorch's fused attention fast path off and attention
    on the math backend (so ``Q K^T`` and ``A V`` are ``bmm`` calls, on CPU too)."""
    fast = torch.backends.mha.get_fastpath_enabled()
    flags = [(m, m.training) for m in model.modules()]
    torch.backends.mha.set_fastpath_enabled(False)
    model.eval()
    try:
        with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as fc:
            model(x)
    finally:
        torch.backends.mha.set_fastpath_enabled(fast)
        for m, t in flags:
            m.training = t
    flops = fc.get_total_flops()
    assert flops % 2 == 0
    return flops // 2


def random_keep(groups: ChannelGroups, seed: int, frac: float = 0.5) -> dict[int, list[int]]:
    """A random kept subset for every group (at least one channel)."""
    rng = random.Random(seed)
    keep: dict[int, list[int]] = {}
    for i, g in enumerate(groups):
        n = max(1, min(g.size, round(g.size * rng.uniform(frac * 0.5, min(1.0, frac * 1.5)))))
        keep[i] = sorted(rng.sample(range(g.size), n))
    return keep


class _KeptChannelLayerNorm(TorchFunctionMode):
    """``F.layer_norm`` over the last dim normalises over the entries whose weight is not zero
    (the kept channels, once :func:`zero_removed` zeroed the removed ones), as the pruned
    layer norm does."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.layer_norm:
            names = ("input", "normalized_shape", "weight", "bias", "eps")
            a = dict(zip(names, args), **kwargs)
            w, b = a.get("weight"), a.get("bias")
            if w is not None and len(a["normalized_shape"]) == 1 and bool((w == 0).any()):
                keep = w != 0
                x = a["input"]
                y = F.layer_norm(x[..., keep], (int(keep.sum()),), w[keep], None if b is None else b[keep],
                                 a.get("eps", 1e-5))
                out = torch.zeros_like(x)
                out[..., keep] = y
                return out
        return func(*args, **kwargs)


def _rescale_queries(model: nn.Module) -> None:
    """Attention scaled by ``1/sqrt(head width)``: scale the query rows so the zeroed model
    divides by the kept head width, as the pruned model does."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.MultiheadAttention):
                w, b, heads, width = m.in_proj_weight, m.in_proj_bias, m.num_heads, m.embed_dim
            elif type(m).__name__ == "ShiftedWindowAttention":  # torchvision Swin V1 (V2 is cosine)
                w, b, heads, width = m.qkv.weight, m.qkv.bias, m.num_heads, m.qkv.weight.shape[1]
            else:
                continue
            kept = int((w[:width] != 0).any(dim=1).sum())
            if kept == width or kept == 0:
                continue
            factor = ((width // heads) / (kept // heads)) ** 0.5
            w[:width] *= factor
            if b is not None:
                b[:width] *= factor


def zero_removed(model: nn.Module, groups: ChannelGroups, keep: dict[int, list[int]]) -> None:
    """Zero every parameter slice (weights, biases, norm affine) of the removed channels.

    The model then computes what the pruned model computes (the "masked dense model"):
    its forward also runs layer norms over the kept channels only and attention scaled by
    the kept head width (the two places where a removed channel's zeros would still count).
    """
    params = dict(model.named_parameters())
    removed: dict[tuple[str, int], list[int]] = {}
    for gi, kept in keep.items():
        g = groups[gi]
        drop = sorted(set(range(g.size)) - set(kept))
        for s in g.slices:
            if not s.is_buffer and s.name in params:
                removed.setdefault((s.name, s.dim), []).extend(s.indices(drop))
    with torch.no_grad():
        for (name, dim), idx in removed.items():
            if idx:
                params[name].index_fill_(dim, torch.tensor(idx, dtype=torch.long), 0.0)
    _rescale_queries(model)
    forward = model.forward

    def masked_forward(*args, **kwargs):
        with _KeptChannelLayerNorm():
            return forward(*args, **kwargs)

    model.forward = masked_forward


def kept_indices(groups: ChannelGroups, keep: dict[int, list[int]], shapes: dict[str, tuple[int, ...]]
                 ) -> dict[str, dict[int, torch.Tensor]]:
    """Independent computation of the kept entries per tensor dim (for transplanting)."""
    drop: dict[tuple[str, int], set[int]] = {}
    for gi, kept in keep.items():
        g = groups[gi]
        rem = sorted(set(range(g.size)) - set(kept))
        for s in g.slices:
            drop.setdefault((s.name, s.dim), set()).update(s.indices(rem))
    out: dict[str, dict[int, torch.Tensor]] = {}
    for (name, dim), rem in drop.items():
        if rem:
            idx = [i for i in range(shapes[name][dim]) if i not in rem]
            out.setdefault(name, {})[dim] = torch.tensor(idx, dtype=torch.long)
    return out


def slice_tensor(t: torch.Tensor, dims: dict[int, torch.Tensor]) -> torch.Tensor:
    """A copy of ``t`` keeping ``idx`` along each ``dim`` of ``dims``."""
    t = t.detach().clone()
    for d, idx in dims.items():
        t = t.index_select(d, idx)
    return t


@dataclass
class PruneCheck:
    dense_macs: int  # the cost model's dense MACs
    predicted_macs: int  # the cost model's MACs for the kept counts
    rel_error: float  # largest output difference / the masked model's largest output magnitude


def prune_against_masked(model: nn.Module, x: torch.Tensor, groups: ChannelGroups,
                         keep: dict[int, list[int]]) -> PruneCheck:
    """Prune ``keep`` from ``model`` in place and compare its output with a copy of the dense model
    whose removed channels are zeroed (``model`` should be in eval mode)."""
    cost = CostModel(model, groups, x)
    ref = copy.deepcopy(model)
    zero_removed(ref, groups, keep)
    predicted = cost.macs([len(keep[i]) for i in range(len(groups))])
    prune_channels(model, groups, keep)
    with torch.no_grad():
        y, y_ref = model(x), ref(x)
    scale = y_ref.abs().max().item() + 1e-6
    return PruneCheck(cost.dense_macs, predicted, (y - y_ref).abs().max().item() / scale)
