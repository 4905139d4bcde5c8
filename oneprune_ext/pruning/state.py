"""The pruner's saved state: :class:`PrunerState` writes ``state_dict()`` and reads it back, checked.

A state is plain Python values and CPU tensors (``torch.load(weights_only=True)`` reads it): the
options, the dense model's groups (names, sizes, MACs, parameters), where the schedule stands, the
search's tracker, history and latest selection, the prune (epoch, kept channels), the
sparsity-learning totals and the hook seconds.

Resume protocol (bit-identical on CPU to an uninterrupted run with the same seed, including
across the prune)::

    # checkpoint, at the end of epoch k (after pruner.epoch_end(k, optimizer)):
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "pruner": pruner.state_dict(),
                "epoch": k}, path)
    # resume:
    ckpt = torch.load(path, weights_only=True)
    model = build_model(); optimizer = build_optimizer(model); scheduler = build_scheduler(optimizer)
    pruner = OneCyclePruner(model, example_inputs, config)  # same config, on the fresh DENSE model
    pruner.load_state_dict(ckpt["pruner"])       # reshapes the model if the run was pruned
    model.load_state_dict(ckpt["model"])         # now the shapes match
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    for epoch in range(ckpt["epoch"] + 1, E):
        train_loader.sampler.set_epoch(epoch)    # same batches as the uninterrupted run
        ...

Reading checks every entry (:class:`~oneprune_ext.pruning.state_reader.StateReader`) before
anything changes: a state of another run (other options, named), of another model (group names or
sizes) or a corrupt one (the entry named) raises ValueError and leaves the pruner as it was.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping, Sequence

from .config import PrunerConfig
from .state_reader import StateReader

if TYPE_CHECKING:  # pragma: no cover
    from .pruner import OneCyclePruner

__all__ = ["PrunerState", "STATE_VERSION", "HOOKS"]

STATE_VERSION = 1
#: The four hooks, in the order a training loop calls them (the keys of the hook seconds).
HOOKS = ("epoch_start", "before_step", "after_step", "epoch_end")


class PrunerState:
    """Writes and reads the state of one :class:`~oneprune_ext.pruning.pruner.OneCyclePruner`."""

    def __init__(self, pruner: "OneCyclePruner") -> None:
        self.p = pruner

    # ------------------------------------------------------------------ write
    def to_dict(self) -> dict[str, Any]:
        p, search, sched = self.p, self.p.search, self.p.schedule
        sel = search.selection
        return {
            "version": STATE_VERSION,
            "config": p.config.to_dict(),
            "group_names": [g.name for g in p.facts.groups],
            "dense_sizes": list(p.facts.dense_sizes),
            "sizes": list(p.groups.sizes),
            "dense_macs": p.dense_macs,
            "dense_params": p.dense_params,
            "sl_start_resolved": sched.sl_start,
            "reg_current": p.sparsity.reg_value,
            "last_start": sched.last_start,
            "last_end": sched.last_end,
            "pruned": sched.pruned,
            "prune_epoch": sched.prune_epoch,
            "prune_keep": None if p._prune_keep is None else [k.clone() for k in p._prune_keep],
            "prune_info": dict(p._prune_info),
            "tracker": search.tracker.state_dict(),
            "history": [dict(h, kept_counts=list(h["kept_counts"])) for h in search.history],
            "masks": [m.clone() for m in search.masks],
            "selection": None if sel is None else {
                "kept_indices": [k.clone() for k in sel.kept_indices],
                "removal_mask": sel.removal_mask.clone(),
                "kept_counts": list(sel.kept_counts), "removed_counts": list(sel.removed_counts),
                "reduction": sel.reduction, "cost": sel.cost, "dense_cost": sel.dense_cost,
                "target_reduction": sel.target_reduction, "prefix_length": sel.prefix_length,
                "num_candidates": sel.num_candidates, "tolerance": sel.tolerance,
            },
            "stats": p._clock.saved(),
            "sparsity": p.sparsity.state_dict(),
        }

    # ------------------------------------------------------------------ read
    def read(self, state: Any) -> dict[str, Any]:
        """Every entry of a :meth:`to_dict` state, checked and converted; nothing is changed here."""
        if not isinstance(state, Mapping):
            raise ValueError(f"OneCyclePruner.load_state_dict: expected the dict of state_dict(), got "
                             f"{type(state).__name__}")
        version = state.get("version")
        if isinstance(version, bool) or not isinstance(version, int) or version != STATE_VERSION:
            raise ValueError(f"unsupported OneCyclePruner state version {version!r} "
                             f"(this version reads {STATE_VERSION})")
        v = StateReader(state, self.p.total_epochs)
        self._check_same_model(v)
        self._check_saved_config(v.get("config"))
        return {**self._read_prune(v), **self._read_schedule(v)}

    def restore(self, saved: Mapping[str, Any]) -> None:
        """Put a :meth:`read` state into the pruner's parts (the model is reshaped by the caller first)."""
        p, search, sched = self.p, self.p.search, self.p.schedule
        p._prune_keep = saved["prune_keep"]
        p._prune_info = saved["prune_info"]
        sched.prune_epoch = saved["prune_epoch"] if saved["pruned"] else None
        sched.sl_start = saved["sl_start_resolved"]
        sched.last_start, sched.last_end = saved["last_start"], saved["last_end"]
        search.tracker = saved["tracker"]
        search.history = saved["history"]
        search.masks = saved["masks"]
        search.selection = saved["selection"]
        p._clock.load(saved["stats"])
        p.sparsity.load_state_dict(saved["sparsity"], saved["reg_current"])

    def _check_same_model(self, v: StateReader) -> None:
        names, dense = [g.name for g in self.p.facts.groups], self.p.facts.dense_sizes
        saved_names, saved_dense = v.get("group_names"), v.get("dense_sizes")
        if not isinstance(saved_names, Sequence) or list(saved_names) != names or not isinstance(
                saved_dense, Sequence) or [v.int(s, "dense_sizes") for s in saved_dense] != dense:
            raise ValueError(
                "pruner state does not match this model's channel groups (different architecture, width "
                f"or ignored_layers?): saved sizes {saved_dense!r}, model {dense}")

    def _read_prune(self, v: StateReader) -> dict[str, Any]:
        """Whether and how the saved run was pruned: sizes, prune epoch, kept channels."""
        dense = self.p.facts.dense_sizes
        out: dict[str, Any] = {"sizes": v.int_list("sizes", len(dense), 1, dense), "pruned": v.flag("pruned")}
        if out["pruned"]:
            out["prune_epoch"] = v.epoch("prune_epoch")
            out["prune_keep"] = v.index_sets("prune_keep", dense, counts=out["sizes"])
        else:
            if out["sizes"] != dense or v.get("prune_epoch") is not None:
                raise v.bad("sizes / prune_epoch of a run that was not pruned")
            out["prune_epoch"], out["prune_keep"] = None, None
        out["prune_info"] = v.int_dict("prune_info")
        return out

    def _read_schedule(self, v: StateReader) -> dict[str, Any]:
        """Where the schedule stands: epochs, regularisation, search history, stats."""
        dense, config = self.p.facts.dense_sizes, self.p.config
        out: dict[str, Any] = {"sl_start_resolved": v.optional_epoch("sl_start_resolved")}
        if config.sl_start != "auto" and out["sl_start_resolved"] != config.sl_start:
            raise v.bad(f"sl_start_resolved={out['sl_start_resolved']!r} but sl_start={config.sl_start}")
        out["reg_current"] = v.number("reg_current", v.get("reg_current"))
        out["last_start"], out["last_end"] = v.optional_epoch("last_start"), v.optional_epoch("last_end")
        if out["last_end"] is not None and (out["last_start"] is None or out["last_end"] > out["last_start"]):
            raise v.bad(f"last_end={out['last_end']} after last_start={out['last_start']}")
        out["tracker"] = v.tracker("tracker", dense)
        out["history"] = v.history("history", len(dense))
        out["masks"] = v.masks("masks", sum(dense))
        if not len(out["history"]) == len(out["masks"]) == len(out["tracker"].history):
            raise v.bad(f"history ({len(out['history'])} epochs), masks ({len(out['masks'])}) and tracker "
                        f"({len(out['tracker'].history)}) disagree")
        out["selection"] = v.selection("selection", dense)
        stats = v.get("stats")
        if not isinstance(stats, Mapping):
            raise v.bad("stats is not a dict")
        out["stats"] = {h: v.number(f"stats[{h!r}]", stats[h]) for h in HOOKS if h in stats}
        device_keys = [f"{h}_device" for h in HOOKS]  # CUDA device seconds (profiling.DeviceClock)
        out["stats"].update({k: v.number(f"stats[{k!r}]", stats[k]) for k in device_keys if k in stats})
        out["sparsity"] = v.sparsity("sparsity")
        return out

    def _check_saved_config(self, saved: Any) -> None:
        """Refuse a state saved with other options, naming each one."""
        try:
            cfg = PrunerConfig.from_dict(saved)
        except (TypeError, ValueError) as e:
            raise ValueError(f"OneCyclePruner.load_state_dict: the saved options are invalid ({e})") from None
        a, b = cfg.to_dict(), self.p.config.to_dict()
        diff = [f"{k}={a[k]!r} (saved) vs {b[k]!r} (this pruner)" for k in a if a[k] != b[k]]
        if diff:
            raise ValueError(
                f"OneCyclePruner.load_state_dict: the state was saved by a run with other options: "
                f"{', '.join(diff)}. A resumed run must be the same run: build the pruner with the saved "
                "options, PrunerConfig.from_dict(state['config']); nothing was changed")
