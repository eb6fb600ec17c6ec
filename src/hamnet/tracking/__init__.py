"""MLflow: one parent run per optimization, a nested run per candidate, the model registry.

Modules: ``connection`` (client and experiment), ``runs`` (run logging), ``champion``
(model registry and the champion policy), ``reaper`` (runs of killed processes) and
``tracker`` (the :class:`~hamnet.tracking.tracker.Tracker` facade over them).
"""
