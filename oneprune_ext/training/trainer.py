"""The bundled trainer: training from scratch with optional one-cycle pruning.

:func:`train` runs one training run of ``config.epochs`` epochs (options: one
:class:`~oneprune_ext.training.config.TrainConfig`; the optimizer from a factory, SGD by default;
:mod:`~oneprune_ext.training.callbacks` after every epoch) and, when given a
:class:`~oneprune_ext.pruning.pruner.OneCyclePruner`, calls its hooks in the documented order::

    pruner.epoch_start(epoch)
    for batch in loader:
        loss.backward()
        pruner.before_step()
        optimizer.step()
        pruner.after_step(lr)
        scheduler.step()                 # schedule_unit="iteration" only
    if pruner.will_prune(epoch):
        evaluate(model, test_loader)     # accuracy right before the prune
    pruner.epoch_end(epoch, optimizer)   # may prune the model in place
    scheduler.step()                     # schedule_unit="epoch" (default)
    evaluate(model, test_loader)         # the epoch's test accuracy (right after a prune)

The two evaluations around the prune have no training step between them, so their difference,
the *prune shock* (:attr:`TrainResult.prune_shock`), shows what the prune itself did: near 0
when sparsity learning had already shrunk the removed channels to almost nothing.

Pruning happens in place between steps, so the optimizer and the learning-rate
scheduler are the same objects for the whole run (momentum is kept for the kept
channels).

Checkpoints (``checkpoint=path``) are written at the end of every epoch, atomically
(temporary file in the same folder, fsync, ``os.replace``), and hold the model,
optimizer, scheduler and pruner state, the next epoch, the RNG states, the per-epoch
history and the wall time so far.  ``resume=True`` continues from such a file; on CPU
the result is bit-identical to an uninterrupted run with the same seed (the data
loader must shuffle with a sampler that has ``set_epoch``, as the loaders of
:mod:`oneprune_ext.training.data` do). A checkpoint carries a format version and a checksum
(:mod:`oneprune_ext.storage.checkpoint`): a damaged one is refused with one line naming it, and so is a
checkpoint of another run (other settings, ``run_options`` or pruner options; each
difference is named), before anything changes.

Under ``torchrun`` (an initialised process group with more than one rank) the model trains
as a ``DistributedDataParallel`` replica on each rank's shard of the data, is re-wrapped after
the in-place prune, every rank evaluates its shard of the test set (counts summed), and only
rank 0 writes checkpoints and shows progress; rank 0's BN statistics are copied to every rank
at the end of each epoch, so all ranks end with bit-identical models.
"""

from __future__ import annotations

import dataclasses
import os
import random
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader

from ..graph.flops import count_macs, count_params
from ..pruning import distributed as _dist
from ..storage import checkpoint as ckpt
from .callbacks import Callback, as_callbacks
from .config import OptimizerFactory, TrainConfig, sgd

if TYPE_CHECKING:  # pragma: no cover
    from ..pruning.pruner import OneCyclePruner

__all__ = ["train", "evaluate", "TrainConfig", "TrainResult", "EpochRecord"]


