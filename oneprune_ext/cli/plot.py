"""``oneprune plot DIR``: redraw the PNG plots of a run from its ``report.json``."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

from ..training.plots import PlotsUnavailable, write_plots
from ..training.report import load_report


def main(argv: Sequence[str] | None = None) -> int:
    """``oneprune plot DIR``: redraw the plots of a run from ``DIR/report.json``."""
    p = argparse.ArgumentParser(prog="oneprune plot", description="Draw the PNG plots of a run from its report.json.")
    p.add_argument("run", metavar="DIR_OR_REPORT", help="a run directory (oneprune --out DIR) or its report.json")
    p.add_argument("--to", default=None, metavar="DIR", help="write the PNG files here (default: next to the report)")
    args = p.parse_args(argv)
    try:
        report = load_report(args.run)
        out = args.to or (args.run if os.path.isdir(args.run) else os.path.dirname(os.path.abspath(args.run)))
        paths = write_plots(report, out)
    except (FileNotFoundError, ValueError, PlotsUnavailable) as e:
        print(f"oneprune plot: error: {e}", file=sys.stderr)
        return 2
    for path in paths:
        print(path)
    return 0
