"""Measuring tools: ``oneprune profile`` (:mod:`.profile`: what the pruning costs per step) and
``oneprune eval`` (:mod:`.eval`: accuracy, exact cost and latency of a pruned model), plus the
published method's per-layer loop they compare against (:mod:`.per_layer_loop`)."""
