"""``grid``: Optuna's ``GridSampler`` over every value of the space."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hamnet.compress.search.samplers.base import Sampler
from hamnet.compress.search.space import grid_values

if TYPE_CHECKING:
    from optuna.samplers import BaseSampler

    from hamnet.compress.search.space import SearchSpace


class GridSampler(Sampler):
    """Every combination of :func:`~hamnet.compress.search.space.grid_values`, in random order."""

    name = "grid"

    def build(self, space: SearchSpace, *, seed: int | None, **options: Any) -> BaseSampler:
        """Create ``GridSampler(grid_values(space), seed=seed, **options)``.

        Raises:
            ConfigError: A float parameter of the space has no step.
        """
        from optuna.samplers import GridSampler as OptunaGridSampler

        return OptunaGridSampler(grid_values(space), seed=seed, **options)


PLUGIN = GridSampler
