"""PrunerConfig: every option of :class:`~oneprune_ext.pruning.pruner.OneCyclePruner`, in one place.

One frozen dataclass validates the options, serialises them (``to_dict`` / ``from_dict``,
plain Python values, stored in the pruner's ``state_dict``) and describes them for the
``oneprune`` command line (``add_arguments`` / ``from_args``). Each option is one field
declared with :func:`option`: its default, its help text (with units), its check and how the
command line parses it. Adding an option means adding one field here; the pruner reads it
from ``pruner.config``, the CLI gets a ``--flag`` for it and checkpoints record it.

Epochs are 0-based epoch indices of one run of ``total_epochs`` epochs; ``reduction`` is the
fraction of the dense MACs (or parameters) removed. The defaults are the published CIFAR-10
recipe's pruning settings (:data:`oneprune_ext.pruning.recipes.CIFAR10`).

Adding an option, e.g. a switch::

    reselect_at_prune: bool = option(False, "choose the sub-network once more right before the prune", boolean)

gives ``PrunerConfig(..., reselect_at_prune=True)``, ``--reselect-at-prune`` /
``--no-reselect-at-prune`` and its entry in ``to_dict()``; the pruner reads
``self.config.reselect_at_prune``.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import numbers
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional, Sequence, Union

from .recipes import CIFAR10

__all__ = ["PrunerConfig", "option", "TARGETS", "REGULARIZERS", "SALIENCY_PARAMS", "boolean", "int_at_least",
           "real_in", "one_of", "is_int", "is_real", "config_with_options"]

TARGETS = ("macs", "params")
REGULARIZERS = ("shrink", "group_lasso", "both")
SALIENCY_PARAMS = ("published", "all")


# --------------------------------------------------------------------------------- field checks
# Each takes (name, value) and returns the normalised value or raises ValueError naming the option.


def is_int(x: Any) -> bool:
    """An integer that is not a bool (``True`` is not an epoch or a count)."""
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def is_real(x: Any) -> bool:
    """A real number that is not a bool."""
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def int_at_least(lo: int, unit: str = "epochs") -> Callable[[str, Any], int]:
    def check(name: str, v: Any) -> int:
        if not is_int(v):
            raise ValueError(f"{name} must be an int ({unit}), got {v!r}")
        if v < lo:
            raise ValueError(f"{name} must be >= {lo}, got {v}")
        return int(v)
    return check


def real_in(lo: float, hi: float, lo_open: bool, hi_open: bool, what: str) -> Callable[[str, Any], float]:
    def check(name: str, v: Any) -> float:
        ok = is_real(v) and math.isfinite(float(v))
        if ok:
            f = float(v)
            ok = (f > lo if lo_open else f >= lo) and (f < hi if hi_open else f <= hi)
        if not ok:
            lb, rb = "(" if lo_open else "[", ")" if hi_open else "]"
            raise ValueError(f"{name} must be in {lb}{lo:g}, {hi:g}{rb} ({what}), got {v!r}")
        return float(v)
    return check


def one_of(choices: Sequence[str]) -> Callable[[str, Any], str]:
    def check(name: str, v: Any) -> str:
        if v not in choices:
            raise ValueError(f"{name} must be one of {tuple(choices)}, got {v!r}")
        return str(v)
    return check


def boolean(name: str, v: Any) -> bool:
    if not isinstance(v, bool):
        raise ValueError(f"{name} must be True or False, got {v!r}")
    return v


def _is_nonneg_real(v: Any) -> bool:
    return is_real(v) and math.isfinite(float(v)) and float(v) >= 0.0


def _nonneg_real(name: str, v: Any) -> float:
    if not _is_nonneg_real(v):
        raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
    return float(v)


def _reg_or_auto(name: str, v: Any) -> Union[float, str]:
    if v == "auto":
        return "auto"
    if not _is_nonneg_real(v):
        raise ValueError(f"{name} must be a finite number >= 0 or 'auto', got {v!r}")
    return float(v)


def _epoch_or_auto(name: str, v: Any) -> Union[int, str]:
    if v == "auto":
        return "auto"
    if not is_int(v) or v < 0:
        raise ValueError(f"{name} must be an int (0-based epoch) or 'auto', got {v!r}")
    return int(v)


def _optional_positive_int(name: str, v: Any) -> Optional[int]:
    if v is None:
        return None
    if not is_int(v) or v < 1:
        raise ValueError(f"{name} must be a positive int or None, got {v!r}")
    return int(v)


def _names(name: str, v: Any) -> tuple[str, ...]:
    items = (v,) if isinstance(v, str) else v
    try:
        out = tuple(items)
    except TypeError:
        raise ValueError(f"{name} must be a sequence of module names, got {v!r}") from None
    if not all(isinstance(s, str) and s for s in out):
        raise ValueError(f"{name} must be module names (as in model.named_modules()), got {v!r}")
    return out


# ------------------------------------------------------------------------------ command-line parsers


def _cli_number(cast: type, check: Callable[[str, Any], Any]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            v = cast(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an int' if cast is int else 'a number'}, got {text!r}") from None
        try:
            return check("value", v)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e).replace("value ", "", 1)) from None
    return parse


def _cli_epoch_or_auto(text: str) -> Union[int, str]:
    if text == "auto":
        return "auto"
    return _cli_number(int, int_at_least(0))(text)


def _cli_reg_or_auto(text: str) -> Union[float, str]:
    if text == "auto":
        return "auto"
    return _cli_number(float, _nonneg_real)(text)


def _cli_names(text: str) -> tuple[str, ...]:
    return tuple(s for s in (t.strip() for t in text.split(",")) if s)


def option(default: Any, help: str, check: Callable[[str, Any], Any], *,
           parse: Optional[Callable[[str], Any]] = None, choices: Optional[Sequence[str]] = None,
           metavar: Optional[str] = None, cli: bool = True) -> Any:
    """One option of :class:`PrunerConfig`: a dataclass field with its help, check and CLI parsing.

    Args:
        default: the default (``dataclasses.MISSING`` for a required option).
        help: one sentence for ``--help`` and the docs, with units.
        check: ``check(name, value)`` returns the normalised value or raises ValueError naming ``name``.
        parse: turns the command-line text into a value (default: by ``type(default)``).
        choices: the allowed strings (shown by ``--help``).
        metavar: the placeholder ``--help`` shows.
        cli: whether ``oneprune`` gets a ``--flag`` for it (False when the trainer sets it).
    """
    return field(default=default, metadata={
        "help": help, "check": check, "parse": parse, "choices": choices, "metavar": metavar, "cli": cli})


@dataclass(frozen=True)
class PrunerConfig:
    """The options of one-cycle pruning (validated when built; immutable).

    Build it with keywords (``PrunerConfig(total_epochs=300, reduction=0.5)``), change it
    with ``dataclasses.replace(cfg, reduction=0.6)``, store it with :meth:`to_dict` and
    rebuild it with :meth:`from_dict`.

    Raises:
        ValueError: a bad option, or options that contradict each other; the message names them.
    """

    total_epochs: int = option(
        dataclasses.MISSING, "length of the whole run, in epochs (epochs are 0-based, < total_epochs)",
        int_at_least(1), cli=False)
    target: str = option(
        "macs", "what --reduction is a fraction of: MACs or parameters", one_of(TARGETS), choices=TARGETS)
    reduction: float = option(
        0.5, "fraction of the dense model's MACs (or parameters) to remove, in (0, 1)",
        real_in(0.0, 1.0, True, True, "0.5 = half removed"), metavar="FRACTION")
    monitor_start: int = option(
        CIFAR10.monitor_start, "0-based epoch at which the sub-network search and stability monitoring start", int_at_least(0),
        metavar="EPOCH")
    sl_start: Union[int, str] = option(
        CIFAR10.sl_start, "0-based epoch at which sparsity learning starts (>= monitor_start), or 'auto' (the first "
            "plateau of the stability indicator after epoch 3)", _epoch_or_auto,
        parse=_cli_epoch_or_auto, metavar="EPOCH|auto")
    sl_end: int = option(
        CIFAR10.sl_end, "0-based epoch by whose end the model is pruned at the latest, if it was not stable before "
             "(monitor_start < sl_end < total_epochs)", int_at_least(0), metavar="EPOCH")
    reg: Union[float, str] = option(
        CIFAR10.reg, "regularisation strength at the start of sparsity learning (>= 0), growing by reg_delta every "
              "reg_interval epochs; or 'auto': shrink the channels chosen for removal along the published "
              "CIFAR-10 curve (sum of reg*lr over the steps about 8.3 by sl_end, a factor of about 2.4e-4) "
              "whatever the number of epochs, steps per epoch and lr (reg_delta and reg_interval unused)",
        _reg_or_auto, parse=_cli_reg_or_auto, metavar="REG|auto")
    reg_delta: float = option(
        CIFAR10.reg_delta, "added to the regularisation strength every reg_interval epochs (>= 0)", _nonneg_real)
    reg_interval: int = option(
        CIFAR10.reg_interval, "epochs between increases of the regularisation strength (1 for CIFAR, 2 for ImageNet as "
           "published)", int_at_least(1), metavar="EPOCHS")
    regularizer: str = option(
        CIFAR10.regularizer, "shrink: scale the channels chosen for removal by (1 - reg*lr) after each optimizer step "
                  "(what produced the published numbers: the published penalty term is computed under "
                  "no_grad); group_lasso: add the gradient of the penalty reg*sum_c ||g_c|| the paper "
                  "describes (this project's extension; SGD momentum amplifies it about tenfold); both",
        one_of(REGULARIZERS), choices=REGULARIZERS)
    saliency_params: str = option(
        CIFAR10.saliency_params, "which weights count in the saliency, the cost share and the shrink: published = conv/"
                     "linear rows and columns and BatchNorm weights (depthwise-conv, LayerNorm and layer-scale "
                     "weights left out, as published); all = every coupled slice, depthwise-conv, "
                     "LayerNorm and layer-scale weights included (only MobileNet/ConvNeXt-style models differ)",
        one_of(SALIENCY_PARAMS), choices=SALIENCY_PARAMS)
    reselect_at_prune: bool = option(
        CIFAR10.reselect_at_prune, "choose the sub-network once more at the end of the prune epoch, from the weights its "
               "training left, instead of pruning the one chosen at its start (the published ImageNet loop)",
        boolean)
    stability_threshold: float = option(
        CIFAR10.stability_threshold, "prune when the stability indicator (mean Jaccard similarity of recent sub-networks, "
               "0..1) reaches this, in (0, 1]", real_in(0.0, 1.0, True, False, "an indicator value"),
        metavar="PSI")
    layer_limit: float = option(
        CIFAR10.layer_limit, "at most this fraction of a layer's C channels may be removed (times 1 - exp(-k*C)), in [0, 1]",
        real_in(0.0, 1.0, False, False, "fraction of a group removable"), metavar="FRACTION")
    layer_limit_k: float = option(
        CIFAR10.layer_limit_k, "k of the layer limit above (> 0)", real_in(0.0, math.inf, True, True, "> 0"), metavar="K")
    round_to: Optional[int] = option(
        None, "keep channel counts multiples of this (none: no rounding)", _optional_positive_int,
        parse=_cli_number(int, int_at_least(1, "channels")), metavar="N")
    ignored_layers: tuple[str, ...] = option(
        (), "names of modules (as in model.named_modules()) whose output channels are never pruned",
        _names, parse=_cli_names, metavar="NAME[,NAME...]")

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            object.__setattr__(self, f.name, f.metadata["check"](f.name, getattr(self, f.name)))
        self._check_together()

    def _check_together(self) -> None:
        sl, ms, se, te = self.sl_start, self.monitor_start, self.sl_end, self.total_epochs
        if sl != "auto":
            if sl < ms:
                raise ValueError(f"sl_start ({sl}) must be >= monitor_start ({ms}): sparsity learning "
                                 "regularises the sub-network the search chose")
            if sl > se:
                raise ValueError(f"sl_start ({sl}) must be <= sl_end ({se})")
        if not ms < se:
            raise ValueError(f"monitor_start ({ms}) must be < sl_end ({se})")
        if not se < te:
            raise ValueError(f"sl_end ({se}) must be < total_epochs ({te}): the model is pruned at the end of "
                             "epoch sl_end at the latest and then trained further")

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        """The options as plain Python values (JSON- and ``weights_only``-loadable)."""
        return {f.name: (list(v) if isinstance(v, tuple) else v)
                for f in dataclasses.fields(self) for v in [getattr(self, f.name)]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "PrunerConfig":
        """Rebuild from :meth:`to_dict` output; options missing from ``data`` take their defaults.

        Raises:
            ValueError: an unknown option name, or a bad value.
        """
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"PrunerConfig: unknown option(s) {unknown}; known: {sorted(known)}")
        return cls(**dict(data))

    # ------------------------------------------------------------------ command line
    @staticmethod
    def flag(name: str, flags: Optional[Mapping[str, str]] = None) -> str:
        """The command-line flag of option ``name`` (``sl_start`` -> ``--sl-start``), unless ``flags`` names it."""
        return (flags or {}).get(name) or "--" + name.replace("_", "-")

    @classmethod
    def as_flags(cls, text: str, flags: Optional[Mapping[str, str]] = None) -> str:
        """``text`` (a help text or an error message) with option names written as flags."""
        for name in sorted((f.name for f in dataclasses.fields(cls)), key=len, reverse=True):
            text = re.sub(rf"(?<![\w-]){name}\b", cls.flag(name, flags), text)
        return text

    @classmethod
    def add_arguments(cls, parser: Union[argparse.ArgumentParser, Any],
                      defaults: Optional[Mapping[str, str]] = None,
                      flags: Optional[Mapping[str, str]] = None) -> None:
        """Add a ``--flag`` for every command-line option to ``parser`` (or an argument group).

        Every flag defaults to None ("not given"), so :meth:`from_args` can tell the options
        the user set from those left to the config's defaults or to the caller's presets.

        Args:
            defaults: per option, text for ``--help`` describing a default that the caller
                resolves itself (e.g. scaled to the run length); otherwise the field default.
            flags: per option, the flag the caller gives it elsewhere (e.g. ``total_epochs``
                -> ``--epochs``), used when help texts mention that option.
        """
        defaults = defaults or {}
        for f in dataclasses.fields(cls):
            meta = f.metadata
            if not meta["cli"]:
                continue
            shown = defaults.get(f.name, "none" if f.default in (None, ()) else str(f.default))
            text = cls.as_flags(f"{meta['help']} (default: {shown})", flags).replace("%", "%%")
            if isinstance(f.default, bool):  # --flag / --no-flag
                parser.add_argument(cls.flag(f.name), dest=f.name, action=argparse.BooleanOptionalAction,
                                    default=None, help=text)
                continue
            parse = meta["parse"]
            if parse is None and meta["choices"] is None:
                cast = int if isinstance(f.default, int) else float
                parse = _cli_number(cast, meta["check"])
            parser.add_argument(cls.flag(f.name), dest=f.name, type=parse, choices=meta["choices"], default=None,
                                metavar=meta["metavar"], help=text)

    @classmethod
    def from_args(cls, args: argparse.Namespace, **overrides: Any) -> "PrunerConfig":
        """The config of parsed arguments: options given on the command line, then ``overrides``
        for the rest (e.g. ``total_epochs`` and resolved presets), then the defaults."""
        kw: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            given = getattr(args, f.name, None) if f.metadata["cli"] else None
            if given is not None:
                kw[f.name] = given
            elif overrides.get(f.name) is not None:
                kw[f.name] = overrides[f.name]
        extra = sorted(set(overrides) - {f.name for f in dataclasses.fields(cls)})
        if extra:
            raise ValueError(f"PrunerConfig.from_args: unknown option(s) {extra}")
        return cls(**kw)

    def describe(self) -> str:
        """One line: ``name=value`` for every option."""
        return ", ".join(f"{k}={v!r}" for k, v in self.to_dict().items())


def config_with_options(model: Any, config: Optional[PrunerConfig], options: dict[str, Any]) -> PrunerConfig:
    """The config of ``OneCyclePruner(model, x, config, **options)``: keywords override ``config``'s fields;
    ``ignored_layers`` may name modules of ``model`` or be the modules themselves."""
    if config is not None and not isinstance(config, PrunerConfig):
        raise TypeError(f"OneCyclePruner: config must be a PrunerConfig, got {type(config).__name__} "
                        "(pass options as keywords, or PrunerConfig(**options))")
    known = {f.name for f in dataclasses.fields(PrunerConfig)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise TypeError(f"OneCyclePruner: unknown option(s) {unknown}; the options are {sorted(known)}")
    if "ignored_layers" in options:
        options = dict(options, ignored_layers=_layer_names(model, options["ignored_layers"]))
    if config is not None:
        return dataclasses.replace(config, **options)
    if "total_epochs" not in options:
        raise ValueError("OneCyclePruner: total_epochs is required (the length of the run, in epochs)")
    return PrunerConfig(**options)


def _layer_names(model: Any, layers: Any) -> tuple[str, ...]:
    """Module names of ``layers`` (modules of ``model`` or names)."""
    import torch.nn as nn

    if isinstance(layers, (str, nn.Module)):
        layers = [layers]
    name_of = {id(m): n for n, m in model.named_modules()}
    out = []
    for m in layers:
        if isinstance(m, nn.Module):
            if id(m) not in name_of:
                raise ValueError(f"ignored_layers: {type(m).__name__} module is not part of the model")
            out.append(name_of[id(m)])
        else:
            out.append(m)
    return tuple(out)
