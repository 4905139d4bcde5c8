"""What a training run leaves behind: ``DIR/report.json``, ``DIR/metrics.jsonl`` and the models.

``oneprune --out DIR`` (or :class:`RunDirectory` from your own script) writes:

* ``metrics.jsonl``: one JSON object per epoch, appended and flushed as soon as the epoch ends
  (``tail -f`` it, or read it with ``pandas.read_json(path, lines=True)``). Each line is the
  epoch's :class:`~oneprune_ext.training.trainer.EpochRecord` plus ``"run"`` (``"pruned"`` for the
  one-cycle run, ``"dense"`` for the dense baseline). A resumed run rewrites the file from the
  checkpoint's history first, so every epoch appears exactly once.
* ``report.json``, at the end (schema :data:`REPORT_FORMAT`, every key always present, ``null``
  where it does not apply):

  - ``config``: ``training`` (the resolved command-line settings) and ``pruner`` (the
    :class:`~oneprune_ext.PrunerConfig`, ``to_dict()``);
  - ``model``: ``name``, ``data``, ``input_shape`` [C, H, W], ``num_classes``, ``width``
    (what ``oneprune eval`` needs to rebuild the architecture);
  - ``history`` / ``dense_history``: the per-epoch records (as in ``metrics.jsonl``): loss,
    accuracies (percent), lr, phase, stability indicator, reduction of the chosen sub-network
    (fraction), reg, and ``hook_seconds`` (seconds in each hook during the epoch);
  - ``prune_epoch``: the 0-based epoch at whose end the model was pruned;
  - ``accuracy``: ``final`` and ``dense_final`` (percent), ``difference`` (points),
    ``before_prune`` / ``after_prune`` (percent, evaluated right before and right after the
    physical prune, no training between), ``prune_shock`` (their difference, points) and
    ``removed_norm_share`` (share of the squared weight norm the removed channels still held
    right before the prune, 0..1: why the shock is what it is);
  - ``cost``: ``dense_macs`` / ``pruned_macs`` (per sample), ``dense_params`` /
    ``pruned_params``, both reductions (fractions) and ``groups``: per channel group its
    ``name``, ``dense`` and ``kept`` channel counts;
  - ``overhead``: the pruner's ``stats`` (seconds per hook: host, and ``*_device`` on CUDA),
    ``pruner_seconds`` and ``percent_of_wall`` (host time in hooks), ``init_seconds``,
    ``steps`` and ``per_step_ms`` (``before_step`` + ``after_step`` per optimizer step);
  - ``wall_time``: seconds of the pruned run and of the dense baseline;
  - ``files``: the other files of the directory (model, metrics, plots).

* ``model.pt``: the pruned model (:func:`~oneprune_ext.save_pruned`), and ``dense_model.pt``
  for the dense baseline, both loadable by ``oneprune eval DIR``.
* the PNG plots of :mod:`oneprune_ext.training.plots` (when matplotlib is installed).
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
from typing import TYPE_CHECKING, Any, Mapping, Optional

import torch.nn as nn

from ..storage.files import atomic_write
from .callbacks import Callback, EpochEnd

if TYPE_CHECKING:  # pragma: no cover
    from ..pruning.pruner import OneCyclePruner
    from .trainer import EpochRecord, TrainResult

__all__ = ["REPORT_FORMAT", "REPORT_KEYS", "RunDirectory", "build_report", "load_report", "write_json_atomic",
           "epoch_line"]

#: The ``format`` value of a report written by this version.
REPORT_FORMAT = "oneprune_ext.report/1"
#: The top-level keys of every report.
REPORT_KEYS = ("format", "created", "config", "model", "history", "dense_history", "prune_epoch", "accuracy",
               "cost", "overhead", "wall_time", "files")

METRICS_FILE = "metrics.jsonl"
REPORT_FILE = "report.json"
MODEL_FILE = "model.pt"
DENSE_MODEL_FILE = "dense_model.pt"

# The prune-shock figures, read from the trainer's result (or the prune epoch's record): accuracy
# right before / right after the physical prune (percent) and the weight-norm share removed.
_BEFORE_PRUNE = "acc_before_prune"
_AFTER_PRUNE = "acc_after_prune"
_REMOVED_SHARE = "removed_norm_share"


def _jsonable(x: Any) -> Any:
    """Plain JSON values (tuples as lists, numbers as numbers, anything else as its string)."""
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if x is None or isinstance(x, (bool, int, float, str)):
        return x
    if hasattr(x, "item") and callable(x.item):  # numpy / torch scalars
        try:
            return x.item()
        except (TypeError, ValueError, RuntimeError):
            pass
    return str(x)


def epoch_line(run: str, rec: "EpochRecord") -> dict[str, Any]:
    """One ``metrics.jsonl`` object: ``run`` and the epoch record's fields."""
    return {"run": run, **_jsonable(dataclasses.asdict(rec))}


