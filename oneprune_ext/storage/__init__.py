"""Files: atomic, versioned, checksummed writes, training checkpoints, and save / load of pruned models.

Imports only from the layers below it (graph, kernels, pruning).

* :mod:`.files` -- atomic writes, format versions, checksums (:class:`~.files.FileFormatError`);
* :mod:`.checkpoint` -- training checkpoints: writing, reading, every check before a resume;
* :mod:`.saving` -- :func:`save_pruned` / :func:`load_pruned` (state dict + structure record).
"""

from __future__ import annotations

from . import files
from .saving import load_pruned, save_pruned

__all__ = ["files", "load_pruned", "save_pruned"]
