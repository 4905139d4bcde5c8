"""Training checkpoints: what the trainer writes every epoch, and every check of one before a resume.

A checkpoint is one checked file (:mod:`oneprune_ext.storage.files`: atomic, versioned, checksummed)
of kind ``oneprune_ext.train`` holding the whole run after an epoch: ``"config"`` (the trainer's
settings), ``"run_options"`` (the caller's: data, model, seed, pruner options, ...), ``"epoch"`` (the
next epoch to run), ``"model"``, ``"optimizer"``, ``"scheduler"`` and ``"pruner"`` states, ``"rng"``
(the Python, NumPy, torch and CUDA generators), ``"history"`` (one record per epoch), ``"wall_time"``,
``"pruner_seconds"``, ``"dense_macs"`` and ``"dense_params"``. Version 1 (no checksum) is still read.

* :func:`write_checkpoint` / :func:`read_checkpoint`: the file;
* :func:`prepare_checkpoint`: the path checked writable before training, leftovers of an interrupted
  write removed; :func:`companion_path`: a second run's checkpoint next to it (the dense baseline's);
* :func:`run_differences` / :func:`check_same_run`: a checkpoint of another run (other settings,
  other options, another model) is refused, each difference named, before anything changes;
* :func:`check_resume`: the same, before any training, for a command line (``oneprune --resume``);
* :func:`rng_state` / :func:`set_rng_state`: the random generators, as ``weights_only``-loadable values.
"""

from __future__ import annotations

import os
import random
from typing import Any, Callable, Iterable, Mapping, Optional

import numpy as np
import torch

from . import files

__all__ = ["KIND", "VERSION", "write_checkpoint", "read_checkpoint", "prepare_checkpoint", "run_differences",
           "normalized", "check_same_run", "check_resume", "companion_path", "rng_state", "set_rng_state"]

KIND, VERSION = "oneprune_ext.train", 2  # version 1 (no checksum) is still read


def write_checkpoint(payload: Mapping[str, Any], path: str | os.PathLike) -> None:
    """Write a checkpoint atomically, with its format version and checksum."""
    files.write_checked(payload, path, KIND, VERSION)


def read_checkpoint(path: str | os.PathLike, use: str = "read_checkpoint") -> dict[str, Any]:
    """Read and check a checkpoint written by :func:`oneprune_ext.training.trainer.train` (``checkpoint=path``).

    Returns the checkpoint's dict. Raises :class:`oneprune_ext.storage.files.FileFormatError` (a
    ValueError, one line naming the file) for a missing, empty, truncated or damaged file, or a file
    of another kind (e.g. written by ``save_pruned``); ``use`` starts its message.
    """
    return files.read_checked(os.fspath(path), KIND, (1, VERSION), use=use)


def prepare_checkpoint(path: Any, writes: bool = True) -> Optional[str]:
    """The checkpoint path (None stays None), checked writable before any training, with the temporary
    files an interrupted write left next to it removed; ``writes=False`` (a process that does not
    write it, e.g. a rank other than 0): only the path."""
    if path is None:
        return None
    if not writes:
        return os.fspath(path)
    checked = files.check_writable(path, "train(checkpoint=...)")
    files.remove_orphans(checked)
    return checked


def companion_path(path: Optional[str], name: str) -> Optional[str]:
    """A second run's checkpoint next to ``path``: ``run.pt`` -> ``run.<name>.pt`` (None stays None)."""
    if path is None:
        return None
    root, ext = os.path.splitext(path)
    return f"{root}.{name}{ext or '.pt'}"


# ------------------------------------------------------------------------------ is it the same run?
def _norm(v: Any) -> Any:
    """Tuples and lists compare equal (a checkpoint stores lists)."""
    if isinstance(v, (list, tuple)):
        return [_norm(x) for x in v]
    if isinstance(v, Mapping):
        return {k: _norm(x) for k, x in v.items()}
    return v


def normalized(options: Mapping[str, Any]) -> dict[str, Any]:
    """``options`` as a checkpoint records them (tuples as lists)."""
    return _norm(dict(options))


def run_differences(saved: Mapping[str, Any] | None, now: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """``(option, saved value, value now)`` for every option that differs between two runs.

    ``saved`` None (a checkpoint written before options were recorded): no differences.
    An option missing on one side counts as ``None`` there.
    """
    if saved is None:
        return []
    keys = list(now) + [k for k in saved if k not in now]
    return [(k, saved.get(k), now.get(k)) for k in keys if _norm(saved.get(k)) != _norm(now.get(k))]


def check_same_run(data: Mapping[str, Any], config: Mapping[str, Any], run_options: Mapping[str, Any],
                   model_keys: Iterable[str], path: str) -> None:
    """Refuse (ValueError naming each difference) a checkpoint ``data`` of another run: other trainer
    settings (``config``), other caller's options (``run_options``) or another model (state keys)."""
    diff = run_differences(data.get("config"), config) + run_differences(data.get("run_options"), run_options)
    if diff:
        named = "; ".join(f"{k}: {a!r} (saved) vs {b!r} (now)" for k, a, b in diff)
        raise ValueError(f"train(resume=True): checkpoint {path!r} was written by a run with other "
                         f"settings: {named}. Resume with the same settings, or start a new run with "
                         "another checkpoint path")
    saved, now = set(data["model"]), set(model_keys)
    if saved != now:
        raise ValueError(f"train(resume=True): checkpoint {path!r} holds another model (tensors "
                         f"{sorted(saved ^ now)[:4]} differ); build the same model as the saved run")


def check_resume(path: Optional[str], run_options: Mapping[str, Any], use: str,
                 flag_of: Callable[[str], str] = lambda k: k) -> None:
    """Before any training: the checkpoint at ``path`` (if there is one) is intact and was written by a
    run with the same ``run_options``. Raises ValueError (one line, each option named by ``flag_of``)."""
    if path is None or not os.path.exists(path):
        return
    data = read_checkpoint(path, use)
    diff = run_differences(data.get("run_options"), run_options)
    if diff:
        named = ", ".join(f"{flag_of(k)} {a!r} (saved) vs {b!r} (now)" for k, a, b in diff)
        raise ValueError(f"{use}: {path!r} was written by a run with other options: {named}; resume with the "
                         "same options, or start a new run with another --checkpoint")


# ------------------------------------------------------------------------------ random generators
def rng_state() -> dict[str, Any]:
    """The Python, NumPy, torch (and CUDA) generator states, as ``weights_only``-loadable values."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        # numpy's state as plain types + a tensor so the file loads with weights_only=True
        "numpy": (str(np_state[0]), torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
                  int(np_state[2]), int(np_state[3]), float(np_state[4])),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore :func:`rng_state`."""
    torch.set_rng_state(state["torch"].cpu())
    random.setstate(_to_tuple(state["python"]))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def _to_tuple(x: Any) -> Any:
    if isinstance(x, (list, tuple)):
        return tuple(_to_tuple(v) for v in x)
    return x
