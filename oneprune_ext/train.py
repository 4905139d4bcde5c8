"""The bundled trainer: SGD training from scratch with optional one-cycle pruning.

:func:`train` runs one training run of ``epochs`` epochs and, when given a
:class:`~oneprune_ext.pruner.OneCyclePruner`, calls its hooks in the documented order::

    pruner.epoch_start(epoch)
    for batch in loader:
        loss.backward()
        pruner.before_step()
        optimizer.step()
        pruner.after_step(lr)
    pruner.epoch_end(epoch, optimizer)   # may prune the model in place
    scheduler.step()

Pruning happens in place between steps, so the optimizer and the learning-rate
scheduler are the same objects for the whole run (momentum is kept for the kept
channels).

Checkpoints (``checkpoint=path``) are written at the end of every epoch, atomically
(temporary file in the same folder, fsync, ``os.replace``), and hold the model,
optimizer, scheduler and pruner state, the next epoch, the RNG states, the per-epoch
history and the wall time so far.  ``resume=True`` continues from such a file; on CPU
the result is bit-identical to an uninterrupted run with the same seed (the data
loader must shuffle with a sampler that has ``set_epoch``, as the loaders of
:mod:`oneprune_ext.data` do).
"""

from __future__ import annotations

import dataclasses
import math
import os
import random
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader

from .saving import atomic_save

if TYPE_CHECKING:  # pragma: no cover
    from .pruner import OneCyclePruner

__all__ = ["train", "evaluate", "count_macs", "count_params", "TrainResult", "EpochRecord",
           "CIFAR_MILESTONES", "CIFAR_GAMMA"]

#: Published CIFAR schedule: lr x0.2 at 30 / 60 / 80 / 90 % of the run.
CIFAR_MILESTONES: tuple[float, ...] = (0.3, 0.6, 0.8, 0.9)
CIFAR_GAMMA: float = 0.2

_CKPT_FORMAT = "oneprune_ext.train/1"


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


def count_macs(model: nn.Module, example: torch.Tensor) -> int:
    """MACs of one forward pass on ``example`` (use a batch of 1 for per-sample MACs).

    Counted with :class:`torch.utils.flop_counter.FlopCounterMode` (FLOPs / 2), in eval
    mode and without autograd; the model's train/eval flags are restored.
    """
    from torch.utils.flop_counter import FlopCounterMode

    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as fc:
            model(example)
    finally:
        for m, t in flags:
            m.training = t
    return int(fc.get_total_flops()) // 2


