"""OneCyclePruner: schedule, regularizer modes, prune events, bad configs, state and exact resume (issue 5)."""

from __future__ import annotations

import copy
import io
from typing import Any, Optional

import outcomes
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from oneprune_ext import models, reference
from oneprune_ext.pruning.compaction import prune_channels
from oneprune_ext.graph.cost import CostModel
from oneprune_ext.kernels.layout import ChannelLayout
from oneprune_ext.pruning.pruner import EpochReport, OneCyclePruner
from oneprune_ext.pruning.stability import auto_sl_start

X = torch.randn(1, 1, 8, 8, generator=torch.Generator().manual_seed(0))


def tiny_mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return models.mlp(64, (16, 12), 10)


def make(model: Optional[nn.Module] = None, **kw: Any) -> OneCyclePruner:
    opts: dict[str, Any] = dict(total_epochs=12, monitor_start=2, sl_start=4, sl_end=9)
    opts.update(kw)
    return OneCyclePruner(tiny_mlp() if model is None else model, X, **opts)


def idle_epochs(p: OneCyclePruner, epochs: range, optimizer=None) -> list[EpochReport]:
    """Epochs without training steps: the weights, hence the chosen sub-network, stay fixed."""
    out = []
    for e in epochs:
        p.epoch_start(e)
        out.append(p.epoch_end(e, optimizer))
    return out


def flop_macs(model: nn.Module, x: torch.Tensor) -> int:
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        model(x)
    return fc.get_total_flops() // 2


# ---------------------------------------------------------------------------------- schedule


def test_schedule_phases_reg_growth_and_stability_prune():
    p = make(reg=1e-4, reg_delta=2e-4, reg_interval=2)
    reps = idle_epochs(p, range(12))
    assert [r.phase for r in reps] == ["dense"] * 2 + ["monitoring"] * 2 + ["sparsity"] * 3 + ["pruned"] * 5
    # fixed sub-network: sim = 0, 0, 1, 1, 1 -> psi = 0, 0, 1/3, 2/3, 1 (running mean of three)
    assert [r.indicator for r in reps[2:7]] == pytest.approx([0, 0, 1 / 3, 2 / 3, 1])
    assert p.tracker.history == pytest.approx([0, 0, 1 / 3, 2 / 3, 1])
    # reg = reg0 + delta * floor((t - sl_start) / interval) during sparsity learning
    assert [r.reg for r in reps] == pytest.approx([0, 0, 0, 0, 1e-4, 1e-4, 3e-4, 0, 0, 0, 0, 0])
    assert [r.reduction is None for r in reps[:2]] == [True, True]
    assert all(r.reduction >= 0.5 for r in reps[2:])
    # stable (psi = 1 >= 0.999) in sparsity learning at epoch 6 -> pruned at its end
    assert [r.pruned_now for r in reps].index(True) == 6 and sum(r.pruned_now for r in reps) == 1
    assert p.pruned and p.prune_epoch == 6
    r = reps[6]
    assert r.stable and r.macs_before == p.dense_macs and r.params_before == p.dense_params
    assert r.macs_after == p.macs() < p.dense_macs and r.params_after == p.params() < p.dense_params
    assert 1 - r.macs_after / r.macs_before == pytest.approx(reps[6].reduction)
    # the closed form is exact on the physically pruned model
    assert p.macs() == flop_macs(p.model, X) == CostModel(p.model, p.groups, X).dense_macs
    assert p.params() == sum(t.numel() for t in p.model.parameters())
    assert p.groups.sizes == p.selection.kept_counts
    assert [h["epoch"] for h in p.history] == [2, 3, 4, 5, 6]
    assert all(rr.macs_before is None for i, rr in enumerate(reps) if i != 6)


def test_stability_prunes_only_in_sparsity_learning():
    p = make(monitor_start=0, sl_start=6, sl_end=8)
    reps = idle_epochs(p, range(8))
    assert reps[4].stable and reps[5].stable  # psi = 1 from epoch 4 on ...
    assert not any(r.pruned_now for r in reps[:6])  # ... but no prune before sl_start
    assert reps[6].pruned_now and reps[6].phase == "sparsity" and p.prune_epoch == 6


