"""``gp``: Optuna's ``GPSampler`` (Gaussian-process Bayesian optimization)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hamnet.compress.search.samplers.base import Sampler

if TYPE_CHECKING:
    from optuna.samplers import BaseSampler

    from hamnet.compress.search.space import SearchSpace


class GPSampler(Sampler):
    """Gaussian-process sampler; parameters outside the shared space are sampled at random."""

    name = "gp"

    def build(self, space: SearchSpace, *, seed: int | None, **options: Any) -> BaseSampler:
        """Create ``GPSampler(seed=seed, warn_independent_sampling=False, **options)``."""
        from optuna.samplers import GPSampler as OptunaGPSampler

        settings: dict[str, Any] = {"warn_independent_sampling": False, **options}
        return OptunaGPSampler(seed=seed, **settings)


PLUGIN = GPSampler