def count_params(model: nn.Module) -> int:
    """Number of parameter entries (``numel`` sum over all parameters)."""
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable, device: torch.device | str = "cpu") -> float:
    """Top-1 accuracy of ``model`` over ``loader``, in percent (0..100).

    The model is put in eval mode for the pass and its previous mode is restored.
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
    if total == 0:
        raise ValueError("evaluate: the loader yielded no samples")
    return 100.0 * float(correct.item()) / total


# ----------------------------------------------------------------------------------------------
# RNG and checkpoints


def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        # numpy's state as plain types + a tensor so the file loads with weights_only=True
        "numpy": (str(np_state[0]), torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
                  int(np_state[2]), int(np_state[3]), float(np_state[4])),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"].cpu())
    random.setstate(_to_tuple(state["python"]))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def _to_tuple(x: Any) -> Any:
    if isinstance(x, (list, tuple)):
        return tuple(_to_tuple(v) for v in x)
    return x


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def _load_checkpoint(path: str) -> dict[str, Any]:
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - re-raised with the option named
        raise ValueError(f"train(resume=True): cannot read checkpoint {path!r}: {e}") from e
    if not isinstance(data, dict) or data.get("format") != _CKPT_FORMAT:
        raise ValueError(f"train(resume=True): {path!r} is not a checkpoint written by oneprune_ext.train")
    return data


# ----------------------------------------------------------------------------------------------
# the loop


def _make_scheduler(optimizer: torch.optim.Optimizer, schedule: str, epochs: int,
                    milestones: Sequence[float], gamma: float) -> torch.optim.lr_scheduler.LRScheduler:
    if schedule == "step":
        bad = [m for m in milestones if not 0.0 < float(m) < 1.0]
        if bad:
            raise ValueError(f"train: milestones are fractions of the run in (0, 1), got {list(milestones)}")
        steps = sorted({max(1, int(round(float(m) * epochs))) for m in milestones})
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=steps, gamma=gamma)
    if schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    raise ValueError(f"train: schedule must be 'step' or 'cosine', got {schedule!r}")


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


def train(
    model: nn.Module,
    train_loader: DataLoader,
    test_loader: DataLoader,
    *,
    epochs: int,
    lr: float = 0.1,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    nesterov: bool = True,
    schedule: str = "step",
    milestones: Sequence[float] = CIFAR_MILESTONES,
    gamma: float = CIFAR_GAMMA,
    pruner: "OneCyclePruner | None" = None,
    device: torch.device | str = "cpu",
    checkpoint: str | os.PathLike | None = None,
    resume: bool = False,
    progress: bool = True,
    seed: int | None = 0,
    desc: str | None = None,
) -> TrainResult:
    """Train ``model`` from its current weights for ``epochs`` epochs, pruning if given a pruner.

    Args:
        model: the network; moved to ``device`` and trained (and pruned) in place.
        train_loader / test_loader: DataLoaders yielding ``(inputs, int64 labels)``.  For
            exact resume the training loader's sampler must have ``set_epoch`` (called
            with the 0-based epoch at the start of every epoch).
        epochs: length of the run, in epochs (the whole run, also when resuming).
        lr: initial learning rate.
        momentum, weight_decay, nesterov: SGD settings (published: 0.9, 5e-4, Nesterov).
        schedule: ``"step"`` (lr x ``gamma`` at each of ``milestones``) or ``"cosine"``
            (cosine annealing to 0 over ``epochs``); the scheduler steps once per epoch.
        milestones: for ``"step"``, fractions of ``epochs`` in (0, 1) (published CIFAR:
            0.3, 0.6, 0.8, 0.9), rounded to the nearest epoch.
        gamma: lr multiplier at each milestone (published: 0.2).
        pruner: a :class:`~oneprune_ext.pruner.OneCyclePruner` built on ``model`` with
            ``total_epochs == epochs``, or ``None`` for a dense run.
        device: where to train.
        checkpoint: path of the per-epoch checkpoint (written atomically), or ``None``.
        resume: continue from ``checkpoint`` if that file exists (a fresh run otherwise).
            Pass the same freshly built model, loaders and a freshly built pruner as the
            original run; the pruner restores its state and reshapes the model first.
        progress: show a tqdm bar over epochs.
        seed: seeds Python, NumPy and torch at the start of a fresh run (``None``: leave
            them); on resume the saved RNG states are restored instead.
        desc: label of the progress bar.

    Returns:
        A :class:`TrainResult`.

    Raises:
        ValueError: a bad option (named in the message), a pruner whose ``total_epochs``
            differs from ``epochs``, ``resume`` without ``checkpoint``, or a checkpoint that
            does not match this run.
    """
    if int(epochs) != epochs or epochs < 1:
        raise ValueError(f"train: epochs must be a positive int, got {epochs!r}")
    epochs = int(epochs)
    if lr <= 0 or not math.isfinite(lr):
        raise ValueError(f"train: lr must be a positive number, got {lr!r}")
    if resume and checkpoint is None:
        raise ValueError("train: resume=True needs checkpoint=<path>")
    if pruner is not None:
        total = getattr(pruner, "total_epochs", epochs)
        if total is not None and int(total) != epochs:
            raise ValueError(f"train: the pruner was built with total_epochs={total} but epochs={epochs}; "
                             "they must be equal (the pruning schedule is in epochs of this run)")
    device = torch.device(device)
    ckpt_path = os.fspath(checkpoint) if checkpoint is not None else None
    config = {"epochs": epochs, "lr": float(lr), "momentum": float(momentum),
              "weight_decay": float(weight_decay), "nesterov": bool(nesterov), "schedule": schedule,
              "milestones": [float(m) for m in milestones], "gamma": float(gamma),
              "pruned_run": pruner is not None}

    model.to(device)
    example = _first_input(train_loader).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum,
                                weight_decay=weight_decay, nesterov=nesterov and momentum > 0)
    scheduler = _make_scheduler(optimizer, schedule, epochs, milestones, gamma)

    history: list[EpochRecord] = []
    start_epoch = 0
    wall_before = 0.0  # wall time of earlier segments (resume)
    pruner_before = 0.0  # pruner seconds of earlier segments, if its stats do not persist
    dense_macs = count_macs(model, example)
    dense_params = count_params(model)

    if resume and ckpt_path is not None and os.path.exists(ckpt_path):
        data = _load_checkpoint(ckpt_path)
        saved_cfg = data["config"]
        diff = {k: (saved_cfg.get(k), v) for k, v in config.items() if saved_cfg.get(k) != v}
        if diff:
            raise ValueError(f"train(resume=True): checkpoint {ckpt_path!r} was written by a run with other "
                             f"settings (saved, now): {diff}")
        if data["pruner"] is not None:
            assert pruner is not None  # guaranteed by the config check ("pruned_run")
            pruner.load_state_dict(data["pruner"])  # reshapes the model if it was pruned
        model.load_state_dict(data["model"])
        optimizer.load_state_dict(data["optimizer"])
        scheduler.load_state_dict(data["scheduler"])
        _set_rng_state(data["rng"])
        history = [EpochRecord(**h) for h in data["history"]]
        start_epoch = int(data["epoch"])
        wall_before = float(data["wall_time"])
        dense_macs = int(data["dense_macs"])
        dense_params = int(data["dense_params"])
        pruner_before = float(data["pruner_seconds"]) - _pruner_seconds(pruner)
    elif seed is not None:
        _seed_everything(int(seed))

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=epochs, initial=start_epoch, desc=desc or ("one-cycle" if pruner else "dense"),
                   unit="epoch", dynamic_ncols=True, leave=True)

    macs_now = count_macs(model, example) if start_epoch else dense_macs
    params_now = count_params(model)
    t_start = time.perf_counter()
    try:
        for epoch in range(start_epoch, epochs):
            t_epoch = time.perf_counter()
            model.train()
            _set_sampler_epoch(train_loader, epoch)
            if pruner is not None:
                pruner.epoch_start(epoch)
            cur_lr = float(optimizer.param_groups[0]["lr"])
            loss_sum = torch.zeros((), dtype=torch.float64, device=device)
            pen_sum = torch.zeros((), dtype=torch.float64, device=device)
            correct = torch.zeros((), dtype=torch.int64, device=device)
            seen = 0
            steps = 0
            for x, y in train_loader:
                x = x.to(device, non_blocking=True)
                y = y.to(device, non_blocking=True)
                optimizer.zero_grad(set_to_none=True)
                out = model(x)
                loss = F.cross_entropy(out, y)
                loss.backward()
                if pruner is not None:
                    pen = pruner.before_step()
                    if pen is not None:
                        pen_sum += pen.detach().to(torch.float64)
                optimizer.step()
                if pruner is not None:
                    pruner.after_step(cur_lr)
                n = int(y.numel())
                loss_sum += loss.detach().to(torch.float64) * n
                correct += (out.detach().argmax(1) == y).sum()
                seen += n
                steps += 1
                del out, loss  # keep no autograd graph alive across a prune
            if seen == 0:
                raise ValueError("train: the training loader yielded no samples")
            report = pruner.epoch_end(epoch, optimizer) if pruner is not None else None
            scheduler.step()
            pruned_now = bool(getattr(report, "pruned_now", False))
            if pruned_now or epoch == start_epoch:
                macs_now = count_macs(model, example)
                params_now = count_params(model)
            test_acc = evaluate(model, test_loader, device)
            rec = EpochRecord(
                epoch=epoch,
                lr=cur_lr,
                train_loss=float(loss_sum.item()) / seen,
                train_acc=100.0 * float(correct.item()) / seen,
                test_acc=test_acc,
                penalty=float(pen_sum.item()) / max(steps, 1),
                phase=str(getattr(report, "phase", "dense")),
                indicator=None if report is None or report.indicator is None else float(report.indicator),
                reg=None if report is None or report.reg is None else float(report.reg),
                pruned_now=pruned_now,
                macs=macs_now,
                params=params_now,
                seconds=0.0,
            )
            history.append(rec)
            if ckpt_path is not None:
                rec.seconds = time.perf_counter() - t_epoch
                wall = wall_before + (time.perf_counter() - t_start)
                atomic_save({
                    "format": _CKPT_FORMAT,
                    "config": config,
                    "epoch": epoch + 1,
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "pruner": pruner.state_dict() if pruner is not None else None,
                    "rng": _rng_state(),
                    "history": [dataclasses.asdict(h) for h in history],
                    "wall_time": wall,
                    "pruner_seconds": pruner_before + _pruner_seconds(pruner),
                    "dense_macs": dense_macs,
                    "dense_params": dense_params,
                }, ckpt_path)
            rec.seconds = time.perf_counter() - t_epoch
            if bar is not None:
                post = {"loss": f"{rec.train_loss:.3f}", "acc": f"{test_acc:.1f}%"}
                if pruner is not None:
                    post["phase"] = rec.phase
                    if rec.indicator is not None:
                        post["psi"] = f"{rec.indicator:.3f}"
                    post["MACs"] = f"{100.0 * macs_now / dense_macs:.0f}%"
                bar.set_postfix(post, refresh=False)
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()

    wall_time = wall_before + (time.perf_counter() - t_start)
    pruner_seconds = pruner_before + _pruner_seconds(pruner)
    prune_epoch = next((h.epoch for h in history if h.pruned_now), None)
    if pruner is not None and prune_epoch is None and getattr(pruner, "prune_epoch", None) is not None:
        prune_epoch = int(pruner.prune_epoch)
    final_acc = history[-1].test_acc if history else evaluate(model, test_loader, device)
    return TrainResult(
        history=history,
        final_acc=final_acc,
        dense_macs=dense_macs,
        dense_params=dense_params,
        final_macs=count_macs(model, example),
        final_params=count_params(model),
        prune_epoch=prune_epoch,
        wall_time=wall_time,
        pruner_seconds=pruner_seconds,
        pruner_overhead_pct=100.0 * pruner_seconds / wall_time if wall_time > 0 else 0.0,
        pruner_init_seconds=float(getattr(pruner, "init_seconds", 0.0)) if pruner is not None else 0.0,
    )
