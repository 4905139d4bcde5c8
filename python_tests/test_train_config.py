"""The trainer's options in one object, its optimizer factory and callbacks; the published recipes
in one place (every default that is a published number reads it).
"""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from oneprune_ext.cli import train as cli
from oneprune_ext.pruning.config import PrunerConfig
from oneprune_ext.pruning.recipes import CIFAR10, IMAGENET, PUBLISHED
from oneprune_ext.pruning.sparsity import published_shrink_curve, schedule_shrink
from oneprune_ext.training import Callback, TrainConfig, sgd
from oneprune_ext.training.data import DATASETS, digits_loaders
from oneprune_ext.training.models import digits_cnn
from oneprune_ext.training.trainer import train

pytestmark = pytest.mark.usefixtures("one_thread")


class Recorder(Callback):
    def __init__(self) -> None:
        self.epochs: list[list[int]] = []
        self.results: list = []

    def on_epoch_end(self, history) -> None:
        self.epochs.append([h.epoch for h in history])

    def on_train_end(self, result) -> None:
        self.results.append(result)


def test_config_object_optimizer_factory_and_callbacks(tmp_path) -> None:
    loaders = digits_loaders(batch_size=64, seed=0)
    made: list[torch.optim.Optimizer] = []

    def adam(model: torch.nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
        made.append(torch.optim.Adam(model.parameters(), lr=config.lr))
        return made[-1]

    rec, seen = Recorder(), []
    torch.manual_seed(0)
    cfg = TrainConfig(epochs=2, lr=1e-3, progress=False, checkpoint=tmp_path / "ck.pt")
    res = train(digits_cnn(width=4), *loaders, cfg, optimizer=adam, callbacks=[rec, lambda h: seen.append(len(h))])
    assert len(made) == 1 and made[0].state  # the factory built the one optimizer that trained the run
    assert rec.epochs == [[0], [0, 1]] and seen == [1, 2] and rec.results == [res]
    # a resume with another optimizer factory is another run: refused, naming it
    with pytest.raises(ValueError, match="optimizer"):
        train(digits_cnn(width=4), *loaders, dataclasses.replace(cfg, epochs=2, resume=True))


def test_keywords_override_the_config_and_unknown_options_are_refused() -> None:
    loaders = digits_loaders(batch_size=64, seed=0)
    torch.manual_seed(0)
    a = train(digits_cnn(width=4), *loaders, TrainConfig(epochs=3, progress=False), epochs=1)
    assert len(a.history) == 1
    with pytest.raises(TypeError, match="unknown option"):
        train(digits_cnn(width=4), *loaders, epochs=1, learning_rate=0.1)
    with pytest.raises(TypeError, match="TrainConfig"):
        train(digits_cnn(width=4), *loaders, {"epochs": 1})
    with pytest.raises(ValueError, match="epochs is required"):
        train(digits_cnn(width=4), *loaders, progress=False)


def test_defaults_are_the_published_recipes() -> None:
    """PrunerConfig's and TrainConfig's defaults, the shrink curve and the command's data-set defaults
    all read the one recipe module."""
    cfg = PrunerConfig(total_epochs=CIFAR10.epochs)
    for name in ("monitor_start", "sl_start", "sl_end", "reg", "reg_delta", "reg_interval", "reselect_at_prune",
                 "regularizer", "layer_limit", "layer_limit_k", "stability_threshold", "saliency_params"):
        assert getattr(cfg, name) == getattr(CIFAR10, name), name
    t = TrainConfig(epochs=1)
    assert (t.lr, t.momentum, t.nesterov, t.weight_decay, t.milestones, t.gamma, t.schedule, t.schedule_unit) == (
        CIFAR10.lr, CIFAR10.momentum, CIFAR10.nesterov, CIFAR10.weight_decay, CIFAR10.milestones, CIFAR10.gamma,
        CIFAR10.schedule, CIFAR10.schedule_unit)
    r = CIFAR10
    assert published_shrink_curve() == schedule_shrink(
        sl_start=r.sl_start, sl_end=r.sl_end, steps_per_epoch=r.steps_per_epoch, lr_at=r.lr_at, reg=r.reg,
        reg_delta=r.reg_delta, reg_interval=r.reg_interval)
    assert published_shrink_curve()[-1] == pytest.approx(8.32, abs=0.01)
    assert PUBLISHED == {"cifar10": CIFAR10, "imagenet": IMAGENET}
    assert DATASETS["cifar10"].recipe is CIFAR10 and DATASETS["imagenet"].recipe is IMAGENET


@pytest.mark.parametrize("data", ["cifar10", "imagenet"])
def test_print_config_is_the_recipe(data: str, capsys) -> None:
    recipe = PUBLISHED[data]
    assert cli.main(["--data", data, "--data-root", "unused", "--print-config"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["epochs"] == recipe.epochs and out["batch_size"] == recipe.batch_size
    assert out["optimizer"] == {"name": "SGD", "lr": recipe.lr, "momentum": recipe.momentum,
                                "nesterov": recipe.nesterov, "weight_decay": recipe.weight_decay}
    assert out["lr_schedule"]["kind"] == recipe.schedule and out["lr_schedule"]["unit"] == recipe.schedule_unit
    for k, v in recipe.pruner_options().items():
        assert out["pruner"][k] == v, k


def test_scaled_recipe_switches_to_auto_reg() -> None:
    opts = CIFAR10.pruner_options(30)
    assert (opts["monitor_start"], opts["sl_start"], opts["sl_end"], opts["reg"]) == (1, 3, 11, "auto")
    assert IMAGENET.pruner_options(65)["sl_start"] == "auto"


def test_default_optimizer_is_the_recipes_sgd() -> None:
    model = digits_cnn(width=4)
    opt = sgd(model, TrainConfig(epochs=1))
    g = opt.param_groups[0]
    assert isinstance(opt, torch.optim.SGD)
    assert (g["lr"], g["momentum"], g["weight_decay"], g["nesterov"]) == (
        CIFAR10.lr, CIFAR10.momentum, CIFAR10.weight_decay, CIFAR10.nesterov)
    assert sgd(model, TrainConfig(epochs=1, momentum=0.0)).param_groups[0]["nesterov"] is False
