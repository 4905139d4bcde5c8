"""How salient each channel is: the saliency strategies (``saliency_params``).

The published saliency of channel ``c`` with coupled slices ``s_1..s_M`` is
``(1/M) * sum_m ||s_m(c)||^2 / sqrt(len(s_m(c)))``, computed for every channel of the model by one
fused kernel (:func:`oneprune_ext.kernels.ops.grouped_norms`) over the slices the trace marked as
counted. A strategy decides which slices count (it is asked when the model is traced) and computes
the per-channel squared norms and saliencies:

* :class:`PublishedSaliency` (``saliency_params="published"``, the default): conv / linear rows and
  columns and BatchNorm weights count; depthwise-conv, LayerNorm and layer-scale weights are only
  compacted, as in the published code;
* :class:`AllWeightsSaliency` (``saliency_params="all"``): every coupled weight slice counts.

The same slices are the ones sparsity learning regularises (the layout carries them), so the choice
is made once, at construction. :func:`saliency_for` maps the option to its strategy.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch

__all__ = ["Saliency", "PublishedSaliency", "AllWeightsSaliency", "saliency_for"]


@runtime_checkable
class Saliency(Protocol):
    """A saliency strategy.

    Attributes:
        name: the ``saliency_params`` value it stands for (recorded in checkpoints).
        trace_option: what :func:`oneprune_ext.graph.trace.trace_groups` gets as
            ``saliency_params``: which slices the layout counts.
    """

    name: str
    trace_option: str

    def scores(self, ops: Any, layout: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Per channel (groups concatenated): the squared norm over its counted slices and its
        saliency, two fp32 device tensors, without a host synchronisation."""
        ...


class _GroupedNorms:
    """Both built-in strategies: the fused norms kernel over the counted slices."""

    name = ""
    trace_option = ""

    def scores(self, ops: Any, layout: Any) -> tuple[torch.Tensor, torch.Tensor]:
        return ops.grouped_norms(layout)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class PublishedSaliency(_GroupedNorms):
    """Conv / linear rows and columns and BatchNorm weights count (the published saliency)."""

    name = trace_option = "published"


class AllWeightsSaliency(_GroupedNorms):
    """Every coupled weight slice counts: depthwise-conv, LayerNorm and layer-scale weights too."""

    name = trace_option = "all"


_BY_NAME = {s.name: s for s in (PublishedSaliency, AllWeightsSaliency)}


def saliency_for(name: str) -> Saliency:
    """The strategy of a ``saliency_params`` value (``"published"`` or ``"all"``)."""
    if name not in _BY_NAME:
        raise ValueError(f"saliency_params must be one of {tuple(_BY_NAME)}, got {name!r}")
    return _BY_NAME[name]()
