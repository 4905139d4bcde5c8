"""Save and load a physically pruned model without pickling modules.

The checkpoint written by :func:`save_pruned` is one ``torch.save`` file holding a
dict with two entries:

* ``"state_dict"``: the model's ordinary ``state_dict()`` (pruned shapes);
* ``"structure"``: a JSON string recording the shape of every state_dict tensor and
  the channel attributes of every layer the layer registry knows (``out_channels``,
  ``in_channels``, ``groups``, ``in_features``, ``out_features``, ``num_features``,
  ``normalized_shape``, ``embed_dim``, a ViT's ``hidden_dim``, ...; see each entry's
  ``record_attrs`` in :mod:`oneprune_ext.registry`), i.e. the kept count per layer.

:func:`load_pruned` checks that record against a freshly constructed (dense) model,
shrinks that model's tensors and layer attributes to it, and loads the weights with
``torch.load(weights_only=True)``.  The file is written atomically (temporary file
in the same directory, fsync, ``os.replace``).
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any

import torch
import torch.nn as nn

from .registry import restore_attrs, structure_attrs

__all__ = ["save_pruned", "load_pruned", "structure_record", "atomic_save"]

_FORMAT = "oneprune_ext.pruned/1"


def structure_record(model: nn.Module) -> dict[str, Any]:
    """The JSON-able structure of ``model``: tensor shapes and per-layer channel counts."""
    layers = {}
    for name, m in model.named_modules():
        attrs = structure_attrs(m)
        if attrs is not None:
            layers[name] = {"type": type(m).__name__, **attrs}
    return {
        "format": _FORMAT,
        "model": type(model).__name__,
        "tensors": {k: list(v.shape) for k, v in model.state_dict().items()},
        "layers": layers,
    }


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save(obj, path)`` atomically: a temporary file in the same folder, fsync, then
    ``os.replace``, so a crash never leaves a half-written file at ``path``."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".oneprune-", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_pruned(model: nn.Module, path: str | os.PathLike) -> None:
    """Write ``model``'s state_dict and structure record to ``path`` atomically."""
    record = structure_record(model)
    atomic_save({"format": _FORMAT, "structure": json.dumps(record), "state_dict": model.state_dict()}, path)


def _err(path: str, msg: str) -> ValueError:
    return ValueError(f"load_pruned({path!r}): {msg}")


def load_pruned(model: nn.Module, path: str | os.PathLike, map_location: Any = "cpu") -> nn.Module:
    """Reshape a freshly built ``model`` to the saved structure and load the weights.

    Args:
        model: a dense instance of the same architecture (modified in place; its
            parameters stay the same ``nn.Parameter`` objects).
        path: a file written by :func:`save_pruned`.
        map_location: passed to ``torch.load``.

    Returns:
        ``model``.

    Raises:
        ValueError: the file is not a pruned checkpoint, or its structure does not fit
            the model (unknown / missing tensors or layers, different layer types or
            ranks, a saved size larger than the model's).  Nothing is changed then.
    """
    spath = os.fspath(path)
    data = torch.load(spath, map_location=map_location, weights_only=True)
    if not isinstance(data, dict) or data.get("format") != _FORMAT or "structure" not in data:
        raise _err(spath, "not a checkpoint written by save_pruned")
    record = json.loads(data["structure"])
    state = data["state_dict"]
    params = dict(model.named_parameters())
    buffers = dict(model.named_buffers())
    current = model.state_dict()
    saved = {k: tuple(v) for k, v in record["tensors"].items()}
    missing = sorted(set(current) - set(saved))
    unexpected = sorted(set(saved) - set(current))
    if missing or unexpected:
        raise _err(spath, f"structure does not match the model: missing {missing[:5]}, unexpected {unexpected[:5]}"
                   f"{' (and more)' if len(missing) > 5 or len(unexpected) > 5 else ''}")
    for k, shape in saved.items():
        now = tuple(current[k].shape)
        if len(now) != len(shape) or any(s > n for s, n in zip(shape, now)):
            raise _err(spath, f"'{k}' has saved shape {list(shape)} that does not fit the model's {list(now)}")
        if k not in params and k not in buffers:
            raise _err(spath, f"'{k}' is not a parameter or buffer of the model")
        if tuple(state[k].shape) != shape:
            raise _err(spath, f"'{k}': weights and structure record disagree")
    modules = dict(model.named_modules())
    for name, rec in record["layers"].items():
        m = modules.get(name)
        if m is None or type(m).__name__ != rec["type"]:
            found = "nothing" if m is None else type(m).__name__
            raise _err(spath, f"layer '{name}' was a {rec['type']}, the model has {found} there")
    # everything checked: reshape
    with torch.no_grad():
        for k, shape in saved.items():
            if tuple(current[k].shape) == shape:
                continue
            if k in params:
                p = params[k]
                p.data = torch.empty(shape, dtype=p.dtype, device=p.device)
            else:
                b = buffers[k]
                owner, _, attr = k.rpartition(".")
                mod = model.get_submodule(owner) if owner else model
                mod._buffers[attr] = torch.empty(shape, dtype=b.dtype, device=b.device)
        for name, rec in record["layers"].items():
            restore_attrs(modules[name], {a: v for a, v in rec.items() if a != "type"})
    model.load_state_dict(state, strict=True)
    return model
