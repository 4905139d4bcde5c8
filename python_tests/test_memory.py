"""The prune frees memory; compaction keeps memory formats; frozen parameters (issue 8, items 5, 6, 8).

After the prune every pruned parameter, its ``.grad``, its optimizer state and every BN buffer
owns a storage of exactly its size, so the dense memory is released and saved files shrink.
"""

from __future__ import annotations

import os

import outcomes
import pytest
import torch
import torch.nn as nn

from oneprune_ext import PrunerConfig, models
from oneprune_ext.pruning.compaction import prune_channels
from oneprune_ext.training.data import digits_loaders
from oneprune_ext.graph.trace import trace_groups
from oneprune_ext.pruning.pruner import OneCyclePruner
from oneprune_ext.storage.saving import save_pruned
from oneprune_ext.training.trainer import train

from _pruning_cases import build, kept_indices, random_keep, slice_tensor


# tiny models: on a loaded 2-core machine more threads only add contention
pytestmark = pytest.mark.usefixtures("one_thread")


def owns_exactly(t: torch.Tensor) -> bool:
    return t.untyped_storage().nbytes() == t.numel() * t.element_size() and t.storage_offset() == 0


def every_tensor(model: nn.Module, opt: torch.optim.Optimizer):
    for n, p in model.named_parameters():
        yield n, p
        if p.grad is not None:
            yield f"{n}.grad", p.grad
        for k, v in opt.state.get(p, {}).items():
            if isinstance(v, torch.Tensor) and v.dim() > 0:
                yield f"{n}:{k}", v
    yield from model.named_buffers()


@pytest.mark.parametrize("make_opt", [
    lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9),
    lambda ps: torch.optim.AdamW(ps, lr=1e-3, amsgrad=True),
], ids=["SGD", "AdamW"])
def test_pruner_leaves_exact_size_storages(make_opt) -> None:
    torch.manual_seed(0)
    model = models.CifarResNet(20, 10)
    x = torch.randn(4, 3, 32, 32)
    opt = make_opt(model.parameters())
    pruner = OneCyclePruner(model, x[:1], PrunerConfig(total_epochs=3, monitor_start=0, sl_start=0, sl_end=1,
                                                        reduction=0.75, layer_limit=0.9))
    for epoch in range(2):
        pruner.epoch_start(epoch)
        opt.zero_grad()
        loss = model(x).square().mean()
        loss.backward()  # gradients (and the loss graph) alive at the prune
        pruner.before_step()
        opt.step()
        pruner.after_step(0.1)
        dense_bytes = sum(t.untyped_storage().nbytes() for _, t in every_tensor(model, opt))
        pruner.epoch_end(epoch, opt)
    assert pruner.pruned
    bad = [n for n, t in every_tensor(model, opt) if not owns_exactly(t)]
    assert not bad, f"not released: {bad[:5]}"
    pruned_bytes = sum(t.untyped_storage().nbytes() for _, t in every_tensor(model, opt))
    assert pruned_bytes < 0.5 * dense_bytes


def test_saved_files_shrink(tmp_path) -> None:
    """save_pruned of a ResNet-56 pruned to a quarter of its MACs writes about a quarter of the bytes."""
    torch.manual_seed(0)
    model = models.resnet56(10)
    x = torch.randn(2, 3, 32, 32)
    save_pruned(model, tmp_path / "dense.pt")
    pruner = OneCyclePruner(model, x[:1], total_epochs=3, monitor_start=0, sl_start=0, sl_end=1,
                            reduction=0.75, layer_limit=0.9)
    for epoch in range(2):
        pruner.epoch_start(epoch)
        pruner.epoch_end(epoch)
    assert pruner.pruned
    save_pruned(model, tmp_path / "pruned.pt")
    dense, pruned = os.path.getsize(tmp_path / "dense.pt"), os.path.getsize(tmp_path / "pruned.pt")
    tensor_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    assert pruned < 0.5 * dense
    assert pruned < 1.3 * tensor_bytes + 64 * 1024  # the kept bytes, plus the file's own overhead


