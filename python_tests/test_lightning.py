"""``OneCyclePruning``, the Lightning callback (issue 21, item 3), on the digits, on the CPU.

* one uninterrupted ``fit`` (shared by the tests below: a small CNN with an EMA copy tracked as a
  mirror, a checkpoint every epoch) prunes the network, its optimizer state and the EMA, keeps
  training, and logs indicator, phase, MACs and overhead through ``self.log``;
* ``fit(ckpt_path=...)`` of a fresh dense module from the checkpoint written after the prune (and
  from one written before it) ends bit-identical to the uninterrupted run: parameters, EMA and
  optimizer state (``torch.equal``);
* the precision plugins: ``bf16-mixed``, ``16-mixed`` with its ``GradScaler`` (a CPU scaler,
  including a skipped step), ``bf16-true`` (the module is converted after ``setup``);
* ``trainer.validate(ckpt_path=...)`` of a fresh dense module loads a pruned checkpoint;
* ``strategy="ddp"`` with 2 CPU processes (gloo): both ranks end with the same pruned model;
* the README's "With Lightning" example runs as written.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

L = pytest.importorskip("lightning")

from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn  # noqa: E402

from oneprune_ext import models  # noqa: E402
from oneprune_ext.integrations.lightning import PHASES, OneCyclePruning  # noqa: E402
from oneprune_ext.training.data import digits_loaders  # noqa: E402

import readme_blocks  # noqa: E402

HERE = Path(__file__).resolve().parent
EPOCHS = 7
# monitoring from epoch 0, strong regularisation from epoch 1, the prune by the end of epoch 3
OPTIONS = dict(reduction=0.5, monitor_start=0, sl_start=1, sl_end=3, reg=0.05, reg_delta=0.0)

pytestmark = pytest.mark.usefixtures("one_thread")


class DigitsModule(L.LightningModule):
    """A small CNN on the digits with an EMA of its weights (updated after every step)."""

    def __init__(self, width: int = 8, lr: float = 0.05, epochs: int = EPOCHS) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = models.digits_cnn(10, width)
        self.ema = AveragedModel(self.net, multi_avg_fn=get_ema_multi_avg_fn(0.8), use_buffers=True)
        self.ema.requires_grad_(False)
        self.example_input_array = torch.zeros(1, 1, 8, 8)
        self.lr, self.epochs = lr, epochs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(self.net(x), y)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.ema.update_parameters(self.net)

    def configure_optimizers(self) -> Any:
        opt = torch.optim.SGD(self.net.parameters(), lr=self.lr, momentum=0.9)
        return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.CosineAnnealingLR(opt, self.epochs)}


class EvaluatedDigits(DigitsModule):
    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("acc", (self(x).argmax(1) == y).float().mean())


def _loader() -> torch.utils.data.DataLoader:
    return digits_loaders(batch_size=128, seed=0)[0]


def _trainer(tmp: Path, callbacks: list, **kw: Any) -> "L.Trainer":
    args: dict[str, Any] = dict(max_epochs=EPOCHS, accelerator="cpu", devices=1, enable_progress_bar=False,
                                enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=str(tmp))
    args.update(kw)
    return L.Trainer(callbacks=callbacks, **args)


def _state(module: DigitsModule, trainer: "L.Trainer") -> dict[str, Any]:
    opt = trainer.optimizers[0].state_dict()
    return {"params": {k: v.detach().clone() for k, v in module.state_dict().items()},
            "momentum": [opt["state"][i]["momentum_buffer"].clone() for i in sorted(opt["state"])],
            "prune_epoch": None}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def full_run(tmp_path_factory) -> dict[str, Any]:
    """The uninterrupted run: EPOCHS epochs, a checkpoint after every epoch, a CSV log."""
    tmp = tmp_path_factory.mktemp("lightning_full")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        module = DigitsModule()
        pruning = OneCyclePruning(network="net", mirrors=["ema"], **OPTIONS)
        ckpt = L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp / "ckpt", filename="{epoch}", save_top_k=-1,
                                                   every_n_epochs=1)
        logger = L.pytorch.loggers.CSVLogger(tmp, name="log")
        trainer = _trainer(tmp, [pruning, ckpt], logger=logger)
        dense = {k: tuple(v.shape) for k, v in module.net.state_dict().items()}
        t0 = time.perf_counter()
        trainer.fit(module, _loader())
        wall = time.perf_counter() - t0
    finally:
        torch.set_num_threads(n)
    state = _state(module, trainer)
    state["prune_epoch"] = pruning.pruner.prune_epoch
    return {"module": module, "pruning": pruning, "trainer": trainer, "state": state, "dense": dense,
            "tmp": tmp, "log": Path(logger.log_dir) / "metrics.csv", "wall": wall}


def test_fit_prunes_the_network_its_optimizer_and_the_ema(full_run) -> None:
    module, pruning, dense = full_run["module"], full_run["pruning"], full_run["dense"]
    pruner = pruning.pruner
    assert pruner.pruned and pruner.prune_epoch is not None and pruner.prune_epoch < EPOCHS - 1
    assert 1 - pruner.macs() / pruner.dense_macs >= OPTIONS["reduction"]
    now = {k: tuple(v.shape) for k, v in module.net.state_dict().items()}
    assert now != dense
    ema = {k: tuple(v.shape) for k, v in module.ema.module.state_dict().items()}
    assert ema == now  # the EMA lost the same channels and kept updating (n_averaged counts every step)
    assert int(module.ema.n_averaged) == EPOCHS * len(_loader())
    opt = full_run["trainer"].optimizers[0]
    for p in module.net.parameters():
        assert opt.state[p]["momentum_buffer"].shape == p.shape
    print(f"uninterrupted Lightning fit ({EPOCHS} epochs): {full_run['wall']:.1f} s")


def test_fit_logs_indicator_phase_macs_and_overhead(full_run) -> None:
    rows = [r for r in csv.DictReader(open(full_run["log"])) if r.get("pruning/phase")]
    assert [int(r["epoch"]) for r in rows] == list(range(EPOCHS))
    pruner = full_run["pruning"].pruner
    phases = [PHASES[int(float(r["pruning/phase"]))] for r in rows]
    assert phases[0] == "monitoring" and phases[-1] == "pruned" and "sparsity" in phases
    macs = [float(r["pruning/macs"]) for r in rows]
    e = pruner.prune_epoch
    assert macs[:e] == [pytest.approx(pruner.dense_macs)] * e
    assert macs[e:] == [pytest.approx(pruner.macs())] * (EPOCHS - e)
    assert all(0.0 <= float(r["pruning/indicator"]) <= 1.0 for r in rows)
    assert all(float(r["pruning/overhead_s"]) > 0.0 for r in rows)


def _resume(full_run: dict, epoch: int, tmp: Path) -> tuple[DigitsModule, "L.Trainer", OneCyclePruning]:
    module = DigitsModule()  # fresh and dense
    pruning = OneCyclePruning(network="net", mirrors=["ema"], **OPTIONS)
    trainer = _trainer(tmp, [pruning], logger=False, enable_checkpointing=False)
    trainer.fit(module, _loader(), ckpt_path=str(full_run["tmp"] / "ckpt" / f"epoch={epoch}.ckpt"))
    return module, trainer, pruning


@pytest.mark.parametrize("when", ["after_the_prune", "before_the_prune"])
def test_resume_from_a_checkpoint_is_bit_identical(full_run, tmp_path, when: str) -> None:
    e = full_run["state"]["prune_epoch"]
    epoch = e if when == "after_the_prune" else e - 1
    module, trainer, pruning = _resume(full_run, epoch, tmp_path)
    assert pruning.pruner.pruned and pruning.pruner.prune_epoch == e
    got, want = _state(module, trainer), full_run["state"]
    assert _same(got["params"], want["params"])  # the network and its EMA (n_averaged included)
    assert len(got["momentum"]) == len(want["momentum"])
    assert all(torch.equal(a, b) for a, b in zip(got["momentum"], want["momentum"]))


def test_validate_a_pruned_checkpoint_on_a_fresh_dense_module(full_run, tmp_path) -> None:
    module = EvaluatedDigits()
    pruning = OneCyclePruning(network="net", mirrors=["ema"], **OPTIONS)
    trainer = _trainer(tmp_path, [pruning], logger=False)
    val = digits_loaders(batch_size=128, seed=0)[1]
    trainer.validate(module, val, ckpt_path=str(full_run["tmp"] / "ckpt" / f"epoch={EPOCHS - 1}.ckpt"),
                     verbose=False)
    assert _same({k: v for k, v in module.state_dict().items()}, full_run["state"]["params"])
    assert trainer.callback_metrics["acc"] > 0.5


@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed", "bf16-true"])
def test_precision_plugins(tmp_path, precision: str) -> None:
    kw: dict[str, Any] = {"precision": precision}
    if precision == "16-mixed":  # Lightning has no fp16 AMP on the CPU: give it the plugin with a CPU scaler
        from lightning.pytorch.plugins import MixedPrecision

        scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 40)  # the first steps overflow and are skipped
        kw = {"plugins": [MixedPrecision("16-mixed", "cpu", scaler=scaler)]}
    module = DigitsModule(epochs=5)
    # the network and the copy picked by callables this time
    pruning = OneCyclePruning(network=lambda m: m.net, mirrors=[lambda m: m.ema], total_epochs=5, **OPTIONS)
    trainer = _trainer(tmp_path, [pruning], max_epochs=5, logger=False, enable_checkpointing=False, **kw)
    trainer.fit(module, _loader())
    assert pruning.pruner.pruned
    x, y = next(iter(_loader()))
    x = x.to(next(module.net.parameters()).dtype)
    assert torch.isfinite(F.cross_entropy(module.net(x).float(), y))
    if precision == "16-mixed":
        assert scaler.get_scale() < 2.0 ** 40  # steps were skipped (and the callback saw it)
    if precision == "bf16-true":
        assert next(module.net.parameters()).dtype == torch.bfloat16


def test_bad_arguments_are_refused_when_the_callback_is_made() -> None:
    with pytest.raises(TypeError, match=r"unknown option\(s\) \['reduction_'\]"):
        OneCyclePruning(reduction_=0.5)
    with pytest.raises(TypeError, match="PrunerConfig"):
        OneCyclePruning({"reduction": 0.5})  # type: ignore[arg-type]


def test_ddp_two_processes_end_with_the_same_pruned_model(tmp_path) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(
        [str(HERE.parent), str(HERE)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])))
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, str(HERE / "lightning_ddp_worker.py"), str(tmp_path)], env=env,
                          capture_output=True, text=True, timeout=600, cwd=str(tmp_path))
    wall = time.perf_counter() - t0
    assert proc.returncode == 0, f"DDP fit failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert r0["pruned"] and r0["prune_epoch"] == r1["prune_epoch"] < 4  # and trained on after the prune
    assert _same(r0["params"], r1["params"])
    assert r0["sizes"] == r1["sizes"] and r0["sizes"] != r0["dense_sizes"]
    print(f"Lightning DDP fit, 2 processes: {wall:.1f} s")


def test_readme_lightning_example(tmp_path, monkeypatch, capsys) -> None:
    blocks = [b for b in readme_blocks.python_blocks() if "OneCyclePruning(" in b]
    assert len(blocks) == 1, "expected one Lightning example in README.md"
    monkeypatch.chdir(tmp_path)
    ns: dict[str, Any] = {"__name__": "__readme__"}
    exec(compile(blocks[0], "README.md (With Lightning)", "exec"), ns)
    assert ns["pruning"].pruner.pruned
    out = capsys.readouterr().out
    assert "EMA accuracy" in out