def test_sl_end_forces_prune():
    p = make(monitor_start=2, sl_start=2, sl_end=3)
    reps = idle_epochs(p, range(6))
    assert not reps[3].stable and reps[3].indicator == 0.0
    assert reps[3].pruned_now and p.prune_epoch == 3
    assert [r.phase for r in reps] == ["dense", "dense", "sparsity", "sparsity", "pruned", "pruned"]


def test_auto_sl_start():
    p = make(monitor_start=0, sl_start="auto", sl_end=10)
    reps = idle_epochs(p, range(8))
    hist = p.tracker.history
    expected = next(e for e in range(8) if auto_sl_start(hist[: e + 1], e))
    # psi = 0, 0, 1/3, 2/3, 1, 1, 1: the rise since t-2 is <= 1e-4 first at t = 6
    assert expected == 6 and p.sl_start == 6
    assert [r.phase for r in reps[:7]] == ["monitoring"] * 6 + ["sparsity"]
    assert reps[6].reg == pytest.approx(1e-4)
    assert reps[6].pruned_now  # stable and now in sparsity learning


def test_after_prune_hooks_are_noops_and_stats():
    p = make(monitor_start=2, sl_start=2, sl_end=3)
    idle_epochs(p, range(4))
    assert p.pruned
    w = [t.detach().clone() for t in p.model.parameters()]
    p.epoch_start(4)
    assert p.before_step() is None
    p.after_step(0.1)
    rep = p.epoch_end(4)
    assert rep.phase == "pruned" and not rep.pruned_now
    assert all(torch.equal(a, b) for a, b in zip(w, p.model.parameters()))
    s = p.stats
    assert set(s) >= {"epoch_start", "before_step", "after_step", "epoch_end", "total"}
    assert all(v >= 0 for v in s.values())
    assert s["total"] == pytest.approx(sum(s[k] for k in ("epoch_start", "before_step", "after_step", "epoch_end")))


# ---------------------------------------------------------------------------------- regularizer modes


def _sl_pruner(regularizer: str, ops=None) -> OneCyclePruner:
    p = make(monitor_start=0, sl_start=0, sl_end=5, reg=0.05, regularizer=regularizer)
    if ops is not None:
        p.search.ops = p.sparsity.ops = ops
    p.epoch_start(0)
    return p


def _one_step(p: OneCyclePruner, lr: float = 0.5):
    torch.manual_seed(1)
    x, y = torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,))
    p.model.zero_grad(set_to_none=True)
    F.cross_entropy(p.model(x), y).backward()
    plain = [t.grad.clone() for t in p.model.parameters()]
    penalty = p.before_step()
    grads = [t.grad.clone() for t in p.model.parameters()]
    w0 = [t.detach().clone() for t in p.model.parameters()]
    p.after_step(lr)
    w1 = [t.detach().clone() for t in p.model.parameters()]
    return plain, penalty, grads, w0, w1


@pytest.mark.parametrize("mode", ["shrink", "group_lasso", "both"])
def test_regularizer_modes(mode: str):
    p = _sl_pruner(mode)
    mask = p.selection.removal_mask
    assert mask.any() and p.sparsity.reg_value == pytest.approx(0.05)
    plain, penalty, grads, w0, w1 = _one_step(p, lr=0.5)

    # expected, from the pure-PyTorch reference ops on a copy
    ref_model = copy.deepcopy(p.model)
    ref_layout = ChannelLayout(ref_model, p.groups)
    for t, g in zip(ref_model.parameters(), plain):
        t.grad = g.clone()
    for t, w in zip(ref_model.parameters(), w0):
        t.data.copy_(w)
    ref_pen = reference.group_lasso_grad_(ref_layout, mask, 0.05)
    exp_grads = [t.grad for t in ref_model.parameters()]
    reference.scale_channels_(ref_layout, mask, 1 - 0.05 * 0.5)
    exp_w1 = [t.detach() for t in ref_model.parameters()]

    if mode in ("group_lasso", "both"):
        assert penalty is not None and penalty.dim() == 0
        assert penalty.item() == pytest.approx(ref_pen.item(), rel=1e-5)
        assert any(not torch.equal(a, b) for a, b in zip(plain, grads))
        for a, b in zip(grads, exp_grads):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    else:
        assert penalty is None
        assert all(torch.equal(a, b) for a, b in zip(plain, grads))
    if mode in ("shrink", "both"):
        assert any(not torch.equal(a, b) for a, b in zip(w0, w1))
        for a, b in zip(w1, exp_w1):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=0)
    else:
        assert all(torch.equal(a, b) for a, b in zip(w0, w1))


