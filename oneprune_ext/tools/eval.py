"""``oneprune eval DIR_OR_FILE``: accuracy, exact cost and latency of a pruned model.

Examples::

    oneprune eval runs/demo                       # the run directory of `oneprune --out runs/demo`
    oneprune eval runs/demo --dense --device cpu  # next to the dense architecture
    oneprune eval pruned.pt --model resnet56 --data cifar10 --data-root ~/data --batch 256

It loads the pruned model (a :func:`~oneprune_ext.save_pruned` file, or ``model.pt`` of a run
directory) into a freshly built dense network of the same architecture, then reports:

* test accuracy (percent) on the data set's test split (for digits, the split of the run's seed);
* exact MACs per sample (:class:`torch.utils.flop_counter.FlopCounterMode`, FLOPs / 2) and the
  parameter count;
* latency of one forward pass over a batch (eval mode, ``torch.no_grad``) on ``--device``:
  ``--warmup`` untimed passes, then the median (and the 10th / 90th percentiles) of
  ``--repeat`` timed passes, each ended by a device synchronisation on CUDA; and the
  throughput it implies (samples / s).

With ``--dense`` the same is measured for the dense architecture: the trained dense baseline
of the run directory (``dense_model.pt``, written with ``--dense-baseline``) when there is
one, else a freshly initialised dense network (cost and latency only; its accuracy is
meaningless and not shown). Model, data set, input shape and batch default to what the run's
``report.json`` records, so a run directory needs no other flag.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any, Optional, Sequence

import torch
import torch.nn as nn

__all__ = ["ModelEval", "evaluate_model", "measure_latency", "main"]


@dataclass
class ModelEval:
    """What ``oneprune eval`` measured for one model.

    Attributes:
        label: ``"pruned"``, ``"dense (trained baseline)"`` or ``"dense (fresh init)"``.
        accuracy: test accuracy in percent, or None (no data set, or an untrained model).
        macs: MACs per sample (one forward of a batch of one).
        params: parameter entries.
        latency_ms: median milliseconds of one forward pass over ``batch`` samples.
        latency_p10_ms / latency_p90_ms: 10th / 90th percentile of the timed passes.
        throughput: samples per second at the median latency.
    """

    label: str
    accuracy: Optional[float]
    macs: int
    params: int
    latency_ms: float
    latency_p10_ms: float
    latency_p90_ms: float
    throughput: float


def _quantile(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, int(round(q * (len(s) - 1)))))]


@torch.no_grad()
def measure_latency(model: nn.Module, x: torch.Tensor, warmup: int = 3, repeat: int = 20) -> list[float]:
    """Milliseconds of ``repeat`` forward passes of ``model`` over ``x`` (eval mode, no grad),
    after ``warmup`` untimed ones; each pass ends with a synchronisation on CUDA."""
    was = model.training
    model.eval()
    cuda = x.device.type == "cuda"
    out = []
    try:
        for _ in range(warmup):
            model(x)
        for _ in range(repeat):
            if cuda:
                torch.cuda.synchronize(x.device)
            t0 = time.perf_counter()
            model(x)
            if cuda:
                torch.cuda.synchronize(x.device)
            out.append((time.perf_counter() - t0) * 1e3)
    finally:
        model.train(was)
    return out


def evaluate_model(model: nn.Module, label: str, x: torch.Tensor, test_loader: Any = None, *, warmup: int = 3,
                   repeat: int = 20) -> ModelEval:
    """Accuracy on ``test_loader`` (when given), exact MACs / params and the latency over batch ``x``."""
    from ..training.trainer import count_macs, count_params, evaluate

    acc = evaluate(model, test_loader, x.device) if test_loader is not None else None
    times = measure_latency(model, x, warmup, repeat)
    med = float(statistics.median(times))
    return ModelEval(label=label, accuracy=acc, macs=count_macs(model, x[:1]), params=count_params(model),
                     latency_ms=med, latency_p10_ms=_quantile(times, 0.1), latency_p90_ms=_quantile(times, 0.9),
                     throughput=x.shape[0] / (med / 1e3) if med > 0 else float("inf"))


# ----------------------------------------------------------------------------------- what to load


@dataclass
class _Target:
    model_file: str
    dense_file: Optional[str]
    report: Optional[dict[str, Any]]


def _locate(path: str) -> _Target:
    from ..training.report import DENSE_MODEL_FILE, MODEL_FILE, REPORT_FILE, load_report

    if os.path.isdir(path):
        model_file = os.path.join(path, MODEL_FILE)
        if not os.path.exists(model_file):
            raise ValueError(f"{path!r} has no {MODEL_FILE}: give a run directory written by oneprune --out, "
                             "or a file written by save_pruned")
        directory = path
    elif os.path.exists(path):
        model_file, directory = path, os.path.dirname(os.path.abspath(path))
    else:
        raise ValueError(f"{path!r} does not exist")
    report = None  # the run's report, when the file is the model that report describes
    if os.path.exists(os.path.join(directory, REPORT_FILE)):
        rep = load_report(directory)
        named = os.path.join(directory, rep["files"].get("model") or MODEL_FILE)
        if os.path.exists(named) and os.path.samefile(named, model_file):
            report = rep
    dense_file = os.path.join(directory, DENSE_MODEL_FILE) if report is not None else None
    if dense_file is not None and not os.path.exists(dense_file):
        dense_file = None
    return _Target(model_file, dense_file, report)


def _settings(args: argparse.Namespace, report: Optional[dict[str, Any]]) -> dict[str, Any]:
    """Model, data and shapes: the flags, else what the run's report recorded, else defaults."""
    from ..training import models

    rec = (report or {}).get("model") or {}
    training = ((report or {}).get("config") or {}).get("training") or {}
    name = args.model or rec.get("name")
    if not name:
        raise ValueError("which architecture is this? give --model (e.g. --model resnet56); a run directory "
                         "records it in its report.json")
    data = args.data or rec.get("data")
    classes = args.num_classes or rec.get("num_classes") or (10 if data in ("digits", "cifar10") or
                                                             name in models.BUNDLED else 1000)
    from .profile import parse_shape

    shape = parse_shape(args.input) if args.input else tuple(rec.get("input_shape") or models.default_input_shape(name))
    return {
        "model": name, "data": data, "num_classes": int(classes), "input_shape": tuple(int(s) for s in shape),
        "width": args.width or rec.get("width") or 16,
        "data_root": args.data_root or training.get("data_root"),
        "seed": training.get("seed", 0) if args.seed is None else args.seed,
        "batch": args.batch or training.get("batch_size") or 32,
        "workers": training.get("workers", 2) if args.workers is None else args.workers,
    }