@dataclass
class EpochRecord:
    """What happened in one epoch (0-based ``epoch``).

    Attributes:
        epoch: 0-based epoch index.
        lr: learning rate used during the epoch.
        train_loss: mean cross-entropy over the epoch's training samples (without the
            group-lasso penalty).
        train_acc: training accuracy over the epoch, in percent (model in train mode).
        test_acc: test accuracy after the epoch (after any prune), in percent.
        penalty: mean group-lasso penalty per step (0 when none was applied).
        phase: the pruner's phase after the epoch (``"dense"`` without a pruner).
        indicator: the stability indicator after the epoch (``None`` without a pruner).
        reg: the current regularisation strength (``None`` without a pruner).
        pruned_now: whether the model was pruned at the end of this epoch.
        macs: MACs per sample of the model after the epoch.
        params: parameter count after the epoch.
        seconds: wall time of the epoch (training, evaluation and checkpoint), in seconds.
        removed_norm_share: share of the squared weight norm the channels chosen for removal
            held at the end of the epoch, before any prune (0..1; ``None`` when no sub-network
            was chosen: dense phase, after the prune, no pruner).
        shrink: the pruner's shrink so far, ``sum of reg * lr`` over its sparsity-learning
            steps (``None`` without a pruner).
        acc_before_prune / acc_after_prune: test accuracy (percent) right before and right
            after the physical prune, with no training in between; ``None`` unless ``pruned_now``.
        reduction: fraction of the dense MACs (or parameters) removed by the sub-network chosen
            at this epoch's start, or by the pruned model after the prune (``None`` without a
            search this epoch or without a pruner).
        hook_seconds: seconds spent in each pruner hook during this epoch (keys as in
            ``pruner.stats``: host seconds, plus ``<hook>_device`` seconds on CUDA); empty
            without a pruner.
    """

    epoch: int
    lr: float
    train_loss: float
    train_acc: float
    test_acc: float
    penalty: float
    phase: str
    indicator: float | None
    reg: float | None
    pruned_now: bool
    macs: int
    params: int
    seconds: float
    removed_norm_share: float | None = None
    shrink: float | None = None
    acc_before_prune: float | None = None
    acc_after_prune: float | None = None
    reduction: float | None = None
    hook_seconds: dict[str, float] = field(default_factory=dict)


@dataclass
class TrainResult:
    """Outcome of :func:`train`.

    Attributes:
        history: one :class:`EpochRecord` per epoch (including epochs run before a resume).
        final_acc: test accuracy of the final model, in percent.
        dense_macs / dense_params: MACs per sample and parameter count of the model at
            the start of the run (dense).
        final_macs / final_params: the same for the final model.
        prune_epoch: 0-based epoch at whose end the model was pruned, or ``None``.
        wall_time: total wall time of the run, in seconds (training, per-epoch evaluation
            and checkpointing, summed over resumed segments).
        pruner_seconds: wall time spent inside the pruner's hooks (``pruner.stats["total"]``),
            in seconds; 0 without a pruner.
        pruner_overhead_pct: ``100 * pruner_seconds / wall_time``.
        pruner_init_seconds: the pruner's one-off construction (tracing, cost model,
            layout; ``pruner.init_seconds``), in seconds; not part of ``wall_time`` or
            ``pruner_seconds`` (the pruner is built before :func:`train` is called).
        acc_before_prune / acc_after_prune: test accuracy (percent) right before and right
            after the physical prune, no training in between; ``None`` if not pruned.
        removed_norm_share: share of the squared weight norm the removed channels held right
            before the prune (0..1), or ``None``.
        shrink_at_prune: the pruner's shrink (``sum of reg * lr``) when it pruned, or ``None``.
    """

    history: list[EpochRecord] = field(default_factory=list)
    final_acc: float = 0.0
    dense_macs: int = 0
    dense_params: int = 0
    final_macs: int = 0
    final_params: int = 0
    prune_epoch: int | None = None
    wall_time: float = 0.0
    pruner_seconds: float = 0.0
    pruner_overhead_pct: float = 0.0
    pruner_init_seconds: float = 0.0
    acc_before_prune: float | None = None
    acc_after_prune: float | None = None
    removed_norm_share: float | None = None
    shrink_at_prune: float | None = None

    @property
    def prune_shock(self) -> float | None:
        """Accuracy lost by the prune itself, in points: ``acc_before_prune - acc_after_prune``
        (``None`` if not pruned; negative when the prune happened to gain accuracy)."""
        if self.acc_before_prune is None or self.acc_after_prune is None:
            return None
        return self.acc_before_prune - self.acc_after_prune

    @property
    def macs_reduction(self) -> float:
        """Fraction of MACs removed, ``1 - final_macs / dense_macs`` (0..1)."""
        return 1.0 - self.final_macs / self.dense_macs if self.dense_macs else 0.0

    @property
    def params_reduction(self) -> float:
        """Fraction of parameters removed, ``1 - final_params / dense_params`` (0..1)."""
        return 1.0 - self.final_params / self.dense_params if self.dense_params else 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (history as a list of dicts, plus the two reductions)."""
        d = dataclasses.asdict(self)
        d["macs_reduction"] = self.macs_reduction
        d["params_reduction"] = self.params_reduction
        d["prune_shock"] = self.prune_shock
        return d


# ----------------------------------------------------------------------------------------------
# measuring


def _first_input(loader: Iterable) -> torch.Tensor:
    """One sample (batch of 1) from a loader's dataset, without advancing any sampler."""
    ds = getattr(loader, "dataset", None)
    if ds is not None:
        x = ds[0][0]
        return x.unsqueeze(0) if isinstance(x, torch.Tensor) else torch.as_tensor(x).unsqueeze(0)
    x, _ = next(iter(loader))
    return x[:1]


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable, device: torch.device | str = "cpu", *,
             process_group: Any = None) -> float:
    """Top-1 accuracy of ``model`` over ``loader``, in percent (0..100).

    The model is put in eval mode for the pass and its previous mode is restored. With
    ``process_group`` (under ``torch.distributed``) every rank evaluates its shard of the data
    and the counts are summed over the ranks (one all-reduce), so all ranks return the
    accuracy over the whole data set.
    """
    was_training = model.training
    model.eval()
    correct = torch.zeros((), dtype=torch.int64, device=device)
    total = 0
    try:
        for x, y in loader:
            x = x.to(device, non_blocking=True)
            y = y.to(device, non_blocking=True)
            correct += (model(x).argmax(1) == y).sum()
            total += int(y.numel())
    finally:
        model.train(was_training)
    if process_group is not None:
        counts = _dist.all_reduce_sum(
            torch.stack([correct.to(torch.float64), torch.tensor(float(total), dtype=torch.float64, device=device)]),
            process_group)
        correct, total = counts[0], int(counts[1].item())
    if total == 0:
        raise ValueError("evaluate: the loader yielded no samples")
    return 100.0 * float(correct.item()) / total


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


