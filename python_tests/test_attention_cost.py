"""Attention is counted in full by the cost model, in every mode.

Plain ``FlopCounterMode`` in eval mode counts nothing for ``nn.MultiheadAttention`` (PyTorch's
fused fast path) and, on CPU, not the products of scaled-dot-product attention.  The cost model
counts the projections and ``Q K^T`` / ``A V``; it must equal ``FlopCounterMode`` on the model
run where the counter sees everything (fast path off or train mode, math attention backend), on
the dense model and after a random prune.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from oneprune_ext.pruning.compaction import prune_channels
from oneprune_ext.graph.cost import CostModel
from oneprune_ext.graph.trace import UnsupportedOpWarning, trace_groups
from oneprune_ext.graph.flops import count_macs

from _pruning_cases import counted_macs, random_keep


def _train_mode_macs(model: nn.Module, x: torch.Tensor) -> int:
    """FlopCounterMode with the model in train mode (no fast path), math attention backend."""
    model.train()
    try:
        with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as fc:
            model(x)
    finally:
        model.eval()
    return fc.get_total_flops() // 2


def _plain_eval_macs(model: nn.Module, x: torch.Tensor) -> int:
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        model.eval()(x)
    return fc.get_total_flops() // 2


def _references(model: nn.Module, x: torch.Tensor, every: bool) -> set[int]:
    """The counter with the fast path off, in train mode, and the trainer's ``count_macs``."""
    if not every:
        return {counted_macs(model, x)}
    return {counted_macs(model, x), _train_mode_macs(model, x), count_macs(model, x)}


def _check_exact(model: nn.Module, x: torch.Tensor, seed: int = 0, every: bool = True) -> CostModel:
    """Dense and randomly pruned MACs equal the counter where it sees attention."""
    model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnsupportedOpWarning)
        groups = trace_groups(model, x)
    cost = CostModel(model, groups, x)
    assert _references(model, x, every) == {cost.dense_macs}
    if len(groups):
        keep = random_keep(groups, seed)
        predicted = cost.macs([len(keep[i]) for i in range(len(groups))])
        prune_channels(model, groups, keep)
        assert _references(model, x, every) == {predicted}
    return cost


def test_vit_b_16_counts_attention() -> None:
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = torchvision.models.vit_b_16(weights=None, num_classes=10, image_size=32)
    x = torch.randn(2, 3, 32, 32)
    blind = _plain_eval_macs(model, x)
    assert _train_mode_macs(model, x) > blind
    cost = _check_exact(model, x, every=False)  # (the small models below check every reference)
    # 5 tokens (4 patches + class) x 2 images; per layer: q/k/v and output projections
    # 4 * 10 * 768^2 and the products 2 * 2 * 5 * 5 * 768, all of which plain eval-mode counting misses
    assert cost.dense_macs - blind == 12 * (4 * 10 * 768 * 768 + 2 * 2 * 5 * 5 * 768)


class _Block(nn.Module):
    """Pre-norm encoder block around ``nn.MultiheadAttention`` (prunable: the tracer keeps the
    MHA as one node), with cross-attention to a shorter memory taken from the input."""

    def __init__(self, batch_first: bool, need_weights: bool, **mha: object) -> None:
        super().__init__()
        self.batch_first, self.need_weights = batch_first, need_weights
        self.inp = nn.Linear(12, 32)
        self.norm = nn.LayerNorm(32)
        self.attn = nn.MultiheadAttention(32, 4, batch_first=batch_first, **mha)
        self.fc1, self.fc2 = nn.Linear(32, 48), nn.Linear(48, 32)
        self.head = nn.Linear(32, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        q = self.norm(h)
        mem = q[:, :3] if self.batch_first else q[:3]  # 3 of the 7 tokens
        h = h + self.attn(q, mem, mem, need_weights=self.need_weights)[0]
        h = h + self.fc2(F.relu(self.fc1(h)))
        return self.head(h)


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("need_weights", [True, False], ids=["bmm", "sdpa"])
def test_multihead_attention_block(batch_first: bool, need_weights: bool) -> None:
    torch.manual_seed(0)
    model = _Block(batch_first, need_weights)
    x = torch.randn(2, 7, 12) if batch_first else torch.randn(7, 2, 12)
    # the residual stream (attention width included) is one prunable group
    assert any(s.name == "attn.in_proj_weight" for g in trace_groups(model, x) for s in g.slices)
    _check_exact(model, x)


@pytest.mark.parametrize("mha", [dict(add_bias_kv=True, add_zero_attn=True), dict(kdim=20, vdim=24)],
                         ids=["bias_kv_zero_attn", "separate_qkv"])
def test_multihead_attention_variants(mha: dict) -> None:
    """Extra key columns (bias_k, add_zero_attn) and separate q / k / v weights (kept fixed by
    the tracer, still counted)."""

    class Cross(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inp = nn.Linear(12, 32)
            self.k, self.v = nn.Linear(12, mha.get("kdim", 32)), nn.Linear(12, mha.get("vdim", 32))
            self.attn = nn.MultiheadAttention(32, 4, batch_first=True, **mha)
            self.head = nn.Linear(32, 5)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            q = self.inp(x)
            return self.head(self.attn(q, self.k(x[:, :3]), self.v(x[:, :3]), need_weights=False)[0])

    torch.manual_seed(0)
    _check_exact(Cross(), torch.randn(2, 7, 12))


@pytest.mark.parametrize("batch_first", [True, False])
def test_transformer_encoder_layer(batch_first: bool) -> None:
    """``nn.TransformerEncoderLayer`` (its own fused fast path in eval mode) is kept fixed by the
    tracer; its MACs are still counted, and the prunable MLP after it stays exact."""

    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inp = nn.Linear(12, 32)
            self.layer = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=batch_first)
            self.fc = nn.Linear(32, 48)
            self.head = nn.Linear(48, 5)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(F.relu(self.fc(self.layer(self.inp(x)))))

    torch.manual_seed(0)
    model = Model()
    x = torch.randn(2, 7, 12) if batch_first else torch.randn(7, 2, 12)
    cost = _check_exact(model, x)
    # 14 tokens: inp, q/k/v/out projections, the two FFN linears, fc, head; products 2 * 2 * 7 * 7 * 32
    assert cost.dense_macs == 14 * (12 * 32 + 4 * 32 * 32 + 2 * 32 * 64 + 32 * 48 + 48 * 5) + 2 * 2 * 7 * 7 * 32


def test_scaled_dot_product_attention_function() -> None:
    """``F.scaled_dot_product_attention`` (not understood by the tracer: its channels are kept
    fixed) is counted with the counter's own formula on CPU as on CUDA."""

    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.qkv = nn.Linear(12, 3 * 16)
            self.head = nn.Linear(16, 5)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            q, k, v = self.qkv(x).view(2, 7, 3, 2, 8).permute(2, 0, 3, 1, 4)
            return self.head(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(2, 7, 16))

    torch.manual_seed(0)
    cost = _check_exact(Model(), torch.randn(2, 7, 12))
    assert cost.dense_macs == 14 * (12 * 48 + 16 * 5) + 2 * (2 * 2 * 7 * 7 * 8)  # batch * heads * Lq * S * d
