"""The package's one MAC counter: ``FlopCounterMode`` that sees attention, and :func:`count_macs`.

The cost model (:mod:`oneprune_ext.graph.cost`) attributes this counter's FLOPs to each call and
checks its closed form against them; the trainer, ``oneprune eval`` and the tests measure a whole
model's MACs with :func:`count_macs`.

``torch.utils.flop_counter.FlopCounterMode`` is blind to some of the attention kernels PyTorch
picks, so on a transformer it counts only part of the real work:

* in eval mode without autograd, ``nn.MultiheadAttention`` and ``nn.TransformerEncoderLayer``
  take PyTorch's fused *fast path* (``torch._native_multi_head_attention``,
  ``torch._transformer_encoder_layer_fwd``), which the counter has no formula for: it counts
  **nothing** for the whole attention (projections included);
* on CPU, ``F.scaled_dot_product_attention`` runs
  ``aten._scaled_dot_product_flash_attention_for_cpu``, which has no formula either: the two
  attention products (``Q K^T`` and ``A V``) are not counted, while the same call on CUDA is.

:func:`counting_flops` turns the fast path off while it counts (so attention runs its unfused
path: projections as linears, products as ``bmm`` or scaled-dot-product attention) and adds
the counter's own scaled-dot-product formula for the CPU kernel, plus a formula for a direct
call of ``torch._native_multi_head_attention``.  The count is then the same on CPU and CUDA,
in train and eval mode, and equals plain ``FlopCounterMode`` on the model run where the
counter sees every matmul: the fast path off (``torch.backends.mha.set_fastpath_enabled(False)``
or train mode) with ``torch.nn.attention.sdpa_kernel(SDPBackend.MATH)``.

Conventions are the counter's: FLOPs are ``2 x`` MACs of matrix products and convolutions;
biases, norms, softmax and element-wise ops are not counted.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Any, Iterator, Sequence, Union

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from .trace import evaluating

__all__ = ["counting_flops", "count_macs", "count_params", "attention_product_flops"]

aten = torch.ops.aten


def attention_product_flops(q_shape: Any, k_shape: Any, v_shape: Any) -> int:
    """FLOPs of ``Q K^T`` and ``A V`` for ``q [..., Lq, d]``, ``k [..., S, d]``, ``v [..., S, dv]``
    (leading dims: batch and query heads; key / value heads may be fewer, as in grouped-query
    attention): ``2 * batch*heads * Lq * S * (d + dv)``, as the counter counts
    scaled-dot-product attention on CUDA."""
    lead = math.prod(int(n) for n in q_shape[:-2])
    lq, d = int(q_shape[-2]), int(q_shape[-1])
    s, dv = int(k_shape[-2]), int(v_shape[-1])
    return 2 * lead * lq * s * (d + dv)


def _sdpa_cpu_flops(query: Any, key: Any, value: Any, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
    return attention_product_flops(query, key, value)


def _native_mha_flops(query: Any, key: Any, value: Any, embed_dim: int, num_head: int, qkv_weight: Any,
                      qkv_bias: Any, proj_weight: Any, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
    """``torch._native_multi_head_attention`` with ``[B, L, E]`` inputs: the q / k / v and output
    projections and the two attention products."""
    e = int(embed_dim)
    tq, tk, tv = (math.prod(int(n) for n in s[:-1]) for s in (query, key, value))
    b, lq, s = math.prod(int(n) for n in query[:-2]), int(query[-2]), int(key[-2])
    projections = 2 * (tq * e * int(query[-1]) + tk * e * int(key[-1]) + tv * e * int(value[-1]))
    return projections + 2 * tq * e * e + 2 * 2 * b * lq * s * e


_FORMULAS = {
    aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_cpu_flops,
    aten._native_multi_head_attention: _native_mha_flops,
}


@contextmanager
def counting_flops() -> Iterator[FlopCounterMode]:
    """A ``FlopCounterMode`` (no display) that counts attention in every mode (see the module
    docstring); PyTorch's fused attention fast path is off inside and restored after."""
    before = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with FlopCounterMode(display=False, custom_mapping=_FORMULAS) as fc:
            yield fc
    finally:
        torch.backends.mha.set_fastpath_enabled(before)


def count_macs(model: nn.Module, example: Union[torch.Tensor, Sequence[torch.Tensor]]) -> int:
    """MACs of one forward pass on ``example`` (a tensor or a tuple of inputs; a batch of 1 gives
    per-sample MACs): :func:`counting_flops`'s FLOPs / 2, in eval mode and without autograd,
    attention included. The model's train / eval flags are restored. Equal to
    :class:`oneprune_ext.CostModel`'s MACs for the same inputs.
    """
    inputs = tuple(example) if isinstance(example, (tuple, list)) else (example,)
    with evaluating(model.modules()), torch.no_grad(), counting_flops() as fc:
        model(*inputs)
    return int(fc.get_total_flops()) // 2


def count_params(model: nn.Module) -> int:
    """Number of parameter entries (``numel`` sum over all parameters)."""
    return sum(p.numel() for p in model.parameters())
