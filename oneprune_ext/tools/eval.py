"""Accuracy, exact cost and latency of a pruned model, measured (``oneprune eval DIR_OR_FILE``).

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

import os
import statistics
import time
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn as nn

__all__ = ["ModelEval", "evaluate_model", "measure_latency", "locate", "Target", "test_loader", "load_model", "table"]


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
    from ..graph.flops import count_macs, count_params
    from ..training.trainer import evaluate

    acc = evaluate(model, test_loader, x.device) if test_loader is not None else None
    times = measure_latency(model, x, warmup, repeat)
    med = float(statistics.median(times))
    return ModelEval(label=label, accuracy=acc, macs=count_macs(model, x[:1]), params=count_params(model),
                     latency_ms=med, latency_p10_ms=_quantile(times, 0.1), latency_p90_ms=_quantile(times, 0.9),
                     throughput=x.shape[0] / (med / 1e3) if med > 0 else float("inf"))


# ----------------------------------------------------------------------------------- what to load


@dataclass
class Target:
    """What ``oneprune eval`` loads: the model file, the dense baseline's (or None), the run's report."""

    model_file: str
    dense_file: Optional[str]
    report: Optional[dict[str, Any]]


def locate(path: str) -> Target:
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
    return Target(model_file, dense_file, report)


def test_loader(s: dict[str, Any]) -> Any:
    """The test loader of ``s["data"]`` (None without a data set)."""
    from ..training import data

    if s["data"] is None:
        return None
    return data.loaders(s["data"], s["data_root"], batch_size=s["batch"], workers=s["workers"], seed=s["seed"])[1]


def load_model(s: dict[str, Any], path: str, device: torch.device) -> nn.Module:
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
