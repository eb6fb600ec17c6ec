"""How a pruning budget is spread over the layers, looked up in the plugin registry.

The allocations are the plugins of kind ``"allocation"``
(:mod:`hamnet.compress.pruning.allocations`, one module each); this module keeps the
name-based helpers the pruning code and older callers use.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

from hamnet.compress.pruning._lookup import build_pruning_plugin, pruning_plugin
from hamnet.compress.pruning.allocations.base import Allocation
from hamnet.core import registry

__all__ = ["allocation_class", "get_allocation", "get_allocator", "is_layer_allocation"]


def allocation_class(name: str) -> type[Allocation]:
    """The plugin class of an allocation.

    Raises:
        ConfigError: If ``name`` is not a known allocation (with a did-you-mean hint).
    """
    return cast(type[Allocation], pruning_plugin("allocation", name))


def get_allocator(name: str, options: Mapping[str, Any] | None = None) -> Allocation:
    """Build an allocation with its options.

    Args:
        name: A name of ``registry.names("allocation")``.
        options: The allocation's options (e.g. R-SPAR's ``target``, ``episodes``).

    Raises:
        ConfigError: If ``name`` is unknown or an option is invalid.
    """
    return cast(Allocation, build_pruning_plugin("allocation", name, options))


def is_layer_allocation(name: str) -> bool:
    """Whether ``name`` computes per-layer ratios (False for pruner-kwargs allocations
    and unknown names)."""
    return name in registry.entries("allocation") and allocation_class(name).per_layer


def get_allocation(name: str) -> dict[str, Any]:
    """Pruner keyword arguments of an allocation (per-layer ones prune like ``uniform``).

    Args:
        name: A name of ``registry.names("allocation")``.

    Returns:
        A fresh dict of ``torch_pruning.pruner.BasePruner`` keyword arguments.

    Raises:
        ConfigError: If ``name`` is not a known allocation.
    """
    return get_allocator(name).pruner_kwargs()
