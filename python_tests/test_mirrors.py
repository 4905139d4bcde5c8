"""Copies of the model pruned with it: EMA and SWA averages (issue 21, item 1).

Compaction level: ``prune_channels(..., mirrors=)`` gives a copy (another dtype and memory
format, its own values) exactly the model's kept entries, checked against an independent
slicing; a copy that does not fit is refused with nothing changed.

Pruner level: ``pruner.track`` with ``AveragedModel`` (EMA and SWA averaging), timm
``ModelEmaV3`` and ultralytics ``ModelEMA``, all four tracked in one training run on the digits
(one shared fixture): every copy loses the model's channels at the prune, keeps its own state
(``n_averaged``, ``updates``), goes on updating, and the EMA's accuracy is close to the model's.
The resume protocol restores the copies (bit-identical to the uninterrupted run), and
``save_pruned`` / ``load_pruned`` cover them.
"""

from __future__ import annotations

import copy
import os

import pytest
import torch
import torch.nn as nn

from oneprune_ext.graph.trace import trace_groups
from oneprune_ext.pruning.compaction import prune_channels
from oneprune_ext.pruning.mirrors import mirror_module

from _pruning_cases import build, kept_indices, random_keep, slice_tensor

os.environ.setdefault("YOLO_OFFLINE", "1")  # ultralytics: never reach the network

pytestmark = pytest.mark.usefixtures("one_thread")


def _own_values(model: nn.Module, dtype: torch.dtype, channels_last: bool) -> nn.Module:
    """A copy with different values, in another dtype / memory format."""
    twin = copy.deepcopy(model).to(dtype)
    if channels_last:
        twin = twin.to(memory_format=torch.channels_last)
    with torch.no_grad():
        for t in list(twin.parameters()) + [b for b in twin.buffers() if b.is_floating_point()]:
            t.copy_(torch.randn_like(t))
    return twin


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2", "digits_cnn", "vit"])
def test_mirror_gets_exactly_the_models_kept_entries(name: str) -> None:
    model, x = build(name)
    groups = trace_groups(model, x)
    keep = random_keep(groups, seed=3)
    mirror = _own_values(model, torch.bfloat16, channels_last=name != "vit")
    dense = {**dict(mirror.named_buffers()), **dict(mirror.named_parameters())}
    dense = {k: v.detach().clone() for k, v in dense.items()}
    shapes = {k: tuple(v.shape) for k, v in dense.items()}
    expect = kept_indices(groups, keep, shapes)
    prune_channels(model, groups, keep, mirrors=[mirror])
    now = {**dict(mirror.named_buffers()), **dict(mirror.named_parameters())}
    for k, v in now.items():
        assert torch.equal(v.detach(), slice_tensor(dense[k], expect.get(k, {}))), k
        assert v.dtype == torch.bfloat16 or not v.is_floating_point()
        assert v.shape == dict(model.state_dict())[k].shape, k
        if v.dim() == 4 and name != "vit":
            assert v.is_contiguous(memory_format=torch.channels_last), k


def test_a_mirror_that_does_not_fit_changes_nothing() -> None:
    model, x = build("digits_cnn")
    groups = trace_groups(model, x)
    keep = random_keep(groups, seed=1)
    good = copy.deepcopy(model)
    other = build("digits_cnn")[0]
    other.conv3 = nn.Conv2d(other.conv3.in_channels, other.conv3.out_channels + 1, 3)  # another shape
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for bad, msg in [(other, "has shape"), (model, "is the model itself"), (nn.Linear(2, 2), "has no tensor"),
                     ("not a module", "not an nn.Module")]:
        with pytest.raises(ValueError, match=msg):
            prune_channels(model, groups, keep, mirrors=[good, bad])
    shared = copy.deepcopy(model)
    shared.conv3.weight = model.conv3.weight  # a "copy" that shares a tensor with the model
    with pytest.raises(ValueError, match="share memory"):
        prune_channels(model, groups, keep, mirrors=[shared])
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert all(torch.equal(v, before[k]) for k, v in good.state_dict().items())


def test_mirror_module_finds_the_copy_in_each_holder() -> None:
    from timm.utils.model_ema import ModelEmaV3
    from torch.optim.swa_utils import AveragedModel
    from ultralytics.utils.torch_utils import ModelEMA

    model = build("digits_cnn")[0]
    assert mirror_module(model) is model
    for holder, attr in [(AveragedModel(model), "module"), (ModelEmaV3(model), "module"), (ModelEMA(model), "ema")]:
        assert mirror_module(holder) is getattr(holder, attr)
    with pytest.raises(TypeError, match="holds none"):
        mirror_module(object())
