"""The base of every search pruner plugin (kind ``"pruner"``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from hamnet.core.registry import Plugin

if TYPE_CHECKING:
    from optuna.pruners import BasePruner

    from hamnet.compress.search.space import SearchSpace


class Pruner(Plugin):
    """Stops unpromising trials early: a factory of one Optuna pruner.

    Attributes:
        multi_objective: Whether the pruner can be used in a study with several
            objectives. Optuna prunes single-objective studies only (``Trial.report``
            raises otherwise), so only a pruner that never prunes can.
    """

    kind: ClassVar[str] = "pruner"
    multi_objective: ClassVar[bool] = False

    def build(self, space: SearchSpace, **options: Any) -> BasePruner:
        """Create the Optuna pruner for ``space``.

        Args:
            space: The search space (its largest ``epochs`` is the largest resource).
            **options: Keyword arguments of the Optuna class overriding hamnet's settings.

        Returns:
            The pruner.
        """
        raise NotImplementedError


def max_epochs(space: SearchSpace) -> int | str:
    """The largest ``epochs`` of the space, or ``"auto"`` when epochs are not searched."""
    high = space.max_value("epochs")
    return "auto" if high is None else int(high)