# ----------------------------------------------------------------------------------------------
# the loop


def _make_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig,
                    steps_per_epoch: int = 1) -> torch.optim.lr_scheduler.LRScheduler:
    """The lr scheduler, in units of its steps: epochs, or iterations (``steps_per_epoch`` per epoch)."""
    if config.schedule == "step":
        steps = sorted({max(1, int(round(m * config.epochs))) * steps_per_epoch for m in config.milestones})
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=steps, gamma=config.gamma)
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs * steps_per_epoch)


def _steps_per_epoch(loader: Iterable, unit: str) -> int:
    """Scheduler steps per epoch: 1, or the training loader's batches for ``unit="iteration"``."""
    if unit == "epoch":
        return 1
    try:
        n = len(loader)  # type: ignore[arg-type]
    except TypeError:
        raise ValueError("train: schedule_unit='iteration' needs a training loader with a length "
                         "(len(train_loader) batches per epoch)") from None
    if n < 1:
        raise ValueError("train: the training loader yields no batches")
    return int(n)


def _set_sampler_epoch(loader: Iterable, epoch: int) -> None:
    sampler = getattr(loader, "sampler", None)
    if sampler is not None and hasattr(sampler, "set_epoch"):
        sampler.set_epoch(epoch)
    batch_sampler = getattr(loader, "batch_sampler", None)
    inner = getattr(batch_sampler, "sampler", None)
    if inner is not None and inner is not sampler and hasattr(inner, "set_epoch"):
        inner.set_epoch(epoch)


def _pruner_seconds(pruner: "OneCyclePruner | None") -> float:
    if pruner is None:
        return 0.0
    return float(pruner.stats.get("total", 0.0))


def _hook_seconds_since(pruner: "OneCyclePruner | None", before: dict[str, float]) -> dict[str, float]:
    """Per-hook seconds (``pruner.stats`` keys) spent since the ``before`` snapshot of ``pruner.stats``."""
    if pruner is None:
        return {}
    return {k: float(v) - float(before.get(k, 0.0)) for k, v in pruner.stats.items()}


