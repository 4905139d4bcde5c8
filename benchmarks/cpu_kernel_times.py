"""Median wall time of each fused op on the CPU, for before/after comparisons of the kernels.

    python benchmarks/cpu_kernel_times.py [--threads 1] [--reps 30] [--models resnet50,resnet56] [--host]

Uses only the public API (``ChannelLayout``, ``ops.*``), so the same command runs against any
build of the extension. Same workloads as ``bench_kernels.py`` (random init, fp32, half of all
channels chosen); prints one line per model and op: median and 10th percentile, milliseconds.
``--host``: the per-call host cost instead (argument handling, the layout's checks, dispatch): the
writing ops with no channel chosen, so no weight is touched; microseconds.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(__file__))

import workloads  # noqa: E402
from oneprune_ext import ops  # noqa: E402
from per_layer_loop import LR, REG  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--models", default="resnet50,resnet56")
    ap.add_argument("--host", action="store_true", help="time the calls with an empty mask (host cost, us)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    models = workloads.models()
    for name in args.models.split(","):
        model, groups, layout, mask = workloads.setup(*models[name], "cpu")
        reg, factor = torch.full((), REG), torch.full((), 1 - REG * LR)
        calls = {"grouped_norms": lambda: ops.grouped_norms(layout),
                 "group_lasso_grad_": lambda: ops.group_lasso_grad_(layout, mask, reg),
                 "scale_channels_": lambda: ops.scale_channels_(layout, mask, factor)}
        unit, scale = "ms", 1e3
        if args.host:
            none = torch.zeros_like(mask)
            calls = {"group_lasso_grad_": lambda: ops.group_lasso_grad_(layout, none, reg),
                     "scale_channels_": lambda: ops.scale_channels_(layout, none, factor)}
            unit, scale = "us", 1e6
        for op, fn in calls.items():
            fn()
            times = []
            for _ in range(args.reps):
                t0 = time.perf_counter()
                fn()
                times.append((time.perf_counter() - t0) * scale)
            times.sort()
            print(f"{name:9s} {op:18s} median {statistics.median(times):9.3f} {unit}   p10 {times[len(times) // 10]:9.3f} {unit}"
                  f"   ({args.threads} thread{'s' if args.threads > 1 else ''}, {args.reps} reps)", flush=True)


if __name__ == "__main__":
    main()
