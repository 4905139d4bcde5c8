"""What a training run tells the code around it: the :class:`Callback` hooks of :func:`train`.

:func:`~oneprune_ext.training.trainer.train` takes a list of callbacks and calls them on the process
that writes files (rank 0 under ``torch.distributed``), in the order given:

* :meth:`Callback.on_epoch_end` after every epoch (after its checkpoint), with the run's history so
  far, the epochs before a resume included (the last record is the epoch just finished);
* :meth:`Callback.on_train_end` once, with the :class:`~oneprune_ext.training.trainer.TrainResult`.

A plain function ``f(history)`` is accepted as an ``on_epoch_end`` callback. The run directory's
metrics log is one (:meth:`oneprune_ext.training.report.RunDirectory.metrics`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence, Union

if TYPE_CHECKING:  # pragma: no cover
    from .trainer import EpochRecord, TrainResult

__all__ = ["Callback", "EpochEnd", "as_callbacks"]


class Callback:
    """Base class: override the hooks you need (each does nothing here)."""

    def on_epoch_end(self, history: Sequence["EpochRecord"]) -> None:
        """After every epoch and its checkpoint; ``history[-1]`` is the epoch just finished."""

    def on_train_end(self, result: "TrainResult") -> None:
        """After the last epoch, with the run's result."""


class EpochEnd(Callback):
    """A function of the history as an ``on_epoch_end`` callback."""

    def __init__(self, fn: Callable[[list["EpochRecord"]], Any]) -> None:
        self.fn = fn

    def on_epoch_end(self, history: Sequence["EpochRecord"]) -> None:
        self.fn(list(history))


def as_callbacks(callbacks: Iterable[Union[Callback, Callable[..., Any]]] | None) -> list[Callback]:
    """The callbacks given to ``train``: :class:`Callback` objects, functions wrapped in :class:`EpochEnd`."""
    out: list[Callback] = []
    for cb in callbacks or ():
        if isinstance(cb, Callback):
            out.append(cb)
        elif callable(cb):
            out.append(EpochEnd(cb))
        else:
            raise TypeError(f"train: callbacks must be Callback objects or functions of the history, got "
                            f"{type(cb).__name__}")
    return out
