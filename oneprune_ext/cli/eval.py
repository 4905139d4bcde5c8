"""``oneprune eval DIR_OR_FILE``: the parser and entry point; the measuring is :mod:`oneprune_ext.tools.eval`.

Examples::

    oneprune eval runs/demo                       # the run directory of `oneprune --out runs/demo`
    oneprune eval runs/demo --dense --device cpu  # next to the dense architecture
    oneprune eval pruned.pt --model resnet56 --data cifar10 --data-root ~/data --batch 256
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from typing import Any, Optional, Sequence

import torch

from ..storage import files
from ..tools.eval import ModelEval, evaluate_model, load_model, locate, table, test_loader
from ..tools.profile import parse_shape
from .profile import check_out_path

__all__ = ["build_parser", "main"]


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
    shape = parse_shape(args.input) if args.input else tuple(rec.get("input_shape") or models.default_input_shape(name))
    return {
        "model": name, "data": data, "num_classes": int(classes), "input_shape": tuple(int(s) for s in shape),
        "width": args.width or rec.get("width") or 16,
        "data_root": args.data_root or training.get("data_root"),
        "seed": training.get("seed", 0) if args.seed is None else args.seed,
        "batch": args.batch or training.get("batch_size") or 32,
        "workers": training.get("workers", 2) if args.workers is None else args.workers,
    }


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
    check_out_path("--json", args.json)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {args.device}: no CUDA device is available")
    target = locate(args.path)
    s = _settings(args, target.report)
    loader = None if args.no_accuracy else test_loader(s)
    model = load_model(s, target.model_file, device)
    x = torch.randn((s["batch"], *s["input_shape"]), generator=torch.Generator().manual_seed(0)).to(device)
    evals = [evaluate_model(model, "pruned", x, loader, warmup=args.warmup, repeat=args.repeat)]
    if args.dense:
        from ..training import models

        if target.dense_file is not None:
            dense = load_model(s, target.dense_file, device)
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
        out = {"header": header, "models": [asdict(e) for e in evals]}
        files.atomic_write(args.json, lambda f: json.dump(out, f, indent=1), binary=False)
    return 0
