"""The built-in layer entries; importing this package registers them in the default registry.

* :mod:`.layers` -- modules and functions with parameters (convs, linears, norms, attention, ...);
* :mod:`.tensor_ops` -- parameter-free tensor ops (adds, concats, reshapes, pooling, ...).
"""

from __future__ import annotations

from . import layers, tensor_ops  # noqa: F401  (each module registers its entries on import)
