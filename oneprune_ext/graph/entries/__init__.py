"""The built-in layer entries; importing this package registers them in the default registry.

* :mod:`.layers` -- modules and functions with parameters (convs, linears, norms, attention, ...);
* :mod:`.tensor_ops` -- parameter-free tensor ops (adds, concats, reshapes, pooling, ...);
* :mod:`.detection` -- torchvision's detection layers (RoI pooling, frozen batch norm);
* :mod:`.ultralytics` -- ultralytics' YOLO detection head.
"""

from __future__ import annotations

from . import detection, layers, tensor_ops, ultralytics  # noqa: F401  (each module registers its entries on import)