def _test_loader(s: dict[str, Any]) -> Any:
    from ..training import data

    if s["data"] is None:
        return None
    if s["data"] == "digits":
        return data.digits_loaders(batch_size=s["batch"], seed=s["seed"])[1]
    if not s["data_root"]:
        raise ValueError(f"--data {s['data']} needs --data-root (nothing is downloaded)")
    if s["data"] == "cifar10":
        return data.cifar10_loaders(s["data_root"], batch_size=s["batch"], workers=s["workers"], seed=s["seed"])[1]
    if s["data"] == "imagenet":
        return data.imagenet_loaders(s["data_root"], batch_size=s["batch"], workers=s["workers"], seed=s["seed"])[1]
    raise ValueError(f"--data must be digits, cifar10 or imagenet, got {s['data']!r}")


def _load(s: dict[str, Any], path: str, device: torch.device) -> nn.Module:
    from ..training import models
    from ..storage.saving import load_pruned

    torch.manual_seed(0)
    model = models.build(s["model"], s["num_classes"], width=int(s["width"]))
    try:
        load_pruned(model, path)
    except (ValueError, KeyError, RuntimeError) as e:
        raise ValueError(f"cannot load {path!r} into a {s['model']} (num_classes {s['num_classes']}): {e}") from e
    return model.to(device)


# ----------------------------------------------------------------------------------- command line


def _fmt_count(n: float) -> str:
    for div, unit in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if n >= div:
            return f"{n / div:.2f} {unit}"
    return f"{n:.0f}"


