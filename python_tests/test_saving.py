"""save_pruned / load_pruned (issue 4, item 6)."""

from __future__ import annotations

import json
import os

import pytest
import torch

from oneprune_ext import models
from oneprune_ext.pruning.compaction import prune_channels
from oneprune_ext.graph.trace import trace_groups
from oneprune_ext.storage.saving import load_pruned, save_pruned

from _pruning_cases import build, random_keep


@pytest.mark.parametrize("name", ["digits_cnn", "resnet56", "mobilenet_v2", "vit"])
def test_roundtrip(tmp_path, name: str) -> None:
    model, x = build(name)
    groups = trace_groups(model, x)
    prune_channels(model, groups, random_keep(groups, seed=5))
    path = tmp_path / "pruned.pt"
    save_pruned(model, path)
    assert os.listdir(tmp_path) == ["pruned.pt"]  # no temporary file left behind
    data = torch.load(path, weights_only=True)
    record = json.loads(data["structure"])
    assert record["tensors"]
    fresh, _ = build(name, seed=3)
    ids = [id(p) for p in fresh.parameters()]
    load_pruned(fresh, path)
    assert [id(p) for p in fresh.parameters()] == ids
    model.eval()
    fresh.eval()
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), model(x))
    # the loaded model traces and prunes again
    trace_groups(fresh, x)


def test_structure_mismatch(tmp_path) -> None:
    model = models.digits_cnn(width=8)
    x = torch.randn(2, 1, 8, 8)
    groups = trace_groups(model, x)
    prune_channels(model, groups, random_keep(groups, seed=1))
    path = tmp_path / "p.pt"
    save_pruned(model, path)
    narrow = models.digits_cnn(width=2)
    before = {k: v.clone() for k, v in narrow.state_dict().items()}
    with pytest.raises(ValueError, match="does not fit"):
        load_pruned(narrow, path)
    assert all(torch.equal(v, before[k]) for k, v in narrow.state_dict().items())  # untouched
    with pytest.raises(ValueError, match="structure does not match"):
        load_pruned(models.mlp(), path)
    torch.save(model.state_dict(), tmp_path / "plain.pt")
    with pytest.raises(ValueError, match="not a checkpoint"):
        load_pruned(models.digits_cnn(width=8), tmp_path / "plain.pt")


def test_overwrite_is_atomic(tmp_path) -> None:
    path = tmp_path / "m.pt"
    path.write_bytes(b"old")
    model = models.mlp()
    save_pruned(model, path)
    load_pruned(models.mlp(), path)
    assert sorted(os.listdir(tmp_path)) == ["m.pt"]
