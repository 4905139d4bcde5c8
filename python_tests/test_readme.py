"""Every README code block that shows a training loop runs as written (issue 8, item 1).

The blocks are read from README.md at test time (never copied here), so the README cannot
drift from what works. The DDP block runs under torchrun in test_ddp.py.
"""

from __future__ import annotations

import pytest
import torch

import readme_blocks

BLOCKS = readme_blocks.single_process_blocks()


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny model: one thread is faster than several on a busy machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_readme_has_the_loops() -> None:
    # the plain loop, AMP, gradient accumulation (single process) and DDP
    assert len(BLOCKS) >= 3
    assert any("GradScaler" in b for b in BLOCKS) and any("accumulate" in b for b in BLOCKS)
    assert readme_blocks.ddp_block()


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_loop_runs_and_prunes(index: int) -> None:
    block = BLOCKS[index]
    ns = readme_blocks.namespace(epochs=readme_blocks.epochs_for(block))
    dense = sum(p.numel() for p in ns["model"].parameters())
    exec(compile(block, f"README.md (loop block {index})", "exec"), ns)
    pruner, model = ns["pruner"], ns["model"]
    assert pruner.pruned, "the README loop should prune within its epochs"
    assert sum(p.numel() for p in model.parameters()) < dense
    assert 1 - pruner.macs() / pruner.dense_macs >= pruner.config.reduction  # the target is reached
    x, y = next(iter(ns["train_loader"]))
    loss = ns["criterion"](model(x), y)
    assert torch.isfinite(loss)
    loss.backward()  # and it keeps training
