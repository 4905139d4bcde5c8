"""The ``oneprune`` command (``python -m oneprune_ext.cli``), one module per subcommand.

* ``oneprune [OPTIONS]`` -- train with one-cycle pruning (:mod:`.train`);
* ``oneprune profile`` -- the pruning overhead on your model (:mod:`.profile`; measured by
  :mod:`oneprune_ext.tools.profile`);
* ``oneprune eval`` -- accuracy, exact cost and latency of a pruned model (:mod:`.eval`; measured by
  :mod:`oneprune_ext.tools.eval`);
* ``oneprune plot`` -- redraw a run's plots from its ``report.json`` (:mod:`.plot`).
"""

from __future__ import annotations

import sys
from typing import Callable, Sequence

__all__ = ["COMMANDS", "main"]

COMMANDS = ("profile", "eval", "plot")


def _command(name: str) -> Callable[[Sequence[str]], int]:
    """The ``main(argv)`` of subcommand ``name`` (imported only when used)."""
    if name == "profile":
        from .profile import main as command
    elif name == "eval":
        from .eval import main as command
    elif name == "plot":
        from .plot import main as command
    else:
        from .train import main as command
    return command


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``oneprune`` console script; returns the exit status.

    ``argv[0]`` ``profile``, ``eval`` or ``plot`` runs that command (``oneprune COMMAND --help``);
    anything else is the training command's options.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in COMMANDS:
        return _command(argv[0])(argv[1:])
    return _command("train")(argv)
