"""``nsga2``: Optuna's ``NSGAIISampler`` with the space's ``evolution`` settings."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hamnet.compress.search.samplers.base import Sampler
from hamnet.compress.search.space import EvolutionSection

if TYPE_CHECKING:
    from optuna.samplers import BaseSampler

    from hamnet.compress.search.space import SearchSpace


class NSGA2Sampler(Sampler):
    """Genetic algorithm: ``population_size``, ``mutation_rate``, ``crossover_rate``, uniform
    crossover, from the space's ``evolution`` section (defaults when absent)."""

    name = "nsga2"

    def build(self, space: SearchSpace, *, seed: int | None, **options: Any) -> BaseSampler:
        """Create ``NSGAIISampler`` with the evolution settings, overridden by ``options``."""
        import optuna.samplers
        from optuna.samplers.nsgaii import UniformCrossover

        evolution = space.evolution or EvolutionSection()
        settings: dict[str, Any] = {
            "population_size": evolution.population_size,
            "mutation_prob": evolution.mutation_rate,
            "crossover_prob": evolution.crossover_rate,
            "crossover": UniformCrossover(),
            **options,
        }
        return optuna.samplers.NSGAIISampler(seed=seed, **settings)


PLUGIN = NSGA2Sampler
