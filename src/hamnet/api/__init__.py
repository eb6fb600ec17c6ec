"""The Hamerspace-style Python API: ``Optimizer.from_pytorch(...).optimize(goal, constraints)``."""

from hamnet.api.optimizer import (
    AutoPlan,
    CompressionReport,
    Constraints,
    Goal,
    OptimizationResult,
    Optimizer,
    UnsupportedCombinationError,
    plan_for,
)

__all__ = [
    "AutoPlan",
    "CompressionReport",
    "Constraints",
    "Goal",
    "OptimizationResult",
    "Optimizer",
    "UnsupportedCombinationError",
    "plan_for",
]
