"""The pruner follows the model when it changes after the pruner was built (issue 21, item 2).

``model.to(memory_format=torch.channels_last)``, a dtype change, ``.to()`` round trips and (on a
GPU) a device move, before the first epoch or between two steps of an epoch: the pruner rebuilds
its layout and device tensors once, outside the step path, and trains and prunes as if it had been
built on the changed model. Parameters replaced or reshaped behind its back are refused with a
message that says what happened and what to do, and nothing changes.
"""

from __future__ import annotations

from typing import Callable, Optional

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from oneprune_ext import OneCyclePruner, PrunerConfig, models, prune_channels

gen = torch.Generator().manual_seed(0)
X = torch.randn(32, 1, 8, 8, generator=gen)
Y = torch.randint(0, 10, (32,), generator=gen)
BATCHES = [(X[:16], Y[:16]), (X[16:], Y[16:])]
CONFIG = PrunerConfig(total_epochs=5, monitor_start=0, sl_start=1, sl_end=3, reg=0.05, reg_delta=0.0,
                      regularizer="both")
LR = 0.05

pytestmark = pytest.mark.usefixtures("one_thread")


def cnn() -> nn.Module:
    torch.manual_seed(0)
    return models.digits_cnn(10, width=6)


Change = Optional[Callable[[nn.Module], None]]


def run(model: nn.Module, *, before: Change = None, at: tuple[int, int] = (0, 0), change: Change = None,
        device: str = "cpu", dtype: torch.dtype = torch.float32, count: Optional[list] = None) -> OneCyclePruner:
    """Build the pruner, apply ``before`` to the model, train; ``change`` runs before step ``at``
    (epoch, batch). ``count`` collects the layout rebuilds."""
    pruner = OneCyclePruner(model, X[:1], CONFIG)
    if count is not None:
        real = pruner.layout.rebuild

        def rebuild(*a, **k):
            count.append(1)
            return real(*a, **k)
        pruner.layout.rebuild = rebuild
    if before is not None:
        before(model)
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9)
    for epoch in range(CONFIG.total_epochs):
        pruner.epoch_start(epoch)
        for i, (x, y) in enumerate(BATCHES):
            if change is not None and (epoch, i) == at:
                change(model)
            opt.zero_grad()
            p0 = next(model.parameters())
            F.cross_entropy(model(x.to(p0.device, p0.dtype)).float(), y.to(p0.device)).backward()
            pruner.before_step()
            opt.step()
            pruner.after_step(LR)
        pruner.epoch_end(epoch, opt)
    return pruner


def params(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def channels_last(m: nn.Module) -> None:
    m.to(memory_format=torch.channels_last)


def test_channels_last_after_the_pruner_is_built_trains_and_prunes_as_before_it() -> None:
    ref = cnn()
    channels_last(ref)
    run(ref)
    model = cnn()
    rebuilds: list = []
    pruner = run(model, before=channels_last, count=rebuilds)
    assert pruner.pruned
    assert len(rebuilds) == 2  # one when the epoch started on the new format, one at the prune
    for (n, a), b in zip(params(model).items(), params(ref).values()):
        assert torch.equal(a, b), n
        if a.dim() == 4:
            assert a.is_contiguous(memory_format=torch.channels_last), n


@pytest.mark.parametrize("hook_epoch", [0, 2], ids=["monitoring", "sparsity_learning"])
def test_memory_format_changed_between_two_steps_is_followed_once(hook_epoch: int) -> None:
    model = cnn()
    rebuilds: list = []
    pruner = run(model, at=(hook_epoch, 1), change=channels_last, count=rebuilds)
    assert pruner.pruned and len(rebuilds) == 2  # once for the change, once at the prune
    assert not pruner.layout.drift()
    for p in model.parameters():
        if p.dim() == 4:
            assert p.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_dtype_change_after_the_pruner_is_built(dtype: torch.dtype) -> None:
    model = cnn()
    pruner = run(model, before=lambda m: m.to(dtype))
    assert pruner.pruned and all(p.dtype == dtype for p in model.parameters())
    assert torch.isfinite(F.cross_entropy(model(X.to(dtype)).float(), Y))


def test_to_round_trips_are_followed() -> None:
    """fp32 -> channels_last bf16 -> back to contiguous fp32 and -> .cpu(), at two moments of the run."""
    ref = cnn()
    run(ref)

    def there(m: nn.Module) -> None:
        m.to(torch.bfloat16).to(memory_format=torch.channels_last)

    def back(m: nn.Module) -> None:
        m.to(torch.float32).to(memory_format=torch.contiguous_format).cpu()

    model = cnn()
    pruner = OneCyclePruner(model, X[:1], CONFIG)
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9)
    for epoch in range(CONFIG.total_epochs):
        if epoch in (1, 3):
            there(model)
        pruner.epoch_start(epoch)
        for x, y in BATCHES:
            opt.zero_grad()
            p0 = next(model.parameters())
            F.cross_entropy(model(x.to(p0.dtype)).float(), y).backward()
            pruner.before_step()
            opt.step()
            pruner.after_step(LR)
        back(model)
        pruner.epoch_end(epoch, opt)
    assert pruner.pruned and not pruner.layout.drift()
    assert all(p.dtype == torch.float32 and p.is_contiguous() for p in model.parameters())


def _assign_state_dict(m: nn.Module) -> None:
    m.load_state_dict({k: v.clone() for k, v in m.state_dict().items()}, assign=True)


def _new_parameter(m: nn.Module) -> None:
    m.conv3.weight = nn.Parameter(m.conv3.weight.detach().clone())


@pytest.mark.parametrize("change,said", [
    (_assign_state_dict, r"replaced by another tensor object.*assign=True.*load_state_dict\(\.\.\.\) without assign"),
    (_new_parameter, r"replaced by another tensor object"),
], ids=["assign_state_dict", "new_parameter"])
def test_replaced_parameters_are_refused_with_what_to_do(change, said: str) -> None:
    model = cnn()
    pruner = OneCyclePruner(model, X[:1], CONFIG)
    change(model)
    before = params(model)
    with pytest.raises(ValueError, match=said):
        pruner.epoch_start(0)
    assert all(torch.equal(a, before[n]) for n, a in params(model).items())


def test_parameters_reshaped_behind_the_pruner_are_refused() -> None:
    model = cnn()
    pruner = OneCyclePruner(model, X[:1], CONFIG)
    prune_channels(model, pruner.groups, {0: [0, 1]})  # not through the pruner
    with pytest.raises(ValueError, match=r"changed shape from .* behind the pruner.*Prune only through the pruner"):
        pruner.epoch_start(0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize("at", [(0, 0), (2, 1)], ids=["before_the_first_step", "between_two_steps"])
def test_device_move_after_the_pruner_is_built(at: tuple[int, int]) -> None:
    model = cnn()
    rebuilds: list = []
    pruner = run(model, at=at, change=lambda m: m.cuda(), count=rebuilds)
    assert pruner.pruned and len(rebuilds) == 2
    assert pruner.layout.device.type == "cuda" and all(p.is_cuda for p in model.parameters())
    ref = cnn().cuda()
    run(ref)
    assert set(params(ref)) == set(params(model))
    assert [p.shape for p in ref.parameters()] == [p.shape for p in model.parameters()]
