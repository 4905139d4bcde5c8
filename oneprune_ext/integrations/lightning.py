"""One-cycle pruning as a Lightning callback: ``OneCyclePruning`` (``pip install oneprune_ext[lightning]``).

::

    import lightning as L
    from oneprune_ext.integrations.lightning import OneCyclePruning

    pruning = OneCyclePruning(network="net", reduction=0.5, reg="auto", mirrors=["ema"])
    trainer = L.Trainer(max_epochs=30, callbacks=[pruning])
    trainer.fit(module, train_loader)              # prunes in place during the run
    trainer.fit(module, train_loader, ckpt_path=path)  # resumes, before or after the prune

What the callback does, at each Lightning moment:

===========================  ==============================================================
``setup("fit")``             builds the :class:`~oneprune_ext.OneCyclePruner` on the network (the
                             LightningModule, one of its attributes, or what a callable returns)
                             with ``example_inputs`` (default: ``module.example_input_array``);
                             ``total_epochs`` defaults to ``Trainer(max_epochs=...)``; under DDP
                             with the world process group. Tracks the ``mirrors`` (EMA / SWA copies).
``on_train_epoch_start``     ``pruner.epoch_start(trainer.current_epoch)``
``on_before_optimizer_step`` ``pruner.before_step`` (with the ``GradScaler`` of a ``16-mixed``
                             precision plugin while the gradients are still scaled); notes the
                             step's learning rate (``optimizer.param_groups[0]["lr"]``)
``on_train_batch_end``       ``pruner.after_step(lr)`` once per optimizer step (gradient
                             accumulation and manual optimization included); a step the scaler
                             skipped (inf / NaN gradients) gets no shrink, decided on the device
``on_train_epoch_end``       ``pruner.epoch_end(epoch, optimizer)``: prunes the network, its
                             optimizer state and the mirrors in place; under DDP the strategy's
                             ``DistributedDataParallel`` wrapper is rebuilt over the pruned model;
                             logs through ``self.log`` (below)
``state_dict``               the pruner's state, in every Lightning checkpoint
===========================  ==============================================================

**Resuming** (``trainer.fit(module, ckpt_path=...)`` with a freshly built, dense module): a
checkpoint saved after the prune holds pruned shapes. The callback wraps the module's
``on_load_checkpoint`` hook while the trainer runs (Lightning calls it right before the weights
load): the network and its mirrors are first cut to the saved structure, then the weights,
optimizer and scheduler states load as saved, so the run continues exactly (bit-identical on the
CPU to a run that was never interrupted). A checkpoint taken before the prune resumes the
schedule where it stopped. (A checkpoint written inside an epoch, ``every_n_train_steps``, resumes
without regularising the rest of that epoch, with a warning.) ``trainer.validate`` / ``test`` / ``predict`` with a pruned checkpoint
work the same way (the structure comes from the checkpoint's own options).

**Logged** at every epoch end (``on_epoch=True``; synchronised across ranks under DDP), with the
prefix ``log_prefix`` (default ``"pruning/"``): ``indicator`` (stability, 0..1), ``phase`` (0 dense,
1 monitoring, 2 sparsity learning, 3 pruned; the prune epoch reports the phase it trained in),
``reg`` (regularisation strength of the epoch), ``macs`` (of the network now, for
``example_inputs``), ``reduction`` (fraction of the dense MACs removed, or of the sub-network
chosen before the prune) and ``overhead_s`` (host seconds the epoch spent in the pruner's hooks).

**Precision**: ``32-true``, ``bf16-mixed``, ``16-mixed`` (its ``GradScaler``) and the ``*-true``
precisions (the module is converted after ``setup``: the pruner follows the new dtype, device and
memory format by itself).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import torch
import torch.nn as nn

try:
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import Callback
    from lightning.pytorch.utilities import rank_zero_warn
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError(
        "oneprune_ext.integrations.lightning needs Lightning: pip install 'oneprune_ext[lightning]' "
        f"(lightning>=2.2) ({e})") from None

from ..pruning import distributed
from ..pruning.config import PrunerConfig
from ..pruning.pruner import OneCyclePruner

__all__ = ["OneCyclePruning", "PHASES"]

#: the numbers logged as ``phase``
PHASES = ("dense", "monitoring", "sparsity", "pruned")

Picker = Union[str, Callable[["pl.LightningModule"], Any]]


def _pick(module: "pl.LightningModule", picker: Optional[Picker], what: str) -> Any:
    """``module`` itself (None), a dotted attribute of it (str) or ``picker(module)``."""
    if picker is None:
        return module
    if callable(picker):
        return picker(module)
    obj: Any = module
    for part in str(picker).split("."):
        if not hasattr(obj, part):
            raise ValueError(f"OneCyclePruning: {what}={picker!r}: {type(obj).__name__} has no attribute '{part}'")
        obj = getattr(obj, part)
    return obj


def _scaled_grads(scaler: Any, optimizer: torch.optim.Optimizer) -> bool:
    """Whether ``optimizer``'s gradients are still multiplied by the scaler's scale (Lightning
    unscales before ``on_before_optimizer_step`` unless the optimizer unscales in its own step)."""
    from torch.amp.grad_scaler import OptState

    state = getattr(scaler, "_per_optimizer_states", {}).get(id(optimizer))
    return state is None or state.get("stage") is not OptState.UNSCALED


class OneCyclePruning(Callback):
    """Prunes a LightningModule's network while it trains, in one ``fit`` (see the module docs).

    Args:
        config: the pruner's options (:class:`~oneprune_ext.PrunerConfig`); keywords in
            ``options`` override its fields. ``total_epochs`` may be left out: it is then the
            trainer's ``max_epochs``.
        network: which module to prune: None (the LightningModule itself), the name of an
            attribute (dotted, e.g. ``"model.backbone"``) or a callable ``module -> nn.Module``.
            Name it when the LightningModule also holds copies of the network (an EMA).
        example_inputs: positional inputs of one forward of the network (a tensor or a tuple),
            or a callable ``module -> inputs``; default: the LightningModule's
            ``example_input_array``. MACs are counted for this batch.
        mirrors: copies of the network pruned with it (EMA / SWA averages, see
            :meth:`OneCyclePruner.track <oneprune_ext.OneCyclePruner.track>`): attribute names of the
            LightningModule or callables ``module -> holder``.
        log_prefix: prefix of the logged names; None logs nothing.
        **options: :class:`~oneprune_ext.PrunerConfig` fields.

    Attributes:
        pruner: the :class:`~oneprune_ext.OneCyclePruner` (None before ``setup``).
        reports: the :class:`~oneprune_ext.EpochReport` of every epoch this process trained.
    """

    def __init__(self, config: Optional[PrunerConfig] = None, *, network: Optional[Picker] = None,
                 example_inputs: Any = None, mirrors: Sequence[Picker] = (), log_prefix: Optional[str] = "pruning/",
                 **options: Any) -> None:
        if config is not None and not isinstance(config, PrunerConfig):
            raise TypeError(f"OneCyclePruning: config must be a PrunerConfig, got {type(config).__name__}")
        unknown = sorted(set(options) - {f.name for f in dataclasses.fields(PrunerConfig)})
        if unknown:
            raise TypeError(f"OneCyclePruning: unknown option(s) {unknown}; the options are PrunerConfig's fields")
        if isinstance(mirrors, (str, bytes)) or callable(mirrors):
            mirrors = [mirrors]  # type: ignore[list-item]
        self.config = config
        self.options = dict(options)
        self.network = network
        self.example_inputs = example_inputs
        self.mirrors = list(mirrors)
        self.log_prefix = log_prefix
        self.pruner: Optional[OneCyclePruner] = None
        self.reports: list[Any] = []
        self._net: Optional[nn.Module] = None
        self._restored: Optional[Mapping[str, Any]] = None  # the callback state already applied
        self._hook: Optional[tuple[Any, bool, Any]] = None  # (module, had an instance attr, its value)
        self._step: Optional[tuple[float, Optional[torch.Tensor], Optional[torch.Tensor]]] = None
        self._overhead_mark = 0.0

    # ------------------------------------------------------------------ building
    def _network(self, module: "pl.LightningModule") -> nn.Module:
        net = _pick(module, self.network, "network")
        if not isinstance(net, nn.Module):
            raise ValueError(f"OneCyclePruning: network={self.network!r} gave a {type(net).__name__}, not an nn.Module")
        return net

    def _inputs(self, module: "pl.LightningModule") -> Any:
        x = self.example_inputs
        if callable(x) and not isinstance(x, torch.Tensor):
            x = x(module)
        if x is None:
            x = getattr(module, "example_input_array", None)
        if x is None:
            raise ValueError("OneCyclePruning: no example inputs: set example_input_array on the LightningModule or "
                             "pass example_inputs= (one batch for the network's forward)")
        return x

    def _options(self, trainer: "pl.Trainer") -> dict[str, Any]:
        has_epochs = "total_epochs" in self.options or self.config is not None
        if has_epochs:
            return dict(self.options)
        epochs = trainer.max_epochs
        if epochs is None or epochs < 1:
            raise ValueError("OneCyclePruning: pass total_epochs= or set Trainer(max_epochs=...) (the pruning "
                             "schedule is counted in epochs)")
        return dict(self.options, total_epochs=int(epochs))

    def _build(self, trainer: "pl.Trainer", module: "pl.LightningModule", config: Optional[PrunerConfig],
               options: dict[str, Any]) -> None:
        net = self._network(module)
        group = torch.distributed.group.WORLD if distributed.world_size() > 1 else None
        pruner = OneCyclePruner(net, self._inputs(module), config, process_group=group, **options)
        for picker in self.mirrors:
            pruner.track(_pick(module, picker, "mirrors"))
        self.pruner, self._net = pruner, net

    # ------------------------------------------------------------------ Lightning hooks
    def setup(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", stage: str) -> None:
        if stage == "fit" and (self.pruner is None or self._net is not self._network(pl_module)):
            self._build(trainer, pl_module, self.config, self._options(trainer))
        self._wrap_load_hook(pl_module)

    def teardown(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", stage: str) -> None:
        self._unwrap_load_hook()
        self._step = None

    def on_train_epoch_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        pruner = self._require()
        epoch = trainer.current_epoch
        open_epoch = pruner.open_epoch
        if open_epoch is not None and open_epoch < epoch:
            # the checkpoint was written between this epoch's last step and its epoch_end (a
            # ModelCheckpoint saving at validation end): finish that epoch first, as the run would have
            self._end_epoch(trainer, pl_module, open_epoch)
        if pruner.open_epoch != epoch:
            pruner.epoch_start(epoch)
        else:  # resumed from a checkpoint written inside this epoch
            rank_zero_warn(
                f"OneCyclePruning: resumed inside epoch {epoch} (a checkpoint written mid-epoch); the pruner goes on "
                "without regularising the rest of this epoch (it regularises again from the next one), so this run "
                "will differ slightly from an uninterrupted one. Checkpoints written at epoch ends "
                "(ModelCheckpoint's default) resume exactly.")
        self._overhead_mark = pruner.stats["total"]

    def on_before_optimizer_step(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule",
                                 optimizer: torch.optim.Optimizer) -> None:
        pruner = self._require()
        if not self._trains_network(optimizer):
            return
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        if scaler is not None and not scaler.is_enabled():
            scaler = None
        pruner.before_step(scaler=scaler if scaler is not None and _scaled_grads(scaler, optimizer) else None)
        # the scale drops exactly when the scaler skips the step (inf / NaN gradients): compare after
        # scaler.update(), on the device
        scale = getattr(scaler, "_scale", None) if scaler is not None else None
        self._step = (optimizer.param_groups[0]["lr"], None if scale is None else scale.detach().clone(), scale)

    def on_train_batch_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self._step is None:
            return  # no optimizer step in this batch (gradient accumulation)
        lr, before, scale = self._step
        self._step = None
        skipped = None if before is None or scale is None else (scale < before)
        self._require().after_step(lr, skipped=skipped)

    def on_train_epoch_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        self._end_epoch(trainer, pl_module, trainer.current_epoch)

    def _end_epoch(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", epoch: int) -> None:
        pruner = self._require()
        report = pruner.epoch_end(epoch, self._optimizer(trainer))
        self.reports.append(report)
        if report.pruned_now:
            self._rewrap_ddp(trainer)
        if self.log_prefix is not None and epoch == trainer.current_epoch:
            self._log(pl_module, report)

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        return {} if self.pruner is None else {"pruner": self.pruner.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict is self._restored or "pruner" not in state_dict:
            return  # applied before the weights loaded (see _restore_structure)
        if self.pruner is None:
            raise RuntimeError("OneCyclePruning.load_state_dict: the pruner is built at setup; restore through "
                               "trainer.fit(..., ckpt_path=...)")
        self.pruner.load_state_dict(state_dict["pruner"])
        self._restored = state_dict

    def _restore_structure(self, pl_module: "pl.LightningModule", checkpoint: Mapping[str, Any]) -> None:
        """Cut the dense network (and its mirrors) to the structure a checkpoint was saved with,
        before Lightning loads its weights."""
        state = (checkpoint.get("callbacks") or {}).get(self.state_key)
        if not isinstance(state, Mapping) or "pruner" not in state:
            return
        if self.pruner is None:  # validate / test / predict: the structure, with the saved options
            self._build(pl_module.trainer, pl_module, PrunerConfig.from_dict(state["pruner"]["config"]), {})
        assert self.pruner is not None
        self.pruner.load_state_dict(state["pruner"])
        self._restored = state

    def _wrap_load_hook(self, pl_module: "pl.LightningModule") -> None:
        """Lightning calls ``LightningModule.on_load_checkpoint`` right before the weights load
        (callbacks hear of the checkpoint only afterwards): wrap it for the duration of the run."""
        if self._hook is not None:
            return
        had = "on_load_checkpoint" in vars(pl_module)
        original = pl_module.on_load_checkpoint

        def on_load_checkpoint(checkpoint: dict[str, Any]) -> Any:
            self._restore_structure(pl_module, checkpoint)
            return original(checkpoint)

        self._hook = (pl_module, had, vars(pl_module).get("on_load_checkpoint"))
        object.__setattr__(pl_module, "on_load_checkpoint", on_load_checkpoint)

    def _unwrap_load_hook(self) -> None:
        if self._hook is None:
            return
        module, had, value = self._hook
        if had:
            object.__setattr__(module, "on_load_checkpoint", value)
        else:
            vars(module).pop("on_load_checkpoint", None)
        self._hook = None

    # ------------------------------------------------------------------ helpers
    def _require(self) -> OneCyclePruner:
        if self.pruner is None:
            raise RuntimeError("OneCyclePruning: no pruner; it is built at setup('fit') (add the callback to the "
                               "Trainer that fits)")
        return self.pruner

    def _trains_network(self, optimizer: torch.optim.Optimizer) -> bool:
        params = self._require().layout.parameters()
        if not params:
            return False
        ids = {id(p) for g in optimizer.param_groups for p in g["params"]}
        return id(params[0]) in ids

    def _optimizer(self, trainer: "pl.Trainer") -> Optional[torch.optim.Optimizer]:
        """The optimizer that trains the network (its state is compacted at the prune)."""
        found = [o for o in trainer.optimizers if self._trains_network(o)]
        if len(found) > 1:
            raise ValueError("OneCyclePruning: several optimizers train the pruned network; one optimizer must own "
                             "its parameters (their state is compacted with the channels)")
        return found[0] if found else None

    @staticmethod
    def _rewrap_ddp(trainer: "pl.Trainer") -> None:
        """A new DistributedDataParallel over the pruned module: the old one's buckets hold the
        dense shapes."""
        strategy = trainer.strategy
        model = getattr(strategy, "model", None)
        if isinstance(model, nn.parallel.DistributedDataParallel):
            strategy.model = distributed.rewrap(model)
            register = getattr(strategy, "_register_ddp_hooks", None)
            if callable(register):  # communication hooks of the strategy (CUDA only)
                register()

    def _log(self, pl_module: "pl.LightningModule", report: Any) -> None:
        pruner = self._require()
        macs = pruner.macs()
        reduction = report.reduction if report.reduction is not None else 1.0 - macs / pruner.dense_macs
        phase = "pruned" if pruner.pruned and not report.pruned_now else report.phase
        values = {"indicator": report.indicator, "phase": PHASES.index(phase), "reg": report.reg,
                  "macs": macs, "reduction": reduction,
                  "overhead_s": pruner.stats["total"] - self._overhead_mark}
        sync = distributed.world_size() > 1
        for k, v in values.items():
            pl_module.log(f"{self.log_prefix}{k}", float(v), on_step=False, on_epoch=True, sync_dist=sync)