@dataclass
class _Run:
    """Everything one training run carries from step to step (see :func:`train`)."""

    model: nn.Module
    net: nn.Module  # what the forward goes through: the model, or its DDP wrapper
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    pruner: "OneCyclePruner | None"
    device: torch.device
    example: torch.Tensor
    config: dict[str, Any]
    run_options: dict[str, Any] = field(default_factory=dict)  # the caller's, recorded and compared
    group: Any = None  # the process group under torch.distributed, else None
    per_iteration: bool = False  # the scheduler steps after every optimizer step (else once per epoch)
    history: list[EpochRecord] = field(default_factory=list)
    start_epoch: int = 0
    wall_before: float = 0.0  # wall time of earlier segments (resume)
    pruner_before: float = 0.0  # pruner seconds of earlier segments, if its stats do not persist
    dense_macs: int = 0
    dense_params: int = 0
    macs_now: int = 0
    params_now: int = 0
    t_start: float = 0.0


@dataclass
class _EpochSums:
    loss: torch.Tensor
    penalty: torch.Tensor
    correct: torch.Tensor
    seen: int = 0
    steps: int = 0


def _check_pruner(pruner: Any, epochs: int) -> None:
    if pruner is not None:
        total = getattr(pruner, "total_epochs", epochs)
        if total is not None and int(total) != epochs:
            raise ValueError(f"train: the pruner was built with total_epochs={total} but epochs={epochs}; "
                             "they must be equal (the pruning schedule is in epochs of this run)")


def _process_group(pruner: "OneCyclePruner | None", use: bool | None) -> Any:
    """The process group to train with (None: a single process)."""
    active = _dist.world_size() > 1
    if use is None:
        use = active
    if not use:
        return None
    if not active:
        raise ValueError("train(distributed=True) needs an initialised process group with more than one rank "
                         "(run under torchrun and call torch.distributed.init_process_group first)")
    group = torch.distributed.group.WORLD
    if pruner is not None and getattr(pruner, "process_group", None) is None:
        raise ValueError("train: under torch.distributed the pruner must be built with process_group= "
                         "(e.g. torch.distributed.group.WORLD) so every rank prunes the same channels")
    return group


def _wrap(model: nn.Module, run_device: torch.device, group: Any) -> nn.Module:
    if group is None:
        return model
    ids = [run_device.index if run_device.index is not None else torch.cuda.current_device()] \
        if run_device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids, process_group=group)


def _resume(run: _Run, ckpt_path: str) -> None:
    """Restore a run from its checkpoint: pruner (reshapes the model) first, then the rest."""
    data = ckpt.read_checkpoint(ckpt_path, "train(resume=True)")
    ckpt.check_same_run(data, run.config, run.run_options, run.model.state_dict(), ckpt_path)
    if data["pruner"] is not None:
        assert run.pruner is not None  # guaranteed by the config check ("pruned_run")
        try:
            run.pruner.load_state_dict(data["pruner"])  # reshapes the model if it was pruned
        except ValueError as e:  # refused before anything changed: say which file
            raise ValueError(f"resume from {ckpt_path}: {e}") from e
    run.model.load_state_dict(data["model"])
    run.optimizer.load_state_dict(data["optimizer"])
    run.scheduler.load_state_dict(data["scheduler"])
    ckpt.set_rng_state(data["rng"])
    run.history = [EpochRecord(**h) for h in data["history"]]
    run.start_epoch = int(data["epoch"])
    run.wall_before = float(data["wall_time"])
    run.dense_macs = int(data["dense_macs"])
    run.dense_params = int(data["dense_params"])
    run.pruner_before = float(data["pruner_seconds"]) - _pruner_seconds(run.pruner)


def _train_epoch(run: _Run, loader: Iterable, epoch: int) -> tuple[_EpochSums, float]:
    """One epoch of SGD steps, with the pruner's step hooks; returns the sums and the lr used."""
    run.model.train()
    _set_sampler_epoch(loader, epoch)
    if run.pruner is not None:
        run.pruner.epoch_start(epoch)
    cur_lr = float(run.optimizer.param_groups[0]["lr"])
    dev = run.device
    sums = _EpochSums(loss=torch.zeros((), dtype=torch.float64, device=dev),
                      penalty=torch.zeros((), dtype=torch.float64, device=dev),
                      correct=torch.zeros((), dtype=torch.int64, device=dev))
    for x, y in loader:
        x = x.to(dev, non_blocking=True)
        y = y.to(dev, non_blocking=True)
        run.optimizer.zero_grad(set_to_none=True)
        out = run.net(x)
        loss = F.cross_entropy(out, y)
        loss.backward()
        if run.pruner is not None:
            pen = run.pruner.before_step()
            if pen is not None:
                sums.penalty += pen.detach().to(torch.float64)
        run.optimizer.step()
        if run.pruner is not None:
            run.pruner.after_step(run.optimizer.param_groups[0]["lr"] if run.per_iteration else cur_lr)
        if run.per_iteration:
            run.scheduler.step()
        n = int(y.numel())
        sums.loss += loss.detach().to(torch.float64) * n
        sums.correct += (out.detach().argmax(1) == y).sum()
        sums.seen += n
        sums.steps += 1
    if sums.seen == 0:
        raise ValueError("train: the training loader yielded no samples")
    return sums, cur_lr