def test_fused_matches_reference_path():
    fused, ref = _sl_pruner("both"), _sl_pruner("both", ops=reference)
    assert torch.equal(fused.selection.removal_mask, ref.selection.removal_mask)
    a, b = _one_step(fused), _one_step(ref)
    torch.testing.assert_close(a[1], b[1], rtol=1e-5, atol=0)
    for xs, ys in ((a[2], b[2]), (a[4], b[4])):
        for x, y in zip(xs, ys):
            torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-7)


def test_no_regularization_outside_sparsity_learning():
    p = make(monitor_start=0, sl_start=3, sl_end=5, reg=0.05)
    p.epoch_start(0)
    plain, penalty, grads, w0, w1 = _one_step(p)
    assert penalty is None
    assert all(torch.equal(x, y) for x, y in zip(plain, grads))
    assert all(torch.equal(x, y) for x, y in zip(w0, w1))


# ---------------------------------------------------------------------------------- bad configuration


@pytest.mark.parametrize(
    "kw, option",
    [
        (dict(reduction=0.0), "reduction"),
        (dict(reduction=1.0), "reduction"),
        (dict(reduction=1.5), "reduction"),
        (dict(sl_start=8, sl_end=6), "sl_start"),
        (dict(sl_start=1, monitor_start=2), "sl_start"),
        (dict(sl_end=12), "sl_end"),
        (dict(monitor_start=9, sl_start="auto", sl_end=9), "monitor_start"),
        (dict(target="flops"), "target"),
        (dict(regularizer="l1"), "regularizer"),
        (dict(reg=-1.0), "reg"),
        (dict(reg_interval=0), "reg_interval"),
        (dict(stability_threshold=0.0), "stability_threshold"),
        (dict(layer_limit=1.5), "layer_limit"),
        (dict(round_to=0), "round_to"),
        (dict(sl_start="sometime"), "sl_start"),
        (dict(total_epochs=2.5), "total_epochs"),
        (dict(reduction=0.9, layer_limit=0.5), "reduction"),  # unreachable under the layer limits
        (dict(reduction=0.6, round_to=8), "round_to"),  # rounding makes it unreachable
    ],
)
def test_bad_config(kw: dict, option: str):
    with pytest.raises(ValueError, match=option):
        make(**kw)


def test_unreachable_message_names_limit():
    with pytest.raises(ValueError, match=r"at most 0\.\d+.*layer_limit"):
        make(reduction=0.9, layer_limit=0.5)


def test_bad_epochs_and_order():
    p = make()
    with pytest.raises(ValueError, match="total_epochs"):
        p.epoch_start(12)
    with pytest.raises(ValueError, match="epoch"):
        p.epoch_start(-1)
    with pytest.raises(ValueError, match="epoch_start"):
        p.epoch_end(0)
    p.epoch_start(0)
    p.epoch_end(0)
    with pytest.raises(ValueError, match="not after"):
        p.epoch_start(0)


def test_model_changed_behind_back():
    p = make(monitor_start=0, sl_start=0)
    p.epoch_start(0)
    p.epoch_end(0)
    keep = {0: list(range(0, 16, 2))}
    prune_channels(p.model, p.groups, keep)  # not through the pruner
    with pytest.raises(ValueError, match="behind the pruner's back"):
        p.epoch_start(1)
    q = make()
    q.model[1].weight = nn.Parameter(torch.zeros(16, 64))  # replaced, same shape
    with pytest.raises(ValueError, match="replaced"):
        q.epoch_start(0)


