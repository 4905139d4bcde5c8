"""GPU measurements of the fused ops that need no pytest-benchmark (for benchmarks/gpu_check.sh).

For each parameter set (CIFAR ResNet-56 always; ResNet-50 and MobileNetV2 when
torchvision is importable) on the current CUDA device:

* median time (CUDA events) of grouped_norms and of the whole per-step regularizer
  (norms + group lasso + shrink) for the fused ops, the reference and the per-layer loop;
* kernel launches per fused op (torch.profiler);
* grouped_norms effective read bandwidth vs the device's measured copy bandwidth;
* that the step can be captured in a CUDA graph and replayed with the same result.

Prints a markdown table; ``--json PATH`` also writes the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))

import workloads  # noqa: E402
from oneprune_ext import ops, reference  # noqa: E402
from per_layer_loop import LR, REG, per_layer_norms, per_layer_step  # noqa: E402


def _time(fn, reps: int = 50) -> float:
    """Median milliseconds of fn() over reps, CUDA events."""
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b))
    times.sort()
    return times[len(times) // 2]


def _launches(fn) -> int:
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return sum(1 for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA
               and "memset" not in e.name.lower() and "memcpy" not in e.name.lower())


def _copy_bandwidth() -> float:
    """GB/s of a large device-to-device copy (read + write bytes)."""
    x = torch.empty(256 * 1024 * 1024 // 4, device="cuda")
    y = torch.empty_like(x)
    ms = _time(lambda: y.copy_(x), reps=20)
    return 2 * x.numel() * 4 / (ms * 1e-3) / 1e9


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--json", help="also write the numbers to this file")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device", file=sys.stderr)
        return 1
    dev = "cuda"
    copy_bw = _copy_bandwidth()
    rows, record = [], {"device": torch.cuda.get_device_name(), "copy_GBps": copy_bw, "models": {}}
    for name, (build, shape) in workloads.models().items():
        model, groups, layout, mask = workloads.setup(build, shape, dev)
        masks = layout.split(mask)
        reg = torch.full((), REG, device=dev)
        fac = torch.full((), 1 - REG * LR, device=dev)

        def fused_step(mod=ops):
            mod.grouped_norms(layout)
            mod.group_lasso_grad_(layout, mask, reg)
            mod.scale_channels_(layout, mask, fac)

        t = {
            "norms_fused": _time(lambda: ops.grouped_norms(layout)),
            "norms_reference": _time(lambda: reference.grouped_norms(layout), reps=10),
            "norms_per_layer": _time(lambda: per_layer_norms(model, groups), reps=10),
            "step_fused": _time(fused_step),
            "step_reference": _time(lambda: fused_step(reference), reps=10),
            "step_per_layer": _time(lambda: per_layer_step(model, groups, masks), reps=10),
        }
        tensors = layout.kernel_args()[0]
        seg_rows = layout._segs_cpu
        bytes_read = int((seg_rows[:, 2] * seg_rows[:, 3] * torch.tensor(
            [tensors[i].element_size() for i in seg_rows[:, 0].tolist()])).sum()) if len(seg_rows) else 0
        bw = bytes_read / (t["norms_fused"] * 1e-3) / 1e9
        launches = {
            "grouped_norms": _launches(lambda: ops.grouped_norms(layout)),
            "group_lasso_grad_": _launches(lambda: ops.group_lasso_grad_(layout, mask, reg)),
            "scale_channels_": _launches(lambda: ops.scale_channels_(layout, mask, fac)),
        }
        # CUDA graph capture and replay of the whole step.
        graph_ok = True
        try:
            s = torch.cuda.Stream()
            s.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(s):
                for _ in range(2):
                    ops.group_lasso_grad_(layout, mask, reg)
            torch.cuda.current_stream().wait_stream(s)
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                pen = ops.group_lasso_grad_(layout, mask, reg)
            before = [p.grad.clone() for p in layout.parameters()]
            g.replay()
            torch.cuda.synchronize()
            changed = any(not torch.equal(p.grad, b) for p, b in zip(layout.parameters(), before))
            eager_pen = ops.group_lasso_grad_(layout, mask, reg)  # weights unchanged: same penalty
            graph_ok = changed and torch.equal(pen, eager_pen)
        except Exception as exc:  # noqa: BLE001
            print(f"{name}: CUDA graph capture failed: {exc}", file=sys.stderr)
            graph_ok = False
        record["models"][name] = {"ms": t, "bytes_read": bytes_read, "norms_GBps": bw,
                                  "launches": launches, "cuda_graph_ok": graph_ok}
        rows.append(
            f"| {name} | {t['norms_fused']:.3f} | {t['norms_per_layer'] / t['norms_fused']:.0f}x | "
            f"{t['step_fused']:.3f} | {t['step_reference'] / t['step_fused']:.0f}x | "
            f"{t['step_per_layer'] / t['step_fused']:.0f}x | {bw:.0f} ({100 * bw / copy_bw:.0f} %) | "
            f"{launches['grouped_norms']}/{launches['group_lasso_grad_']}/{launches['scale_channels_']} | "
            f"{'yes' if graph_ok else 'NO'} |"
        )
    print(f"\nDevice: {record['device']}; measured copy bandwidth {copy_bw:.0f} GB/s (read+write)\n")
    print("| model | norms fused (ms) | norms vs per-layer | step fused (ms) | step vs reference | "
          "step vs per-layer | norms read GB/s (% of copy) | launches norms/lasso/scale | CUDA graph |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |")
    print("\n".join(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(record, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
