"""The script test_lightning.py runs for ``strategy="ddp"``: Lightning launches the second process
itself (it runs this script again with its rank in the environment); gloo, CPU, 2 processes.

``python lightning_ddp_worker.py OUT`` fits the test's digits module with ``OneCyclePruning`` and
writes what each rank ended with to ``OUT/rank<r>.pt``.
"""

from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import lightning as L  # noqa: E402

from oneprune_ext.integrations.lightning import OneCyclePruning  # noqa: E402
from test_lightning import OPTIONS, DigitsModule, _loader  # noqa: E402

EPOCHS = 5


def main() -> None:
    out = sys.argv[1]
    torch.set_num_threads(1)
    module = DigitsModule(epochs=EPOCHS)
    pruning = OneCyclePruning(network="net", mirrors=["ema"], total_epochs=EPOCHS, **OPTIONS)
    trainer = L.Trainer(max_epochs=EPOCHS, accelerator="cpu", devices=2, strategy="ddp", callbacks=[pruning],
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)
    trainer.fit(module, _loader())
    pruner = pruning.pruner
    # parameters only: after the last step each rank updated its BN statistics with its own batch
    torch.save({"params": {k: v.detach().clone() for k, v in module.net.named_parameters()},
                "pruned": pruner.pruned, "prune_epoch": pruner.prune_epoch,
                "sizes": list(pruner.groups.sizes), "dense_sizes": [c["dense"] for c in pruner.channel_counts()]},
               os.path.join(out, f"rank{trainer.global_rank}.pt"))


if __name__ == "__main__":
    main()
