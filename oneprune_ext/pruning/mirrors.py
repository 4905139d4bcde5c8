"""Copies of the model that are pruned with it: EMA and SWA averages.

Modern recipes keep a moving average of the weights (timm's training script, ultralytics,
ConvNeXt): a deep copy of the network, updated after every optimizer step, that is what gets
evaluated and shipped. When the model is pruned in place its average must lose the same
channels, or the next update fails (``torch._foreach_lerp_``: "The size of tensor a (24) must
match the size of tensor b (17)").

A **mirror** is a module with the model's parameter and buffer names (a deep copy; on any
device, in any dtype or memory format). The object a user holds is often a wrapper around
it; :func:`mirror_module` finds the copy inside, through a small registry of known holders
(one :class:`MirrorKind` each, matched by qualified class name so nothing is imported):

=========================================  ==========  =================================================
holder                                     the copy    other state
=========================================  ==========  =================================================
``torch.optim.swa_utils.AveragedModel``    ``module``  ``n_averaged`` (a buffer of the wrapper) is kept
timm ``ModelEma``, ``ModelEmaV2``, ``V3``  ``module``  decay, step counters: unchanged
ultralytics ``ModelEMA``                   ``ema``     ``updates`` kept; its cached tensor pairs
                                                       (``_pairs``) are dropped, so the next update
                                                       reads the pruned tensors
a plain ``nn.Module`` copy                 itself
=========================================  ==========  =================================================

Any other object with an ``nn.Module`` attribute named ``module``, ``ema`` or ``model`` that
mirrors the model is accepted too; :func:`register_mirror_kind` adds a holder whose copy
lives elsewhere or that caches tensors.

:class:`Mirrors` is the pruner's list of tracked copies (``OneCyclePruner.track``): it checks
each copy against the model when it is tracked, and hands their modules to
:func:`~oneprune_ext.pruning.compaction.prune_channels`, which prunes the model and every
copy with the same kept channels, validating all of them before changing any.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping, Optional

import torch
import torch.nn as nn

__all__ = ["MirrorKind", "Mirrors", "mirror_module", "mirror_kind", "register_mirror_kind", "tensor_shapes"]


@dataclass(frozen=True)
class MirrorKind:
    """What the library knows about one kind of holder of a model copy.

    Attributes:
        name: a label for messages (``"AveragedModel"``).
        qualnames: the holder classes, as ``module.QualName`` strings (matched against the
            holder's class and its bases, so nothing is imported).
        attr: the attribute holding the copy (``None``: the holder is the copy).
        after_prune: called with the holder after its copy was pruned (drop cached tensors).
    """

    name: str
    qualnames: tuple[str, ...]
    attr: Optional[str]
    after_prune: Callable[[Any], None] = lambda holder: None


def _drop_ultralytics_pairs(holder: Any) -> None:
    # ModelEMA.update builds (ema tensors, model tensors) once and reuses them: after the prune
    # they are the dense tensors (kept alive by the cache, updated instead of the pruned ones)
    if hasattr(holder, "_pairs"):
        holder._pairs = None


_KINDS: list[MirrorKind] = [
    MirrorKind("AveragedModel", ("torch.optim.swa_utils.AveragedModel",), "module"),
    MirrorKind("timm ModelEma", ("timm.utils.model_ema.ModelEma", "timm.utils.model_ema.ModelEmaV2",
                                 "timm.utils.model_ema.ModelEmaV3"), "module"),
    MirrorKind("ultralytics ModelEMA", ("ultralytics.utils.torch_utils.ModelEMA",), "ema",
               after_prune=_drop_ultralytics_pairs),
]
_GENERIC_ATTRS = ("module", "ema", "model")


def register_mirror_kind(kind: MirrorKind) -> None:
    """Teach :func:`mirror_module` another holder (checked before the built-in ones)."""
    if not isinstance(kind, MirrorKind):
        raise TypeError(f"register_mirror_kind: expected a MirrorKind, got {type(kind).__name__}")
    _KINDS.insert(0, kind)


def _qualnames(obj: Any) -> set[str]:
    return {f"{c.__module__}.{c.__qualname__}" for c in type(obj).__mro__}


def mirror_kind(holder: Any) -> Optional[MirrorKind]:
    """The registered kind of ``holder`` (None for a plain module or an unknown object)."""
    names = _qualnames(holder)
    for kind in _KINDS:
        if names.intersection(kind.qualnames):
            return kind
    return None


def mirror_module(holder: Any) -> nn.Module:
    """The network copy inside ``holder``: ``holder.module`` of an ``AveragedModel`` or a timm
    ``ModelEma*``, ``holder.ema`` of an ultralytics ``ModelEMA``, ``holder`` itself for a plain
    module. Raises TypeError when ``holder`` holds no module."""
    kind = mirror_kind(holder)
    if kind is not None:
        m = holder if kind.attr is None else getattr(holder, kind.attr, None)
        if not isinstance(m, nn.Module):
            raise TypeError(f"{kind.name} object has no module in '{kind.attr}' (got {type(m).__name__})")
        return m
    if isinstance(holder, nn.Module):
        return holder
    for attr in _GENERIC_ATTRS:
        m = getattr(holder, attr, None)
        if isinstance(m, nn.Module):
            return m
    raise TypeError(
        f"{type(holder).__name__} is not a module and holds none in {', '.join(_GENERIC_ATTRS)}: pass the "
        "copy of the model (an nn.Module), an AveragedModel, a timm ModelEma* or an ultralytics ModelEMA "
        "(or describe the holder with oneprune_ext.pruning.mirrors.register_mirror_kind)")


def tensor_shapes(module: nn.Module) -> dict[str, tuple[int, ...]]:
    """Shape of every parameter and buffer of ``module``, by name."""
    out = {n: tuple(b.shape) for n, b in module.named_buffers()}
    out.update({n: tuple(p.shape) for n, p in module.named_parameters()})
    return out


def _storages(module: nn.Module) -> set[tuple[torch.device, int]]:
    out = set()
    for t in list(module.parameters()) + list(module.buffers()):
        if t.layout == torch.strided and t.device.type != "meta" and t.untyped_storage().nbytes():
            out.add((t.device, t.untyped_storage().data_ptr()))
    return out


def _first_difference(names: list[str], mirror: Mapping[str, tuple[int, ...]],
                      model: Mapping[str, tuple[int, ...]]) -> Optional[str]:
    for n in names:
        if n not in mirror:
            return f"it has no '{n}'"
        if mirror[n] != model[n]:
            return f"'{n}' has shape {list(mirror[n])} in the copy, {list(model[n])} in the model"
    return None


class Mirrors:
    """The copies tracked by a pruner, in the order they were tracked.

    Args:
        model: the pruned network.
        names: the tensors the channel groups touch (the ones a prune reshapes).
        dense_shapes: their shapes in the dense model.
    """

    def __init__(self, model: nn.Module, names: list[str], dense_shapes: Mapping[str, tuple[int, ...]]) -> None:
        self._model = model
        self._names = list(names)
        self._dense = {n: tuple(dense_shapes[n]) for n in self._names}
        self._holders: list[Any] = []

    def __len__(self) -> int:
        return len(self._holders)

    def __iter__(self) -> Iterator[Any]:
        return iter(list(self._holders))

    def modules(self) -> list[nn.Module]:
        """The copies themselves (``mirror_module`` of each holder)."""
        return [mirror_module(h) for h in self._holders]

    def kinds(self) -> list[str]:
        """A label per holder: its registered kind, or its class name."""
        return [(mirror_kind(h).name if mirror_kind(h) is not None else type(h).__name__) for h in self._holders]

    def check_new(self, holder: Any) -> tuple[nn.Module, bool]:
        """Checks a holder before it is tracked: returns its copy and whether the copy is still
        dense (so it must be pruned to the model's structure now). Nothing is changed.

        Raises:
            TypeError: ``holder`` holds no module.
            ValueError: the copy is the model, shares memory with it or with a tracked copy, is
                tracked already, or has neither the model's shapes nor its dense shapes.
        """
        m = mirror_module(holder)
        if m is self._model:
            raise ValueError("track: that is the pruned model itself; pass a copy of it (an EMA / SWA average)")
        if any(m is mirror_module(h) for h in self._holders):
            raise ValueError(f"track: this {type(holder).__name__} is tracked already")
        mine = _storages(m)
        for other, label in [(self._model, "the model")] + [(mirror_module(h), "a tracked copy")
                                                             for h in self._holders]:
            if mine & _storages(other):
                raise ValueError(
                    f"track: the {type(holder).__name__}'s tensors share memory with {label}; a copy must own its "
                    "tensors (copy.deepcopy(model), AveragedModel(model), ...)")
        shapes = tensor_shapes(m)
        now = tensor_shapes(self._model)
        why = _first_difference(self._names, shapes, now)
        if why is None:
            return m, False
        if _first_difference(self._names, shapes, self._dense) is None:
            return m, True
        raise ValueError(
            f"track: the {type(holder).__name__} does not mirror the model: {why}. A tracked copy must have the "
            "model's tensors, with its current shapes or its dense ones (make the average from this model)")

    def add(self, holder: Any) -> None:
        """Track ``holder`` (after :meth:`check_new` and any prune it needed)."""
        self._holders.append(holder)

    def after_prune(self) -> None:
        """Let every holder drop what it cached about its copy's tensors."""
        for h in self._holders:
            kind = mirror_kind(h)
            if kind is not None:
                kind.after_prune(h)
