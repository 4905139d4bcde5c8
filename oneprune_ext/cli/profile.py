"""``oneprune profile``: the parser and entry point; the measuring is :mod:`oneprune_ext.tools.profile`.

Example (CPU; ``--device cuda`` on a GPU)::

    oneprune profile --model resnet56 --batch 128
    oneprune profile --model resnet50 --input 3x224x224 --batch 32 --steps 5 --trace resnet50.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Optional, Sequence

import torch

from ..pruning.config import REGULARIZERS, TARGETS
from ..storage import files
from ..tools.profile import ProfileResult, parse_shape, profile_overhead

__all__ = ["build_parser", "check_out_path", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``oneprune profile``."""
    from ..training import models

    p = argparse.ArgumentParser(
        prog="oneprune profile",
        description="Measure what one-cycle pruning costs on your model and batch shape: plain training steps, "
                    "the same steps with the pruner's hooks in each phase (monitoring, sparsity learning with each "
                    "regularizer) next to the published per-layer loop, one sub-network search and one prune.",
        epilog="Random data with a fixed seed; SGD momentum 0.9, Nesterov, wd 5e-4, lr 0.1. Times are medians over "
               "--steps steps; bookkeeping is the time inside before_step + after_step (host; on CUDA also device "
               "time from CUDA events, used for the percentage). Prints a Markdown table.")
    p.add_argument("--model", default="resnet56",
                   help=f"bundled network ({', '.join(sorted(models.BUNDLED))}) or any torchvision classification model "
                        "name, e.g. resnet50, mobilenet_v2 (default: %(default)s)")
    p.add_argument("--input", default=None, metavar="CxHxW",
                   help="input shape of one sample (default: 1x8x8 digits_cnn/mlp, 3x32x32 resnet56/vgg16, "
                        "3x224x224 torchvision)")
    p.add_argument("--batch", type=int, default=64, help="training batch size, in samples (default: %(default)s)")
    p.add_argument("--num-classes", type=int, default=None,
                   help="classifier outputs (default: 10 bundled, 1000 torchvision)")
    p.add_argument("--width", type=int, default=16, help="digits_cnn only: its width (default: %(default)s)")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")
    p.add_argument("--steps", type=int, default=10, help="timed training steps per phase (default: %(default)s)")
    p.add_argument("--warmup", type=int, default=2, help="untimed plain steps first (default: %(default)s)")
    p.add_argument("--reduction", type=float, default=0.5,
                   help="fraction of the dense MACs (or parameters) the prune removes (default: %(default)s)")
    p.add_argument("--target", choices=TARGETS, default="macs", help="what --reduction is a fraction of")
    p.add_argument("--regularizers", default=",".join(REGULARIZERS),
                   help="sparsity-learning modes to time, comma-separated (default: %(default)s)")
    p.add_argument("--no-per-layer", action="store_true", help="skip the published per-layer loop")
    p.add_argument("--trace", default=None, metavar="OUT.json",
                   help="also write a Chrome trace of a short one-cycle schedule (oneprune::* ranges)")
    p.add_argument("--json", default=None, metavar="OUT.json", help="write the measurements as JSON here")
    p.add_argument("--save", default=None, metavar="PRUNED.pt",
                   help="write the pruned model (save_pruned; random weights) here, e.g. for the latency of "
                        "'oneprune eval PRUNED.pt --model NAME --no-accuracy --dense'")
    p.add_argument("--seed", type=int, default=0, help="seed of the model init and the random batch (default: 0)")
    return p


def check_out_path(flag: str, path: Optional[str]) -> None:
    """Refuse, before anything is measured, an output path that cannot be written: a directory, or a
    file whose folder does not exist or is not writable (these commands create no folders)."""
    if path is None:
        return
    if os.path.isdir(path):
        raise ValueError(f"{flag} {path!r} is a directory; give a file name")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent) or not os.access(parent, os.W_OK):
        raise ValueError(f"{flag} {path!r}: the folder {parent!r} does not exist or is not writable")


def _run(args: argparse.Namespace) -> ProfileResult:
    from ..training import models

    check_out_path("--json", args.json)
    check_out_path("--trace", args.trace)
    check_out_path("--save", args.save)

    for flag, v, lo in (("--batch", args.batch, 1), ("--steps", args.steps, 1), ("--warmup", args.warmup, 0),
                        ("--width", args.width, 1)):
        if v < lo:
            raise ValueError(f"{flag} must be >= {lo}, got {v}")
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    if not 0.0 < args.reduction < 1.0:
        raise ValueError(f"--reduction must be in (0, 1), got {args.reduction}")
    modes = [m.strip() for m in args.regularizers.split(",") if m.strip()]
    bad = [m for m in modes if m not in REGULARIZERS]
    if bad or not modes:
        raise ValueError(f"--regularizers must be some of {','.join(REGULARIZERS)}, got {args.regularizers!r}")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {args.device}: no CUDA device is available")
    shape = parse_shape(args.input) if args.input else models.default_input_shape(args.model)
    classes = args.num_classes or (10 if args.model in models.BUNDLED else 1000)
    torch.manual_seed(args.seed)
    model = models.build(args.model, classes, width=args.width).to(device)
    gen = torch.Generator().manual_seed(args.seed)
    x = torch.randn((args.batch, *shape), generator=gen).to(device)
    y = torch.randint(0, classes, (args.batch,), generator=gen).to(device)
    try:
        with torch.no_grad():
            model.eval()(x[:1])
    except Exception as e:  # noqa: BLE001 - the user's shape does not fit the model
        raise ValueError(f"--model {args.model} does not accept --input {'x'.join(map(str, shape))}: {e}") from e
    result = profile_overhead(model, x, y, steps=args.steps, warmup=args.warmup, regularizers=modes,
                              per_layer=not args.no_per_layer,
                              options={"reduction": args.reduction, "target": args.target}, trace=args.trace,
                              name=args.model)
    if args.save:
        from ..storage.saving import save_pruned

        save_pruned(model, args.save)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """``oneprune profile ...``: prints the table (and writes --json / --trace); returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        result = _run(args)
    except (ValueError, ImportError) as e:
        print(f"oneprune profile: error: {e}", file=sys.stderr)
        return 2
    print(result.table())
    if args.json:
        files.atomic_write(args.json, lambda f: json.dump(result.to_dict(), f, indent=1), binary=False)
    return 0
