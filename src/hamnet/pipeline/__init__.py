"""The hamnet-optimize plan: stages, their execution and the run's state."""

from hamnet.core.moved import forward_old_names as _forward_old_names

__getattr__ = _forward_old_names(__name__, ("run", "measuring"))
"""Names of the former ``hamnet.pipeline`` module, found in their new modules (deprecated)."""
