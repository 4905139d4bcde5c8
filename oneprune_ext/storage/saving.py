"""Save and load a physically pruned model without pickling modules.

The checkpoint written by :func:`save_pruned` is one ``torch.save`` file holding a
dict with two entries:

* ``"state_dict"``: the model's ordinary ``state_dict()`` (pruned shapes);
* ``"structure"``: a JSON string recording the shape of every state_dict tensor and
  the channel attributes of every layer the layer registry knows (``out_channels``,
  ``in_channels``, ``groups``, ``in_features``, ``out_features``, ``num_features``,
  ``normalized_shape``, ``embed_dim``, a ViT's ``hidden_dim``, ...; see each entry's
  ``record_attrs`` in :mod:`oneprune_ext.graph.registry`), i.e. the kept count per layer.

:func:`load_pruned` checks that record against a freshly constructed (dense) model,
shrinks that model's tensors and layer attributes to it, and loads the weights with
``torch.load(weights_only=True)``.  The file is written atomically (temporary file
in the same directory, fsync, ``os.replace``) and carries a format version and a checksum
of its contents (:mod:`oneprune_ext.storage.files`): a truncated, empty or damaged file is refused
with one line naming it. Everything is checked before the model changes: a file that does
not fit leaves the model as it was.

EMA and SWA averages: ``save_pruned`` of an ``AveragedModel``, a timm ``ModelEma*`` or an
ultralytics ``ModelEMA`` saves the averaged network (what gets evaluated and shipped), so the
file loads into a plain model; ``load_pruned(model, path, mirrors=[ema])`` also reshapes the
copies of a freshly built model and gives them the loaded weights (the average then starts
from the loaded model).
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping, Sequence

import torch
import torch.nn as nn

from . import files
from ..graph.registry import restore_attrs, structure_attrs
from ..pruning.mirrors import mirror_kind, mirror_module

__all__ = ["save_pruned", "load_pruned", "structure_record"]

_FORMAT = "oneprune_ext.pruned/1"  # layout of the structure record
_KIND, _VERSION = "oneprune_ext.pruned", 2


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


def _network(model: Any) -> nn.Module:
    """The network of ``model``: the copy inside an EMA / SWA holder, else ``model`` itself."""
    if mirror_kind(model) is not None or not isinstance(model, nn.Module):
        return mirror_module(model)
    return model


def save_pruned(model: nn.Module, path: str | os.PathLike) -> None:
    """Write ``model``'s state_dict and structure record to ``path`` atomically, with a format
    version and a checksum.

    ``model`` may be an EMA / SWA average (``AveragedModel``, timm ``ModelEma*``, ultralytics
    ``ModelEMA``): its averaged network is saved, without the holder's counters, so the file
    loads into a plain model with :func:`load_pruned`.
    """
    model = _network(model)
    record = structure_record(model)
    files.write_checked({"structure": json.dumps(record), "state_dict": model.state_dict()}, path, _KIND, _VERSION)


def _err(path: str, msg: str) -> ValueError:
    return ValueError(f"load_pruned({path!r}): {msg}")


def _recorded_attrs(m: nn.Module) -> dict[str, Any] | None:
    """The structure-record attributes of ``m`` (the layer knowledge lives in one place)."""
    return structure_attrs(m)


def _read_record(path: str, data: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The structure record and the state_dict of a loaded file, checked against each other."""
    if "structure" not in data or "state_dict" not in data:
        raise _err(path, "not a checkpoint written by save_pruned (no structure record)")
    try:
        record = json.loads(data["structure"])
    except (TypeError, ValueError) as e:
        raise _err(path, f"the structure record is not valid JSON ({e})") from None
    state = data["state_dict"]
    ok = (isinstance(record, dict) and isinstance(record.get("tensors"), dict)
          and isinstance(record.get("layers"), dict) and isinstance(state, Mapping))
    if not ok:
        raise _err(path, "the structure record or the state_dict is malformed")
    for k, shape in record["tensors"].items():
        if not isinstance(shape, list) or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0
                                                  for n in shape):
            raise _err(path, f"the structure record gives '{k}' the shape {shape!r}")
    for name, rec in record["layers"].items():
        if not isinstance(rec, dict) or not isinstance(rec.get("type"), str):
            raise _err(path, f"the structure record of layer '{name}' is malformed")
        for attr, v in rec.items():
            vals = v if isinstance(v, list) else [v]
            if attr != "type" and not all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in vals):
                raise _err(path, f"layer '{name}': {attr}={v!r} in the structure record is not a positive int")
    missing = sorted(set(record["tensors"]) - set(state))
    extra = sorted(set(state) - set(record["tensors"]))
    if missing or extra:
        raise _err(path, f"the weights and the structure record list different tensors: missing weights "
                         f"{missing[:5]}, weights not in the record {extra[:5]}")
    for k, v in state.items():
        if not isinstance(v, torch.Tensor) or list(v.shape) != record["tensors"][k]:
            raise _err(path, f"'{k}': weights and structure record disagree")
    return record, dict(state)


