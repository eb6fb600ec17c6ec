"""``none``: Optuna's ``NopPruner``, which never prunes."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hamnet.compress.search.pruners.base import Pruner

if TYPE_CHECKING:
    from optuna.pruners import BasePruner

    from hamnet.compress.search.space import SearchSpace


class NoPruner(Pruner):
    """Every trial runs to its end; the only pruner for several objectives."""

    name = "none"
    multi_objective = True

    def build(self, space: SearchSpace, **options: Any) -> BasePruner:
        """Create ``NopPruner(**options)``."""
        from optuna.pruners import NopPruner

        return NopPruner(**options)


PLUGIN = NoPruner
