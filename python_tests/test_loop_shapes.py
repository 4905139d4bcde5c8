"""The pruner in the training loops people write (issue 8, items 1-6).

Live graphs across the prune, AMP (GradScaler on CPU at a 2**16 loss scale, skipped steps, bf16
autocast; fp16 on CUDA), gradient accumulation, torch.compile, channels_last and frozen
parameters, each across a real prune.
"""

from __future__ import annotations

from typing import Any, Callable

import outcomes
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from oneprune_ext import PrunerConfig, models
from oneprune_ext.pruning.pruner import OneCyclePruner

torch_gen = torch.Generator().manual_seed(outcomes.SEED)
X = torch.randn(32, 1, 8, 8, generator=torch_gen)
Y = torch.randint(0, 10, (32,), generator=torch_gen)
BATCHES = [(X[:16], Y[:16]), (X[16:], Y[16:])]
# prunes at the end of epoch 3 at the latest, then trains on; strong regularisation, both regularizers
CONFIG = PrunerConfig(total_epochs=5, monitor_start=0, sl_start=1, sl_end=3, reg=0.05, reg_delta=0.0,
                      regularizer="both")
LR = 0.05


# tiny models: on a loaded 2-core machine more threads only add contention
pytestmark = pytest.mark.usefixtures("one_thread")


def cnn(seed: int = outcomes.SEED) -> nn.Module:
    torch.manual_seed(seed)
    return models.digits_cnn(10, width=6)


def plain_step(model, pruner, opt, x, y) -> torch.Tensor:
    opt.zero_grad()
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    pruner.before_step()
    opt.step()
    pruner.after_step(LR)
    return loss


def run(model: nn.Module, step: Callable, config: PrunerConfig = CONFIG, keep: Any = None,
        optimizer: Callable = lambda ps: torch.optim.SGD(ps, lr=LR, momentum=0.9)) -> OneCyclePruner:
    pruner = OneCyclePruner(model, X[:1], config)
    opt = optimizer(model.parameters())
    for epoch in range(config.total_epochs):
        pruner.epoch_start(epoch)
        for x, y in BATCHES:
            out = step(model, pruner, opt, x, y)
            if keep is not None:
                keep.append(out)
        pruner.epoch_end(epoch, opt)
    return pruner