def write_json_atomic(obj: Any, path: str) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically (see :func:`oneprune_ext.storage.files.atomic_write`)."""
    atomic_write(path, lambda f: f.write(json.dumps(obj, indent=1) + "\n"), binary=False)


def load_report(path: str) -> dict[str, Any]:
    """Read a report (``report.json`` or the run directory holding it).

    Raises:
        FileNotFoundError: no report there.
        ValueError: the file is not a report written by ``oneprune`` (the message names it).
    """
    if os.path.isdir(path):
        path = os.path.join(path, REPORT_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no report at {path!r} (oneprune --out DIR writes DIR/{REPORT_FILE})")
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        raise ValueError(f"{path!r} is not a readable JSON report: {e}") from e
    if not isinstance(data, dict) or data.get("format") != REPORT_FORMAT:
        raise ValueError(f"{path!r} is not a report written by oneprune (format {REPORT_FORMAT!r})")
    return data


def _shock_figure(result: "TrainResult", name: str) -> Optional[float]:
    v = getattr(result, name, None)
    if v is None and result.prune_epoch is not None:
        rec = next((h for h in result.history if h.epoch == result.prune_epoch), None)
        v = getattr(rec, name, None)
    return None if v is None else float(v)


def _accuracy(pruned: "TrainResult", dense: Optional["TrainResult"]) -> dict[str, Any]:
    before, after = _shock_figure(pruned, _BEFORE_PRUNE), _shock_figure(pruned, _AFTER_PRUNE)
    return {
        "final": pruned.final_acc,
        "dense_final": dense.final_acc if dense else None,
        "difference": pruned.final_acc - dense.final_acc if dense else None,
        "before_prune": before,
        "after_prune": after,
        "prune_shock": before - after if before is not None and after is not None else None,
        "removed_norm_share": _shock_figure(pruned, _REMOVED_SHARE),
    }


def _overhead(pruned: "TrainResult", pruner: Optional["OneCyclePruner"], steps: Optional[int]) -> dict[str, Any]:
    stats = dict(pruner.stats) if pruner is not None else {}
    per_step = per_step_device = None
    if steps and stats:
        per_step = 1e3 * (stats["before_step"] + stats["after_step"]) / steps
        if "before_step_device" in stats:
            per_step_device = 1e3 * (stats["before_step_device"] + stats["after_step_device"]) / steps
    return {
        "stats": stats,
        "pruner_seconds": pruned.pruner_seconds,
        "percent_of_wall": pruned.pruner_overhead_pct,
        "init_seconds": pruned.pruner_init_seconds,
        "steps": steps,
        "per_step_ms": per_step,
        "per_step_device_ms": per_step_device,
    }


def build_report(*, pruned: "TrainResult", pruner: Optional["OneCyclePruner"], dense: Optional["TrainResult"] = None,
                 training: Optional[Mapping[str, Any]] = None, model: Optional[Mapping[str, Any]] = None,
                 steps_per_epoch: Optional[int] = None, files: Optional[Mapping[str, Any]] = None) -> dict[str, Any]:
    """The report of one run (see the module docs for every key).

    Args:
        pruned: the one-cycle run's :class:`~oneprune_ext.training.trainer.TrainResult`.
        pruner: its pruner (config, channel counts, hook times); None for a dense-only run.
        dense: the dense baseline's result, if one was trained.
        training: the training settings (JSON-able values).
        model: ``name``, ``data``, ``input_shape``, ``num_classes``, ``width`` of the network.
        steps_per_epoch: optimizer steps per epoch (for the per-step overhead), if known.
        files: names of the other files written next to the report.
    """
    steps = steps_per_epoch * len(pruned.history) if steps_per_epoch and pruned.history else None
    return _jsonable({
        "format": REPORT_FORMAT,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "config": {"training": dict(training or {}), "pruner": pruner.config.to_dict() if pruner is not None else None},
        "model": dict(model or {}),
        "history": [epoch_line("pruned", h) for h in pruned.history],
        "dense_history": [epoch_line("dense", h) for h in dense.history] if dense else None,
        "prune_epoch": pruned.prune_epoch,
        "accuracy": _accuracy(pruned, dense),
        "cost": {
            "dense_macs": pruned.dense_macs, "pruned_macs": pruned.final_macs,
            "macs_reduction": pruned.macs_reduction,
            "dense_params": pruned.dense_params, "pruned_params": pruned.final_params,
            "params_reduction": pruned.params_reduction,
            "groups": pruner.channel_counts() if pruner is not None else [],
        },
        "overhead": _overhead(pruned, pruner, steps),
        "wall_time": {"pruned_run": pruned.wall_time, "dense_run": dense.wall_time if dense else None},
        "files": dict(files or {}),
    })


class RunDirectory:
    """The output directory of one run: metrics as they come, then models, report and plots.

    Args:
        path: the directory (created if missing).

    Pass :meth:`metrics` to the trainer as a callback (``train(..., callbacks=[out.metrics("pruned")])``),
    then call :meth:`finish` once the run (and its dense baseline) ended.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = os.fspath(path)
        if os.path.exists(self.path) and not os.path.isdir(self.path):
            raise ValueError(f"--out {self.path!r} is a file; give a directory (created if missing)")
        os.makedirs(self.path, exist_ok=True)
        self.metrics_path = os.path.join(self.path, METRICS_FILE)
        self._started: set[str] = set()

    def file(self, name: str) -> str:
        """The path of ``name`` inside the directory."""
        return os.path.join(self.path, name)

    # ------------------------------------------------------------------ metrics.jsonl
    def _read_lines(self) -> list[dict[str, Any]]:
        if not os.path.exists(self.metrics_path):
            return []
        out = []
        with open(self.metrics_path) as f:
            for line in f:
                try:
                    out.append(json.loads(line))
                except ValueError:  # a line cut short by a crash: dropped, the history rewrites it
                    continue
        return out

    def log_epochs(self, run: str, history: list["EpochRecord"]) -> None:
        """Record the last epoch of ``history`` in ``metrics.jsonl``, flushed to disk.

        The first call for ``run`` in this process rewrites the file with ``run``'s whole
        ``history`` (a resumed run: the epochs before the resume, none twice) and keeps the
        other runs' lines; later calls append one line.
        """
        if not history:
            return
        if run not in self._started:
            others = [ln for ln in self._read_lines() if ln.get("run") != run]
            lines = others + [epoch_line(run, h) for h in history]
            atomic_write(self.metrics_path, lambda f: f.writelines(json.dumps(ln) + "\n" for ln in lines),
                         binary=False)
            self._started.add(run)
            return
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(epoch_line(run, history[-1])) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def metrics(self, run: str) -> Callback:
        """The :func:`~oneprune_ext.training.trainer.train` callback that logs ``run``'s epochs in
        ``metrics.jsonl`` as they end (:meth:`log_epochs`)."""
        return EpochEnd(lambda history: self.log_epochs(run, history))

    # ------------------------------------------------------------------ the end
    def finish(self, *, pruned: "TrainResult", pruner: Optional["OneCyclePruner"], model: nn.Module,
               dense: Optional["TrainResult"] = None, dense_model: Optional[nn.Module] = None,
               training: Optional[Mapping[str, Any]] = None, model_info: Optional[Mapping[str, Any]] = None,
               steps_per_epoch: Optional[int] = None, plots: bool = True) -> dict[str, Any]:
        """Save the models, write ``report.json`` and (with ``plots``) the PNG plots.

        Returns:
            ``{"report": path, "plots": [paths], "plots_skipped": reason or None}``. A missing
            matplotlib skips the plots with that reason; the report is written regardless.
        """
        from ..storage.saving import save_pruned

        save_pruned(model, self.file(MODEL_FILE))
        files: dict[str, Any] = {"model": MODEL_FILE, "metrics": METRICS_FILE, "dense_model": None, "plots": []}
        if dense_model is not None:
            save_pruned(dense_model, self.file(DENSE_MODEL_FILE))
            files["dense_model"] = DENSE_MODEL_FILE
        report = build_report(pruned=pruned, pruner=pruner, dense=dense, training=training, model=model_info,
                              steps_per_epoch=steps_per_epoch, files=files)
        skipped = None
        written: list[str] = []
        if plots:
            from . import plots as _plots

            try:
                written = _plots.write_plots(report, self.path)
            except _plots.PlotsUnavailable as e:
                skipped = str(e)
        report["files"]["plots"] = [os.path.basename(p) for p in written]
        path = self.file(REPORT_FILE)
        write_json_atomic(report, path)
        return {"report": path, "plots": written, "plots_skipped": skipped}
