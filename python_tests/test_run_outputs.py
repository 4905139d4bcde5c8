"""What a run leaves behind (issue 12, items 4-6): report.json, metrics.jsonl, the PNG plots,
``oneprune plot`` and ``oneprune eval`` on the saved demo model.

One short run of the demo's settings (``examples/digits_demo.py``: its arguments, shortened and
narrowed) writes the run directory all the tests here read.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import outcomes
import pytest
import torch

from oneprune_ext import cli, models
from oneprune_ext.training import plots, report
from oneprune_ext.training.trainer import EpochRecord

EPOCHS = 6
ROOT = Path(__file__).resolve().parents[1]


def _demo_args() -> list[str]:
    spec = importlib.util.spec_from_file_location("digits_demo", ROOT / "examples" / "digits_demo.py")
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    return list(demo.DEMO_ARGS)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run") / "demo"
    n = torch.get_num_threads()
    try:
        rc = cli.main(_demo_args() + ["--epochs", str(EPOCHS), "--width", "8", "--batch-size", "64",
                                      "--monitor-start", "1", "--sl-start", "2", "--sl-end", "3",
                                      "--no-progress", "--seed", str(outcomes.SEED), "--out", str(out)])
    finally:
        torch.set_num_threads(n)
    assert rc == 0
    return out


@pytest.mark.outcome
def test_report_has_every_field(run_dir: Path) -> None:
    rep = json.loads((run_dir / "report.json").read_text())
    assert rep["format"] == report.REPORT_FORMAT
    assert set(rep) == set(report.REPORT_KEYS)
    # the resolved config
    assert rep["config"]["pruner"]["total_epochs"] == EPOCHS and rep["config"]["pruner"]["sl_end"] == 3
    assert rep["config"]["training"]["epochs"] == EPOCHS and rep["config"]["training"]["data"] == "digits"
    assert rep["model"] == {"name": "digits_cnn", "data": "digits", "input_shape": [1, 8, 8], "num_classes": 10,
                            "width": 8}
    # per-epoch history: loss, accuracy, lr, phase, indicator, reduction, reg, time in hooks
    assert [h["epoch"] for h in rep["history"]] == list(range(EPOCHS))
    for h in rep["history"]:
        for key in ("train_loss", "train_acc", "test_acc", "lr", "phase", "indicator", "reduction", "reg",
                    "hook_seconds"):
            assert key in h, key
        assert set(h["hook_seconds"]) >= {"epoch_start", "before_step", "after_step", "epoch_end", "total"}
    phases = [h["phase"] for h in rep["history"]]
    assert phases[0] == "dense" and "sparsity" in phases and phases[-1] == "pruned"
    # the chosen sub-network's reduction: the target, overshot by less than one channel
    step = outcomes.one_channel_share(models.digits_cnn(width=8), torch.zeros(1, 1, 8, 8))
    outcomes.assert_reaches_target(rep["history"][2]["reduction"], 0.5, step)
    outcomes.assert_reaches_target(rep["cost"]["macs_reduction"], 0.5, step)
    assert rep["history"][2]["reg"] > 0 and rep["history"][2]["hook_seconds"]["after_step"] > 0
    # prune epoch, accuracies (right before / after the prune: the prune shock)
    pe = rep["prune_epoch"]
    assert pe is not None and pe <= 3 and rep["history"][pe]["pruned_now"]
    acc = rep["accuracy"]
    assert set(acc) == {"final", "dense_final", "difference", "before_prune", "after_prune", "prune_shock",
                        "removed_norm_share"}
    assert acc["prune_shock"] == pytest.approx(acc["before_prune"] - acc["after_prune"])
    outcomes.assert_gentle_prune(acc["removed_norm_share"], acc["prune_shock"])  # the demo's reg="auto" at work
    assert acc["final"] == rep["history"][-1]["test_acc"]
    assert acc["dense_final"] == rep["dense_history"][-1]["test_acc"]
    assert acc["difference"] == pytest.approx(acc["final"] - acc["dense_final"])
    # dense and pruned cost, channels per group
    cost = rep["cost"]
    assert cost["pruned_macs"] < cost["dense_macs"] and cost["pruned_params"] < cost["dense_params"]
    assert cost["macs_reduction"] == pytest.approx(1 - cost["pruned_macs"] / cost["dense_macs"])
    assert cost["groups"] and all(0 < g["kept"] <= g["dense"] for g in cost["groups"])
    assert any(g["kept"] < g["dense"] for g in cost["groups"]) and all(g["name"] for g in cost["groups"])
    # overhead summary and wall time
    ov = rep["overhead"]
    assert ov["pruner_seconds"] > 0 and 0 < ov["percent_of_wall"] < 100 and ov["init_seconds"] > 0
    assert ov["stats"]["total"] == pytest.approx(ov["pruner_seconds"])
    assert ov["steps"] == EPOCHS * 23 and ov["per_step_ms"] > 0  # 1437 training images / 64 per batch
    assert rep["wall_time"]["pruned_run"] > 0 and rep["wall_time"]["dense_run"] > 0
    assert rep["files"]["model"] == "model.pt" and rep["files"]["dense_model"] == "dense_model.pt"
    assert rep["files"]["plots"] == list(plots.PLOT_FILES)


def test_metrics_jsonl_one_line_per_epoch(run_dir: Path) -> None:
    lines = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [(ln["run"], ln["epoch"]) for ln in lines] == \
        [("pruned", e) for e in range(EPOCHS)] + [("dense", e) for e in range(EPOCHS)]
    rep = json.loads((run_dir / "report.json").read_text())
    assert [ln for ln in lines if ln["run"] == "pruned"] == rep["history"]


def test_metrics_rewritten_on_resume_and_appended_after(tmp_path: Path) -> None:
    def rec(e: int, loss: float) -> EpochRecord:
        return EpochRecord(epoch=e, lr=0.1, train_loss=loss, train_acc=0.0, test_acc=0.0, penalty=0.0, phase="dense",
                           indicator=None, reg=None, pruned_now=False, macs=1, params=1, seconds=0.0)
    first = report.RunDirectory(tmp_path)
    for e in range(3):  # epochs 0..2 logged, then the job dies; its checkpoint holds epochs 0..1
        first.log_epochs("pruned", [rec(i, 1.0) for i in range(e + 1)])
    first.log_epochs("dense", [rec(0, 5.0)])
    resumed = report.RunDirectory(tmp_path)
    resumed.log_epochs("pruned", [rec(0, 1.0), rec(1, 1.0), rec(2, 2.0)])  # epoch 2 again, after the resume
    resumed.log_epochs("pruned", [rec(0, 1.0), rec(1, 1.0), rec(2, 2.0), rec(3, 3.0)])
    lines = [json.loads(ln) for ln in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(ln["run"], ln["epoch"], ln["train_loss"]) for ln in lines] == [
        ("dense", 0, 5.0), ("pruned", 0, 1.0), ("pruned", 1, 1.0), ("pruned", 2, 2.0), ("pruned", 3, 3.0)]


def test_pngs_are_written_and_valid(run_dir: Path) -> None:
    from matplotlib.image import imread

    for name in plots.PLOT_FILES:
        path = run_dir / name
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        img = imread(str(path))
        assert img.ndim == 3 and img.shape[0] > 200 and img.shape[1] > 300, name
        assert img[..., :3].std() > 0.01, f"{name} is blank"


def test_plot_command_and_missing_matplotlib(run_dir: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    assert cli.main(["plot", str(run_dir), "--to", str(tmp_path)]) == 0
    assert sorted(os.listdir(tmp_path)) == sorted(plots.PLOT_FILES)
    assert cli.main(["plot", str(tmp_path)]) == 2  # no report there
    assert "no report" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # as if matplotlib were not installed
    with pytest.raises(plots.PlotsUnavailable, match="pip install matplotlib"):
        plots.write_plots(report.load_report(str(run_dir)), str(tmp_path / "x"))
    assert cli.main(["plot", str(run_dir), "--to", str(tmp_path / "y")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install matplotlib" in err


@pytest.mark.outcome
def test_eval_on_the_saved_demo_model(run_dir: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "eval.json"
    rc = cli.main(["eval", str(run_dir), "--dense", "--warmup", "1", "--repeat", "3", "--threads", "1",
                   "--json", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    for row in ("test accuracy (%)", "MACs per sample", "parameters", "latency per batch (ms, median)"):
        assert row in text
    res = json.loads(out.read_text())["models"]
    rep = json.loads((run_dir / "report.json").read_text())
    pruned, dense = res
    assert pruned["label"] == "pruned" and dense["label"] == "dense (trained baseline)"
    # the same model on the same test split: the accuracy and the exact cost the run reported
    assert pruned["accuracy"] == pytest.approx(rep["accuracy"]["final"])
    assert dense["accuracy"] == pytest.approx(rep["accuracy"]["dense_final"])
    assert pruned["macs"] == rep["cost"]["pruned_macs"] and dense["macs"] == rep["cost"]["dense_macs"]
    assert pruned["params"] == rep["cost"]["pruned_params"]
    assert all(m["latency_ms"] > 0 and m["latency_p10_ms"] <= m["latency_ms"] <= m["latency_p90_ms"] for m in res)


def test_eval_of_a_bare_file_and_bad_input(run_dir: Path, tmp_path: Path, capsys) -> None:
    bare = tmp_path / "pruned.pt"
    bare.write_bytes((run_dir / "model.pt").read_bytes())
    assert cli.main(["eval", str(bare), "--no-accuracy", "--repeat", "1", "--warmup", "0"]) == 2
    assert "--model" in capsys.readouterr().err  # no report next to it: which architecture?
    rc = cli.main(["eval", str(bare), "--model", "digits_cnn", "--width", "8", "--input", "1x8x8", "--data", "digits",
                   "--batch", "16", "--repeat", "2", "--warmup", "0", "--threads", "1"])
    assert rc == 0 and "test accuracy (%)" in capsys.readouterr().out
    assert cli.main(["eval", str(bare), "--model", "resnet56", "--no-accuracy"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("oneprune eval: error: cannot load") and err.count("\n") == 1
    assert cli.main(["eval", str(tmp_path / "nothing.pt")]) == 2
    assert cli.main(["eval", str(run_dir), "--repeat", "0"]) == 2


def test_out_that_is_a_file_is_refused_before_training(tmp_path: Path, capsys) -> None:
    f = tmp_path / "file"
    f.write_text("x")
    rc = cli.main(["--data", "digits", "--epochs", "3", "--width", "4", "--sl-start", "1", "--sl-end", "1",
                   "--monitor-start", "0", "--no-progress", "--out", str(f)])
    assert rc == 2
    err = capsys.readouterr().err
    assert "--out" in err and "is a file" in err
