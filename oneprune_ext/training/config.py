"""The options of one training run, in one object: :class:`TrainConfig`; and the optimizer factory.

:func:`~oneprune_ext.training.trainer.train` takes a ``TrainConfig`` (or the same options as
keywords), an optimizer factory (default :func:`sgd`) and a list of callbacks
(:mod:`oneprune_ext.training.callbacks`). The defaults are the published CIFAR-10 recipe's optimizer
and schedule (:data:`oneprune_ext.pruning.recipes.CIFAR10`).
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional, Union

import torch
import torch.nn as nn

from ..pruning.config import is_real
from ..pruning.recipes import CIFAR10

__all__ = ["TrainConfig", "OptimizerFactory", "sgd", "SCHEDULES", "SCHEDULE_UNITS"]

SCHEDULES = ("step", "cosine")
SCHEDULE_UNITS = ("epoch", "iteration")

#: ``factory(model, config) -> optimizer`` over the model's parameters (see :func:`sgd`).
OptimizerFactory = Callable[[nn.Module, "TrainConfig"], torch.optim.Optimizer]


@dataclass(frozen=True)
class TrainConfig:
    """The options of one :func:`~oneprune_ext.training.trainer.train` run (validated when built).

    Attributes:
        epochs: length of the run, in epochs (the whole run, also when resuming).
        lr: initial learning rate (> 0).
        momentum, weight_decay, nesterov: the settings of the default optimizer, :func:`sgd`
            (published CIFAR-10: 0.9, 5e-4, Nesterov; published ImageNet: 0.9, 1e-4, no Nesterov);
            another optimizer factory may read them or not.
        schedule: ``"step"`` (lr x ``gamma`` at each of ``milestones``) or ``"cosine"`` (cosine
            annealing to 0 over the run).
        milestones: for ``"step"``, fractions of ``epochs`` in (0, 1), rounded to the nearest epoch.
        gamma: lr multiplier at each milestone.
        schedule_unit: ``"epoch"``: the scheduler steps once per epoch (after ``epoch_end``);
            ``"iteration"``: after every optimizer step, over ``epochs * len(train_loader)`` steps
            (the published ImageNet cosine); the pruner's ``after_step`` then gets each step's lr.
        device: where to train.
        checkpoint: path of the per-epoch checkpoint (written atomically, by rank 0 only under
            torch.distributed), or None.
        resume: continue from ``checkpoint`` if that file exists (a fresh run otherwise).
        progress: show a tqdm bar over epochs (rank 0 only).
        seed: seeds Python, NumPy and torch at the start of a fresh run (None: leave them); on
            resume the saved generator states are restored instead.
        desc: label of the progress bar.
        distributed: train with DistributedDataParallel over the default process group; None: when
            a process group with more than one rank is initialised.
        run_options: the caller's options that define the run beyond these (data, model, seed,
            pruner options, ...; plain JSON-able values): recorded in the checkpoint, and a resume
            with different values is refused, naming them.

    Raises:
        ValueError: a bad option, named.
    """

    epochs: int
    lr: float = CIFAR10.lr
    momentum: float = CIFAR10.momentum
    weight_decay: float = CIFAR10.weight_decay
    nesterov: bool = CIFAR10.nesterov
    schedule: str = CIFAR10.schedule
    milestones: tuple[float, ...] = CIFAR10.milestones
    gamma: float = CIFAR10.gamma
    schedule_unit: str = CIFAR10.schedule_unit
    device: Union[str, torch.device] = "cpu"
    checkpoint: Optional[Union[str, os.PathLike]] = None
    resume: bool = False
    progress: bool = True
    seed: Optional[int] = 0
    desc: Optional[str] = None
    distributed: Optional[bool] = None
    run_options: Optional[Mapping[str, Any]] = None

    def __post_init__(self) -> None:
        e = self.epochs
        if not (is_real(e) and math.isfinite(e) and int(e) == e and e >= 1):
            raise ValueError(f"train: epochs must be a positive int, got {self.epochs!r}")
        object.__setattr__(self, "epochs", int(self.epochs))
        if not is_real(self.lr) or self.lr <= 0 or not math.isfinite(self.lr):
            raise ValueError(f"train: lr must be a positive number, got {self.lr!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"train: schedule must be 'step' or 'cosine', got {self.schedule!r}")
        if self.schedule_unit not in SCHEDULE_UNITS:
            raise ValueError(f"train: schedule_unit must be one of {SCHEDULE_UNITS}, got {self.schedule_unit!r}")
        object.__setattr__(self, "milestones", tuple(float(m) for m in self.milestones))
        if self.schedule == "step":
            bad = [m for m in self.milestones if not 0.0 < m < 1.0]
            if bad:
                raise ValueError(f"train: milestones are fractions of the run in (0, 1), got {list(self.milestones)}")
        if self.resume and self.checkpoint is None:
            raise ValueError("train: resume=True needs checkpoint=<path>")

    @classmethod
    def of(cls, config: Optional["TrainConfig"], options: Mapping[str, Any]) -> "TrainConfig":
        """``config`` with ``options`` (keywords of ``train``) overriding its fields; ``config`` None:
        built from ``options`` (``epochs`` required)."""
        if config is not None and not isinstance(config, TrainConfig):
            raise TypeError(f"train: config must be a TrainConfig, got {type(config).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise TypeError(f"train: unknown option(s) {unknown}; the options are {sorted(known)}")
        if config is not None:
            return dataclasses.replace(config, **options)
        if "epochs" not in options:
            raise ValueError("train: epochs is required (the length of the run, in epochs)")
        return cls(**options)

    def recorded(self, pruned_run: bool, optimizer: OptimizerFactory) -> dict[str, Any]:
        """The settings a checkpoint records (a resume must match them): the recipe, not the paths."""
        out: dict[str, Any] = {"epochs": self.epochs, "lr": float(self.lr), "momentum": float(self.momentum),
                               "weight_decay": float(self.weight_decay), "nesterov": bool(self.nesterov),
                               "schedule": self.schedule, "milestones": list(self.milestones),
                               "gamma": float(self.gamma), "pruned_run": pruned_run}
        if self.schedule_unit != "epoch":  # (absent from checkpoints of per-epoch runs, as before it existed)
            out["schedule_unit"] = self.schedule_unit
        if optimizer is not sgd:  # (absent with the default optimizer, as before factories existed)
            out["optimizer"] = f"{getattr(optimizer, '__module__', '')}.{getattr(optimizer, '__qualname__', optimizer)}"
        return out


def sgd(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """The default optimizer: ``torch.optim.SGD`` with ``config``'s lr, momentum, weight decay and
    Nesterov (Nesterov only with momentum > 0)."""
    return torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                           weight_decay=config.weight_decay, nesterov=config.nesterov and config.momentum > 0)
