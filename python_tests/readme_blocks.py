"""The README's Python code blocks that show a training loop, read from README.md at test time,
and the namespace they run in (a small CNN on a few digits images).

The blocks use these names, which a reader's own script defines: ``model``, ``example_inputs``,
``train_loader`` (``train_set`` for the DDP block), ``optimizer``, ``scheduler``, ``criterion``,
``epochs`` and ``config`` (a :class:`~oneprune_ext.PrunerConfig` for ``epochs``).
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset

import oneprune_ext as op
from oneprune_ext import models
from oneprune_ext.training.data import EpochShuffleSampler, digits_loaders

README = Path(__file__).resolve().parents[1] / "README.md"
EPOCHS = 12  # unless the block's own config prunes later (see epochs_for)
SAMPLES, BATCH = 16, 4  # 4 batches an epoch (one optimizer step with accumulate=4)


def python_blocks() -> list[str]:
    """Every fenced ```python block of README.md, in order."""
    return re.findall(r"^```python\n(.*?)^```", README.read_text(), flags=re.M | re.S)


def loop_blocks() -> list[str]:
    """The blocks that contain a ``for`` loop."""
    return [b for b in python_blocks() if re.search(r"^\s*for .+:", b, flags=re.M)]


def is_ddp(block: str) -> bool:
    return "process_group=" in block or "DistributedDataParallel" in block


def ddp_block() -> str:
    blocks = [b for b in loop_blocks() if is_ddp(b)]
    assert len(blocks) == 1, f"expected one DDP loop in README.md, found {len(blocks)}"
    return blocks[0]


def single_process_blocks() -> list[str]:
    return [b for b in loop_blocks() if not is_ddp(b)]


def epochs_for(block: str) -> int:
    """Enough epochs for the block: past the ``sl_end`` its own config sets (the published 110)."""
    ends = [int(v) for v in re.findall(r"sl_end=(\d+)", block)]
    return max([EPOCHS] + [e + 2 for e in ends])


@functools.lru_cache(maxsize=1)
def _digits() -> Any:
    return digits_loaders(batch_size=BATCH, seed=0)[0].dataset


def namespace(distributed: bool = False, epochs: int = EPOCHS) -> dict[str, Any]:
    """Fresh objects for one block: seeded model, data, optimizer, scheduler, criterion, config."""
    train_set = Subset(_digits(), range(SAMPLES))
    torch.manual_seed(0)
    model = models.digits_cnn(10, width=4)
    if distributed:
        from torch.utils.data import DistributedSampler

        world = torch.distributed.get_world_size()
        loader = DataLoader(train_set, batch_size=BATCH // world, sampler=DistributedSampler(train_set, seed=0))
    else:
        loader = DataLoader(train_set, batch_size=BATCH, sampler=EpochShuffleSampler(SAMPLES, seed=0))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    return {
        "torch": torch, "nn": nn, "F": F, "op": op,
        "model": model,
        "example_inputs": train_set[0][0].unsqueeze(0),
        "train_set": train_set,
        "train_loader": loader,
        "batch_size": BATCH,
        "optimizer": optimizer,
        "scheduler": torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs),
        "criterion": nn.CrossEntropyLoss(),
        "epochs": epochs,
        "config": op.PrunerConfig(total_epochs=epochs, monitor_start=1, sl_start=2, sl_end=6, reg=0.05),
    }


def fenced_blocks() -> list[tuple[str, str]]:
    """Every fenced block of README.md with a language tag, as (language, text); untagged blocks
    are printed output, not code."""
    return re.findall(r"^```(\w+)\n(.*?)^```", README.read_text(), flags=re.M | re.S)


def epoch_end_fragments() -> list[str]:
    """Python blocks without a loop of their own that replace the ``epoch_end`` line of a loop."""
    return [b for b in python_blocks() if b not in loop_blocks() and "pruner.epoch_end(" in b]


def command_lines() -> list[str]:
    """The commands of the README's ``bash`` blocks, comments stripped."""
    lines = []
    for lang, text in fenced_blocks():
        if lang == "bash":
            lines += [ln.split(" #")[0].strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    return lines
