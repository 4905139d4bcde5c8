"""The one-cycle pruner: schedule, sub-network search, sparsity learning, the physical prune.

Imports only from :mod:`oneprune_ext.graph` and :mod:`oneprune_ext.kernels`. The modules, one concern each:

* :mod:`.pruner` -- :class:`OneCyclePruner`, the facade: the four hooks a training loop calls;
* :mod:`.config` -- :class:`PrunerConfig`, every option in one validated object;
* :mod:`.recipes` -- the published CIFAR-10 and ImageNet recipes (the options' defaults come from there);
* :mod:`.facts` -- the dense model's channel groups and exact costs (traced once);
* :mod:`.schedule` -- the phases, ``reg(t)``, when to prune, the hook order;
* :mod:`.saliency` -- the saliency strategies (``saliency_params``);
* :mod:`.selection` -- cost share, per-layer limits, ``round_to``, the global selection;
* :mod:`.stability` -- the stability indicator and the automatic sparsity-learning start;
* :mod:`.search` -- the per-epoch sub-network search built from the three above;
* :mod:`.regularizers` -- the regularizer strategies (``shrink``, ``group_lasso``, ``both``);
* :mod:`.sparsity` -- how strong each step is: a fixed ``reg(t)`` or the shrink curve (``reg="auto"``);
* :mod:`.sparsity_learning` -- the step path: the regularizer armed per epoch, the step count;
* :mod:`.compaction` -- :func:`prune_channels`, the in-place physical prune;
* :mod:`.mirrors` -- copies pruned with the model (EMA / SWA averages: ``pruner.track``);
* :mod:`.follow` -- the layout follows the model's memory format, dtype and device;
* :mod:`.state` and :mod:`.state_reader` -- the saved state and its checked reading;
* :mod:`.epoch_report` -- :class:`EpochReport`, what ``epoch_end`` returns;
* :mod:`.distributed` -- DDP helpers; :mod:`.profiling` -- profiler ranges and hook timing.

Loop shapes that work unchanged across the prune: a ``loss`` / ``outputs`` / list of past
losses kept alive (the pruned parameters' cached gradient accumulators are dropped), any
``torch.optim`` optimizer with per-element state (its state is compacted), gradient
accumulation (call ``before_step`` / ``after_step`` once per optimizer step),
``torch.compile`` (one recompile after the prune), ``channels_last`` models (converted before or
after the pruner is built: the pruner follows memory format, dtype and device changes, see
:mod:`oneprune_ext.pruning.follow`), EMA / SWA copies of the model (``pruner.track(ema)``), AMP
(``before_step(scaler=scaler)`` while the gradients are scaled, ``after_step(lr,
scaler=scaler)`` between ``scaler.step`` and ``scaler.update``) and DDP (``process_group=``,
see :mod:`oneprune_ext.pruning.distributed`).

The algorithm
-------------

One-cycle structured pruning with a stability-driven sub-network search (Ghimire, Kil, Jeong,
Park, Kim, WACV 2026, arXiv 2501.13439): train from scratch, find the sub-network to keep while
training, push the rest towards zero, remove it physically, and go on training the smaller
model, all in one run with one optimizer and one learning-rate schedule.

A **channel group** is a set of parameter slices removed together (output channel ``c`` of a
conv, entry ``c`` of its BatchNorm, input column ``c`` of every layer that reads it; a residual
add merges its operands' groups; see :mod:`oneprune_ext.graph.trace`). ``g_c`` is every coupled slice
of channel ``c``. Per 0-based epoch ``t`` of a run of ``total_epochs`` epochs:

* ``t < monitor_start``: **dense** training, the pruner does nothing.
* ``t >= monitor_start`` (until pruned), at :meth:`~oneprune_ext.pruning.pruner.OneCyclePruner.epoch_start`: **monitoring**.

  - saliency of each channel, ``(1/M) sum_m ||s_m(c)||^2 / sqrt(len(s_m(c)))`` over its ``M``
    slices (one fused kernel), times ``1 - cost_share(group)``, a softmax over the groups of
    their per-channel MACs in millions (channels of expensive groups go first when close);
  - per-layer limit: at most ``floor(C * layer_limit * (1 - exp(-layer_limit_k * C)))`` of a
    group's ``C`` channels may go, the most salient rest is protected;
  - global selection: the unprotected channels ranked by saliency, the shortest prefix whose
    removal reaches the target reduction of MACs (or parameters), found by binary search on an
    exact closed-form cost model (:func:`oneprune_ext.pruning.selection.select_subnetwork`);
  - stability indicator ``psi``: mean over the last three epochs of the mean-over-groups
    Jaccard similarity between the kept sets of epoch ``t`` and ``t - 2``
    (:class:`oneprune_ext.pruning.stability.StabilityTracker`).

* ``t >= sl_start`` (until pruned): **sparsity learning** on the channels currently chosen for
  removal, with ``reg(t) = reg + reg_delta * floor((t - sl_start) / reg_interval)``:

  (:mod:`oneprune_ext.pruning.regularizers`; the schedule: :mod:`oneprune_ext.pruning.schedule`)

  - ``regularizer="shrink"`` (default): after each optimizer step those slices are multiplied
    by ``1 - reg * lr`` (:meth:`~oneprune_ext.pruning.pruner.OneCyclePruner.after_step`);
  - ``regularizer="group_lasso"``: after each backward the gradient of
    ``reg * sum_c ||g_c||_2``, ``reg * w / ||g_c||``, is added to them
    (:meth:`~oneprune_ext.pruning.pruner.OneCyclePruner.before_step`);
  - ``regularizer="both"``: both.

  A channel that stays in the removal set is scaled by about ``exp(-S)``, ``S = sum reg * lr``
  over its steps (:attr:`~oneprune_ext.pruning.epoch_report.EpochReport.shrink`): 8.3 by ``sl_end`` in the published CIFAR-10
  recipe, so the prune then removes channels that are nearly zero. ``reg="auto"`` keeps ``S`` on
  that published curve at any number of epochs, steps per epoch and learning rate
  (:mod:`oneprune_ext.pruning.sparsity`); a number keeps the formula above. ``sl_start="auto"`` starts
  sparsity learning at the first epoch ``t > 3`` at which ``psi`` rose by at most 1e-4 since
  ``t - 2`` (:func:`oneprune_ext.pruning.stability.auto_sl_start`).
* **Pruning**, at :meth:`~oneprune_ext.pruning.pruner.OneCyclePruner.epoch_end` of the first sparsity-learning epoch whose
  indicator (computed at that epoch's start) is ``>= stability_threshold``, or of epoch
  ``sl_end`` at the latest (:meth:`~oneprune_ext.pruning.pruner.OneCyclePruner.will_prune` says beforehand): the channels of
  the chosen sub-network that are not kept (with ``reselect_at_prune``, of a sub-network chosen
  once more from the weights the epoch left) are removed physically and in place
  (:func:`oneprune_ext.pruning.compaction.prune_channels`: same ``Parameter`` objects, optimizer state
  compacted), so training goes on with the same optimizer and LR scheduler until
  ``total_epochs``. Afterwards the hooks only keep time. :attr:`~oneprune_ext.pruning.epoch_report.EpochReport.removed_norm_share`
  tells, before the prune, how much of the weight norm the removed channels still hold.

Differences from the authors' public code (OCSPruner ``main_cifar.py`` / ``main_imagenet.py``),
each deliberate:

* Sparsity learning starts at ``sl_start`` with ``reg``; the published CIFAR loop regularises
  from ``sl_start + 2`` and raises ``reg`` by ``reg_delta`` before each regularised epoch (so it
  starts at ``reg + reg_delta``) on epochs divisible by ``reg_interval``. Reason: the schedule
  the paper states; the totals agree (``S`` = 8.32 here, 8.13 published, by the prune).
* A stability prune needs sparsity learning to have started; the published loops prune when
  stable in any monitored epoch. Reason: a prune before any regularisation is a blind cut (a
  large prune shock).
* ``sl_end`` is the last epoch trained before the forced prune (the published CIFAR loop trains
  one more, ``sl_end + 1``). Reason: "prune by ``sl_end``", as the option is documented.
* The sub-network search costs candidates with an exact closed form and returns the shortest
  prefix that reaches the target (never below it); the published search deep-copies and prunes
  the model at every binary-search probe and stops at the first probe within 5e-4 of the
  target, which may fall short of it.
  Reason: the same ranking, microseconds instead of seconds, exact reduction.
* The pruned model keeps training with the same optimizer (momentum of the kept channels kept)
  and scheduler; the published code builds a new optimizer after the prune. Reason: one run,
  one optimizer; nothing about the schedule changes.
* The shrink runs after ``optimizer.step()`` on CIFAR and ImageNet alike (the published
  ImageNet loop scales before the step). Reason: one hook order for every loop; it moves one
  step's update.
* ``regularizer="group_lasso"`` / ``"both"`` and ``reg="auto"`` are this project's additions
  (the published penalty is computed under ``no_grad``, so only the shrink acts; SGD momentum
  amplifies the lasso gradient about tenfold). ``saliency_params="all"`` counts depthwise-conv,
  LayerNorm and layer-scale weights too (published: only conv/linear rows and columns and BatchNorm
  weights count, the default).

The published recipes (CIFAR-10 and ImageNet, every number once): :mod:`oneprune_ext.pruning.recipes`;
``oneprune --print-config`` prints the one a command line resolves to.
"""

from __future__ import annotations

from . import distributed
from .compaction import check_optimizer, prune_channels
from .config import PrunerConfig
from .epoch_report import EpochReport
from .pruner import OneCyclePruner

__all__ = ["EpochReport", "OneCyclePruner", "PrunerConfig", "check_optimizer", "distributed", "prune_channels"]
