"""Registry entries of ultralytics' YOLO modules (registered by qualified name: nothing is
imported for them).

YOLO models are built from ``torch.nn`` layers (``Conv2d``, ``BatchNorm2d``, ``SiLU``,
``Upsample``) wired by plain Python (``Conv``, ``C2f``, ``C3k2``, ``SPPF``, ``Concat``: traced
through into ``torch.cat`` / ``chunk``); only the detection head needs an entry:

* ``ultralytics.nn.modules.head.Detect`` (and its subclasses: ``Segment``, ``Pose``, ``OBB``,
  ...): traced through; its output carries, under ``"feats"``, the feature maps it received,
  which the YOLO loss reads for their shapes only (the anchor grid and the image size).  They
  are marked as such, so the neck's output channels stay prunable although they reach the
  model's output.  The head's last convolutions (box and class outputs) are kept: their channel
  counts are literal sizes in its reshapes.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from ..registry import LayerEntry, register_module

__all__: list[str] = []


def _detect_feature_maps(m: nn.Module, out: Any) -> list[torch.Tensor]:
    """The ``"feats"`` tensors of Detect's output: ``preds`` (train mode), ``(y, preds)`` (eval)."""
    found: list[torch.Tensor] = []
    for part in (out if isinstance(out, tuple) else (out,)):
        if isinstance(part, dict):
            feats = part.get("feats")
            if isinstance(feats, (list, tuple)):
                found.extend(t for t in feats if isinstance(t, torch.Tensor))
    return found


register_module("ultralytics.nn.modules.head.Detect", entry=LayerEntry(
    "YOLO detect head", shape_only_outputs=_detect_feature_maps))