def params(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


# ------------------------------------------------------------------------------------ live graphs


@pytest.mark.outcome
@pytest.mark.parametrize("alive", ["loss", "outputs", "past_losses"])
def test_live_graph_across_the_prune_trains_as_without(alive: str) -> None:
    """Keeping the loss / outputs / every past loss alive across epoch_end changes nothing."""
    ref_model = cnn()
    run(ref_model, plain_step)

    model = cnn()
    kept: list = []

    def step(model, pruner, opt, x, y):
        opt.zero_grad()
        outputs = model(x)
        loss = F.cross_entropy(outputs, y)
        loss.backward()
        pruner.before_step()
        opt.step()
        pruner.after_step(LR)
        if alive == "past_losses":
            kept.append(loss)
        else:
            kept[:] = [loss if alive == "loss" else outputs]  # the last batch's, alive at epoch_end
        return None

    pruner = run(model, step)
    assert pruner.pruned and pruner.prune_epoch < CONFIG.total_epochs - 1
    got, want = params(model), params(ref_model)
    assert got.keys() == want.keys()
    for n in want:
        assert torch.equal(got[n], want[n]), n
    if alive == "past_losses":
        assert torch.isfinite(torch.stack([v.detach() for v in kept])).all()  # the list is still usable


@pytest.mark.outcome
def test_backward_through_a_pre_prune_graph_raises() -> None:
    """A graph of the dense model, never back-propagated, cannot be after the prune: a clear error."""
    model = cnn()
    pruner = OneCyclePruner(model, X[:1], CONFIG)
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    for epoch in range(CONFIG.sl_end + 1):
        pruner.epoch_start(epoch)
        plain_step(model, pruner, opt, X, Y)
        pending = F.cross_entropy(model(X), Y)  # built from the dense shapes
        pruner.epoch_end(epoch, opt)
    assert pruner.pruned
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        pending.backward()


# ------------------------------------------------------------------------------------ AMP


def scaled_step(scaler: torch.amp.GradScaler, unscale_first: bool = False) -> Callable:
    def step(model, pruner, opt, x, y):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        scaler.scale(loss).backward()
        if unscale_first:
            scaler.unscale_(opt)
            pen = pruner.before_step()
        else:
            pen = pruner.before_step(scaler=scaler)
        scaler.step(opt)
        pruner.after_step(LR, scaler=scaler)
        scaler.update()
        return pen
    return step


@pytest.mark.outcome
@pytest.mark.parametrize("unscale_first", [False, True], ids=["before_step(scaler)", "unscale_then_before_step"])
def test_grad_scaler_2_16_update_equals_unscaled_fp32(unscale_first: bool) -> None:
    """At a loss scale of 2**16 the parameters follow the unscaled fp32 run (group lasso and shrink)."""
    ref_model, ref_pens = cnn(), []

    def ref_step(model, pruner, opt, x, y):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        pen = pruner.before_step()
        opt.step()
        pruner.after_step(LR)
        return pen

    run(ref_model, ref_step, keep=ref_pens)
    model, pens = cnn(), []
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 16, growth_interval=10**6)
    pruner = run(model, scaled_step(scaler, unscale_first), keep=pens)
    assert pruner.pruned and scaler.get_scale() == 2.0 ** 16  # no step was skipped
    got, want = params(model), params(ref_model)
    for n in want:
        torch.testing.assert_close(got[n], want[n], rtol=1e-5, atol=1e-6, msg=lambda m: f"{n}: {m}")
    active = [(a, b) for a, b in zip(pens, ref_pens) if b is not None]
    assert active and all(a is not None for a, _ in active)
    torch.testing.assert_close(torch.stack([a for a, _ in active]), torch.stack([b for _, b in active]))


@pytest.mark.outcome
def test_skipped_step_applies_no_shrink_and_no_lasso() -> None:
    model = cnn()
    pruner = OneCyclePruner(model, X[:1], CONFIG)
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 16)
    pruner.epoch_start(0)
    pruner.epoch_end(0, opt)
    pruner.epoch_start(1)  # sparsity learning: both regularizers active
    assert pruner.sparsity.armed is not None and pruner.regularizer.adds_gradient and pruner.regularizer.shrinks
    before = params(model)
    opt.zero_grad()
    scaler.scale(F.cross_entropy(model(X), Y)).backward()
    model.conv3.weight.grad[0, 0, 0, 0] = float("inf")  # an overflow: the scaler skips this step
    pruner.before_step(scaler=scaler)
    scaler.step(opt)
    pruner.after_step(LR, scaler=scaler)
    scaler.update()
    assert scaler.get_scale() < 2.0 ** 16
    for n, p in model.named_parameters():
        assert torch.equal(p.detach(), before[n]), f"{n} moved on a skipped step"
    # a finite step afterwards does shrink
    opt.zero_grad()
    scaler.scale(F.cross_entropy(model(X), Y)).backward()
    pruner.before_step(scaler=scaler)
    scaler.step(opt)
    pruner.after_step(LR, scaler=scaler)
    scaler.update()
    assert any(not torch.equal(p.detach(), before[n]) for n, p in model.named_parameters())


def test_skipped_step_told_after_the_scaler_update() -> None:
    """``after_step(lr, skipped=...)`` for a framework whose precision plugin has already called
    ``scaler.update()``: the scale's drop, a device tensor, marks the skipped step (no host sync)."""
    model = cnn()
    pruner = OneCyclePruner(model, X[:1], CONFIG)
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 16)
    pruner.epoch_start(0)
    pruner.epoch_end(0, opt)
    pruner.epoch_start(1)
    for overflow in (True, False):
        before = params(model)
        opt.zero_grad()
        scaler.scale(F.cross_entropy(model(X), Y)).backward()
        if overflow:
            model.conv3.weight.grad[0, 0, 0, 0] = float("inf")
        scaler.unscale_(opt)  # as Lightning's precision plugin does before its hooks
        pruner.before_step()
        scale = scaler._scale.clone()
        scaler.step(opt)
        scaler.update()
        pruner.after_step(LR, skipped=scaler._scale < scale)
        moved = [n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])]
        assert (not moved) if overflow else moved


