"""PNG plots of a run, drawn from its ``report.json`` (matplotlib, Agg; optional dependency).

:func:`write_plots` draws four files into a directory:

* ``stability.png``: the stability indicator per searched epoch, the phases shaded (dense,
  monitoring, sparsity learning, pruned), the threshold and the prune epoch marked;
* ``training.png``: train loss and test accuracy per epoch, one-cycle vs the dense baseline
  when the run has one, the prune epoch marked;
* ``channels.png``: channels per group, dense vs kept;
* ``overhead.png``: seconds spent in each pruner hook (host, and device on CUDA) and the
  one-off pruner set-up.

Plots are drawn on matplotlib ``Figure`` objects with the Agg canvas, so the process-wide
pyplot backend is never touched. ``oneprune plot DIR`` (:mod:`oneprune_ext.cli.plot`) redraws them from ``DIR/report.json``.
matplotlib is optional (``pip install matplotlib``, or the ``plots`` extra of this package):
without it :func:`write_plots` raises :class:`PlotsUnavailable` saying so.
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

__all__ = ["PlotsUnavailable", "write_plots", "PLOT_FILES"]

#: The files :func:`write_plots` writes.
PLOT_FILES = ("stability.png", "training.png", "channels.png", "overhead.png")

_PHASE_COLORS = {"dense": "#dddddd", "monitoring": "#cfe3f7", "sparsity": "#fbe0c4", "pruned": "#d5efd1"}
_PHASE_LABELS = {"dense": "dense", "monitoring": "monitoring", "sparsity": "sparsity learning", "pruned": "pruned"}
_HOOKS = ("epoch_start", "before_step", "after_step", "epoch_end")


class PlotsUnavailable(ImportError):
    """matplotlib is not installed (the message says how to install it)."""


def _figure(w: float, h: float) -> Any:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as e:
        raise PlotsUnavailable(
            "the plots need matplotlib, which is not installed: pip install matplotlib "
            "(or pip install 'oneprune_ext[plots]'); the report and metrics were written without them") from e
    fig = Figure(figsize=(w, h), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, path: str) -> str:
    fig.savefig(path, format="png")
    return path


def _mark_prune(ax: Any, prune_epoch: Any) -> None:
    if prune_epoch is not None:
        ax.axvline(prune_epoch + 0.5, color="#b03030", ls="--", lw=1.2, label=f"prune (end of epoch {prune_epoch})")


def _shade_phases(ax: Any, history: Sequence[Mapping[str, Any]]) -> None:
    """Shade each epoch's span by its phase (epoch e spans e-0.5 .. e+0.5), one legend entry each."""
    seen: set[str] = set()
    for h in history:
        phase = str(h.get("phase", "dense"))
        label = None if phase in seen else _PHASE_LABELS.get(phase, phase)
        seen.add(phase)
        ax.axvspan(h["epoch"] - 0.5, h["epoch"] + 0.5, color=_PHASE_COLORS.get(phase, "#eeeeee"), lw=0,
                   label=label, zorder=0)


def _title(report: Mapping[str, Any]) -> str:
    m = report.get("model") or {}
    cfg = (report.get("config") or {}).get("pruner") or {}
    target = cfg.get("target", "macs")
    red = cfg.get("reduction")
    what = f", target -{100 * red:.0f} % {'MACs' if target == 'macs' else 'params'}" if red is not None else ""
    return f"{m.get('name', 'model')} on {m.get('data', '?')}{what}"


def plot_stability(report: Mapping[str, Any], path: str) -> str:
    """The stability indicator per epoch, phases shaded, threshold and prune epoch marked."""
    hist = report["history"]
    fig = _figure(7.0, 3.6)
    ax = fig.add_subplot()
    _shade_phases(ax, hist)
    # searched epochs only: before monitoring there is no indicator, after the prune it is frozen
    pts = [(h["epoch"], h["indicator"]) for h in hist
           if h.get("indicator") is not None and h.get("phase") in ("monitoring", "sparsity")]
    if pts:
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", color="#1f4e8c", ms=3.5, lw=1.5,
                label="stability indicator", zorder=3)
    thr = ((report.get("config") or {}).get("pruner") or {}).get("stability_threshold")
    if thr is not None:
        ax.axhline(thr, color="#555555", ls=":", lw=1, label=f"threshold {thr:g}")
    _mark_prune(ax, report.get("prune_epoch"))
    ax.set_xlim(-0.5, max(len(hist), 1) - 0.5)
    ax.set_ylim(-0.03, 1.05)
    ax.set_xlabel("epoch (0-based)")
    ax.set_ylabel("stability indicator")
    ax.set_title(_title(report), fontsize=10)
    ax.legend(loc="lower right", fontsize=7, framealpha=0.9)
    return _save(fig, path)