def table(evals: list[ModelEval], header: str) -> str:
    """A Markdown table of the evaluations, with pruned / dense ratios when there are two."""
    cols = ["", *(e.label for e in evals)] + (["pruned vs dense"] if len(evals) == 2 else [])
    rows = ["| " + " | ".join(cols) + " |", "|---" + "|---:" * (len(cols) - 1) + "|"]
    p, d = evals[0], evals[1] if len(evals) == 2 else None

    def row(name: str, vals: list[str], cmp: str = "") -> None:
        rows.append("| " + " | ".join([name, *vals] + ([cmp] if d is not None else [])) + " |")
    accs = ["-" if e.accuracy is None else f"{e.accuracy:.2f}" for e in evals]
    row("test accuracy (%)", accs, f"{p.accuracy - d.accuracy:+.2f} points"
        if d is not None and p.accuracy is not None and d.accuracy is not None else "-")
    row("MACs per sample", [_fmt_count(e.macs) for e in evals],
        f"{p.macs / d.macs:.3f}x (-{100 * (1 - p.macs / d.macs):.1f} %)" if d is not None and d.macs else "-")
    row("parameters", [_fmt_count(e.params) for e in evals],
        f"{p.params / d.params:.3f}x (-{100 * (1 - p.params / d.params):.1f} %)" if d is not None and d.params else "-")
    row("latency per batch (ms, median)", [f"{e.latency_ms:.3f}" for e in evals],
        f"{d.latency_ms / p.latency_ms:.2f}x speed-up" if d is not None and p.latency_ms > 0 else "-")
    row("latency p10 / p90 (ms)", [f"{e.latency_p10_ms:.3f} / {e.latency_p90_ms:.3f}" for e in evals], "")
    row("throughput (samples/s)", [f"{e.throughput:,.0f}" for e in evals], "")
    return header + "\n\n" + "\n".join(rows)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``oneprune eval``."""
    p = argparse.ArgumentParser(
        prog="oneprune eval",
        description="Accuracy, exact MACs and parameters, and latency per batch of a pruned model (a run directory "
                    "of 'oneprune --out DIR' or a save_pruned file), optionally next to the dense architecture.",
        epilog="Defaults come from the run's report.json when there is one. Latency: forward passes in eval mode "
               "without autograd, --warmup untimed, then the median of --repeat (synchronised on CUDA).")
    p.add_argument("path", metavar="DIR_OR_FILE", help="run directory (holds model.pt and report.json) or a save_pruned file")
    p.add_argument("--model", default=None, help="architecture (bundled name or torchvision name); default: from the report")
    p.add_argument("--width", type=int, default=None, help="digits_cnn only: its width (default: from the report, else 16)")
    p.add_argument("--num-classes", type=int, default=None, help="classifier outputs (default: from the report)")
    p.add_argument("--data", choices=("digits", "cifar10", "imagenet"), default=None,
                   help="data set whose test split gives the accuracy (default: from the report; none: no accuracy)")
    p.add_argument("--data-root", default=None, help="cifar10 / imagenet folder (nothing is downloaded)")
    p.add_argument("--workers", type=int, default=None, help="DataLoader workers for cifar10 / imagenet")
    p.add_argument("--seed", type=int, default=None, help="digits: seed of the train/test split (default: the run's)")
    p.add_argument("--no-accuracy", action="store_true", help="skip the accuracy (cost and latency only)")
    p.add_argument("--input", default=None, metavar="CxHxW", help="input shape of one sample (default: from the report)")
    p.add_argument("--batch", type=int, default=None, help="batch size of the latency (and evaluation) passes "
                                                           "(default: the run's training batch, else 32)")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")
    p.add_argument("--warmup", type=int, default=3, help="untimed forward passes first (default: %(default)s)")
    p.add_argument("--repeat", type=int, default=20, help="timed forward passes; the median is reported (default: %(default)s)")
    p.add_argument("--dense", action="store_true",
                   help="also measure the dense architecture (the run's trained dense baseline if it has one)")
    p.add_argument("--json", default=None, metavar="OUT.json", help="write the measurements as JSON here")
    return p


def _run(args: argparse.Namespace) -> tuple[list[ModelEval], str]:
    for flag, v, lo in (("--warmup", args.warmup, 0), ("--repeat", args.repeat, 1), ("--batch", args.batch, 1),
                        ("--threads", args.threads, 1), ("--width", args.width, 1), ("--num-classes", args.num_classes, 1)):
        if v is not None and v < lo:
            raise ValueError(f"{flag} must be >= {lo}, got {v}")
    from .profile import _check_out_path

    _check_out_path("--json", args.json)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {args.device}: no CUDA device is available")
    target = _locate(args.path)
    s = _settings(args, target.report)
    loader = None if args.no_accuracy else _test_loader(s)
    model = _load(s, target.model_file, device)
    x = torch.randn((s["batch"], *s["input_shape"]), generator=torch.Generator().manual_seed(0)).to(device)
    evals = [evaluate_model(model, "pruned", x, loader, warmup=args.warmup, repeat=args.repeat)]
    if args.dense:
        from ..training import models

        if target.dense_file is not None:
            dense = _load(s, target.dense_file, device)
            evals.append(evaluate_model(dense, "dense (trained baseline)", x, loader, warmup=args.warmup,
                                        repeat=args.repeat))
        else:
            torch.manual_seed(0)
            dense = models.build(s["model"], s["num_classes"], width=int(s["width"])).to(device)
            evals.append(evaluate_model(dense, "dense (fresh init)", x, None, warmup=args.warmup, repeat=args.repeat))
    threads = "" if device.type == "cuda" else f" ({torch.get_num_threads()} thread{'s' if torch.get_num_threads() > 1 else ''})"
    data = f" on {s['data']}" if s["data"] and loader is not None else ""
    header = (f"oneprune eval: {target.model_file} ({s['model']}{data}), {device}{threads}, batch {s['batch']} of "
              f"{'x'.join(map(str, s['input_shape']))}, median of {args.repeat} passes after {args.warmup} warm-up")
    return evals, header


def main(argv: Sequence[str] | None = None) -> int:
    """``oneprune eval ...``: prints the table (and writes --json); returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        evals, header = _run(args)
    except (ValueError, FileNotFoundError, ImportError) as e:
        print(f"oneprune eval: error: {e}", file=sys.stderr)
        return 2
    print(table(evals, header))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"header": header, "models": [asdict(e) for e in evals]}, f, indent=1)
    return 0
