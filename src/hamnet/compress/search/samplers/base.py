"""The base of every search sampler plugin (kind ``"sampler"``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from hamnet.core.registry import Plugin

if TYPE_CHECKING:
    from optuna.samplers import BaseSampler

    from hamnet.compress.search.space import SearchSpace


class Sampler(Plugin):
    """Chooses the parameters of the next trial: a factory of one Optuna sampler.

    Attributes:
        multi_objective: Whether the sampler handles studies with several objectives.
    """

    kind: ClassVar[str] = "sampler"
    multi_objective: ClassVar[bool] = True

    def build(self, space: SearchSpace, *, seed: int | None, **options: Any) -> BaseSampler:
        """Create the Optuna sampler for ``space``.

        Args:
            space: The search space (the grid, the ``evolution`` settings).
            seed: Seed of the sampler's random numbers.
            **options: Keyword arguments of the Optuna class overriding hamnet's settings.

        Returns:
            The sampler.
        """
        raise NotImplementedError
