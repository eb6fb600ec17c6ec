"""``successive_halving``: Optuna's ``SuccessiveHalvingPruner`` (asynchronous)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hamnet.compress.search.pruners.base import Pruner

if TYPE_CHECKING:
    from optuna.pruners import BasePruner

    from hamnet.compress.search.space import SearchSpace


class SuccessiveHalvingPruner(Pruner):
    """Keeps the best third of the trials at each rung of epochs."""

    name = "successive_halving"

    def build(self, space: SearchSpace, **options: Any) -> BasePruner:
        """Create ``SuccessiveHalvingPruner(min_resource=1, reduction_factor=3, **options)``."""
        from optuna.pruners import SuccessiveHalvingPruner as OptunaSuccessiveHalvingPruner

        settings: dict[str, Any] = {"min_resource": 1, "reduction_factor": 3, **options}
        return OptunaSuccessiveHalvingPruner(**settings)


PLUGIN = SuccessiveHalvingPruner
