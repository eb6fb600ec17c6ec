"""``tpe``: Optuna's multivariate, grouped ``TPESampler`` (Bayesian)."""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

from hamnet.compress.search.samplers.base import Sampler

if TYPE_CHECKING:
    from optuna.samplers import BaseSampler

    from hamnet.compress.search.space import SearchSpace


class TPESampler(Sampler):
    """Tree-structured Parzen estimator; grouping handles conditional, per-layer parameters."""

    name = "tpe"

    def build(self, space: SearchSpace, *, seed: int | None, **options: Any) -> BaseSampler:
        """Create ``TPESampler(multivariate=True, group=True, seed=seed, **options)``."""
        from optuna.exceptions import ExperimentalWarning
        from optuna.samplers import TPESampler as OptunaTPESampler

        settings: dict[str, Any] = {"multivariate": True, "group": True, **options}
        with warnings.catch_warnings():
            # ``group`` is experimental since Optuna 2.8; chosen on purpose for conditional spaces.
            warnings.simplefilter("ignore", ExperimentalWarning)
            return OptunaTPESampler(seed=seed, **settings)


PLUGIN = TPESampler
