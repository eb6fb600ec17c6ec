"""MLflow: one parent run per optimization, a nested run per candidate, the model registry.

Modules: ``connection`` (client and experiment), ``runs`` (run logging), ``champion``
(model registry and the champion policy), ``reaper`` (runs of killed processes) and
``tracker`` (the :class:`~hamnet.tracking.tracker.Tracker` facade over them).
"""

from hamnet.core.moved import forward_old_names as _forward_old_names

__getattr__ = _forward_old_names(__name__, ("tracker",))
"""Names of the former ``hamnet.tracking`` module, found in their new modules (deprecated)."""
