"""The ``random`` criterion: a baseline that ranks at random (seeded by the caller)."""

from __future__ import annotations

from typing import Any

from hamnet.compress.pruning.criteria.base import Criterion


class Random(Criterion):
    """Random importance, drawn from the global torch RNG the caller seeds."""

    name = "random"

    def build(self, model: Any = None, dataset: Any = None, seed: int = 0) -> Any:
        """Return a ``torch_pruning`` ``RandomImportance``."""
        import torch_pruning as tp

        return tp.importance.RandomImportance()


PLUGIN = Random
