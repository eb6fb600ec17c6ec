"""Structured pruning of HAMNet (attention heads and FFN channels) with torch-pruning.

torch-pruning is imported only inside the functions that prune, so importing this
package stays light.
"""

from __future__ import annotations

from hamnet.compress.pruning.allocation import (
    ALLOCATORS,
    LAYER_ALLOCATORS,
    get_allocation,
    is_layer_allocation,
)
from hamnet.compress.pruning.hf import HFPruningPlan, apply_hf_plan, prune_bert
from hamnet.compress.pruning.importance import IMPORTANCES, get_importance, needs_gradients
from hamnet.compress.pruning.structured import (
    SCHEDULES,
    LayerPlan,
    PruneResult,
    PruningPlan,
    apply_plan,
    count_parameters,
    prune_hamnet,
)

__all__ = [
    "ALLOCATORS",
    "IMPORTANCES",
    "LAYER_ALLOCATORS",
    "SCHEDULES",
    "HFPruningPlan",
    "LayerPlan",
    "PruneResult",
    "PruningPlan",
    "apply_hf_plan",
    "apply_plan",
    "count_parameters",
    "get_allocation",
    "get_importance",
    "is_layer_allocation",
    "needs_gradients",
    "prune_bert",
    "prune_hamnet",
]
