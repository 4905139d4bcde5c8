"""Faithful to the published method by default (issue 9): defaults and recipes, reg="auto", the prune
shock, the fresh selection at the prune, and which weights the saliency counts."""

from __future__ import annotations

import copy
import json
import math
from typing import Any

import outcomes
import pytest
import torch
import torch.nn as nn

from oneprune_ext import models, reference

from oneprune_ext.cli import train as cli
from oneprune_ext.pruning.config import PrunerConfig
from oneprune_ext.training.data import digits_loaders
from oneprune_ext.pruning.pruner import OneCyclePruner
from oneprune_ext.pruning.stability import StabilityTracker
from oneprune_ext.pruning.recipes import CIFAR10
from oneprune_ext.pruning.sparsity import ShrinkCurve, published_shrink_curve, schedule_shrink
from oneprune_ext.training.trainer import evaluate, train

X = torch.zeros(1, 1, 8, 8)


# tiny models: on a loaded 2-core machine more threads only add contention
pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return models.mlp(64, (16, 12), 10)


class NeverStable(StabilityTracker):
    """The real tracker, but the indicator never reaches the threshold: the prune waits for sl_end."""

    def update(self, kept_sets: Any) -> float:
        super().update(kept_sets)
        self.history[-1] = 0.5
        return 0.5


# ------------------------------------------------------------------------- defaults and recipes


def test_defaults_are_the_published_ones() -> None:
    cfg = PrunerConfig(total_epochs=300)
    assert cfg.regularizer == "shrink"  # what produced the published numbers (penalty under no_grad)
    assert cfg.saliency_params == "published"
    assert (cfg.monitor_start, cfg.sl_start, cfg.sl_end, cfg.reg, cfg.reg_delta, cfg.reg_interval) == \
        (2, 30, 110, 1e-4, 1e-4, 1)
    assert (cfg.layer_limit, cfg.layer_limit_k, cfg.stability_threshold) == (0.75, 1.0, 0.999)
    assert cfg.reselect_at_prune is False
    assert OneCyclePruner(tiny_mlp(), X, total_epochs=12, sl_start=4, sl_end=9).config.regularizer == "shrink"
    assert cli.parse_args([]).pruner_config.regularizer == "shrink"


def _printed(capsys, *argv: str) -> dict[str, Any]:
    assert cli.main([*argv, "--print-config"]) == 0
    return json.loads(capsys.readouterr().out)