def test_scaler_misuse_is_explained() -> None:
    model = cnn()
    pruner = OneCyclePruner(model, X[:1], CONFIG)
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    scaler = torch.amp.GradScaler("cpu")
    pruner.epoch_start(0)
    pruner.epoch_end(0, opt)
    pruner.epoch_start(1)
    scaler.scale(F.cross_entropy(model(X), Y)).backward()
    scaler.unscale_(opt)
    with pytest.raises(ValueError, match="unscale_"):
        pruner.before_step(scaler=scaler)
    scaler.step(opt)
    scaler.update()
    with pytest.raises(ValueError, match=r"scaler\.update"):
        pruner.after_step(LR, scaler=scaler)


@pytest.mark.outcome
def test_bf16_autocast_on_cpu_across_the_prune() -> None:
    model = cnn()

    def step(model, pruner, opt, x, y):
        opt.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        pruner.before_step()
        opt.step()
        pruner.after_step(LR)
        return loss.detach()

    losses: list = []
    pruner = run(model, step, keep=losses)
    assert pruner.pruned and all(torch.isfinite(v) for v in losses)
    assert all(p.dtype == torch.float32 for p in model.parameters())


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_cuda_fp16_autocast_grad_scaler_no_host_sync() -> None:
    model = cnn().cuda()
    pruner = OneCyclePruner(model, X[:1].cuda(), CONFIG)
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9)
    scaler = torch.amp.GradScaler("cuda")
    for epoch in range(CONFIG.total_epochs):
        pruner.epoch_start(epoch)
        for x, y in BATCHES:
            x, y = x.cuda(), y.cuda()
            opt.zero_grad()
            with torch.autocast("cuda", dtype=torch.float16):
                loss = F.cross_entropy(model(x), y)
            scaler.scale(loss).backward()
            torch.cuda.set_sync_debug_mode("error")  # the hooks must not synchronise with the host
            try:
                pruner.before_step(scaler=scaler)
            finally:
                torch.cuda.set_sync_debug_mode("default")
            scaler.step(opt)
            torch.cuda.set_sync_debug_mode("error")
            try:
                pruner.after_step(LR, scaler=scaler)
            finally:
                torch.cuda.set_sync_debug_mode("default")
            scaler.update()
        pruner.epoch_end(epoch, opt)
    assert pruner.pruned and torch.isfinite(loss)


# ------------------------------------------------------------------------------------ accumulation


