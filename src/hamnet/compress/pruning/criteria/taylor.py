"""The ``taylor`` criterion: first-order Taylor estimate ``|w * dL/dw|``."""

from __future__ import annotations

from typing import Any

from hamnet.compress.pruning.criteria.base import Criterion


class Taylor(Criterion):
    """First-order Taylor importance; reads the gradients the caller accumulated."""

    name = "taylor"
    needs_gradients = True

    def build(self, model: Any = None, dataset: Any = None, seed: int = 0) -> Any:
        """Return a ``torch_pruning`` ``TaylorImportance``."""
        import torch_pruning as tp

        return tp.importance.TaylorImportance()


PLUGIN = Taylor