# ---------------------------------------------------------------------------------- state_dict


def _roundtrip(obj: Any) -> Any:
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def test_state_dict_roundtrip_before_prune():
    p = make(sl_start="auto", monitor_start=0, sl_end=9)
    idle_epochs(p, range(3))
    sd = _roundtrip(p.state_dict())
    q = make(copy.deepcopy(p.model), sl_start="auto", monitor_start=0, sl_end=9)
    q.load_state_dict(sd)
    assert q.tracker.history == p.tracker.history and q.history == p.history
    a, b = idle_epochs(p, range(3, 12)), idle_epochs(q, range(3, 12))
    assert a == b
    assert p.sl_start == q.sl_start == 6 and q.prune_epoch == p.prune_epoch == 6
    assert q.groups.sizes == p.groups.sizes


def test_state_dict_after_prune_reshapes_dense_model():
    p = make(monitor_start=2, sl_start=2, sl_end=3)
    idle_epochs(p, range(5))
    sd = _roundtrip(p.state_dict())
    fresh = tiny_mlp(seed=5)
    q = make(fresh, monitor_start=2, sl_start=2, sl_end=3)
    q.load_state_dict(sd)
    assert q.pruned and q.prune_epoch == 3 and q.groups.sizes == p.groups.sizes
    fresh.load_state_dict(p.model.state_dict())  # shapes fit now
    assert q.macs() == p.macs() == flop_macs(fresh, X)
    assert [t.shape for t in fresh.parameters()] == [t.shape for t in p.model.parameters()]
    # loading again into the same (already pruned) pruner is accepted
    q.load_state_dict(sd)
    assert idle_epochs(q, range(5, 7)) == idle_epochs(p, range(5, 7))
    # a state from another architecture is refused
    other = OneCyclePruner(models.mlp(64, (20, 12), 10), X, total_epochs=12, monitor_start=2, sl_start=4, sl_end=9)
    with pytest.raises(ValueError, match="does not match"):
        other.load_state_dict(sd)


# ---------------------------------------------------------------------------------- exact resume on digits


EPOCHS = 6
PRUNER_OPTS = dict(total_epochs=EPOCHS, monitor_start=0, sl_start=1, sl_end=3, reduction=0.4, reg=1e-3,
                   reg_delta=1e-3)


@pytest.fixture(scope="module")
def digits():
    from oneprune_ext.training.data import digits_loaders

    train, _ = digits_loaders(batch_size=128, seed=outcomes.SEED)
    return train


def _build(example: torch.Tensor):
    torch.manual_seed(outcomes.SEED)
    model = models.digits_cnn(width=4)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=EPOCHS)
    pruner = OneCyclePruner(model, example, **PRUNER_OPTS)
    return model, opt, sched, pruner


def _run(loader, start: int, stop: int, ckpt: Optional[dict] = None, save_at: tuple[int, ...] = ()):
    """Train epochs [start, stop); from ``ckpt`` when given (resume order of the pruner docs).

    Returns the final checkpoint, the pruner, the epoch reports and the checkpoints taken at
    the end of the epochs in ``save_at`` (each through torch.save / torch.load(weights_only=True)).
    """
    example = loader.dataset.tensors[0][:1]
    model, opt, sched, pruner = _build(example)
    if ckpt is not None:
        pruner.load_state_dict(ckpt["pruner"])
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])

    def checkpoint() -> dict:
        return _roundtrip({"model": model.state_dict(), "optimizer": opt.state_dict(),
                           "scheduler": sched.state_dict(), "pruner": pruner.state_dict()})

    reports, saved = [], {}
    for epoch in range(start, stop):
        loader.sampler.set_epoch(epoch)
        pruner.epoch_start(epoch)
        model.train()
        for x, y in loader:
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            pruner.before_step()
            opt.step()
            pruner.after_step(opt.param_groups[0]["lr"])
        reports.append(pruner.epoch_end(epoch, opt))
        sched.step()
        if epoch in save_at:
            saved[epoch] = checkpoint()
    return checkpoint(), pruner, reports, saved


