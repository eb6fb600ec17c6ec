"""``median``: Optuna's ``MedianPruner``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hamnet.compress.search.pruners.base import Pruner

if TYPE_CHECKING:
    from optuna.pruners import BasePruner

    from hamnet.compress.search.space import SearchSpace


class MedianPruner(Pruner):
    """Prunes a trial whose accuracy at an epoch is worse than the median of earlier trials."""

    name = "median"

    def build(self, space: SearchSpace, **options: Any) -> BasePruner:
        """Create ``MedianPruner(n_startup_trials=5, n_warmup_steps=1, **options)``."""
        from optuna.pruners import MedianPruner as OptunaMedianPruner

        settings: dict[str, Any] = {"n_startup_trials": 5, "n_warmup_steps": 1, **options}
        return OptunaMedianPruner(**settings)


PLUGIN = MedianPruner
