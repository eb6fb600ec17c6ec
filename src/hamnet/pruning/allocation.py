"""How a pruning budget is spread over the layers.

Each allocation is a small mapping of torch-pruning pruner keyword arguments.
"""

from __future__ import annotations

from typing import Any

from hamnet.errors import ConfigError

ALLOCATORS: dict[str, dict[str, Any]] = {
    "uniform": {"global_pruning": False},
    "global": {"global_pruning": True},
}
"""Allocation name → keyword arguments for ``torch_pruning.pruner.BasePruner``.

``uniform``: every layer loses the same fraction of its heads and FFN channels.
``global``: heads (and channels) are ranked across all layers together, so less
important layers lose more.
"""


def get_allocation(name: str) -> dict[str, Any]:
    """Pruner keyword arguments of an allocation.

    Args:
        name: A key of :data:`ALLOCATORS`.

    Returns:
        A copy of the keyword arguments.

    Raises:
        ConfigError: If ``name`` is not a known allocation.
    """
    if name not in ALLOCATORS:
        raise ConfigError(
            f"pruning allocation must be one of {sorted(ALLOCATORS)}, but got {name!r}"
        )
    return dict(ALLOCATORS[name])
