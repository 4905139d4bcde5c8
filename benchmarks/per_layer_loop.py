"""The published method's per-layer loop; it lives in the package (``oneprune profile`` uses it
too): :mod:`oneprune_ext.tools.per_layer_loop`."""

from oneprune_ext.tools.per_layer_loop import (  # noqa: F401
    LR,
    REG,
    per_layer_lasso,
    per_layer_norms,
    per_layer_shrink,
    per_layer_step,
)
