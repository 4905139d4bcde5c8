"""``oneprune profile`` on small models (issue 12, item 3). The numbers it prints are timings, so
only their presence and consistency are checked here; measured tables live in the README."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from oneprune_ext import cli

from oneprune_ext.tools import profile as overhead

PHASES = ["plain", "monitoring", "sparsity/shrink", "per_layer/shrink", "sparsity/group_lasso",
          "per_layer/group_lasso", "sparsity/both", "per_layer/both", "pruned"]


@pytest.fixture(autouse=True)
def keep_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def test_profile_small_model_with_trace(tmp_path: Path, capsys) -> None:
    trace, out, saved = tmp_path / "trace.json", tmp_path / "profile.json", tmp_path / "pruned.pt"
    rc = cli.main(["profile", "--model", "digits_cnn", "--batch", "16", "--steps", "2", "--warmup", "1",
                   "--threads", "1", "--trace", str(trace), "--json", str(out), "--save", str(saved)])
    assert rc == 0
    text = capsys.readouterr().out
    for row in ("plain training step", "monitoring", "sparsity learning, shrink: fused hooks",
                "sparsity learning, both: published per-layer loop", "pruned model", "search (epoch_start",
                "prune (epoch_end", "Chrome trace"):
        assert row in text, row
    res = json.loads(out.read_text())
    assert [p["name"] for p in res["phases"]] == PHASES
    assert res["plain_step_ms"] > 0 and res["search_ms"] > 0 and res["prune_ms"] > 0 and res["searches"] == 7
    for p in res["phases"][1:-1]:
        assert p["step_ms"] > 0 and p["host_ms"] > 0 and p["overhead_pct"] == pytest.approx(
            100 * p["host_ms"] / res["plain_step_ms"])
        assert p["device_ms"] is None  # CPU: host time is the cost
    assert res["pruned_macs"] < res["dense_macs"] and res["achieved_reduction"] >= 0.5
    names = {e.get("name") for e in json.loads(trace.read_text())["traceEvents"]}
    for what in ("init", "epoch_start", "before_step", "after_step", "epoch_end", "search", "prune", "compaction",
                 "layout_rebuild"):
        assert f"oneprune::{what}" in names, what
    assert "oneprune_profile::sparsity_epoch" in names
    # the pruned architecture, for oneprune eval's latency
    capsys.readouterr()
    assert cli.main(["eval", str(saved), "--model", "digits_cnn", "--no-accuracy", "--dense", "--batch", "16",
                     "--warmup", "0", "--repeat", "2", "--threads", "1"]) == 0
    assert "dense (fresh init)" in capsys.readouterr().out


def test_profile_torchvision_model_one_mode() -> None:
    pytest.importorskip("torchvision")
    torch.set_num_threads(1)
    torch.manual_seed(0)
    from oneprune_ext import models

    model = models.build("resnet18", 10)
    x, y = torch.randn(2, 3, 32, 32), torch.randint(0, 10, (2,))
    res = overhead.profile_overhead(model, x, y, steps=1, warmup=0, regularizers=["shrink"], per_layer=False,
                                    options={"reduction": 0.3}, name="resnet18")
    assert [p.name for p in res.phases] == ["plain", "monitoring", "sparsity/shrink", "pruned"]
    assert res.searches == 3 and res.achieved_reduction >= 0.3
    assert "resnet18, input 3x32x32, batch 2" in res.table()


@pytest.mark.parametrize("argv, message", [
    (["--input", "3xfoo"], "--input must look like"),
    (["--model", "no_such_net"], "unknown model"),
    (["--model", "digits_cnn", "--input", "3x32x32"], "does not accept --input"),
    (["--regularizers", "shrink,l1"], "--regularizers"),
    (["--steps", "0"], "--steps"),
    (["--reduction", "1.0"], "--reduction"),
    (["--json", "/nonexistent-dir/p.json"], "--json"),
])
def test_profile_bad_input_is_one_line(argv, message, capsys) -> None:
    assert cli.main(["profile", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("oneprune profile: error:") and message in err and err.count("\n") == 1


def test_training_cli_unchanged_and_help_lists_commands(capsys) -> None:
    with pytest.raises(SystemExit) as e:
        cli.main(["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    assert "oneprune profile" in text and "oneprune eval" in text and "--out DIR" in text
    with pytest.raises(SystemExit) as e:
        cli.main(["profile", "--help"])
    assert e.value.code == 0 and "--trace" in capsys.readouterr().out
