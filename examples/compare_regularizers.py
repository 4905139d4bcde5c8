"""The three sparsity-learning regularizers side by side, on the demo's digits run, over several seeds.

For every seed it trains the ``make demo`` configuration (``examples/digits_demo.py``: digits_cnn
width 32, 30 epochs, half of the MACs removed, the published CIFAR-10 recipe scaled to 30 epochs,
``--reg auto``) once per regularizer, and one dense model of the same length and seed, then prints
a Markdown table: mean +- standard deviation over the seeds of the final test accuracy, the prune
shock (accuracy right before minus right after the physical prune, in points) and the prune epoch.

    python examples/compare_regularizers.py                      # 3 seeds x 3 regularizers + dense
    python examples/compare_regularizers.py --seeds 0 1 --regularizers shrink both --json out.json
    python examples/compare_regularizers.py --width 16        # other options go to every run (oneprune's)

The test split holds 360 images, so one image is 0.28 points. About 12 runs of half a minute
each on one CPU thread.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))

from digits_demo import DEMO_ARGS  # noqa: E402  (the demo's settings, shared)

from oneprune_ext.cli import train as cli  # noqa: E402
from oneprune_ext.pruning.config import REGULARIZERS  # noqa: E402


def _mean_std(values: Sequence[float], digits: int = 2) -> str:
    if not values:
        return "-"
    m = statistics.fmean(values)
    s = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{m:.{digits}f} ± {s:.{digits}f}"


def _demo_args(seed: int, regularizer: str, dense: bool, extra: Sequence[str] = ()) -> argparse.Namespace:
    argv = [a for a in DEMO_ARGS if a != "--dense-baseline"] + list(extra)
    argv += ["--seed", str(seed), "--regularizer", regularizer, "--no-progress"]
    if dense:
        argv.append("--dense-baseline")
    return cli.parse_args(argv)


def run_all(seeds: Sequence[int], regularizers: Sequence[str], extra: Sequence[str] = ()) -> dict[str, Any]:
    """Train every (seed, regularizer) pair and a dense model per seed; the per-run results.

    ``extra``: more ``oneprune`` options for every run (after the demo's, so they win)."""
    runs: list[dict[str, Any]] = []
    dense: dict[int, float] = {}
    for seed in seeds:
        for i, reg in enumerate(regularizers):
            args = _demo_args(seed, reg, dense=i == 0, extra=extra)
            if args.threads:
                import torch

                torch.set_num_threads(args.threads)
            t0 = time.perf_counter()
            pruned, dense_res, _ = cli.run(args)
            if dense_res is not None:
                dense[seed] = dense_res.final_acc
            runs.append({"seed": seed, "regularizer": reg, "final_acc": pruned.final_acc,
                         "prune_shock": pruned.prune_shock, "prune_epoch": pruned.prune_epoch,
                         "acc_before_prune": pruned.acc_before_prune, "acc_after_prune": pruned.acc_after_prune,
                         "removed_norm_share": pruned.removed_norm_share, "macs_reduction": pruned.macs_reduction,
                         "seconds": time.perf_counter() - t0})
            print(f"seed {seed} {reg:>11}: final {pruned.final_acc:.2f} %, shock {pruned.prune_shock}, "
                  f"pruned at epoch {pruned.prune_epoch}", file=sys.stderr, flush=True)
    return {"seeds": list(seeds), "options": list(extra), "dense_acc": dense, "runs": runs}


def table(result: dict[str, Any]) -> str:
    """The Markdown table of :func:`run_all`'s result (mean ± std over the seeds)."""
    lines = ["| regularizer | final accuracy (%) | dense (%) | prune shock (points) | prune epoch | MACs removed |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    dense = list(result["dense_acc"].values())
    regs = list(dict.fromkeys(r["regularizer"] for r in result["runs"]))
    for reg in regs:
        rs = [r for r in result["runs"] if r["regularizer"] == reg]
        shocks = [r["prune_shock"] for r in rs if r["prune_shock"] is not None]
        epochs = [float(r["prune_epoch"]) for r in rs if r["prune_epoch"] is not None]
        lines.append(f"| {reg} | {_mean_std([r['final_acc'] for r in rs])} | {_mean_std(dense)} | "
                     f"{_mean_std(shocks)} | {_mean_std(epochs, 1)} | "
                     f"{_mean_std([100 * r['macs_reduction'] for r in rs], 1)} % |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds (default: 0 1 2)")
    p.add_argument("--regularizers", nargs="+", choices=REGULARIZERS, default=list(REGULARIZERS),
                   help="regularizers to compare (default: all three)")
    p.add_argument("--json", default=None, help="also write every run's numbers here")
    a, extra = p.parse_known_args(argv)
    result = run_all(a.seeds, a.regularizers, extra)
    print(f"{len(a.seeds)} seeds ({', '.join(map(str, a.seeds))}), mean ± std:")
    print(table(result))
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
