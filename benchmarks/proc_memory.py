"""Process memory for the benchmarks (Linux /proc): resident and peak set sizes, the peak reset,
and running a measurement in a fresh interpreter so earlier allocations do not count."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
AVAILABLE = os.path.exists("/proc/self/clear_refs")


def status(field: str) -> int:
    """A ``/proc/self/status`` size field (``VmRSS``, ``VmHWM``, ...) in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(field)


def reset_peak() -> None:
    """Reset the peak resident set size (``VmHWM``) to the current one."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def in_fresh_process(module: str, function: str, arg: str) -> Any:
    """``module.function(arg)`` (a benchmarks/ module) in a new interpreter; its JSON result."""
    code = (f"import json, sys; sys.path.insert(0, {HERE!r}); import {module} as m; "
            f"print(json.dumps(m.{function}({arg!r})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])