def _assert_same(a: dict, pa: OneCyclePruner, b: dict, pb: OneCyclePruner):
    assert pa.groups.sizes == pb.groups.sizes and pa.prune_epoch == pb.prune_epoch
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k]["momentum_buffer"], sb[k]["momentum_buffer"])
    assert pa.tracker.history == pb.tracker.history
    assert [k.tolist() for k in pa._prune_keep] == [k.tolist() for k in pb._prune_keep]


@pytest.mark.outcome
def test_resume_is_bit_exact(digits):
    det, threads = torch.are_deterministic_algorithms_enabled(), torch.get_num_threads()
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)  # tiny tensors: threads only add contention on a busy CI box
    try:
        full, p_full, reps, saved = _run(digits, 0, EPOCHS, save_at=(1, 4))
        # pruned at sl_end whatever the floats: the indicator (a mean of three similarities, 0 until
        # three sub-networks exist) cannot reach the threshold before epoch 4
        assert p_full.pruned and p_full.prune_epoch == 3 and reps[3].pruned_now
        assert [r.phase for r in reps] == ["monitoring"] + ["sparsity"] * 3 + ["pruned"] * 2
        assert reps[3].macs_after < reps[3].macs_before
        step = outcomes.one_channel_share(models.digits_cnn(width=4), digits.dataset.tensors[0][:1])
        outcomes.assert_reaches_target(1 - reps[3].macs_after / reps[3].macs_before, PRUNER_OPTS["reduction"], step)
        # stopped before the prune (end of epoch 1, in sparsity learning), resumed
        res1, p1, reps1, _ = _run(digits, 2, EPOCHS, ckpt=saved[1])
        assert reps1 == reps[2:]
        _assert_same(full, p_full, res1, p1)
        # stopped after the prune (end of epoch 4), resumed on a fresh dense model
        res2, p2, reps2, _ = _run(digits, 5, EPOCHS, ckpt=saved[4])
        assert reps2 == reps[5:]
        _assert_same(full, p_full, res2, p2)
    finally:
        torch.use_deterministic_algorithms(det)
        torch.set_num_threads(threads)


# ---------------------------------------------------------------------------------- PrunerConfig


def test_config_and_keyword_forms_are_the_same_pruner():
    from oneprune_ext import PrunerConfig

    cfg = PrunerConfig(total_epochs=12, monitor_start=2, sl_start=4, sl_end=9, reduction=0.4)
    a = OneCyclePruner(tiny_mlp(), X, cfg)
    b = OneCyclePruner(tiny_mlp(), X, total_epochs=12, monitor_start=2, sl_start=4, sl_end=9, reduction=0.4)
    c = OneCyclePruner(tiny_mlp(), X, PrunerConfig(total_epochs=12, sl_start=4, sl_end=9, reduction=0.6),
                       reduction=0.4)  # keywords override the config's fields
    assert a.config == b.config == c.config == cfg
    assert idle_epochs(a, range(12)) == idle_epochs(b, range(12)) == idle_epochs(c, range(12))
    assert a.state_dict()["config"] == cfg.to_dict()


def test_config_validates_serialises_and_is_frozen():
    import dataclasses
    import json

    from oneprune_ext import PrunerConfig

    cfg = PrunerConfig(total_epochs=20, sl_start="auto", sl_end=15, round_to=4, ignored_layers=["0", "3"])
    assert cfg.ignored_layers == ("0", "3")
    assert PrunerConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    short = {"total_epochs": 20, "sl_start": 5, "sl_end": 15}
    assert PrunerConfig.from_dict(short) == PrunerConfig(**short)  # missing options take their defaults
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.reduction = 0.3  # type: ignore[misc]
    with pytest.raises(ValueError, match="unknown option"):
        PrunerConfig.from_dict(dict(short, bogus=1))
    with pytest.raises(ValueError, match="reduction"):
        dataclasses.replace(cfg, reduction=2.0)
    with pytest.raises(TypeError, match="unknown option"):
        OneCyclePruner(tiny_mlp(), X, total_epochs=12, sl_start=4, sl_end=9, reduce=0.5)
    with pytest.raises(ValueError, match="total_epochs is required"):
        OneCyclePruner(tiny_mlp(), X, sl_end=9)