def _accuracy_before_prune(run: _Run, test_loader: Iterable, epoch: int) -> float | None:
    """Test accuracy right before the prune when ``epoch_end(epoch)`` is about to prune, else None."""
    if run.pruner is None or not run.pruner.will_prune(epoch):
        return None
    if run.group is not None:
        _dist.broadcast_buffers(run.model, run.group)  # rank 0's BN statistics, as after the prune
    return evaluate(run.model, test_loader, run.device, process_group=run.group)


def _end_epoch(run: _Run, test_loader: Iterable, epoch: int, sums: _EpochSums, cur_lr: float) -> EpochRecord:
    """Evaluate right before a prune, prune (maybe), step the scheduler, evaluate; the epoch's record."""
    acc_before = _accuracy_before_prune(run, test_loader, epoch)
    report = run.pruner.epoch_end(epoch, run.optimizer) if run.pruner is not None else None
    if not run.per_iteration:
        run.scheduler.step()
    pruned_now = bool(getattr(report, "pruned_now", False))
    if pruned_now and run.group is not None:
        run.net = _dist.rewrap(run.net)  # DDP's buckets hold the dense shapes
    if pruned_now or epoch == run.start_epoch:
        run.macs_now = count_macs(run.model, run.example)
        run.params_now = count_params(run.model)
    if run.group is not None:
        _dist.broadcast_buffers(run.model, run.group)  # rank 0's BN statistics everywhere
        stats = _dist.all_reduce_sum(torch.stack([
            sums.loss, sums.correct.to(torch.float64), torch.tensor(float(sums.seen), device=run.device,
                                                                    dtype=torch.float64)]), run.group)
        sums = _EpochSums(loss=stats[0], penalty=sums.penalty, correct=stats[1], seen=int(stats[2].item()),
                          steps=sums.steps)
    test_acc = evaluate(run.model, test_loader, run.device, process_group=run.group)
    return EpochRecord(
        epoch=epoch,
        lr=cur_lr,
        train_loss=float(sums.loss.item()) / sums.seen,
        train_acc=100.0 * float(sums.correct.item()) / sums.seen,
        test_acc=test_acc,
        penalty=float(sums.penalty.item()) / max(sums.steps, 1),
        phase=str(getattr(report, "phase", "dense")),
        indicator=None if report is None or report.indicator is None else float(report.indicator),
        reg=None if report is None or report.reg is None else float(report.reg),
        pruned_now=pruned_now,
        reduction=None if report is None or report.reduction is None else float(report.reduction),
        macs=run.macs_now,
        params=run.params_now,
        seconds=0.0,
        removed_norm_share=getattr(report, "removed_norm_share", None),
        shrink=None if report is None else float(report.shrink),
        acc_before_prune=acc_before if pruned_now else None,
        acc_after_prune=test_acc if pruned_now else None,
    )


def _write_checkpoint(run: _Run, path: str, epoch: int) -> None:
    """The whole run after ``epoch``, atomically; rank 0 only under torch.distributed."""
    if not _dist.is_main_process(run.group):
        return
    ckpt.write_checkpoint({
        "config": run.config,
        "run_options": run.run_options,
        "epoch": epoch + 1,
        "model": run.model.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        "pruner": run.pruner.state_dict() if run.pruner is not None else None,
        "rng": ckpt.rng_state(),
        "history": [dataclasses.asdict(h) for h in run.history],
        "wall_time": run.wall_before + (time.perf_counter() - run.t_start),
        "pruner_seconds": run.pruner_before + _pruner_seconds(run.pruner),
        "dense_macs": run.dense_macs,
        "dense_params": run.dense_params,
    }, path)


