"""The published recipes, every number once: :data:`CIFAR10` and :data:`IMAGENET`.

The settings the authors' scripts run (OCSPruner ``scripts/prune_cifar.sh`` / ``main_cifar.py`` and
``scripts/prune_imagenet.sh`` / ``main_imagenet.py``), as this project schedules them. Everything
else reads them from here: :class:`~oneprune_ext.pruning.config.PrunerConfig`'s defaults (CIFAR-10's
pruning settings), ``reg="auto"``'s shrink curve (:mod:`oneprune_ext.pruning.sparsity`: the CIFAR-10
run), the trainer's defaults (:class:`~oneprune_ext.training.trainer.TrainConfig`: CIFAR-10's
optimizer and schedule) and the ``oneprune`` command's data-set defaults. This module sits in the
pruning layer, the lowest that needs the numbers, and imports nothing.

* **CIFAR-10**: 300 epochs, batch 128 (391 steps per epoch on 50,000 images); SGD lr 0.1, momentum
  0.9, Nesterov, weight decay 5e-4, lr x0.2 at 30 / 60 / 80 / 90 % of the run, once per epoch;
  monitoring from epoch 2, sparsity learning from 30, the prune by 110 at the latest; ``reg`` 1e-4
  growing by 1e-4 every epoch; layer limit 0.75 (``k`` 1.0), stability threshold 0.999, the shrink
  regularizer.
* **ImageNet**: 130 epochs, batch 256 (5005 steps per epoch on 1,281,167 images); SGD lr 0.1,
  momentum 0.9 without Nesterov, weight decay 1e-4, cosine annealing to 0 stepped every iteration;
  monitoring from 2, sparsity learning from the automatic start, the prune by 50; ``reg`` 1e-4
  growing by 1e-4 every 2 epochs; the sub-network chosen once more at the prune.

Epochs are 0-based epoch indices of a run of ``epochs`` epochs.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Any, Union

__all__ = ["Recipe", "CIFAR10", "IMAGENET", "PUBLISHED"]


@dataclass(frozen=True)
class Recipe:
    """One published recipe: the run, its optimizer and learning-rate schedule, and the pruning.

    Attributes:
        name: ``"cifar10"`` or ``"imagenet"``.
        epochs: length of the run, in epochs; the epoch-valued settings below are for this length.
        batch_size: training batch, in samples.
        steps_per_epoch: optimizer steps per epoch at that batch size.
        lr, momentum, nesterov, weight_decay: SGD.
        schedule: ``"step"`` (lr x ``gamma`` at each of ``milestones``, fractions of the run) or
            ``"cosine"`` (annealing to 0 over the run).
        schedule_unit: the schedule steps once per ``"epoch"`` or every ``"iteration"``.
        milestones, gamma: of the step schedule (empty / 1.0 for cosine).
        monitor_start, sl_start, sl_end: 0-based epochs: sub-network search from, sparsity learning
            from (or ``"auto"``), the prune by.
        reg, reg_delta, reg_interval: ``reg(t) = reg + reg_delta * floor((t - sl_start) / reg_interval)``.
        reselect_at_prune: choose the sub-network once more at the prune.
        regularizer, layer_limit, layer_limit_k, stability_threshold, saliency_params: as in
            :class:`~oneprune_ext.pruning.config.PrunerConfig`.
    """

    name: str
    epochs: int
    batch_size: int
    steps_per_epoch: int
    lr: float
    momentum: float
    nesterov: bool
    weight_decay: float
    schedule: str
    schedule_unit: str
    milestones: tuple[float, ...]
    gamma: float
    monitor_start: int
    sl_start: Union[int, str]
    sl_end: int
    reg: float
    reg_delta: float
    reg_interval: int
    reselect_at_prune: bool
    regularizer: str = "shrink"
    layer_limit: float = 0.75
    layer_limit_k: float = 1.0
    stability_threshold: float = 0.999
    saliency_params: str = "published"

    def lr_at(self, epoch: int) -> float:
        """The learning rate of ``epoch``'s steps under the step schedule (once per epoch)."""
        if self.schedule != "step":
            raise ValueError(f"{self.name}: lr_at needs the step schedule, the recipe's is {self.schedule!r}")
        steps = sorted(max(1, int(round(m * self.epochs))) for m in self.milestones)
        return self.lr * self.gamma ** bisect.bisect_right(steps, epoch)

    def pruner_options(self, epochs: int | None = None) -> dict[str, Any]:
        """The recipe's pruning options for a run of ``epochs`` epochs (default: its own length).

        The epoch-valued settings are scaled to the length (rounded, at least 1) and, at another
        length than the recipe's, ``reg`` becomes ``"auto"``: the published ``reg`` numbers make the
        published shrink only at the published length.
        """
        e = self.epochs if epochs is None else int(epochs)

        def scaled(v: int) -> int:
            return max(1, int(round(v * e / self.epochs)))

        return {
            "total_epochs": e,
            "monitor_start": scaled(self.monitor_start),
            "sl_start": self.sl_start if self.sl_start == "auto" else scaled(int(self.sl_start)),
            "sl_end": scaled(self.sl_end),
            "reg": self.reg if e == self.epochs else "auto",
            "reg_delta": self.reg_delta,
            "reg_interval": self.reg_interval,
            "reselect_at_prune": self.reselect_at_prune,
        }


CIFAR10 = Recipe(
    name="cifar10", epochs=300, batch_size=128, steps_per_epoch=391,  # ceil(50,000 / 128)
    lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4,
    schedule="step", schedule_unit="epoch", milestones=(0.3, 0.6, 0.8, 0.9), gamma=0.2,
    monitor_start=2, sl_start=30, sl_end=110, reg=1e-4, reg_delta=1e-4, reg_interval=1, reselect_at_prune=False,
)

IMAGENET = Recipe(
    name="imagenet", epochs=130, batch_size=256, steps_per_epoch=5005,  # ceil(1,281,167 / 256)
    lr=0.1, momentum=0.9, nesterov=False, weight_decay=1e-4,
    schedule="cosine", schedule_unit="iteration", milestones=(), gamma=1.0,
    monitor_start=2, sl_start="auto", sl_end=50, reg=1e-4, reg_delta=1e-4, reg_interval=2, reselect_at_prune=True,
)

#: The published recipes by data set.
PUBLISHED: dict[str, Recipe] = {r.name: r for r in (CIFAR10, IMAGENET)}
