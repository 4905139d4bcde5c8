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
from typing import Any

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from oneprune_ext import evaluate, models
from oneprune_ext.graph.trace import trace_groups
from oneprune_ext.pruning.compaction import prune_channels
from oneprune_ext.pruning.mirrors import mirror_module
from oneprune_ext.training.data import digits_loaders

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


# ------------------------------------------------------------------------------ with the pruner

EPOCHS = 10
CONFIG = dict(total_epochs=EPOCHS, reduction=0.5, reg="auto", monitor_start=1, sl_start=2, sl_end=5)


def build_dense_groups(state: dict[str, torch.Tensor]):
    """The channel groups of a digits CNN holding ``state`` (an independent trace of the dense model)."""
    m = models.digits_cnn(10, width=8)
    m.load_state_dict(state)
    return trace_groups(m, torch.zeros(1, 1, 8, 8))


def _holders(model: nn.Module) -> dict[str, Any]:
    """The four averages of the issue, each made from ``model`` (decays for a short run)."""
    from timm.utils.model_ema import ModelEmaV3
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
    from ultralytics.utils.torch_utils import ModelEMA

    return {"ema": AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.9), use_buffers=True),
            "swa": AveragedModel(model),
            "timm": ModelEmaV3(model, decay=0.9),
            "ultralytics": ModelEMA(model, decay=0.9, tau=20)}


def _update(name: str, holder: Any, model: nn.Module) -> None:
    if name in ("ema", "swa"):
        holder.update_parameters(model)
    else:
        holder.update(model)


def _snapshot(holders: dict[str, Any], model: nn.Module) -> dict[str, dict[str, torch.Tensor]]:
    out = {n: {k: v.clone() for k, v in mirror_module(h).state_dict().items()} for n, h in holders.items()}
    out["model"] = {k: v.clone() for k, v in model.state_dict().items()}
    return out


def _train(model, pruner, holders, opt, sched, loader, epochs, on_prune=None) -> None:
    for epoch in epochs:
        loader.sampler.set_epoch(epoch)
        pruner.epoch_start(epoch)
        for x, y in loader:
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            pruner.before_step()
            opt.step()
            pruner.after_step(sched.get_last_lr()[0])
            for n, h in holders.items():
                _update(n, h, model)
        sched.step()
        due = pruner.will_prune(epoch)
        if due and on_prune is not None:
            on_prune("before", epoch)
        pruner.epoch_end(epoch, opt)
        if due and on_prune is not None:
            on_prune("after", epoch)


def _build_run(seed: int = 0):
    from oneprune_ext import OneCyclePruner

    train_loader, test_loader = digits_loaders(batch_size=64, seed=0)
    torch.manual_seed(seed)
    model = models.digits_cnn(10, width=8)
    holders = _holders(model)
    pruner = OneCyclePruner(model, torch.zeros(1, 1, 8, 8), **CONFIG)
    for h in holders.values():
        assert pruner.track(h) is h
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, EPOCHS)
    return model, pruner, holders, opt, sched, train_loader, test_loader


