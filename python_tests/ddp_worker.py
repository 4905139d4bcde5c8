"""The per-process side of test_ddp.py, run under ``torchrun --nproc_per_node=2`` (gloo, CPU).

``python ddp_worker.py OUT -- CLI ARGS...`` in every process:

1. joins the process group the way ``oneprune`` does (``cli._start_distributed``);
2. ``cli.main(ARGS + --checkpoint OUT/full/ck.pt --save ... --json ...)``: a whole run;
3. the same run with ``--checkpoint OUT/resumed/ck.pt``, stopped after epoch ``STOP`` (as if
   the job were killed once that epoch's checkpoint was written), then ``--resume`` to the end;
4. the README's DDP loop, extracted from README.md and executed as written;

and writes what each rank ended with to ``OUT/<part>.rank<r>.pt`` for the test to compare.
"""

from __future__ import annotations

import importlib
import os
import sys
import time

import torch
import torch.distributed as dist

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from oneprune_ext.cli import train as cli  # noqa: E402
train_mod = importlib.import_module("oneprune_ext.training.trainer")  # the module (the package exports the function)

STOP = 2  # the interrupted run stops after this epoch's checkpoint


class _Killed(Exception):
    """Stands for the job being killed."""


def _run_cli(argv: list[str], out: str, part: str, stop_after: int | None = None) -> None:
    """``cli.main(argv)``, keeping what this rank trained in ``out/part.rank<r>.pt``."""
    real_run, real_write = cli.run, train_mod._write_checkpoint
    kept: dict = {}

    def run(args):
        pruned, dense, model = real_run(args)
        kept["model"] = {k: v.clone() for k, v in model.state_dict().items()}
        kept["prune_epoch"] = pruned.prune_epoch
        return pruned, dense, model

    def write(run_state, path, epoch):
        real_write(run_state, path, epoch)
        if stop_after is not None and epoch == stop_after:
            raise _Killed()

    cli.run, train_mod._write_checkpoint = run, write
    try:
        rc = cli.main(argv)
        assert rc == 0, rc
    except _Killed:
        return
    finally:
        cli.run, train_mod._write_checkpoint = real_run, real_write
    torch.save(kept, os.path.join(out, f"{part}.rank{dist.get_rank()}.pt"))


def _run_readme(out: str) -> None:
    """The README's DDP block, in a namespace with a small model and the digits data."""
    import readme_blocks

    block = readme_blocks.ddp_block()
    ns = readme_blocks.namespace(distributed=True)
    exec(compile(block, "README.md (DDP block)", "exec"), ns)
    # parameters only: DDP syncs buffers at the start of each forward, so after the last step each
    # rank has updated its BN statistics with its own batch
    torch.save({"params": {k: v.detach().clone() for k, v in ns["model"].named_parameters()},
                "pruned": ns["pruner"].pruned, "prune_epoch": ns["pruner"].prune_epoch},
               os.path.join(out, f"readme.rank{dist.get_rank()}.pt"))


def main() -> None:
    out = sys.argv[1]
    argv = sys.argv[sys.argv.index("--") + 1:]
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    args = cli.parse_args(argv)
    assert cli._start_distributed(args), "expected to run under torchrun with WORLD_SIZE > 1"
    try:
        full = os.path.join(out, "full")
        os.makedirs(full, exist_ok=True)
        _run_cli(argv + ["--checkpoint", os.path.join(full, "ck.pt"), "--save", os.path.join(full, "pruned.pt"),
                         "--json", os.path.join(full, "r.json")], out, "full")
        resumed = os.path.join(out, "resumed")
        os.makedirs(resumed, exist_ok=True)
        ck = ["--checkpoint", os.path.join(resumed, "ck.pt")]
        _run_cli(argv + ck, out, "killed", stop_after=STOP)
        dist.barrier()
        _run_cli(argv + ck + ["--resume"], out, "resumed")
        _run_readme(out)
    finally:
        dist.barrier()
        dist.destroy_process_group()
    print(f"rank {os.environ['RANK']}: worker done in {time.perf_counter() - t0:.1f} s", flush=True)


if __name__ == "__main__":
    main()
