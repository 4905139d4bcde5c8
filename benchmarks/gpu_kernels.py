"""GPU measurements and checks of the fused ops, one section per run (for benchmarks/gpu_check.sh).

    python benchmarks/gpu_kernels.py SECTION [--device cuda|cpu] [--quick] [--json PATH]

Sections:

* ``sanitize``: a few calls of every op on small random layouts (fp32/fp16/bf16,
  channels_last, frozen parameters, grouped convolutions, unaligned storage): the workload
  compute-sanitizer checks;
* ``graph``: CUDA-graph capture and replay of ``OneCyclePruner.before_step`` /
  ``after_step`` on ResNet-56, compared with the same hooks run eagerly on a twin;
* ``bandwidth``: ``grouped_norms`` read bandwidth (each weight byte once) as a % of a torch
  copy's bandwidth (read + write) of the same bytes;
* ``bookkeeping``: what one step of sparsity learning adds (regularizer ``group_lasso``,
  ``shrink``, ``both``; half of all channels chosen) as a % of a plain training step, fused
  ops next to the published per-layer loop, ResNet-56 (batch 128, fp32) and ResNet-50
  (batch 64, bf16 autocast); CUDA events;
* ``hooks``: host (wall) time per ``before_step`` / ``after_step`` call, no synchronisation;
  on CUDA also the device time per call that ``pruner.stats`` reports (``*_device``);
* ``prune``: ``prune_channels`` of ResNet-50 to half of every group: time and memory freed.

Each run prints a markdown table, writes its numbers to ``--json`` and exits 1 if a check
failed (an exception, a mismatch); missed performance targets are reported, not failures.
``--device cpu`` runs the same code on the CPU (a dry run of the script's logic; timings then
use the wall clock); ``--quick`` shrinks batches and repetitions.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time
import traceback
from typing import Any, Callable

import torch

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "python_tests"))

import workloads  # noqa: E402
from oneprune_ext import ChannelLayout, OneCyclePruner, ops, prune_channels, trace_groups  # noqa: E402
from oneprune_ext.training.models import resnet56  # noqa: E402
from per_layer_loop import LR, REG, per_layer_lasso, per_layer_shrink  # noqa: E402

TARGETS = {"norms_pct_of_copy": 60.0, "resnet56_pct_of_step": 1.0, "resnet50_pct_of_step": 0.3,
           "resnet56_hook_us": 50.0}


class Clock:
    """Median milliseconds of fn(): CUDA events on a GPU, the wall clock on the CPU."""

    def __init__(self, device: str) -> None:
        self.cuda = device == "cuda"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def ms(self, fn: Callable[[], Any], reps: int, warmup: int = 2) -> float:
        for _ in range(warmup):
            fn()
        self.sync()
        times = []
        for _ in range(reps):
            if self.cuda:
                a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                a.record()
                fn()
                b.record()
                torch.cuda.synchronize()
                times.append(a.elapsed_time(b))
            else:
                t0 = time.perf_counter()
                fn()
                times.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(times)


def _resnet50():
    import torchvision

    return torchvision.models.resnet50(weights=None)


def _have_torchvision() -> bool:
    try:
        import torchvision  # noqa: F401
    except Exception:  # noqa: BLE001
        return False
    return True


# ---------------------------------------------------------------------------------- sections


def section_sanitize(dev: str, quick: bool) -> dict:
    """Every op on small layouts of every kind; checks finite outputs (the sanitizer checks memory)."""
    from layouts import random_layout, random_mask, set_grads

    n = 0
    for seed, dtype in enumerate([torch.float32, torch.float16, torch.bfloat16]):
        for channels_last in (False, True):
            model, groups = random_layout(seed, dtype, dev, channels_last=channels_last, conv_groups=[1, 5, 16][seed])
            set_grads(model, seed)
            if seed == 1:
                model.conv2_w.requires_grad_(False)
                model.conv2_w.grad = None
            if seed == 2:  # unaligned storage
                with torch.no_grad():
                    for p in model.parameters():
                        buf = torch.empty(p.numel() + 1, dtype=dtype, device=dev)
                        buf[1:].copy_(p.detach().reshape(-1))
                        p.data = buf[1:].view(p.shape)
                        if p.grad is not None:
                            p.grad = torch.randn_like(p)
            layout = ChannelLayout(model, groups)
            mask = random_mask(layout.num_channels, seed).to(dev)
            sq, sal = ops.grouped_norms(layout)
            pen = ops.group_lasso_grad_(layout, mask, torch.tensor(0.1, device=dev))
            ops.scale_channels_(layout, mask, torch.tensor(0.9, device=dev))
            ok = bool(torch.isfinite(sq).all() and torch.isfinite(sal).all() and torch.isfinite(pen))
            if not ok:
                raise AssertionError(f"non-finite output (seed {seed}, {dtype}, channels_last={channels_last})")
            n += 1
    if dev == "cuda":
        torch.cuda.synchronize()
    return {"ok": True, "layouts": n, "table": f"| sanitize workload | {n} layouts, 3 ops each | ok |"}


def _hook_pruner(model, x, dev):
    model.to(dev)
    # a constant reg and lr: every step applies the same factors, so a captured graph replays them
    p = OneCyclePruner(model, x.to(dev), total_epochs=4, monitor_start=0, sl_start=0, sl_end=3,
                       regularizer="both", reduction=0.5, reg=1e-4, reg_delta=0.0)
    for q in model.parameters():
        q.grad = torch.randn_like(q)
    p.epoch_start(0)
    return p


def section_graph(dev: str, quick: bool) -> dict:
    """Capture before_step + after_step in a CUDA graph and replay it next to an eager twin."""
    if dev != "cuda":
        return {"ok": True, "skipped": "needs CUDA", "table": "| CUDA graph of before_step/after_step | skipped (no GPU) | - |"}
    torch.manual_seed(0)
    model = resnet56(10)
    twin = copy.deepcopy(model)
    x = torch.randn(1, 3, 32, 32)
    pa, pb = _hook_pruner(model, x, dev), _hook_pruner(twin, x, dev)
    for q, r in zip(model.parameters(), twin.parameters()):
        r.grad.copy_(q.grad)
    lr = 0.1
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        pa.before_step()
        pa.after_step(lr)
    torch.cuda.current_stream().wait_stream(s)
    pb.before_step()
    pb.after_step(lr)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        pen = pa.before_step()
        pa.after_step(lr)
    for _ in range(5):
        g.replay()
        ref = pb.before_step()
        pb.after_step(lr)
    torch.cuda.synchronize()
    same = pen is not None and ref is not None and torch.allclose(pen, ref, rtol=1e-5, atol=1e-7)
    for q, r in zip(model.parameters(), twin.parameters()):
        same = same and torch.allclose(q, r, rtol=1e-5, atol=1e-6) and torch.allclose(q.grad, r.grad, rtol=1e-5,
                                                                                        atol=1e-6)
    return {"ok": bool(same), "replays": 5,
            "table": f"| CUDA graph of before_step/after_step (ResNet-56) | 5 replays vs eager twin | "
                     f"{'equal' if same else 'DIFFERENT'} |"}


def section_bandwidth(dev: str, quick: bool) -> dict:
    clock = Clock(dev)
    rows, out, ok_target = [], {}, True
    models = {"resnet56": (lambda: resnet56(10), (1, 3, 32, 32))}
    if _have_torchvision():
        models["resnet50"] = (_resnet50, (1, 3, 64, 64))
    for name, (build, shape) in models.items():
        model, groups, layout, mask = workloads.setup(build, shape, dev)
        nbytes = sum(p.numel() * p.element_size() for p in layout.parameters())
        t_norms = clock.ms(lambda: ops.grouped_norms(layout), 5 if quick else 50)
        src = torch.empty(nbytes, dtype=torch.uint8, device=dev)
        dst = torch.empty_like(src)
        t_copy = clock.ms(lambda: dst.copy_(src), 5 if quick else 50)
        bw_norms = nbytes / (t_norms * 1e-3) / 1e9
        bw_copy = 2 * nbytes / (t_copy * 1e-3) / 1e9
        pct = 100 * bw_norms / bw_copy
        out[name] = {"bytes": nbytes, "norms_ms": t_norms, "copy_ms": t_copy, "norms_GBps": bw_norms,
                     "copy_GBps": bw_copy, "pct_of_copy": pct}
        target = ""
        if name == "resnet50":
            met = pct >= TARGETS["norms_pct_of_copy"]
            ok_target = met
            target = f" (target >= {TARGETS['norms_pct_of_copy']:.0f} %: {'met' if met else 'MISSED'})"
        rows.append(f"| grouped_norms bandwidth, {name} ({nbytes / 1e6:.1f} MB) | {t_norms:.3f} ms, "
                    f"{bw_norms:.0f} GB/s vs copy {bw_copy:.0f} GB/s | {pct:.0f} %{target} |")
    return {"ok": True, "targets_met": ok_target, "models": out, "table": "\n".join(rows)}


def _train_step(name: str, dev: str, quick: bool) -> Callable[[], None]:
    torch.manual_seed(0)
    if name == "resnet56":
        model, batch, classes, amp = resnet56(10), (32 if quick else 128, 3, 32, 32), 10, None
    else:
        model, batch, classes, amp = _resnet50(), (4 if quick else 64, 3, 224 if not quick else 64,
                                                   224 if not quick else 64), 1000, torch.bfloat16
    model = model.to(dev).train()
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9)
    x = torch.randn(batch, device=dev)
    y = torch.randint(0, classes, (batch[0],), device=dev)

    def step() -> None:
        opt.zero_grad(set_to_none=False)
        with torch.autocast(device_type=dev, dtype=amp, enabled=amp is not None):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
    return step


def section_bookkeeping(dev: str, quick: bool) -> dict:
    clock = Clock(dev)
    rows, out, met_all = [], {}, True
    models = {"resnet56": (lambda: resnet56(10), (1, 3, 32, 32))}
    if _have_torchvision():
        models["resnet50"] = (_resnet50, (1, 3, 64, 64))
    for name, (build, shape) in models.items():
        t_step = clock.ms(_train_step(name, dev, quick), 3 if quick else 20, warmup=2 if quick else 5)
        model, groups, layout, mask = workloads.setup(build, shape, dev)
        masks = layout.split(mask)
        reg = torch.full((), REG, device=dev)
        factor = torch.full((), 1 - REG * LR, device=dev)
        fused = {"group_lasso": lambda: ops.group_lasso_grad_(layout, mask, reg),
                 "shrink": lambda: ops.scale_channels_(layout, mask, factor)}
        loop = {"group_lasso": lambda: per_layer_lasso(model, groups, masks),
                "shrink": lambda: per_layer_shrink(model, groups, masks)}
        fused["both"] = lambda: (fused["group_lasso"](), fused["shrink"]())
        loop["both"] = lambda: (loop["group_lasso"](), loop["shrink"]())
        out[name] = {"step_ms": t_step}
        for mode in ("group_lasso", "shrink", "both"):
            tf = clock.ms(fused[mode], 5 if quick else 100)
            tl = clock.ms(loop[mode], 3 if quick else 20)
            pf, pl = 100 * tf / t_step, 100 * tl / t_step
            out[name][mode] = {"fused_ms": tf, "loop_ms": tl, "fused_pct": pf, "loop_pct": pl}
            note = ""
            if mode == "both":
                limit = TARGETS[f"{name}_pct_of_step"]
                met = pf <= limit
                met_all = met_all and met
                note = f" (target <= {limit} %: {'met' if met else 'MISSED'})"
            rows.append(f"| bookkeeping {name}, {mode}, step {t_step:.2f} ms | fused {tf:.3f} ms = {pf:.3f} %{note} | "
                        f"per-layer loop {tl:.3f} ms = {pl:.2f} % ({tl / tf:.0f}x) |")
    return {"ok": True, "targets_met": met_all, "models": out, "table": "\n".join(rows)}


def section_hooks(dev: str, quick: bool) -> dict:
    rows, out, met = [], {}, True
    models = {"resnet56": (lambda: resnet56(10), (1, 3, 32, 32))}
    if _have_torchvision():
        models["resnet50"] = (_resnet50, (1, 3, 64, 64))
    for name, (build, shape) in models.items():
        torch.manual_seed(0)
        p = _hook_pruner(build(), torch.randn(shape), dev)
        res = {}
        calls = 20 + (50 if quick else 500)
        for hook, fn in (("before_step", p.before_step), ("after_step", lambda: p.after_step(LR))):
            for _ in range(20):
                fn()
            times = []
            for _ in range(calls - 20):
                t0 = time.perf_counter()
                fn()
                times.append((time.perf_counter() - t0) * 1e6)
            res[hook] = statistics.median(times)
        device = ""
        if dev == "cuda":
            torch.cuda.synchronize()
            # pruner.stats' device seconds (CUDA events around each hook call, read without a sync in
            # the step path): every pair has completed after the synchronize, so the totals are whole
            st = p.stats
            if "before_step_device" not in st:
                raise RuntimeError(f"pruner.stats has no device times on CUDA: {sorted(st)}")
            for hook in ("before_step", "after_step"):
                res[f"{hook}_device_mean"] = st[f"{hook}_device"] / calls * 1e6
            device = (f"; device (pruner.stats, mean of {calls}) before_step {res['before_step_device_mean']:.1f} us, "
                      f"after_step {res['after_step_device_mean']:.1f} us")
        out[name] = res
        note = ""
        if name == "resnet56":
            met = max(res.values()) <= TARGETS["resnet56_hook_us"]
            note = f" (target <= {TARGETS['resnet56_hook_us']:.0f} us: {'met' if met else 'MISSED'})"
        rows.append(f"| host time per hook, {name} ({len(p.layout.parameters())} tensors) | "
                    f"before_step {res['before_step']:.1f} us, after_step {res['after_step']:.1f} us{note}{device} | "
                    "median (host) |")
    return {"ok": True, "targets_met": met, "models": out, "table": "\n".join(rows)}


def section_prune(dev: str, quick: bool) -> dict:
    if not _have_torchvision():
        return {"ok": True, "skipped": "torchvision missing", "table": "| prune ResNet-50 | skipped (no torchvision) | - |"}
    import random

    torch.manual_seed(0)
    model = _resnet50().to(dev)
    groups = trace_groups(model, torch.randn(1, 3, 64, 64, device=dev))
    for q in model.parameters():
        q.grad = torch.randn_like(q)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    opt.step()  # momentum buffers
    rng = random.Random(0)
    keep = {i: sorted(rng.sample(range(g.size), max(1, g.size // 2))) for i, g in enumerate(groups)}
    cuda = dev == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        before = torch.cuda.memory_allocated()
    params_before = sum(q.numel() for q in model.parameters())
    t0 = time.perf_counter()
    prune_channels(model, groups, keep, opt)
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    params_after = sum(q.numel() for q in model.parameters())
    res = {"seconds": seconds, "params_before": params_before, "params_after": params_after}
    mem = ""
    if cuda:
        torch.cuda.empty_cache()
        after = torch.cuda.memory_allocated()
        res.update(allocated_before=before, allocated_after=after)
        mem = f", allocated {before / 1e6:.0f} MB -> {after / 1e6:.0f} MB (freed {(before - after) / 1e6:.0f} MB)"
    x = torch.randn(2, 3, 64, 64, device=dev)
    model(x).sum().backward()  # the pruned model still trains
    return {"ok": True, **res,
            "table": f"| prune ResNet-50 to half of every group (weights, grads, momentum) | {seconds * 1e3:.0f} ms, "
                     f"params {params_before / 1e6:.1f} M -> {params_after / 1e6:.1f} M{mem} | ok |"}


SECTIONS = {"sanitize": section_sanitize, "graph": section_graph, "bandwidth": section_bandwidth,
            "bookkeeping": section_bookkeeping, "hooks": section_hooks, "prune": section_prune}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("section", choices=list(SECTIONS))
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--quick", action="store_true", help="small batches and few repetitions")
    ap.add_argument("--json", help="write the numbers to this file")
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print(f"{args.section}: no CUDA device (use --device cpu for a dry run)", file=sys.stderr)
        return 1
    try:
        res = SECTIONS[args.section](args.device, args.quick)
    except Exception as exc:  # noqa: BLE001
        traceback.print_exc()
        res = {"ok": False, "error": f"{type(exc).__name__}: {exc}",
               "table": f"| {args.section} | FAILED: {type(exc).__name__}: {str(exc)[:120]} | - |"}
    res["section"] = args.section
    res["device"] = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    print(res["table"])
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2, default=str)
    return 0 if res["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