def test_ignored_layers_by_module_or_name():
    model = tiny_mlp()
    by_module = make(model, ignored_layers=[model[3]], reduction=0.1)
    assert by_module.config.ignored_layers == ("3",)
    by_name = make(tiny_mlp(), ignored_layers=["3"], reduction=0.1)
    assert [g.name for g in by_name.groups] == [g.name for g in by_module.groups]
    assert len(by_name.groups) < len(make().groups)
    with pytest.raises(ValueError, match="no module named"):
        make(ignored_layers=["nope"])
    with pytest.raises(ValueError, match="not part of the model"):
        make(ignored_layers=[nn.Linear(2, 2)])


def test_every_config_field_is_a_cli_flag():
    import dataclasses

    from oneprune_ext import PrunerConfig

    from oneprune_ext.cli import train as cli

    parser = cli.build_parser()
    flags = {a.dest: a.option_strings for a in parser._actions}
    for f in dataclasses.fields(PrunerConfig):
        if f.metadata["cli"]:
            flag = PrunerConfig.flag(f.name)
            expected = [flag, "--no-" + flag[2:]] if isinstance(f.default, bool) else [flag]
            assert flags.get(f.name) == expected, f.name
    args = cli.parse_args(["--epochs", "10", "--reduction", "0.3", "--ignored-layers", "fc,stem.0",
                           "--round-to", "2"])
    cfg = args.pruner_config
    assert (cfg.total_epochs, cfg.reduction, cfg.ignored_layers, cfg.round_to) == (10, 0.3, ("fc", "stem.0"), 2)
    assert cfg.sl_end == 4 and cfg.sl_start == 1  # the digits presets scaled to 10 epochs


def test_wrappers_are_refused_with_what_to_pass():
    model = tiny_mlp()
    with pytest.raises(ValueError, match=r"_orig_mod"):
        OneCyclePruner(torch.compile(model), X, total_epochs=12, sl_start=4, sl_end=9)
    with pytest.raises(ValueError, match=r"\.module"):
        OneCyclePruner(nn.DataParallel(model), X, total_epochs=12, sl_start=4, sl_end=9)


def test_adding_an_option_is_one_field():
    """A new field (here in a subclass) is validated, serialised and becomes a CLI flag by itself."""
    import argparse
    import dataclasses

    from oneprune_ext.pruning.config import PrunerConfig, boolean, option, real_in

    @dataclasses.dataclass(frozen=True)
    class Extended(PrunerConfig):
        reselect_at_sl_end: bool = option(False, "choose the sub-network once more at sl_end", boolean)
        momentum_floor: float = option(0.0, "a fraction in [0, 1]", real_in(0.0, 1.0, False, False, "fraction"))

    parser = argparse.ArgumentParser()
    Extended.add_arguments(parser)
    args = parser.parse_args(["--reselect-at-sl-end", "--momentum-floor", "0.25", "--sl-end", "5"])
    cfg = Extended.from_args(args, total_epochs=8, sl_start=3)
    assert (cfg.reselect_at_sl_end, cfg.momentum_floor, cfg.sl_end) == (True, 0.25, 5)
    assert Extended.from_dict(cfg.to_dict()) == cfg
    assert Extended.from_args(parser.parse_args(["--no-reselect-at-sl-end"]), total_epochs=200).reselect_at_sl_end \
        is False
    with pytest.raises(ValueError, match="momentum_floor"):
        Extended(total_epochs=200, momentum_floor=2.0)
    with pytest.raises(SystemExit):
        parser.parse_args(["--momentum-floor", "2"])
