"""The Hamerspace-style Python API: ``Optimizer.from_pytorch(...).optimize(goal, constraints)``.

Parts: :mod:`.ingestion` (loading the user's model), :mod:`.data` (validation data),
:mod:`.compiler` (pure: goal + constraints + model facts -> config), :mod:`.rounds`
(AUTO's round loop, in-process or Prefect), :mod:`.report` (the result) and
:mod:`.optimizer` (the :class:`Optimizer` facade).
"""

from hamnet.api.compiler import AutoPlan, plan_for
from hamnet.api.constraints import Constraints, Goal, UnsupportedCombinationError
from hamnet.api.optimizer import Optimizer
from hamnet.api.report import CompressionReport, OptimizationResult

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