def _check_fits(path: str, model: nn.Module, record: Mapping[str, Any]) -> None:
    """The record fits ``model``: same tensors and layers, no size larger than the model's."""
    current = model.state_dict()
    params = dict(model.named_parameters())
    buffers = dict(model.named_buffers())
    saved = {k: tuple(v) for k, v in record["tensors"].items()}
    missing = sorted(set(current) - set(saved))
    unexpected = sorted(set(saved) - set(current))
    if missing or unexpected:
        raise _err(path, f"structure does not match the model: missing {missing[:5]}, unexpected {unexpected[:5]}"
                   f"{' (and more)' if len(missing) > 5 or len(unexpected) > 5 else ''}")
    for k, shape in saved.items():
        now = tuple(current[k].shape)
        if len(now) != len(shape) or any(s > n for s, n in zip(shape, now)):
            raise _err(path, f"'{k}' has saved shape {list(shape)} that does not fit the model's {list(now)}")
        if k not in params and k not in buffers:
            raise _err(path, f"'{k}' is not a parameter or buffer of the model")
    modules = dict(model.named_modules())
    for name, rec in record["layers"].items():
        m = modules.get(name)
        if m is None or type(m).__name__ != rec["type"]:
            found = "nothing" if m is None else type(m).__name__
            raise _err(path, f"layer '{name}' was a {rec['type']}, the model has {found} there")
        now = _recorded_attrs(m) or {}
        for attr, v in rec.items():
            if attr == "type":
                continue
            if attr not in now:
                raise _err(path, f"layer '{name}' ({rec['type']}) has no attribute '{attr}' to restore")
            saved_v, model_v = (v, now[attr]) if isinstance(v, list) else ([v], [now[attr]])
            if len(saved_v) != len(model_v) or any(a > b for a, b in zip(saved_v, model_v)):
                raise _err(path, f"layer '{name}': {attr}={v} in the structure record does not fit the "
                                 f"model's {now[attr]} (a pruned model only shrinks)")


def _snapshot(model: nn.Module) -> list[tuple[Any, str, Any]]:
    """``(owner, attribute, value)`` of everything the load may change, to undo it."""
    undo: list[tuple[Any, str, Any]] = []
    for m in model.modules():
        for n, p in m.named_parameters(recurse=False):
            undo.append((p, "data", p.data))
            undo.append((p, "grad", p.grad))
        for n in list(m._buffers):
            undo.append((m._buffers, n, m._buffers[n]))
        for attr in _recorded_attrs(m) or {}:
            undo.append((m, attr, getattr(m, attr)))
    return undo


def _undo(undo: list[tuple[Any, str, Any]]) -> None:
    for owner, attr, value in reversed(undo):
        if isinstance(owner, dict):
            owner[attr] = value
        else:
            setattr(owner, attr, value)


