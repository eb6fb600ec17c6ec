"""The names of the Python API, listed once for every module that re-exports them.

``hamnet`` loads them lazily from :mod:`hamnet.api.optimizer` (so ``import hamnet``
stays light); :mod:`hamnet.api` and :mod:`hamnet.api.optimizer` export them.
"""

from __future__ import annotations

__all__ = ["API_NAMES"]

API_NAMES: tuple[str, ...] = (
    "AutoPlan",
    "CompressionReport",
    "Constraints",
    "Goal",
    "OptimizationGoal",
    "OptimizationResult",
    "Optimizer",
    "UnsupportedCombinationError",
    "plan_for",
)
"""The public names of :mod:`hamnet.api`, also reachable as ``hamnet.<name>``."""