@pytest.fixture(scope="module")
def tracked_run():
    """One run on the digits with the four averages tracked; snapshots around the prune and the
    whole resumable state right after it."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model, pruner, holders, opt, sched, train_loader, test_loader = _build_run()
        seen: dict[str, Any] = {}

        def on_prune(when: str, epoch: int) -> None:
            seen[when] = _snapshot(holders, model)
            seen[f"{when}_counters"] = {"ema": int(holders["ema"].n_averaged), "swa": int(holders["swa"].n_averaged),
                                        "ultralytics": holders["ultralytics"].updates}
            if when == "after":
                seen["checkpoint"] = copy.deepcopy({
                    "epoch": epoch, "model": model.state_dict(), "optimizer": opt.state_dict(),
                    "scheduler": sched.state_dict(), "pruner": pruner.state_dict(),
                    "mirrors": {n: (mirror_module(h).state_dict() if n != "ema" and n != "swa" else h.state_dict())
                                for n, h in holders.items()},
                    "ultralytics_updates": holders["ultralytics"].updates})

        _train(model, pruner, holders, opt, sched, train_loader, range(EPOCHS), on_prune)
    finally:
        torch.set_num_threads(n)
    return {"model": model, "pruner": pruner, "holders": holders, "opt": opt, "seen": seen,
            "train_loader": train_loader, "test_loader": test_loader}


@pytest.mark.parametrize("name", ["ema", "swa", "timm", "ultralytics"])
def test_tracked_average_loses_the_models_channels_at_the_prune(tracked_run, name: str) -> None:
    run = tracked_run
    assert run["pruner"].pruned
    before, after = run["seen"]["before"], run["seen"]["after"]
    dense = build_dense_groups(before["model"])
    keep = {gi: k.tolist() for gi, k in enumerate(run["pruner"].selection.kept_indices)}
    shapes = {k: tuple(v.shape) for k, v in before[name].items()}
    expect = kept_indices(dense, keep, shapes)
    for k, v in after[name].items():
        assert torch.equal(v, slice_tensor(before[name][k], expect.get(k, {}))), k
    # its own state is kept
    counters_before, counters_after = run["seen"]["before_counters"], run["seen"]["after_counters"]
    if name in counters_before:
        assert counters_after[name] == counters_before[name]


@pytest.mark.parametrize("name", ["ema", "swa", "timm", "ultralytics"])
def test_tracked_average_keeps_updating_after_the_prune(tracked_run, name: str) -> None:
    run = tracked_run
    holder, model = run["holders"][name], run["model"]
    after = run["seen"]["after"][name]
    now = mirror_module(holder).state_dict()
    assert {k: v.shape for k, v in now.items()} == {k: v.shape for k, v in model.state_dict().items()}
    assert any(not torch.equal(now[k], after[k]) for k in now if now[k].is_floating_point())  # it moved on
    steps = EPOCHS * len(run["train_loader"])
    if name in ("ema", "swa"):
        assert int(holder.n_averaged) == steps
    if name == "ultralytics":
        assert holder.updates == steps
        ema_tensors, model_tensors = holder._pairs  # rebuilt from the pruned tensors after the prune
        assert all(a.shape == b.shape for a, b in zip(ema_tensors, model_tensors))
        assert {t.data_ptr() for t in model_tensors} <= {t.data_ptr() for t in model.state_dict().values()}


@pytest.mark.parametrize("name", ["ema", "timm", "ultralytics"])
def test_ema_accuracy_after_training_is_close_to_the_models(tracked_run, name: str) -> None:
    """An EMA pruned with other channels than the model's would be near chance (10 %); a correct one
    is within a few points of the model it averages (decay 0.9: about the last 10 steps)."""
    run = tracked_run
    model_acc = evaluate(run["model"], run["test_loader"])
    ema_acc = evaluate(mirror_module(run["holders"][name]), run["test_loader"])
    print(f"{name}: EMA {ema_acc:.1f} %, model {model_acc:.1f} %")
    assert model_acc > 90.0
    assert ema_acc >= model_acc - 3.0, (name, ema_acc, model_acc)


def test_resume_restores_the_tracked_averages_bit_identically(tracked_run) -> None:
    """The resume protocol with the averages: a fresh dense model and fresh averages tracked,
    pruner.load_state_dict cuts them all, then every state_dict loads as saved."""
    ck = copy.deepcopy(tracked_run["seen"]["checkpoint"])
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model, pruner, holders, opt, sched, train_loader, _ = _build_run()
        pruner.load_state_dict(ck["pruner"])
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        for name, h in holders.items():
            target = h if name in ("ema", "swa") else mirror_module(h)
            target.load_state_dict(ck["mirrors"][name])
        holders["ultralytics"].updates = ck["ultralytics_updates"]
        _train(model, pruner, holders, opt, sched, train_loader, range(ck["epoch"] + 1, EPOCHS))
    finally:
        torch.set_num_threads(n)
    ref = tracked_run
    for name, h in holders.items():
        a, b = mirror_module(h).state_dict(), mirror_module(ref["holders"][name]).state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), ref["model"].state_dict().values()))


def test_track_a_dense_copy_after_the_prune_cuts_it_at_once() -> None:
    from oneprune_ext import OneCyclePruner
    from torch.optim.swa_utils import AveragedModel

    model, x = build("digits_cnn")
    pruner = OneCyclePruner(model, x[:1], total_epochs=4, monitor_start=0, sl_start=0, sl_end=1, reg=0.1)
    dense_copy = AveragedModel(model)
    other = AveragedModel(build("mlp")[0])
    for epoch in (0, 1):
        pruner.epoch_start(epoch)
        pruner.epoch_end(epoch)
    assert pruner.pruned
    twin = AveragedModel(model)  # made from the pruned model: tracked as it is
    assert pruner.track(twin) is twin
    before = {k: v.clone() for k, v in dense_copy.module.state_dict().items()}
    pruner.track(dense_copy)  # made from the dense model: cut now, with the prune's channels
    assert {k: v.shape for k, v in dense_copy.module.state_dict().items()} == \
        {k: v.shape for k, v in model.state_dict().items()}
    dense = build_dense_groups(before)
    keep = {gi: k.tolist() for gi, k in enumerate(pruner.selection.kept_indices)}
    expect = kept_indices(dense, keep, {k: tuple(v.shape) for k, v in before.items()})
    for k, v in dense_copy.module.state_dict().items():
        assert torch.equal(v, slice_tensor(before[k], expect.get(k, {}))), k
    with pytest.raises(ValueError, match="does not mirror the model"):
        pruner.track(other)
    with pytest.raises(ValueError, match="the pruned model itself"):
        pruner.track(model)
    with pytest.raises(ValueError, match="tracked already"):
        pruner.track(twin)


def test_save_pruned_writes_the_average_and_load_pruned_reshapes_copies(tracked_run, tmp_path) -> None:
    from oneprune_ext import load_pruned, save_pruned
    from torch.optim.swa_utils import AveragedModel

    run = tracked_run
    x = next(iter(run["test_loader"]))[0]
    for name in ("ema", "ultralytics"):
        holder = run["holders"][name]
        save_pruned(holder, tmp_path / f"{name}.pt")  # the averaged network, loadable into a plain model
        plain = load_pruned(models.digits_cnn(10, width=8), tmp_path / f"{name}.pt").eval()
        with torch.no_grad():
            assert torch.equal(plain(x), mirror_module(holder).eval()(x))
    save_pruned(run["model"], tmp_path / "model.pt")
    model = models.digits_cnn(10, width=8)
    ema = AveragedModel(model)
    load_pruned(model, tmp_path / "model.pt", mirrors=[ema])
    want = run["model"].state_dict()
    for sd in (model.state_dict(), ema.module.state_dict()):
        assert sd.keys() == want.keys() and all(torch.equal(sd[k], want[k]) for k in sd)
    ema.update_parameters(model)  # and it averages the loaded model