def no_bn_cnn(seed: int = outcomes.SEED) -> nn.Module:
    """Without BatchNorm, 4 micro-batches of 8 give the gradient of one batch of 32."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 12, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(48, 10))


@pytest.mark.outcome
def test_gradient_accumulation_4_micro_batches_equals_full_batch() -> None:
    config = PrunerConfig(total_epochs=6, monitor_start=0, sl_start=1, sl_end=3, reg=0.05, reg_delta=0.0)
    full = no_bn_cnn()
    pf = OneCyclePruner(full, X[:1], config)
    of = torch.optim.SGD(full.parameters(), lr=LR, momentum=0.9)
    acc = no_bn_cnn()
    pa = OneCyclePruner(acc, X[:1], config)
    oa = torch.optim.SGD(acc.parameters(), lr=LR, momentum=0.9)
    for epoch in range(config.total_epochs):
        pf.epoch_start(epoch)
        pa.epoch_start(epoch)
        for _ in range(2):  # two optimizer steps an epoch
            plain_step(full, pf, of, X, Y)
            for i, (x, y) in enumerate(zip(X.chunk(4), Y.chunk(4))):
                (F.cross_entropy(acc(x), y) / 4).backward()
                if i == 3:  # once per optimizer step
                    pa.before_step()
                    oa.step()
                    pa.after_step(LR)
                    oa.zero_grad()
        rf, ra = pf.epoch_end(epoch, of), pa.epoch_end(epoch, oa)
        assert rf.pruned_now == ra.pruned_now
    assert pf.pruned and pa.groups.sizes == pf.groups.sizes
    for (n, p), (_, q) in zip(full.named_parameters(), acc.named_parameters()):
        torch.testing.assert_close(q, p, rtol=1e-4, atol=1e-5, msg=lambda m: f"{n}: {m}")


# ------------------------------------------------------------------------------------ torch.compile


def test_torch_compile_keeps_training_after_the_prune() -> None:
    """The compiled model recompiles once for the pruned shapes and matches the eager model."""
    torch._dynamo.reset()
    model = cnn()
    compiled = torch.compile(model)
    losses = []

    def step(model_, pruner, opt, x, y):
        opt.zero_grad()
        out = compiled(x)
        loss = F.cross_entropy(out, y)
        loss.backward()
        pruner.before_step()
        opt.step()
        pruner.after_step(LR)
        return out, loss

    pruner = run(model, lambda *a: losses.append(step(*a)))
    assert pruner.pruned
    out, loss = losses[-1]  # the last step ran on the pruned shapes, through the compiled model
    assert out.shape == (16, 10) and torch.isfinite(loss)
    x = BATCHES[1][0]
    torch.testing.assert_close(compiled(x), model(x), rtol=1e-4, atol=1e-5)
    torch._dynamo.reset()


# ------------------------------------------------------------------------------------ channels_last, frozen


@pytest.mark.outcome
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_channels_last_end_to_end(dtype: torch.dtype) -> None:
    model = cnn().to(dtype=dtype, memory_format=torch.channels_last)
    xs = [(x.to(dtype).contiguous(memory_format=torch.channels_last), y) for x, y in BATCHES]
    config = CONFIG
    pruner = OneCyclePruner(model, xs[0][0][:1], config)
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9)
    for epoch in range(config.total_epochs):
        pruner.epoch_start(epoch)
        for x, y in xs:
            opt.zero_grad()
            loss = F.cross_entropy(model(x).float(), y)
            loss.backward()
            pruner.before_step()
            opt.step()
            pruner.after_step(LR)
        pruner.epoch_end(epoch, opt)
    assert pruner.pruned and torch.isfinite(loss)
    for n, p in model.named_parameters():
        if p.dim() == 4:
            for t in (p, p.grad, opt.state[p]["momentum_buffer"]):
                assert t.is_contiguous(memory_format=torch.channels_last), n
                assert t.untyped_storage().nbytes() == t.numel() * t.element_size(), n


@pytest.mark.outcome
def test_frozen_parameters_never_get_a_grad_nor_move() -> None:
    """A frozen layer (requires_grad=False) in the pruned groups: no .grad, no weight decay, no shrink."""
    model = cnn()
    frozen = model.stem[0].weight
    frozen.requires_grad_(False)
    dense = frozen.detach().clone()
    config = CONFIG
    pruner = OneCyclePruner(model, X[:1], config)
    gi = next(i for i, g in enumerate(pruner.groups) for sl in g.slices if (sl.name, sl.dim) == ("stem.0.weight", 0))
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9, weight_decay=5e-4)
    for epoch in range(config.total_epochs):
        pruner.epoch_start(epoch)
        for x, y in BATCHES:
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            pruner.before_step()
            assert frozen.grad is None
            opt.step()
            pruner.after_step(LR)
            now = dense if not pruner.pruned else dense[pruner._prune_keep[gi]]
            assert torch.equal(frozen.detach(), now)
        pruner.epoch_end(epoch, opt)
    assert pruner.pruned and frozen.grad is None and frozen not in opt.state