def _reshape(model: nn.Module, record: Mapping[str, Any]) -> None:
    """Give every tensor its saved shape (contents follow from load_state_dict) and every
    recorded layer its recorded attributes."""
    from ..pruning.compaction import _update_module_attrs

    params = dict(model.named_parameters())
    buffers = dict(model.named_buffers())
    current = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    for k, shape in record["tensors"].items():
        if current[k] == tuple(shape):
            continue
        if k in params:
            p = params[k]
            p.grad = None
            p.data = torch.empty(shape, dtype=p.dtype, device=p.device)
        else:
            b = buffers[k]
            owner, _, attr = k.rpartition(".")
            mod = model.get_submodule(owner) if owner else model
            mod._buffers[attr] = torch.empty(shape, dtype=b.dtype, device=b.device)
    modules = dict(model.named_modules())
    for name, rec in record["layers"].items():
        restore_attrs(modules[name], {a: v for a, v in rec.items() if a != "type"})
    # the attributes must be the ones the tensors imply (as after a prune)
    shapes = {k: tuple(v) for k, v in record["tensors"].items()}
    _update_module_attrs(model, shapes, set(shapes))
    for name, rec in record["layers"].items():
        implied = _recorded_attrs(modules[name]) or {}
        for attr, val in rec.items():
            if attr != "type" and implied.get(attr) != val:
                raise ValueError(f"layer '{name}': the structure record says {attr}={val}, its tensors' "
                                 f"shapes say {implied.get(attr)}")


def load_pruned(model: nn.Module, path: str | os.PathLike, map_location: Any = "cpu", *,
                mirrors: Sequence[Any] = ()) -> nn.Module:
    """Reshape a freshly built ``model`` to the saved structure and load the weights.

    Args:
        model: a dense instance of the same architecture (modified in place; its
            parameters stay the same ``nn.Parameter`` objects). An EMA / SWA holder loads
            into its averaged network (as :func:`save_pruned` saves it).
        path: a file written by :func:`save_pruned`.
        map_location: passed to ``torch.load``.
        mirrors: copies of ``model`` made before the load (EMA / SWA averages: anything
            ``OneCyclePruner.track`` accepts): reshaped to the same structure and given the
            loaded weights (in their own dtype and device); their holders' counters
            (``n_averaged``, ``updates``) are left as they are.

    Returns:
        ``model``.

    Raises:
        ValueError: the file is missing, empty, truncated, damaged (checksum) or not written
            by :func:`save_pruned` (:class:`oneprune_ext.storage.files.FileFormatError`, one line
            naming the file), or its structure does not fit the model (unknown / missing
            tensors or layers, weights and record listing different tensors, different
            layer types or ranks, a saved size larger than the model's, layer attributes
            that disagree with the tensors' shapes).  Nothing is changed then.
    """
    spath = os.fspath(path)
    holders = list(mirrors)
    nets = [_network(model)] + [mirror_module(h) for h in holders]
    if len({id(n) for n in nets}) != len(nets):
        raise _err(spath, "a mirror is the model itself or is listed twice")
    data = files.read_checked(spath, _KIND, (1, _VERSION), map_location=map_location, use="load_pruned")
    record, state = _read_record(spath, data)
    for net in nets:
        _check_fits(spath, net, record)
    # everything that can be checked without changing the model is checked: now change it,
    # and undo every change if the load still fails
    undo = [u for net in nets for u in _snapshot(net)]
    try:
        for net in nets:
            with torch.no_grad():
                _reshape(net, record)
            net.load_state_dict(state, strict=True)
    except Exception as e:
        _undo(undo)
        if isinstance(e, ValueError):
            raise _err(spath, f"{e} (nothing was changed)") from None
        raise
    for h in holders:
        kind = mirror_kind(h)
        if kind is not None:
            kind.after_prune(h)
    return model
