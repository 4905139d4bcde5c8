"""The bundled trainer behind ``oneprune``: training loop, data, models, run reports and plots.

Imports only from the layers below it (graph, kernels, pruning, storage).

* :mod:`.trainer` -- :func:`train`, :func:`evaluate`, checkpoints and exact resume;
* :mod:`.data` -- the bundled digits, CIFAR-10 / ImageNet from a folder you give;
* :mod:`.models` -- the bundled networks and any torchvision classifier by name;
* :mod:`.report` -- ``report.json`` / ``metrics.jsonl``; :mod:`.plots` -- the PNG plots.
"""

from __future__ import annotations

from . import models
from .trainer import TrainResult, evaluate, train

__all__ = ["TrainResult", "evaluate", "models", "train"]
