"""DistributedDataParallel under torchrun: 2 processes, gloo, CPU, digits (issue 8, item 9).

One torchrun launch (python_tests/ddp_worker.py) runs, in each of two processes:

* ``oneprune`` on digits: both ranks must end with bit-identical models, and rank 0 alone
  writes the checkpoint, ``--save`` and ``--json``;
* the same run stopped after epoch 2 (its checkpoint written) and resumed with ``--resume``:
  bit-identical to the uninterrupted run;
* the README's DDP loop, extracted from README.md: it prunes, the ranks stay identical.

Then ``oneprune`` with the same options in one process must choose the same pruned structure.
The options make sparsity learning start at epoch 0 with a strong ``--reg``: the sub-network
is chosen from the initial weights (identical in both runs, same seed) and shrunk hard, so the
choice cannot drift. (With weak regularisation a DDP run may choose another sub-network than a
single process: without SyncBatchNorm each rank normalises its half of the batch, so the two
runs train slightly differently; every rank always chooses rank 0's sub-network.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import outcomes
import pytest
import torch

from oneprune_ext import cli, models

HERE = Path(__file__).resolve().parent
ARGS = ["--data", "digits", "--epochs", "7", "--width", "8", "--batch-size", "64", "--reduction", "0.5",
        "--monitor-start", "0", "--sl-start", "0", "--sl-end", "5", "--reg", "0.3", "--reg-delta", "0",
        "--no-progress", "--seed", str(outcomes.SEED)]


def _launch(out: Path) -> float:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    root = str(HERE.parent)
    env["PYTHONPATH"] = root + os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else root
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(HERE / "ddp_worker.py"), str(out), "--", *ARGS, "--threads", "1"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    wall = time.perf_counter() - t0
    assert proc.returncode == 0, f"torchrun failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return wall


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture
def restore_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


@pytest.mark.outcome
def test_torchrun_two_ranks_identical_resumable_and_like_one_process(tmp_path, restore_threads, capsys) -> None:
    wall = _launch(tmp_path)
    load = lambda name: torch.load(tmp_path / name, weights_only=True)  # noqa: E731
    full0, full1 = load("full.rank0.pt"), load("full.rank1.pt")
    assert _same(full0["model"], full1["model"]), "the ranks' models differ"
    assert full0["prune_epoch"] == full1["prune_epoch"] is not None
    # rank 0 alone wrote files; nothing else (no temporary files) was left
    assert sorted(os.listdir(tmp_path / "full")) == ["ck.pt", "pruned.pt", "r.json"]
    assert sorted(os.listdir(tmp_path / "resumed")) == ["ck.pt"]
    # interrupted after epoch 2, resumed: bit-identical to the uninterrupted run, on both ranks
    for r in (0, 1):
        assert _same(load(f"resumed.rank{r}.pt")["model"], full0["model"]), f"rank {r}: resumed run differs"
    # the README's DDP loop
    readme0, readme1 = load("readme.rank0.pt"), load("readme.rank1.pt")
    assert readme0["pruned"] and readme0["prune_epoch"] == readme1["prune_epoch"]
    assert _same(readme0["params"], readme1["params"])

    # one process, same seed and options: the same structure, pruned at the same epoch
    single = tmp_path / "single"
    assert cli.main(ARGS + ["--threads", "1", "--save", str(single / "pruned.pt"), "--json", str(single / "r.json")]) == 0
    capsys.readouterr()
    structure = lambda p: json.loads(torch.load(p, weights_only=True)["structure"])["tensors"]  # noqa: E731
    assert structure(single / "pruned.pt") == structure(tmp_path / "full" / "pruned.pt")
    ddp_json = json.loads((tmp_path / "full" / "r.json").read_text())
    single_json = json.loads((single / "r.json").read_text())
    assert ddp_json["pruned"]["prune_epoch"] == single_json["pruned"]["prune_epoch"]
    assert ddp_json["pruned"]["final_macs"] == single_json["pruned"]["final_macs"]
    # the target, overshot by less than one channel
    step = outcomes.one_channel_share(models.digits_cnn(width=8), torch.zeros(1, 1, 8, 8))
    outcomes.assert_reaches_target(ddp_json["pruned"]["macs_reduction"], 0.5, step)
    print(f"torchrun launch (2 processes: full run, killed + resumed run, README loop): {wall:.1f} s")
