"""The Hamerspace-style Python API: ``Optimizer.from_pytorch(...).optimize(goal, constraints)``.

Parts: :mod:`.ingestion` (loading the user's model), :mod:`.data` (validation data),
:mod:`.compiler` (pure: goal + constraints + model facts -> config), :mod:`.rounds`
(AUTO's round loop, in-process or Prefect), :mod:`.report` (the result) and
:mod:`.optimizer` (the :class:`Optimizer` facade).
"""

from hamnet.api.compiler import AutoPlan as AutoPlan
from hamnet.api.compiler import plan_for as plan_for
from hamnet.api.constraints import Constraints as Constraints
from hamnet.api.constraints import Goal as Goal
from hamnet.api.constraints import OptimizationGoal as OptimizationGoal
from hamnet.api.constraints import UnsupportedCombinationError as UnsupportedCombinationError
from hamnet.api.optimizer import Optimizer as Optimizer
from hamnet.api.report import CompressionReport as CompressionReport
from hamnet.api.report import OptimizationResult as OptimizationResult
from hamnet.core.api_names import API_NAMES

__all__ = list(API_NAMES)

from hamnet.core.moved import forward_old_names as _forward_old_names

__getattr__ = _forward_old_names(
    __name__, ("optimizer", "compiler", "report", "constraints", "ingestion", "rounds")
)
"""Names of the former ``hamnet.api`` module, found in their new modules (deprecated)."""
