"""``hyperband``: Optuna's ``HyperbandPruner`` up to the largest ``epochs`` of the space."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hamnet.compress.search.pruners.base import Pruner, max_epochs

if TYPE_CHECKING:
    from optuna.pruners import BasePruner

    from hamnet.compress.search.space import SearchSpace


class HyperbandPruner(Pruner):
    """Successive halving over several budgets; ``max_resource`` is the space's top epochs."""

    name = "hyperband"

    def build(self, space: SearchSpace, **options: Any) -> BasePruner:
        """Create ``HyperbandPruner(min_resource=1, max_resource=<epochs>, reduction_factor=3)``.

        ``max_resource`` is ``"auto"`` when the space does not search epochs.
        """
        import optuna.pruners

        settings: dict[str, Any] = {
            "min_resource": 1,
            "max_resource": max_epochs(space),
            "reduction_factor": 3,
            **options,
        }
        return optuna.pruners.HyperbandPruner(**settings)


PLUGIN = HyperbandPruner
