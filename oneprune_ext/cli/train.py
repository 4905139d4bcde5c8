"""``oneprune``: train a network from scratch with one-cycle channel pruning, in one run.

Examples::

    oneprune --data digits --epochs 30 --reduction 0.5 --dense-baseline      # CPU, about a minute
    oneprune --data digits --dense-baseline --out runs/digits   # + report.json, metrics.jsonl, plots
    oneprune --data cifar10 --data-root ~/data --model resnet56 --reduction 0.5
    oneprune --data imagenet --data-root /imagenet --model resnet50 --reduction 0.48
    torchrun --nproc_per_node=8 -m oneprune_ext.cli --data imagenet --data-root /imagenet --reduction 0.48

Under ``torchrun`` each process trains one DistributedDataParallel replica (NCCL on
``cuda:LOCAL_RANK``, gloo on the CPU) on its shard of the data; ``--batch-size`` is the batch
over all processes; every rank prunes the same channels at the same epoch; rank 0 prints and
writes the checkpoint, ``--save``, ``--json`` and ``--out``; ``--resume`` works as in one process.

Every setting defaults to the data set's recipe (:mod:`oneprune_ext.pruning.recipes`, data-set
defaults in :data:`oneprune_ext.training.data.DATASETS`), as the authors' scripts run it:

* **CIFAR-10**: 300 epochs, batch 128; SGD momentum 0.9, Nesterov, weight decay 5e-4; lr 0.1,
  x0.2 at 30/60/80/90 % of the run; monitor from epoch 2, sparsity learning from 30, prune by 110
  at the latest; reg 1e-4 growing by 1e-4 every epoch; layer limit 0.75; regularizer shrink.
* **ImageNet**: 130 epochs, batch 256; SGD momentum 0.9, no Nesterov, weight decay 1e-4; cosine lr
  from 0.1 stepped every iteration; monitor from 2, sparsity learning from ``auto``, prune by 50;
  reg 1e-4 growing by 1e-4 every 2 epochs; the sub-network is chosen once more at the prune.
* **digits** (the bundled demo data): the CIFAR-10 recipe scaled to 30 epochs, batch 32.

With ``--epochs`` other than the recipe's length the epoch-valued settings (``--monitor-start``,
``--sl-start``, ``--sl-end``) are scaled to it and ``--reg`` becomes ``auto`` (the published
shrink curve at any schedule length; see :mod:`oneprune_ext.pruning.sparsity`). ``--print-config``
prints the resolved configuration as JSON and exits, so the recipe can be checked before a run.

With ``--out DIR`` a run leaves ``DIR/report.json`` (config, per-epoch history, prune epoch,
accuracies, dense and pruned MACs / parameters / channels per group, overhead, wall time),
``DIR/metrics.jsonl`` (one line per epoch, written as it goes), ``DIR/model.pt`` (and
``DIR/dense_model.pt`` with ``--dense-baseline``) and PNG plots
(:mod:`oneprune_ext.training.report`, :mod:`oneprune_ext.training.plots`).

Other commands (``oneprune COMMAND --help``):

* ``oneprune profile``: the pruning overhead measured on your model and batch shape
  (:mod:`oneprune_ext.cli.profile`);
* ``oneprune eval DIR_OR_FILE``: accuracy, exact MACs / parameters and latency of a pruned
  model, optionally next to the dense architecture (:mod:`oneprune_ext.cli.eval`);
* ``oneprune plot DIR``: redraw a run's plots from its ``report.json``.

Also runnable as ``python -m oneprune_ext.cli``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
from typing import Any, Sequence

import torch
import torch.nn as nn

from ..pruning import distributed
from ..pruning.config import PrunerConfig
from ..storage import checkpoint
from ..storage.files import FileFormatError, atomic_write, first_line
from ..training.config import SCHEDULE_UNITS, SCHEDULES, TrainConfig
from ..training.data import DATASETS
from ..training.trainer import TrainResult, train

__all__ = ["main", "build_parser", "parse_args", "run", "summary_table"]


class ConfigError(ValueError):
    """A configuration rejected before training (reported as ``oneprune: error: ...``, exit 2)."""


MODELS = tuple(dict.fromkeys(m for d in DATASETS.values() for m in d.models))  # every model some data set fits


def _parse(text: str, cast: type, expected: str, ok, bound: str):
    """``cast(text)`` if ``ok`` holds for it, else an argparse error saying what was expected."""
    try:
        v = cast(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {expected}, got {text!r}") from None
    if not ok(v):
        raise argparse.ArgumentTypeError(f"must be {bound}, got {v}")
    return v


def _positive_int(text: str) -> int:
    return _parse(text, int, "a positive int", lambda v: v >= 1, ">= 1")


def _nonneg_int(text: str) -> int:
    return _parse(text, int, "an int >= 0", lambda v: v >= 0, ">= 0")


def _nonneg_float(text: str) -> float:
    return _parse(text, float, "a number >= 0", lambda v: math.isfinite(v) and v >= 0.0, "a finite number >= 0")


def _positive_float(text: str) -> float:
    return _parse(text, float, "a number > 0", lambda v: math.isfinite(v) and v > 0.0, "a finite number > 0")


def _seed(text: str) -> int:
    return _parse(text, int, "an int in [0, 2**32)", lambda v: 0 <= v < 2**32, "in [0, 2**32) (4294967295 at most)")


def _device(text: str) -> str:
    """A torch device this machine has (checked before anything runs)."""
    try:
        dev = torch.device(text)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a torch device (cpu, cuda, cuda:N, mps)") from None
    if dev.type == "cpu":
        return text
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            why = "this torch is built without CUDA" if torch.version.cuda is None else "no CUDA GPU is visible"
            raise argparse.ArgumentTypeError(f"{text!r}: {why}; use --device cpu")
        n = torch.cuda.device_count()
        if dev.index is not None and dev.index >= n:
            raise argparse.ArgumentTypeError(f"{text!r}: this machine has {n} CUDA device(s), cuda:0..cuda:{n - 1}")
        return text
    if dev.type == "mps" and torch.backends.mps.is_available():
        return text
    raise argparse.ArgumentTypeError(f"{text!r}: this machine cannot train on {dev.type} (use cpu"
                                     f"{' or cuda' if torch.cuda.is_available() else ''})")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``oneprune`` (see ``oneprune --help``)."""
    p = argparse.ArgumentParser(
        prog="oneprune",
        description="Train a CNN from scratch and prune whole channels during the same run "
                    "(one-cycle structured pruning, Ghimire et al., WACV 2026).",
        epilog="Every default is the data set's published recipe (digits: CIFAR-10's, scaled to 30 epochs);\n"
               "--print-config prints it resolved, as JSON. Epoch-valued settings are 0-based epoch indices;\n"
               "unless given they are the published values scaled to --epochs (CIFAR-10: monitor 2, sparsity\n"
               "learning 30, prune by 110 of 300 epochs; ImageNet: 2, auto, 50 of 130), and at another length\n"
               "than the published one --reg is auto (the published shrink curve at any schedule length).\n"
               "Prints a summary table at the end: accuracy, MACs, parameters, the prune epoch with the\n"
               "accuracy right before and after the prune (the prune shock), the pruning overhead.\n"
               "Other commands: 'oneprune profile' (pruning overhead on your model and batch shape),\n"
               "'oneprune eval DIR_OR_FILE' (accuracy, MACs, latency of a pruned model), 'oneprune plot DIR'\n"
               "(redraw a run's plots); see 'oneprune COMMAND --help'.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    g = p.add_argument_group("data and model")
    g.add_argument("--data", choices=sorted(DATASETS), default="digits",
                   help="digits: scikit-learn's bundled 8x8 digits (no download); cifar10 / imagenet: "
                        "read from --data-root, never downloaded (default: %(default)s)")
    g.add_argument("--data-root", default=None,
                   help="cifar10: folder holding cifar-10-batches-py; imagenet: folder holding train/ and val/")
    g.add_argument("--model", choices=MODELS, default=None,
                   help="network (default: digits_cnn for digits, resnet56 for cifar10, resnet50 for imagenet); "
                        "resnet18/resnet50 are torchvision's")
    g.add_argument("--width", type=_positive_int, default=16,
                   help="digits_cnn only: channels of its first layers (the last conv has 2x) (default: %(default)s)")
    g.add_argument("--workers", type=_nonneg_int, default=None,
                   help="DataLoader worker processes for cifar10/imagenet (default 4 / 8)")

    g = p.add_argument_group("training")
    g.add_argument("--epochs", type=_positive_int, default=None,
                   help="length of the whole run, in epochs (default: 30 digits, 300 cifar10, 130 imagenet)")
    g.add_argument("--batch-size", type=_positive_int, default=None,
                   help="training batch size, in samples; under torchrun the batch over all processes, split "
                        "evenly (default: 32 digits, 128 cifar10, 256 imagenet)")
    g.add_argument("--lr", type=_positive_float, default=None, help="initial learning rate of SGD (default 0.1)")
    g.add_argument("--momentum", type=_nonneg_float, default=None, help="SGD momentum (default 0.9)")
    g.add_argument("--nesterov", action=argparse.BooleanOptionalAction, default=None,
                   help="Nesterov momentum (default: on for digits and cifar10, off for imagenet, as published)")
    g.add_argument("--weight-decay", type=_nonneg_float, default=None,
                   help="SGD weight decay (default: 5e-4 digits and cifar10, 1e-4 imagenet, as published)")
    g.add_argument("--schedule", choices=SCHEDULES, default=None,
                   help="learning-rate schedule: step = x0.2 at 30/60/80/90%% of the epochs; cosine = cosine "
                        "annealing to 0 (default: step, cosine for imagenet)")
    g.add_argument("--schedule-unit", choices=SCHEDULE_UNITS, default=None,
                   help="the schedule steps once per epoch or after every iteration (default: epoch, iteration "
                        "for imagenet as published)")
    g.add_argument("--seed", type=_seed, default=0, help="seed of the model init, data split and shuffling (default: %(default)s)")
    g.add_argument("--device", type=_device, default=None,
                   help="torch device (default: cuda if available, else cpu)")
    g.add_argument("--threads", type=_positive_int, default=None,
                   help="CPU threads for torch (torch.set_num_threads; default: torch's choice)")
    g.add_argument("--dense-baseline", action="store_true",
                   help="also train a dense model of the same length and seed, for the comparison table")
    g.add_argument("--no-progress", action="store_true", help="no tqdm progress bars")
    g.add_argument("--print-config", action="store_true",
                   help="print the resolved configuration (the recipe with every default filled in) as JSON "
                        "and exit without training")

    g = p.add_argument_group("one-cycle pruning")
    PrunerConfig.add_arguments(g, defaults={
        "monitor_start": "published 2 scaled to --epochs, at least 1",
        "sl_start": "published value scaled to --epochs",
        "sl_end": "published value scaled to --epochs",
        "reg": "1e-4 at the recipe's length, auto when --epochs differs",
        "reg_interval": "1, 2 for imagenet",
        "reselect_at_prune": "off, on for imagenet",
    }, flags=_FLAGS)

    g = p.add_argument_group("files")
    g.add_argument("--checkpoint", default=None,
                   help="per-epoch checkpoint file, written atomically (the dense baseline uses "
                        "<name>.dense<ext> next to it)")
    g.add_argument("--resume", action="store_true",
                   help="continue from --checkpoint if it exists; every option that changes the run must be "
                        "the same (the differing ones are named)")
    g.add_argument("--save", default=None, help="write the pruned model here with save_pruned()")
    g.add_argument("--json", default=None, help="write the results (both runs, per-epoch history) as JSON here")
    g.add_argument("--out", default=None, metavar="DIR",
                   help="run directory (created if missing): report.json at the end, metrics.jsonl one line per "
                        "epoch as it goes, model.pt (and dense_model.pt with --dense-baseline), PNG plots")
    g.add_argument("--plots", action=argparse.BooleanOptionalAction, default=True,
                   help="with --out: draw the PNG plots (needs matplotlib) (default: on)")
    return p


_FLAGS = {"total_epochs": "--epochs"}  # pruner options this command sets from other flags


def _flags(message: str) -> str:
    """A config error message with option names written as this command's flags."""
    return PrunerConfig.as_flags(message, _FLAGS)


def _resolve(args: argparse.Namespace, parser: argparse.ArgumentParser) -> argparse.Namespace:
    """Fill the data set's presets in, check the combination and build ``args.pruner_config``."""
    ds = DATASETS[args.data]
    rec = ds.recipe
    args.model = args.model or ds.model
    fits = [d for d in DATASETS if args.model in DATASETS[d].models]
    if args.data not in fits:
        parser.error(f"--model {args.model} does not fit --data {args.data} (it is for --data {' or '.join(fits)})")
    if args.data != "digits" and not args.data_root and not args.print_config:
        parser.error(f"--data {args.data} needs --data-root (nothing is downloaded)")
    if args.resume and not args.checkpoint:
        parser.error("--resume needs --checkpoint PATH")
    args.epochs = args.epochs or ds.epochs
    args.batch_size = args.batch_size or ds.batch_size
    args.lr = rec.lr if args.lr is None else args.lr
    if not args.lr > 0:
        parser.error(f"--lr must be > 0, got {args.lr}")
    args.schedule = args.schedule or rec.schedule
    args.schedule_unit = args.schedule_unit or rec.schedule_unit
    args.momentum = rec.momentum if args.momentum is None else args.momentum
    args.nesterov = rec.nesterov if args.nesterov is None else args.nesterov
    args.weight_decay = rec.weight_decay if args.weight_decay is None else args.weight_decay
    args.workers = ds.workers if args.workers is None else args.workers
    presets = rec.pruner_options(args.epochs)  # epoch settings scaled to --epochs, reg auto at another length
    try:
        args.pruner_config = PrunerConfig.from_args(args, **presets)
    except ValueError as err:
        parser.error(_flags(str(err)))
    for f in dataclasses.fields(PrunerConfig):  # what the run uses, for the summary and --json
        setattr(args, f.name, getattr(args.pruner_config, f.name))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if args.batch_size % world:
        parser.error(f"--batch-size ({args.batch_size}) is the batch over all {world} torchrun processes and "
                     "must be divisible by their number")
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    return args


def _start_distributed(args: argparse.Namespace) -> bool:
    """Under ``torchrun`` (WORLD_SIZE > 1): one device per process, and join the process group.

    NCCL on CUDA devices (``cuda:LOCAL_RANK``), gloo on the CPU. Returns whether it created
    the process group (then :func:`main` destroys it at the end); a group initialised by the
    caller is used as it is.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    import torch.distributed as dist

    device = torch.device(args.device)
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
        args.device = str(device)
    if dist.is_initialized():
        return False
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return True


def _build_model(args: argparse.Namespace, num_classes: int) -> nn.Module:
    from ..training import models

    torch.manual_seed(args.seed)
    return models.build(args.model, num_classes, width=args.width)


def _fmt_count(n: int) -> str:
    for div, unit in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if n >= div:
            return f"{n / div:.2f} {unit}"
    return str(n)


def summary_table(pruned: TrainResult, dense: TrainResult | None = None, epochs: int | None = None) -> str:
    """The end-of-run table: dense vs one-cycle accuracy, MACs, params, prune epoch, overhead.

    MACs are per image (one forward pass), parameters are entries; percentages in
    brackets are the reduction from the dense model.  The prune epoch is 0-based; under it,
    the test accuracy right before and right after the physical prune (no training between),
    their difference (the prune shock, points lost) and the share of the squared weight norm
    the removed channels still held (near 0 when sparsity learning did its job).  The
    pruning overhead is the time spent in the pruner's hooks (``pruner.stats["total"]``)
    as a share of the run's wall time; the one-off setup (tracing, cost model) is listed
    apart.  Wall times include per-epoch evaluation and checkpointing.
    """
    rows: list[tuple[str, str, str]] = []
    d_acc = f"{dense.final_acc:.2f}" if dense else "-"
    rows.append(("test accuracy (%)", d_acc, f"{pruned.final_acc:.2f}"))
    if dense:
        rows.append(("  difference (points)", "", f"{pruned.final_acc - dense.final_acc:+.2f}"))
    rows.append(("MACs per image", _fmt_count(pruned.dense_macs),
                 f"{_fmt_count(pruned.final_macs)} (-{100 * pruned.macs_reduction:.1f} %)"))
    rows.append(("parameters", _fmt_count(pruned.dense_params),
                 f"{_fmt_count(pruned.final_params)} (-{100 * pruned.params_reduction:.1f} %)"))
    n = epochs or len(pruned.history)
    pe = "not pruned" if pruned.prune_epoch is None else f"{pruned.prune_epoch} (0-based, of {n})"
    if pruned.prune_epoch is not None:
        rec = next((h for h in pruned.history if h.epoch == pruned.prune_epoch), None)
        if rec is not None and rec.indicator is not None:
            pe += f", indicator {rec.indicator:.4f}"
    rows.append(("prune epoch", "-", pe))
    if pruned.prune_shock is not None:
        rows.append(("  accuracy before / after (%)", "-",
                     f"{pruned.acc_before_prune:.2f} / {pruned.acc_after_prune:.2f}"))
        rows.append(("  prune shock (points lost)", "-", f"{pruned.prune_shock:.2f}"))
    if pruned.removed_norm_share is not None:
        rows.append(("  norm share removed", "-", f"{100 * pruned.removed_norm_share:.3g} %"))
    rows.append(("pruning overhead", "-",
                 f"{pruned.pruner_overhead_pct:.2f} % ({pruned.pruner_seconds:.2f} s in hooks)"))
    rows.append(("pruner setup (s)", "-", f"{pruned.pruner_init_seconds:.2f}"))
    rows.append(("wall time (s)", f"{dense.wall_time:.1f}" if dense else "-", f"{pruned.wall_time:.1f}"))
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len("dense"), *(len(r[1]) for r in rows))
    w2 = max(len("one-cycle pruned"), *(len(r[2]) for r in rows))
    sep = f"+-{'-' * w0}-+-{'-' * w1}-+-{'-' * w2}-+"
    lines = [sep, f"| {'':<{w0}} | {'dense':>{w1}} | {'one-cycle pruned':>{w2}} |", sep]
    lines += [f"| {a:<{w0}} | {b:>{w1}} | {c:>{w2}} |" for a, b, c in rows]
    lines.append(sep)
    return "\n".join(lines)


def run(args: argparse.Namespace) -> tuple[TrainResult, TrainResult | None, nn.Module]:
    """Run the configured one-cycle training (and dense baseline); returns (pruned, dense, model).

    Under ``torchrun`` every process runs this (after :func:`_start_distributed`): each trains
    a DDP replica on its shard; rank 0 writes the checkpoints, ``--save`` and ``--out``.
    """
    from ..pruning.pruner import OneCyclePruner

    from ..training import data

    train_loader, test_loader = data.loaders(args.data, args.data_root, batch_size=args.batch_size,
                                             workers=args.workers, seed=args.seed,
                                             num_replicas=distributed.world_size(), rank=distributed.rank())
    num_classes = data.num_classes(args.data, train_loader)
    device = torch.device(args.device)
    group = torch.distributed.group.WORLD if distributed.world_size() > 1 else None
    main_rank = distributed.is_main_process()
    config = TrainConfig(epochs=args.epochs, lr=args.lr, momentum=args.momentum, nesterov=args.nesterov,
                         weight_decay=args.weight_decay, schedule=args.schedule, schedule_unit=args.schedule_unit,
                         device=device, progress=not args.no_progress and main_rank, seed=args.seed,
                         checkpoint=args.checkpoint, resume=args.resume)
    model = _build_model(args, num_classes).to(device)
    example = torch.zeros((1, *DATASETS[args.data].input_shape), device=device)
    try:
        pruner = OneCyclePruner(model, example, args.pruner_config, process_group=group)
    except ValueError as e:  # a configuration the pruner rejects (e.g. target unreachable)
        raise ConfigError(_flags(str(e))) from e
    out = _run_directory(args) if main_rank else None
    pruned = train(model, train_loader, test_loader, config, pruner=pruner, desc="one-cycle", run_options=_run_options(args),
                   callbacks=[out.metrics("pruned")] if out is not None else [])
    if args.save and main_rank:
        from ..storage.saving import save_pruned

        save_pruned(model, args.save)
    dense = dense_model = None
    if args.dense_baseline:
        dense_model = _build_model(args, num_classes).to(device)
        dense = train(dense_model, train_loader, test_loader, config, pruner=None,
                      checkpoint=_dense_checkpoint(args.checkpoint), desc="dense",
                      run_options=_run_options(args, pruned=False),
                      callbacks=[out.metrics("dense")] if out is not None else [])
    if out is not None:
        args.outputs = _finish_run_directory(out, args, pruner, pruned, model, dense, dense_model, num_classes,
                                             len(train_loader))
    return pruned, dense, model


def _run_directory(args: argparse.Namespace) -> Any:
    """The ``--out`` directory writer, or None without ``--out``."""
    if not getattr(args, "out", None):
        return None
    from ..training.report import RunDirectory

    try:
        return RunDirectory(args.out)
    except (OSError, ValueError) as e:
        raise ConfigError(f"--out {args.out!r}: {e}") from e


def _finish_run_directory(out: Any, args: argparse.Namespace, pruner: Any, pruned: TrainResult, model: nn.Module,
                          dense: TrainResult | None, dense_model: nn.Module | None, num_classes: int,
                          steps_per_epoch: int) -> dict[str, Any]:
    """Models, report.json and plots into the ``--out`` directory; returns what was written."""
    training = {k: v for k, v in resolved_config(args).items() if k != "pruner"}  # as --print-config shows it
    training.update({k: getattr(args, k, None) for k in ("width", "workers", "threads", "dense_baseline", "checkpoint",
                                                          "resume", "save", "out")})
    model_info = {"name": args.model, "data": args.data, "input_shape": list(DATASETS[args.data].input_shape),
                  "num_classes": num_classes, "width": args.width}
    return out.finish(pruned=pruned, pruner=pruner, model=model, dense=dense, dense_model=dense_model,
                      training=training, model_info=model_info, steps_per_epoch=steps_per_epoch, plots=args.plots)


def _preset_name(data: str, epochs: int) -> str:
    ref = DATASETS[data].recipe.epochs
    if data == "digits":
        return f"digits: the published CIFAR-10 recipe scaled from {ref} to {epochs} epochs"
    if epochs == ref:
        return f"{data}: published"
    return f"{data}: published, scaled from {ref} to {epochs} epochs (reg auto)"


def resolved_config(args: argparse.Namespace) -> dict[str, Any]:
    """Everything a run of ``args`` would use, as plain JSON values (what ``--print-config`` prints)."""
    schedule: dict[str, Any] = {"kind": args.schedule, "unit": args.schedule_unit}
    if args.schedule == "step":
        defaults = TrainConfig(epochs=args.epochs)  # the milestones and gamma train() uses
        schedule.update(milestones=list(defaults.milestones), gamma=defaults.gamma)
    return {
        "data": args.data, "data_root": args.data_root, "model": args.model,
        "preset": _preset_name(args.data, args.epochs),
        "epochs": args.epochs, "batch_size": args.batch_size, "seed": args.seed, "device": args.device,
        "optimizer": {"name": "SGD", "lr": args.lr, "momentum": args.momentum, "nesterov": args.nesterov,
                      "weight_decay": args.weight_decay},
        "lr_schedule": schedule,
        "pruner": args.pruner_config.to_dict(),
    }


# ------------------------------------------------------------------------------ checks before the run


def _run_options(args: argparse.Namespace, pruned: bool = True) -> dict[str, Any]:
    """The options that define a run, as recorded in its checkpoint (a resume must match them).

    Left out, because they cannot change the result: --threads, --no-progress, --data-root
    (the same data may move), the output paths, --dense-baseline, the device index.
    """
    opts: dict[str, Any] = {"data": args.data, "model": args.model, "epochs": args.epochs,
                            "batch_size": args.batch_size, "lr": args.lr, "momentum": args.momentum,
                            "nesterov": args.nesterov, "weight_decay": args.weight_decay, "schedule": args.schedule,
                            "schedule_unit": args.schedule_unit, "seed": args.seed,
                            "device": torch.device(args.device).type, "processes": int(os.environ.get("WORLD_SIZE", "1"))}
    if args.model == "digits_cnn":
        opts["width"] = args.width
    if args.data != "digits":
        opts["workers"] = args.workers  # worker count changes which worker draws each augmentation
    if pruned:
        opts.update({k: v for k, v in args.pruner_config.to_dict().items() if k != "total_epochs"})
    return opts


def _flag_of(option: str) -> str:
    if option == "processes":
        return "the number of torchrun processes"
    if option == "device":
        return "--device (type)"
    return _flags(option) if option in {f.name for f in dataclasses.fields(PrunerConfig)} \
        else "--" + option.replace("_", "-")


def _dense_checkpoint(path: str | None) -> str | None:
    """The dense baseline's checkpoint, next to ``--checkpoint``: ``run.pt`` -> ``run.dense.pt``."""
    return checkpoint.companion_path(path, "dense")


def _check_resume(path: str | None, options: dict[str, Any], use: str) -> None:
    """``--resume``: the checkpoint is intact and was written by a run with the same options."""
    try:
        checkpoint.check_resume(path, options, use, flag_of=_flag_of)
    except ValueError as e:
        raise ConfigError(first_line(e)) from None


def _rank() -> int:
    """This process's rank, before the process group is joined (torchrun sets RANK)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return distributed.rank()
    return int(os.environ.get("RANK", "0"))


def _check_outputs(args: argparse.Namespace) -> None:
    """Every file the run will write can be written, and no two are the same (checked before training)."""
    from ..storage import files

    outputs = [("--checkpoint", args.checkpoint), ("--save", args.save), ("--json", args.json)]
    if args.dense_baseline and args.checkpoint:
        outputs.append(("--checkpoint (its dense baseline)", _dense_checkpoint(args.checkpoint)))
    seen: dict[str, str] = {}
    for flag, path in outputs:
        if path is None:
            continue
        try:
            files.check_writable(path, flag)
        except ValueError as e:
            raise ConfigError(first_line(e)) from None
        real = os.path.realpath(path)
        if real in seen:
            raise ConfigError(f"{flag} and {seen[real]} name the same file {path!r}; give each its own path")
        seen[real] = flag


def preflight(args: argparse.Namespace) -> None:
    """Everything about the files checked before any training: output paths writable and
    distinct, temporary files of an interrupted save removed, and with ``--resume`` the
    checkpoints intact and written with the same options.

    Raises:
        ConfigError: one line (``oneprune: error: ...``, exit 2).
    """
    from ..storage import files

    if _rank() == 0:  # rank 0 writes the files
        _check_outputs(args)
        for path in (args.checkpoint, args.save, args.json):
            if path:
                files.remove_orphans(path)
    if args.resume:
        _check_resume(args.checkpoint, _run_options(args), "--resume")
        if args.dense_baseline:
            _check_resume(_dense_checkpoint(args.checkpoint), _run_options(args, pruned=False),
                          "--resume (the dense baseline's checkpoint)")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The resolved options of ``oneprune`` (presets filled in, ``args.pruner_config`` built)."""
    parser = build_parser()
    return _resolve(parser.parse_args(argv), parser)


def main(argv: Sequence[str] | None = None) -> int:
    """``oneprune [OPTIONS]``: train with one-cycle pruning; returns the exit status.

    Under ``torchrun --nproc_per_node=N`` each process trains one DDP replica; rank 0 prints,
    writes the checkpoint, ``--save``, ``--json`` and ``--out``.
    """
    args = parse_args(sys.argv[1:] if argv is None else list(argv))
    if args.print_config:
        print(json.dumps(resolved_config(args), indent=1))
        return 0
    try:
        preflight(args)
    except ConfigError as e:
        print(f"oneprune: error: {first_line(e)}", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    started = _start_distributed(args)
    t0 = time.perf_counter()
    try:
        pruned, dense, _ = run(args)
        main_rank, world = distributed.is_main_process(), distributed.world_size()
    except (FileNotFoundError, ImportError, ConfigError, FileFormatError) as e:
        print(f"oneprune: error: {first_line(e)}", file=sys.stderr)
        return 2
    finally:
        if started:
            torch.distributed.destroy_process_group()
    total = time.perf_counter() - t0
    if not main_rank:
        return 0
    schedule = f"monitor from epoch {args.monitor_start}, sparsity learning from {args.sl_start}, " \
               f"prune by {args.sl_end} at the latest"
    procs = f", {world} processes" if world > 1 else ""
    print(f"\noneprune: {args.model} on {args.data}, {args.epochs} epochs{procs}, target -{100 * args.reduction:.0f} % "
          f"{'MACs' if args.target == 'macs' else 'parameters'} ({schedule}); total {total:.1f} s")
    print(summary_table(pruned, dense, args.epochs))
    outputs = getattr(args, "outputs", None)
    if outputs:
        print(f"report: {outputs['report']} (per epoch: {os.path.join(args.out, 'metrics.jsonl')})")
        if outputs["plots"]:
            print("plots: " + ", ".join(outputs["plots"]))
        elif outputs["plots_skipped"]:
            print(f"plots skipped: {outputs['plots_skipped']}")
    if args.json:
        out = {"args": {k: v for k, v in vars(args).items() if k not in ("pruner_config", "outputs")},
               "pruner_config": args.pruner_config.to_dict(), "pruned": pruned.to_dict(),
               "dense": dense.to_dict() if dense else None, "total_seconds": total}
        atomic_write(args.json, lambda f: json.dump(out, f, indent=1), binary=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
