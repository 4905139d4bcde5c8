"""One-cycle structured pruning of a small CNN on scikit-learn's bundled digits, on CPU.

This is what ``make demo`` runs.  It trains ``digits_cnn`` from scratch for 30 epochs and,
in the same run, finds and removes half of its MACs (whole channels); then it trains a dense
model of the same length and seed and prints the comparison table: accuracy, MACs,
parameters, the epoch at which it pruned, the accuracy right before and right after the prune
(the prune shock), the weight-norm share the removed channels still held, and the pruner's
share of the training time.  About a minute on a 2-core CPU; no download, no GPU.

The settings are the published CIFAR-10 recipe (SGD lr 0.1, momentum 0.9 Nesterov, weight
decay 5e-4, lr x0.2 at 30/60/80/90 % of the run, regularizer shrink) with its 300-epoch
schedule scaled to 30 epochs (x 30/300):

* ``--monitor-start 1``  published 2 (x0.1 = 0.2, at least 1): sub-network search starts;
* ``--sl-start 3``       published 30: sparsity learning (the shrink) starts;
* ``--sl-end 11``        published 110: prune by the end of this epoch at the latest
  (it prunes earlier when the stability indicator reaches 0.999);
* ``--reg auto``         the published shrink curve (sum of reg * lr about 8.3 by sl_end) on
  this 45-steps-per-epoch schedule; the published reg numbers (1e-4, +1e-4 per epoch) would
  shrink the removed channels by about 1 % here and the prune would be a blind cut.

``--width 40`` (channels of the first layers, 3.3 M MACs per image): the run stops at the
shortest prefix of the saliency ranking that reaches the target, so it overshoots by up to the
cost of the last channel taken (a narrower model lands further from 50 %).  The test split has
360 images, one image is 0.28 points: at width 32 the pruned model ended 0.28 to 0.56 points
below the dense one over seeds 0-2, at width 40 at or above it
(``examples/compare_regularizers.py`` measures this, see the README).

``--out runs/digits-demo``: the run directory: ``report.json`` (config, per-epoch history, prune
epoch, accuracies, MACs / parameters / channels per group, overhead), ``metrics.jsonl`` (one line
per epoch, written as it goes), ``model.pt`` / ``dense_model.pt`` (``oneprune eval
runs/digits-demo --dense`` measures them) and four PNG plots (stability indicator, training
curves, channels per group, overhead); the last lines printed say where.

``--threads 1``: the network is tiny, and on a busy 2-core machine two torch threads were
measured to be many times slower than one.  Anything after the script name is passed on to
``oneprune`` (see ``oneprune --help``) and overrides these settings, e.g.
``python examples/digits_demo.py --reduction 0.6``.
"""

from __future__ import annotations

import sys

from oneprune_ext.cli.train import main

DEMO_ARGS = [
    "--data", "digits", "--model", "digits_cnn", "--width", "40",
    "--epochs", "30", "--batch-size", "32", "--lr", "0.1", "--schedule", "step",
    "--target", "macs", "--reduction", "0.5",
    "--monitor-start", "1", "--sl-start", "3", "--sl-end", "11",
    "--reg", "auto",
    "--dense-baseline", "--threads", "1", "--seed", "0",
    "--out", "runs/digits-demo",
]

if __name__ == "__main__":
    sys.exit(main(DEMO_ARGS + sys.argv[1:]))