def test_print_config_cifar10_is_the_published_recipe(capsys) -> None:
    c = _printed(capsys, "--data", "cifar10")  # no --data-root needed to look at the recipe
    assert (c["epochs"], c["batch_size"], c["model"]) == (300, 128, "resnet56")
    assert c["optimizer"] == {"name": "SGD", "lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4}
    assert c["lr_schedule"] == {"kind": "step", "unit": "epoch", "milestones": [0.3, 0.6, 0.8, 0.9], "gamma": 0.2}
    p = c["pruner"]
    assert (p["total_epochs"], p["monitor_start"], p["sl_start"], p["sl_end"]) == (300, 2, 30, 110)
    assert (p["reg"], p["reg_delta"], p["reg_interval"]) == (1e-4, 1e-4, 1)
    assert (p["layer_limit"], p["stability_threshold"], p["regularizer"]) == (0.75, 0.999, "shrink")
    assert (p["saliency_params"], p["reselect_at_prune"]) == ("published", False)
    assert PrunerConfig.from_dict(p) == PrunerConfig(total_epochs=300)  # the published defaults


def test_print_config_imagenet_is_the_published_recipe(capsys) -> None:
    c = _printed(capsys, "--data", "imagenet")
    assert (c["epochs"], c["batch_size"], c["model"]) == (130, 256, "resnet50")
    # plain SGD: no Nesterov, weight decay 1e-4; cosine from 0.1 stepped every iteration
    assert c["optimizer"] == {"name": "SGD", "lr": 0.1, "momentum": 0.9, "nesterov": False, "weight_decay": 1e-4}
    assert c["lr_schedule"] == {"kind": "cosine", "unit": "iteration"}
    p = c["pruner"]
    assert (p["total_epochs"], p["monitor_start"], p["sl_start"], p["sl_end"]) == (130, 2, "auto", 50)
    assert (p["reg"], p["reg_delta"], p["reg_interval"]) == (1e-4, 1e-4, 2)
    assert (p["layer_limit"], p["regularizer"], p["reselect_at_prune"]) == (0.75, "shrink", True)


def test_print_config_scaled_recipes_use_auto_reg(capsys) -> None:
    c = _printed(capsys, "--data", "cifar10", "--epochs", "30")
    p = c["pruner"]
    assert (p["monitor_start"], p["sl_start"], p["sl_end"], p["reg"]) == (1, 3, 11, "auto")
    assert "scaled" in c["preset"]
    assert _printed(capsys, "--data", "imagenet", "--epochs", "65")["pruner"]["reg"] == "auto"
    digits = _printed(capsys)  # the demo data: the CIFAR-10 recipe scaled to 30 epochs
    assert (digits["epochs"], digits["pruner"]["reg"], digits["optimizer"]["nesterov"]) == (30, "auto", True)
    # what the user sets wins over the recipe
    c = _printed(capsys, "--data", "imagenet", "--epochs", "65", "--reg", "3e-4", "--nesterov", "--weight-decay",
                 "5e-4", "--schedule-unit", "epoch", "--no-reselect-at-prune")
    assert (c["pruner"]["reg"], c["optimizer"]["nesterov"], c["optimizer"]["weight_decay"]) == (3e-4, True, 5e-4)
    assert (c["lr_schedule"]["unit"], c["pruner"]["reselect_at_prune"]) == ("epoch", False)
    with pytest.raises(SystemExit) as e:
        cli.main(["--reg", "strong", "--print-config"])
    assert e.value.code == 2 and "--reg" in capsys.readouterr().err


def test_reg_auto_or_a_number() -> None:
    assert PrunerConfig(total_epochs=10, sl_start=2, sl_end=5, reg="auto").reg == "auto"
    assert PrunerConfig.from_dict(PrunerConfig(total_epochs=10, sl_start=2, sl_end=5, reg="auto").to_dict()).reg \
        == "auto"
    for bad in ("Auto", -1e-4, float("nan"), None):
        with pytest.raises(ValueError, match="reg"):
            PrunerConfig(total_epochs=10, sl_start=2, sl_end=5, reg=bad)


# ------------------------------------------------------------------------------------ reg="auto"


def test_published_curve() -> None:
    ends = published_shrink_curve()
    assert len(ends) == CIFAR10.sl_end - CIFAR10.sl_start + 1 == 81
    # 391 steps x (reg 1e-4 .. 60e-4 at lr 0.1, then 61e-4 .. 81e-4 at lr 0.02)
    assert ends[-1] == pytest.approx(391 * (0.1 * 1e-4 * 1830 + 0.02 * 1e-4 * 1491))
    assert 8.2 < ends[-1] < 8.4
    curve = ShrinkCurve.published()
    assert curve.at(0) == 0.0 and curve.at(1) == pytest.approx(ends[-1]) and curve.at(2) == curve.total
    assert curve.at(40 / 81) == pytest.approx(ends[39])
    assert curve.at(40.5 / 81) == pytest.approx((ends[39] + ends[40]) / 2)
    # the same reg numbers on the digits demo's schedule (45 steps x 9 epochs) shrink about 1 %
    short = schedule_shrink(sl_start=3, sl_end=11, steps_per_epoch=45, lr_at=lambda t: 0.1 if t < 9 else 0.02,
                            reg=1e-4, reg_delta=1e-4, reg_interval=1)
    assert short[-1] < 0.02


def _simulate(steps: int, sl_epochs: int, lr_of, **kw: Any) -> list[float]:
    """Hooks only, no data: the measured shrink -log(|w_end| / |w_start|) of the removed channels
    at the end of every sparsity-learning epoch (sl_start 1 .. sl_end)."""
    opts = dict(total_epochs=sl_epochs + 2, monitor_start=0, sl_start=1, sl_end=sl_epochs, reg="auto")
    opts.update(kw)
    p = OneCyclePruner(tiny_mlp(), X, **opts)
    p.search.tracker = NeverStable()
    measured: list[float] = []
    start = mask = None
    for e in range(sl_epochs + 1):
        p.epoch_start(e)
        if e == 1:
            mask = p.selection.removal_mask.clone()
            start = reference.grouped_norms(p.layout)[0][mask]
        for i in range(steps):
            p.after_step(lr_of(e, i))
        if e >= 1:
            assert torch.equal(p.selection.removal_mask, mask)  # the shrunk channels stay chosen
            sq = reference.grouped_norms(p.layout)[0][mask]
            measured.append(float(-0.5 * torch.log(sq / start).mean()))
        rep = p.epoch_end(e)
        if e >= 1:
            assert rep.shrink == pytest.approx(p.sparsity.strength.applied)
    assert rep.pruned_now and rep.epoch == sl_epochs
    return measured


def test_reg_auto_follows_the_published_curve_at_any_schedule_length() -> None:
    """45 steps x 8 sparsity epochs and 391 x 80 (the published length), different lr schedules:
    the same cumulative shrink (within 10 %), along the same curve."""
    short = _simulate(45, 8, lambda e, i: 0.1 if e < 4 else 0.02)
    long = _simulate(391, 80, lambda e, i: 0.05 * (1 + math.cos(math.pi * (e * 391 + i) / (82 * 391))))
    total = ShrinkCurve.published().total
    assert short[-1] == pytest.approx(long[-1], rel=0.1)
    assert short[-1] == pytest.approx(total, rel=0.1) and long[-1] == pytest.approx(total, rel=0.1)
    for k in range(2, 9, 2):  # the same shape: a quarter, half, three quarters, all of the window
        assert short[k - 1] == pytest.approx(long[10 * k - 1], rel=0.1, abs=0.05), k


def test_reg_auto_catches_up_when_the_epoch_length_is_unknown() -> None:
    """Sparsity learning from epoch 0: no step count yet, the first epoch assumes the published 391
    steps and the deficit is spread over the next epochs; the total at sl_end is the curve's."""
    p = OneCyclePruner(tiny_mlp(), X, total_epochs=8, monitor_start=0, sl_start=0, sl_end=5, reg="auto")
    p.search.tracker = NeverStable()
    shrinks = []
    for e in range(6):
        p.epoch_start(e)
        for _ in range(30 if e < 3 else 60):  # and the epochs get longer halfway
            p.after_step(0.1)
        shrinks.append(p.epoch_end(e).shrink)
    curve = ShrinkCurve.published()
    assert shrinks[0] == pytest.approx(curve.at(1 / 6) * 30 / 391)
    assert shrinks[-1] == pytest.approx(curve.total)
    assert p.pruned


def test_plain_reg_keeps_its_meaning() -> None:
    p = OneCyclePruner(tiny_mlp(), X, total_epochs=8, monitor_start=0, sl_start=1, sl_end=5, reg=0.01,
                       reg_delta=0.02)
    p.search.tracker = NeverStable()
    reports = []
    for e in range(3):
        p.epoch_start(e)
        for _ in range(10):
            p.after_step(0.5)
        reports.append(p.epoch_end(e))
    assert [r.reg for r in reports] == pytest.approx([0.0, 0.01, 0.03])
    assert reports[-1].shrink == pytest.approx(10 * 0.5 * (0.01 + 0.03))


def test_reg_auto_state_resumes_exactly() -> None:
    def fresh() -> OneCyclePruner:
        p = OneCyclePruner(tiny_mlp(), X, total_epochs=10, monitor_start=0, sl_start=1, sl_end=6, reg="auto",
                           regularizer="both")
        p.search.tracker = NeverStable()
        return p

    def epoch(p: OneCyclePruner, e: int) -> None:
        p.epoch_start(e)
        for i in range(7):
            p.model.zero_grad()
            p.model(torch.ones(2, 1, 8, 8)).sum().backward()
            p.before_step()
            p.after_step(0.1 / (i + 1))
        p.epoch_end(e)

    a = fresh()
    for e in range(3):
        epoch(a, e)
    b = fresh()
    b.load_state_dict(copy.deepcopy(a.state_dict()))
    b.search.tracker = NeverStable()
    b.tracker.load_state_dict(a.tracker.state_dict())
    b.model.load_state_dict(a.model.state_dict())
    for e in range(3, 5):
        epoch(a, e)
        epoch(b, e)
    assert all(torch.equal(x, y) for x, y in zip(a.model.parameters(), b.model.parameters()))
    assert a.sparsity.strength.applied == b.sparsity.strength.applied
    assert a.sparsity.ledger.steps_per_epoch == b.sparsity.ledger.steps_per_epoch == 7


# ------------------------------------------------------------------------------- the prune shock


def test_removed_norm_share_and_will_prune() -> None:
    p = OneCyclePruner(tiny_mlp(), X, total_epochs=6, monitor_start=1, sl_start=1, sl_end=3, reg=0.05)
    shares = []
    for e in range(5):
        p.epoch_start(e)
        due = p.will_prune(e)
        for _ in range(5):
            p.after_step(0.5)
        if p.selection is not None and not p.pruned:
            sq = reference.grouped_norms(p.layout)[0]
            expected = float(sq[p.selection.removal_mask].sum() / sq.sum())
        rep = p.epoch_end(e)
        assert due == rep.pruned_now
        assert not p.will_prune(e)  # asked after epoch_end: nothing more to prune in this epoch
        if rep.removed_norm_share is not None:
            assert rep.removed_norm_share == pytest.approx(expected, rel=1e-5)
        shares.append(rep.removed_norm_share)
    assert shares[0] is None and shares[4] is None  # dense phase; after the prune
    assert shares[1] > shares[2] > shares[3] > 0  # the shrink empties the removed channels


@pytest.mark.outcome
def test_trainer_measures_the_prune_shock_right_around_the_prune() -> None:
    """The accuracy before the prune is taken after the epoch's last step, with no training in between."""
    train_loader, test_loader = digits_loaders(batch_size=128, seed=outcomes.SEED)
    torch.manual_seed(outcomes.SEED)
    model = models.digits_cnn(width=8)
    pruner = OneCyclePruner(model, X, total_epochs=5, monitor_start=1, sl_start=1, sl_end=3, reg="auto")
    seen: dict[str, float] = {}
    real_end = pruner.epoch_end

    def epoch_end(epoch: int, optimizer=None):
        if pruner.will_prune(epoch):  # what the model scores right when epoch_end is called
            seen["before"] = evaluate(model, test_loader)
        rep = real_end(epoch, optimizer)
        if rep.pruned_now:
            seen["after"] = evaluate(model, test_loader)
        return rep

    pruner.epoch_end = epoch_end  # type: ignore[method-assign]
    res = train(model, train_loader, test_loader, epochs=5, pruner=pruner, progress=False, seed=outcomes.SEED)
    rec = next(h for h in res.history if h.pruned_now)
    assert (res.acc_before_prune, res.acc_after_prune) == (seen["before"], seen["after"])
    assert (rec.acc_before_prune, rec.acc_after_prune) == (seen["before"], seen["after"])
    assert rec.test_acc == seen["after"]
    assert res.prune_shock == pytest.approx(seen["before"] - seen["after"])
    assert res.removed_norm_share == rec.removed_norm_share and 0 <= rec.removed_norm_share < 1e-3
    assert res.shrink_at_prune == rec.shrink > 1
    assert all(h.acc_before_prune is None for h in res.history if not h.pruned_now)
    assert res.history[0].removed_norm_share is None and res.history[-1].removed_norm_share is None
    d = res.to_dict()
    assert d["prune_shock"] == res.prune_shock and d["history"][rec.epoch]["acc_before_prune"] == seen["before"]


def test_iteration_schedule_steps_every_batch() -> None:
    train_loader, test_loader = digits_loaders(batch_size=256, seed=0)
    n = len(train_loader)
    res = train(models.digits_cnn(width=4), train_loader, test_loader, epochs=2, schedule="cosine",
                schedule_unit="iteration", nesterov=False, weight_decay=1e-4, progress=False)
    assert res.history[1].lr == pytest.approx(0.1 * (1 + math.cos(math.pi * n / (2 * n))) / 2)
    with pytest.raises(ValueError, match="schedule_unit"):
        train(models.digits_cnn(width=4), train_loader, test_loader, epochs=1, schedule_unit="batch", progress=False)


# ------------------------------------------------------------------------- selection at the prune


@pytest.mark.parametrize("reselect", [False, True])
def test_reselect_at_prune(reselect: bool) -> None:
    p = OneCyclePruner(tiny_mlp(), X, total_epochs=6, monitor_start=0, sl_start=2, sl_end=2, reduction=0.3,
                       reselect_at_prune=reselect)
    for e in range(2):
        p.epoch_start(e)
        p.epoch_end(e)
    p.epoch_start(2)
    chosen = [k.clone() for k in p.selection.kept_indices]
    # the epoch's training makes a kept channel of the first group the least salient one
    victim = int(chosen[0][0])
    params = dict(p.model.named_parameters())
    with torch.no_grad():
        for s in p.groups[0].slices:
            if not s.is_buffer:
                params[s.name].narrow(s.dim, s.offset + victim * s.block, s.block).zero_()
    expected = p.search.select(reference.grouped_norms(p.layout)[1], p.groups.sizes).kept_indices if reselect else chosen
    assert p.will_prune(2)
    rep = p.epoch_end(2)
    assert rep.pruned_now
    kept = p._prune_keep
    assert all(torch.equal(a, b) for a, b in zip(kept, expected))
    assert (victim in kept[0].tolist()) is (not reselect)
    assert rep.reduction == pytest.approx(1 - p.macs() / p.dense_macs)


# ------------------------------------------------------------------- which weights count (mobilenet)


@pytest.mark.parametrize("saliency_params", ["published", "all"])
def test_saliency_params_on_mobilenet_v2(saliency_params: str) -> None:
    """published: depthwise-conv (and LayerNorm) weights are neither counted nor shrunk; all: they are."""
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v2(weights=None, num_classes=10)
    x = torch.randn(2, 3, 32, 32)  # BN in training mode needs more than one value per channel at 1x1
    p = OneCyclePruner(model, x, total_epochs=4, monitor_start=0, sl_start=0, sl_end=1, reduction=0.3, reg=0.1,
                       saliency_params=saliency_params)
    depthwise = {n + ".weight": m for n, m in model.named_modules()
                 if isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels}
    assert depthwise
    before = {n: m.weight.detach().clone() for n, m in depthwise.items()}
    p.epoch_start(0)
    p.after_step(1.0)  # shrink the chosen channels by 1 - 0.1
    changed = [n for n, m in depthwise.items() if not torch.equal(m.weight, before[n])]
    if saliency_params == "published":
        assert not changed
    else:
        assert changed
    p.epoch_end(0)
    p.epoch_start(1)
    p.epoch_end(1)  # sl_end: pruned
    assert p.pruned
    assert torch.isfinite(model(x)).all()
