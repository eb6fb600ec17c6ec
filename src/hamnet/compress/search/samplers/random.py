"""``random``: Optuna's ``RandomSampler``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hamnet.compress.search.samplers.base import Sampler

if TYPE_CHECKING:
    from optuna.samplers import BaseSampler

    from hamnet.compress.search.space import SearchSpace


class RandomSampler(Sampler):
    """Independent uniform sampling of every parameter."""

    name = "random"

    def build(self, space: SearchSpace, *, seed: int | None, **options: Any) -> BaseSampler:
        """Create ``RandomSampler(seed=seed, **options)``."""
        from optuna.samplers import RandomSampler as OptunaRandomSampler

        return OptunaRandomSampler(seed=seed, **options)


PLUGIN = RandomSampler
