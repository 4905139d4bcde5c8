"""The bundled trainer behind ``oneprune``: training loop, data, models, run reports and plots.

Imports only from the layers below it (graph, kernels, pruning, storage).

* :mod:`.trainer` -- :func:`train`, :func:`evaluate`, exact resume (the checkpoint files:
  :mod:`oneprune_ext.storage.checkpoint`);
* :mod:`.config` -- :class:`TrainConfig`, every option of a run, and the optimizer factory;
* :mod:`.callbacks` -- :class:`Callback`, what a run tells the code around it;
* :mod:`.data` -- the bundled digits, CIFAR-10 / ImageNet from a folder you give, each data set's defaults;
* :mod:`.models` -- the bundled networks and any torchvision classifier by name;
* :mod:`.report` -- ``report.json`` / ``metrics.jsonl``; :mod:`.plots` -- the PNG plots.
"""

from __future__ import annotations

from . import models
from .callbacks import Callback
from .config import TrainConfig, sgd
from .trainer import TrainResult, evaluate, train

__all__ = ["Callback", "TrainConfig", "TrainResult", "evaluate", "models", "sgd", "train"]