def _show(bar: Any, run: _Run, rec: EpochRecord) -> None:
    if bar is None:
        return
    post = {"loss": f"{rec.train_loss:.3f}", "acc": f"{rec.test_acc:.1f}%"}
    if run.pruner is not None:
        post["phase"] = rec.phase
        if rec.indicator is not None:
            post["psi"] = f"{rec.indicator:.3f}"
        post["MACs"] = f"{100.0 * run.macs_now / run.dense_macs:.0f}%"
    bar.set_postfix(post, refresh=False)
    bar.update(1)


def _result(run: _Run, test_loader: Iterable) -> TrainResult:
    wall_time = run.wall_before + (time.perf_counter() - run.t_start)
    pruner_seconds = run.pruner_before + _pruner_seconds(run.pruner)
    prune_rec = next((h for h in run.history if h.pruned_now), None)
    prune_epoch = None if prune_rec is None else prune_rec.epoch
    if run.pruner is not None and prune_epoch is None and getattr(run.pruner, "prune_epoch", None) is not None:
        prune_epoch = int(run.pruner.prune_epoch)
    final_acc = run.history[-1].test_acc if run.history else evaluate(
        run.model, test_loader, run.device, process_group=run.group)
    return TrainResult(
        history=run.history,
        final_acc=final_acc,
        dense_macs=run.dense_macs,
        dense_params=run.dense_params,
        final_macs=count_macs(run.model, run.example),
        final_params=count_params(run.model),
        prune_epoch=prune_epoch,
        wall_time=wall_time,
        pruner_seconds=pruner_seconds,
        pruner_overhead_pct=100.0 * pruner_seconds / wall_time if wall_time > 0 else 0.0,
        pruner_init_seconds=float(getattr(run.pruner, "init_seconds", 0.0)) if run.pruner is not None else 0.0,
        acc_before_prune=None if prune_rec is None else prune_rec.acc_before_prune,
        acc_after_prune=None if prune_rec is None else prune_rec.acc_after_prune,
        removed_norm_share=None if prune_rec is None else prune_rec.removed_norm_share,
        shrink_at_prune=None if prune_rec is None else prune_rec.shrink,
    )


