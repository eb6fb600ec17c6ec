"""Structured pruning of HAMNet (attention heads and FFN channels) with torch-pruning.

Criteria and allocations are registry plugins (kinds ``"criterion"`` and
``"allocation"``; list them with ``hamnet.core.registry.names``). The names below are
imported on first use, so importing this package (or validating a config against the
registry) stays light: no torch, no torch-pruning.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from hamnet.core.lazy import lazy_exports

if TYPE_CHECKING:
    from hamnet.compress.pruning.allocation import get_allocation, is_layer_allocation
    from hamnet.compress.pruning.hf import HFPruningPlan, apply_hf_plan, prune_bert
    from hamnet.compress.pruning.importance import get_importance, needs_gradients
    from hamnet.compress.pruning.module_groups import ModuleGroup
    from hamnet.compress.pruning.modules import ModulePruneResult, module_groups, prune_module
    from hamnet.compress.pruning.structured import (
        SCHEDULES,
        LayerPlan,
        PruneResult,
        PruningPlan,
        apply_plan,
        count_parameters,
        prune_hamnet,
    )

_EXPORTS: dict[str, str] = {
    "get_allocation": "allocation",
    "is_layer_allocation": "allocation",
    "HFPruningPlan": "hf",
    "apply_hf_plan": "hf",
    "prune_bert": "hf",
    "get_importance": "importance",
    "needs_gradients": "importance",
    "ModuleGroup": "module_groups",
    "ModulePruneResult": "modules",
    "module_groups": "modules",
    "prune_module": "modules",
    "SCHEDULES": "structured",
    "LayerPlan": "structured",
    "PruneResult": "structured",
    "PruningPlan": "structured",
    "apply_plan": "structured",
    "count_parameters": "structured",
    "prune_hamnet": "structured",
}

__all__ = [
    "SCHEDULES",
    "HFPruningPlan",
    "LayerPlan",
    "ModuleGroup",
    "ModulePruneResult",
    "PruneResult",
    "PruningPlan",
    "apply_hf_plan",
    "apply_plan",
    "count_parameters",
    "get_allocation",
    "get_importance",
    "is_layer_allocation",
    "module_groups",
    "needs_gradients",
    "prune_bert",
    "prune_hamnet",
    "prune_module",
]


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, __all__)
