"""How a pruning budget is spread over the layers.

Each allocation is a small mapping of torch-pruning pruner keyword arguments.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hamnet.core.errors import ConfigError

ALLOCATORS: dict[str, dict[str, Any]] = {
    "uniform": {"global_pruning": False},
    "global": {"global_pruning": True},
}
"""Allocation name → keyword arguments for ``torch_pruning.pruner.BasePruner``.

``uniform``: every layer loses the same fraction of its heads and FFN channels.
``global``: heads (and channels) are ranked across all layers together, so less
important layers lose more.
"""


def _sensitivity(model: Any, dataset: Any, ratio: float, *, seed: int = 0, **_: Any) -> list[float]:
    from hamnet.compress.pruning.hessian import sensitivity_layer_ratios

    return sensitivity_layer_ratios(model, dataset, ratio, seed=seed)


def _rspar(model: Any, dataset: Any, ratio: float, *, seed: int = 0, **options: Any) -> list[float]:
    from hamnet.compress.pruning.rspar import rspar_layer_ratios

    ratios, _history = rspar_layer_ratios(model, dataset, ratio, seed=seed, **options)
    return ratios


LAYER_ALLOCATORS: dict[str, Callable[..., list[float]]] = {
    "sensitivity": _sensitivity,
    "rspar": _rspar,
}
"""Allocation name → function returning one removal fraction per layer.

``sensitivity``: layers with higher K-FAC/OBS saliency lose less (seed 003's H-OBS).
``rspar``: a PPO agent chooses per-layer ratios for the same budget, rewarded by
accuracy after a short recovery and penalized when FLOPs or measured latency exceed
the uniform allocation's (seed 003's R-SPAR).
Per-layer ratios are then applied like ``uniform``, layer by layer.
"""


def is_layer_allocation(name: str) -> bool:
    """Whether ``name`` computes per-layer ratios (else it is a pruner-kwargs allocation)."""
    return name in LAYER_ALLOCATORS


def get_allocation(name: str) -> dict[str, Any]:
    """Pruner keyword arguments of an allocation.

    Args:
        name: A key of :data:`ALLOCATORS`.

    Returns:
        A copy of the keyword arguments.

    Raises:
        ConfigError: If ``name`` is not a known allocation.
    """
    if name in LAYER_ALLOCATORS:
        return dict(ALLOCATORS["uniform"])
    if name not in ALLOCATORS:
        raise ConfigError(
            f"pruning allocation must be one of {sorted([*ALLOCATORS, *LAYER_ALLOCATORS])}, "
            f"but got {name!r}"
        )
    return dict(ALLOCATORS[name])