def plot_training(report: Mapping[str, Any], path: str) -> str:
    """Train loss and test accuracy per epoch; one-cycle vs dense when the report has both."""
    fig = _figure(8.0, 3.4)
    ax_loss, ax_acc = fig.subplots(1, 2)
    runs = [("one-cycle", report["history"], "#1f4e8c")]
    if report.get("dense_history"):
        runs.append(("dense", report["dense_history"], "#888888"))
    for label, hist, color in runs:
        ep = [h["epoch"] for h in hist]
        ax_loss.plot(ep, [h["train_loss"] for h in hist], "-", color=color, lw=1.5, label=label)
        ax_acc.plot(ep, [h["test_acc"] for h in hist], "-", color=color, lw=1.5, label=label)
    for ax in (ax_loss, ax_acc):
        _mark_prune(ax, report.get("prune_epoch"))
        ax.set_xlabel("epoch (0-based)")
        ax.legend(fontsize=7)
    acc = report.get("accuracy") or {}
    if acc.get("before_prune") is not None and acc.get("after_prune") is not None and report.get("prune_epoch") is not None:
        pe = report["prune_epoch"] + 0.5
        ax_acc.plot([pe, pe], [acc["before_prune"], acc["after_prune"]], "v", color="#b03030", ms=5,
                    label="right before / after the prune")
        ax_acc.legend(fontsize=7)
    ax_loss.set_ylabel("train loss (cross-entropy)")
    ax_loss.set_yscale("log")
    ax_acc.set_ylabel("test accuracy (%)")
    fig.suptitle(_title(report), fontsize=10)
    return _save(fig, path)


def plot_channels(report: Mapping[str, Any], path: str) -> str:
    """Channels per group: dense (light) and kept (dark) bars, group names when they fit."""
    groups = (report.get("cost") or {}).get("groups") or []
    n = len(groups)
    fig = _figure(min(max(6.0, 0.28 * n + 2.0), 16.0), 3.8)
    ax = fig.add_subplot()
    x = list(range(n))
    ax.bar(x, [g["dense"] for g in groups], color="#c9d6e8", width=0.8, label="dense")
    ax.bar(x, [g["kept"] for g in groups], color="#1f4e8c", width=0.55, label="kept")
    if 0 < n <= 40:
        ax.set_xticks(x)
        ax.set_xticklabels([str(g["name"]) for g in groups], rotation=90 if n > 8 else 30,
                           fontsize=6 if n > 16 else 8, ha="center" if n > 8 else "right")
    else:
        ax.set_xlabel("channel group (index)")
    ax.set_ylabel("channels")
    cost = report.get("cost") or {}
    red = cost.get("macs_reduction")
    extra = f": {100 * red:.1f} % of the MACs removed" if red is not None else ""
    ax.set_title(f"channels per group, dense vs kept{extra}", fontsize=10)
    ax.legend(fontsize=7)
    return _save(fig, path)


def _ms(v: float) -> str:
    return f"{v:,.0f} ms" if v >= 100 else f"{v:.3g} ms"


def plot_overhead(report: Mapping[str, Any], path: str) -> str:
    """Milliseconds in each hook over the whole run (host; device beside it on CUDA) and the
    one-off set-up, as horizontal bars on a log scale with their values written on them."""
    ov = report.get("overhead") or {}
    stats = ov.get("stats") or {}
    names = list(_HOOKS) + ["set-up (once)"]
    host = [1e3 * float(stats.get(h, 0.0)) for h in _HOOKS] + [1e3 * float(ov.get("init_seconds") or 0.0)]
    device = [stats.get(f"{h}_device") for h in _HOOKS] + [None]
    has_dev = any(d is not None for d in device)
    fig = _figure(7.0, 3.4)
    ax = fig.add_subplot()
    h = 0.38 if has_dev else 0.6
    ys = list(range(len(names)))[::-1]
    bars = ax.barh([y + (h / 2 if has_dev else 0) for y in ys], [max(v, 1e-3) for v in host], height=h,
                   color="#1f4e8c", label="host")
    ax.bar_label(bars, labels=[_ms(v) for v in host], fontsize=7, padding=2)
    if has_dev:
        dev = [1e3 * float(d or 0.0) for d in device]
        bars = ax.barh([y - h / 2 for y in ys[:-1]], [max(v, 1e-3) for v in dev[:-1]], height=h,
                       color="#e08a2c", label="device (CUDA events)")
        ax.bar_label(bars, labels=[_ms(v) for v in dev[:-1]], fontsize=7, padding=2)
    ax.set_yticks(ys)
    ax.set_yticklabels(names, fontsize=8)
    ax.set_xscale("log")
    ax.set_xlim(right=max(host + [1.0]) * 20)
    ax.set_xlabel("milliseconds, whole run (log scale)")
    pct, per_step = ov.get("percent_of_wall"), ov.get("per_step_ms")
    bits = []
    if pct is not None:
        bits.append(f"{pct:.2f} % of the run's wall time in hooks")
    if per_step is not None:
        bits.append(f"{per_step:.3f} ms per step")
    ax.set_title("pruner overhead" + (": " + ", ".join(bits) if bits else ""), fontsize=10)
    ax.legend(fontsize=7, loc="lower right")
    return _save(fig, path)


def write_plots(report: Mapping[str, Any], directory: str) -> list[str]:
    """Draw the four PNG files of :data:`PLOT_FILES` from ``report`` into ``directory``.

    Raises:
        PlotsUnavailable: matplotlib is not installed.
    """
    os.makedirs(directory, exist_ok=True)
    _figure(1, 1)  # fail early, with the install hint, when matplotlib is missing
    draw = (plot_stability, plot_training, plot_channels, plot_overhead)
    return [fn(report, os.path.join(directory, name)) for fn, name in zip(draw, PLOT_FILES)]