@pytest.mark.outcome
def test_trainer_checkpoint_shrinks_after_the_prune(tmp_path) -> None:
    torch.manual_seed(outcomes.SEED)
    train_loader, test_loader = digits_loaders(batch_size=128, seed=outcomes.SEED)
    model = models.digits_cnn(10, width=16)
    pruner = OneCyclePruner(model, torch.zeros(1, 1, 8, 8), total_epochs=3, monitor_start=0, sl_start=0,
                            sl_end=1, reduction=0.6)
    sizes = []
    real_save = torch.save

    def spy(obj, f, *a, **k):
        real_save(obj, f, *a, **k)
        f.flush()
        sizes.append(os.fstat(f.fileno()).st_size)

    torch.save = spy
    try:
        train(model, train_loader, test_loader, epochs=3, pruner=pruner, checkpoint=tmp_path / "ck.pt", progress=False,
              seed=outcomes.SEED)
    finally:
        torch.save = real_save
    assert pruner.prune_epoch == 1 and len(sizes) == 3  # sl_end 1: pruned at the end of epoch 1
    # every removed fp32 parameter left the model and its SGD momentum: 8 bytes each, less the few
    # bytes the pruner's state spends on recording the kept channels
    removed = pruner.dense_params - pruner.params()
    assert removed > 0
    assert sizes[0] - sizes[1] > 0.9 * 8 * removed and sizes[0] - sizes[2] > 0.9 * 8 * removed, (sizes, removed)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_channels_last_compaction_keeps_format_values_and_exact_storage(dtype: torch.dtype) -> None:
    model, x = build("resnet18")
    model = model.to(dtype=dtype, memory_format=torch.channels_last)
    x = x.to(dtype).contiguous(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    model(x).float().square().mean().backward()
    opt.step()
    model(x).float().square().mean().backward()
    groups = trace_groups(model, x)
    keep = random_keep(groups, seed=5)
    shapes = {n: tuple(t.shape) for n, t in list(model.named_parameters()) + list(model.named_buffers())}
    idx = kept_indices(groups, keep, shapes)
    want = {n: slice_tensor(t, idx.get(n.split(":")[0].removesuffix(".grad"), {}))
            for n, t in every_tensor(model, opt)}
    prune_channels(model, groups, keep, optimizer=opt)
    for n, t in every_tensor(model, opt):
        assert torch.equal(t, want[n]), n
        assert owns_exactly(t), n
        if t.dim() == 4 and t.shape[1] > 1 and t.shape[2] * t.shape[3] > 1:
            assert t.is_contiguous(memory_format=torch.channels_last), n
    model.eval()
    with torch.no_grad():
        assert torch.isfinite(model(x).float()).all()  # the pruned channels_last model runs


def test_prune_channels_creates_no_grad_for_frozen_parameters() -> None:
    model, x = build("resnet56")
    frozen = [model.conv1.weight, model.layer1[0].conv1.weight]
    for p in frozen:
        p.requires_grad_(False)
    model(x).square().mean().backward()
    groups = trace_groups(model, x)
    prune_channels(model, groups, random_keep(groups, seed=1))
    assert all(p.grad is None and owns_exactly(p) for p in frozen)
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_cuda_memory_is_released() -> None:
    torch.manual_seed(0)
    model = models.resnet56(10).cuda()
    x = torch.randn(2, 3, 32, 32, device="cuda")
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(x).square().mean().backward()
    opt.step()
    pruner = OneCyclePruner(model, x[:1], total_epochs=3, monitor_start=0, sl_start=0, sl_end=1, reduction=0.75,
                            layer_limit=0.9)
    pruner.epoch_start(0)
    pruner.epoch_end(0, opt)
    pruner.epoch_start(1)
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    pruner.epoch_end(1, opt)
    torch.cuda.synchronize()
    after = torch.cuda.memory_allocated()
    kept = sum(t.untyped_storage().nbytes() for _, t in every_tensor(model, opt))
    assert after < before - kept  # most of the dense bytes are back with the allocator