def train(
    model: nn.Module,
    train_loader: DataLoader,
    test_loader: DataLoader,
    config: TrainConfig | None = None,
    *,
    pruner: "OneCyclePruner | None" = None,
    optimizer: OptimizerFactory = sgd,
    callbacks: Sequence[Callback | Callable[..., Any]] = (),
    **options: Any,
) -> TrainResult:
    """Train ``model`` from its current weights for ``config.epochs`` epochs, pruning if given a pruner.

    The run, in named steps: set-up (model on the device, the optimizer, the scheduler), resume from
    the checkpoint (:func:`_resume`), then per epoch: train (:func:`_train_epoch`: the pruner's
    ``epoch_start``, then per batch forward, backward, ``before_step``, ``optimizer.step()``,
    ``after_step``), end the epoch (:func:`_end_epoch`: an evaluation right before the prune when
    the pruner will prune, ``epoch_end`` -- may prune in place --, scheduler step, evaluation),
    write the checkpoint (:func:`_write_checkpoint`) and call the callbacks.

    Args:
        model: the network; moved to the device and trained (and pruned) in place.
        train_loader / test_loader: DataLoaders yielding ``(inputs, int64 labels)``.  For
            exact resume the training loader's sampler must have ``set_epoch`` (called
            with the 0-based epoch at the start of every epoch). Under torch.distributed,
            each rank's loaders yield its shard (see :mod:`oneprune_ext.training.data`).
        config: the run's options (:class:`~oneprune_ext.training.config.TrainConfig`: epochs, lr
            and schedule, device, checkpoint and resume, seed, ...). ``**options`` are the same
            fields as keywords and override it: ``train(model, tr, te, epochs=30, lr=0.05)``.
        pruner: a :class:`~oneprune_ext.pruning.pruner.OneCyclePruner` built on ``model`` with
            ``total_epochs == epochs``, or ``None`` for a dense run. With ``resume``, a freshly
            built pruner: it restores its state and reshapes the model first.
        optimizer: ``factory(model, config) -> torch.optim.Optimizer``, called once on the model
            (default :func:`~oneprune_ext.training.config.sgd`: SGD with ``config``'s lr, momentum,
            weight decay, Nesterov). The same optimizer trains the whole run: the prune compacts its
            state in place. A factory other than ``sgd`` is recorded in the checkpoint by name.
        callbacks: :class:`~oneprune_ext.training.callbacks.Callback` objects (or functions of the
            history, called after every epoch), called on rank 0 only, e.g. the run directory's
            metrics log (:meth:`~oneprune_ext.training.report.RunDirectory.metrics`).

    Returns:
        A :class:`TrainResult` (the same on every rank under torch.distributed).

    Raises:
        ValueError: a bad option (named in the message), a pruner whose ``total_epochs``
            differs from ``epochs``, ``resume`` without ``checkpoint``, a checkpoint path that
            cannot be written (checked before training), or a checkpoint that does not match
            this run (other settings or ``run_options``, another model; a damaged file is a
            :class:`~oneprune_ext.storage.files.FileFormatError` naming it). A refused resume leaves
            the model's weights and the pruner as they were.
        TypeError: an unknown option name.
    """
    cfg = TrainConfig.of(config, options)
    _check_pruner(pruner, cfg.epochs)
    hooks = as_callbacks(callbacks)
    group = _process_group(pruner, cfg.distributed)
    device = torch.device(cfg.device)
    ckpt_path = ckpt.prepare_checkpoint(cfg.checkpoint, writes=_is_main(group))
    steps_per_epoch = _steps_per_epoch(train_loader, cfg.schedule_unit)

    model.to(device)
    opt = optimizer(model, cfg)
    run = _Run(model=model, net=model, optimizer=opt, scheduler=_make_scheduler(opt, cfg, steps_per_epoch),
               pruner=pruner, device=device, example=_first_input(train_loader).to(device),
               config=cfg.recorded(pruner is not None, optimizer), group=group,
               per_iteration=cfg.schedule_unit == "iteration", run_options=ckpt.normalized(cfg.run_options or {}))
    run.dense_macs = count_macs(model, run.example)
    run.dense_params = count_params(model)
    if cfg.resume and ckpt_path is not None and os.path.exists(ckpt_path):
        _resume(run, ckpt_path)
    elif cfg.seed is not None:
        _seed_everything(int(cfg.seed))
    run.net = _wrap(model, device, group)  # after the resume: the model has its final shapes

    bar = None
    if cfg.progress and _is_main(group):
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.epochs, initial=run.start_epoch, desc=cfg.desc or ("one-cycle" if pruner else "dense"),
                   unit="epoch", dynamic_ncols=True, leave=True)
    run.macs_now = count_macs(model, run.example) if run.start_epoch else run.dense_macs
    run.params_now = count_params(model)
    run.t_start = time.perf_counter()
    try:
        for epoch in range(run.start_epoch, cfg.epochs):
            t_epoch = time.perf_counter()
            hooks_before = run.pruner.stats if run.pruner is not None else {}
            sums, cur_lr = _train_epoch(run, train_loader, epoch)
            rec = _end_epoch(run, test_loader, epoch, sums, cur_lr)
            rec.hook_seconds = _hook_seconds_since(run.pruner, hooks_before)
            run.history.append(rec)
            if ckpt_path is not None:
                rec.seconds = time.perf_counter() - t_epoch
                _write_checkpoint(run, ckpt_path, epoch)
            rec.seconds = time.perf_counter() - t_epoch
            _show(bar, run, rec)
            if _is_main(group):
                for cb in hooks:
                    cb.on_epoch_end(list(run.history))
    finally:
        if bar is not None:
            bar.close()
    result = _result(run, test_loader)
    if _is_main(group):
        for cb in hooks:
            cb.on_train_end(result)
    return result


def _is_main(group: Any) -> bool:
    """Whether this process prints and writes files (rank 0, or no process group)."""
    return group is None or _dist.is_main_process(group)
