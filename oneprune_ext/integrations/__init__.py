"""The pruner inside training frameworks (optional extras; nothing here is imported by default).

Imports only from the layers before it (:mod:`oneprune_ext.graph` ... :mod:`oneprune_ext.tools`).

* :mod:`.lightning` -- :class:`~oneprune_ext.integrations.lightning.OneCyclePruning`, a
  ``lightning.Callback`` (``pip install oneprune_ext[lightning]``).
"""
