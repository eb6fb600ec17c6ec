"""Importance criteria for structured pruning, looked up in the plugin registry.

The criteria are the plugins of kind ``"criterion"``
(:mod:`hamnet.compress.pruning.criteria`, one module each); this module keeps the
name-based helpers the pruning code and older callers use.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

from hamnet.compress.pruning._lookup import build_pruning_plugin, pruning_plugin
from hamnet.compress.pruning.criteria.base import Criterion
from hamnet.compress.pruning.scores import aggregate_linear_scores

__all__ = ["aggregate_linear_scores", "get_criterion", "get_importance", "needs_gradients"]


def criterion_class(name: str) -> type[Criterion]:
    """The plugin class of a criterion.

    Raises:
        ConfigError: If ``name`` is not a known criterion (with a did-you-mean hint).
    """
    return cast(type[Criterion], pruning_plugin("criterion", name))


def get_criterion(name: str, options: Mapping[str, Any] | None = None) -> Criterion:
    """Build a criterion with its options.

    Args:
        name: A name of ``registry.names("criterion")``.
        options: The criterion's options (see its ``Options``).

    Raises:
        ConfigError: If ``name`` is unknown or an option is invalid.
    """
    return cast(Criterion, build_pruning_plugin("criterion", name, options))


def get_importance(name: str, *, model: Any = None, dataset: Any = None, seed: int = 0) -> Any:
    """Build the importance object of a criterion with default options.

    Args:
        name: A name of ``registry.names("criterion")``.
        model: The model about to be pruned (read by data-dependent criteria).
        dataset: Calibration data (read by data-dependent criteria).
        seed: Seeds any sampling the criterion does.

    Returns:
        A fresh torch-pruning importance object.

    Raises:
        ConfigError: If ``name`` is not a known criterion.
    """
    return get_criterion(name).build(model, dataset, seed)


def needs_gradients(name: str) -> bool:
    """Whether a criterion reads ``param.grad`` (so gradients must be accumulated first).

    Args:
        name: A name of ``registry.names("criterion")``.

    Raises:
        ConfigError: If ``name`` is not a known criterion.
    """
    return criterion_class(name).needs_gradients
