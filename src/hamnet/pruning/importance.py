"""Importance criteria for structured pruning, as torch-pruning importance objects.

Each criterion is a factory in :data:`IMPORTANCES`; torch-pruning is imported only when
a factory is called, so ``import hamnet`` stays light.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from hamnet.errors import ConfigError


def _magnitude(p: int) -> Any:
    import torch_pruning as tp

    return tp.importance.MagnitudeImportance(p=p)


def _taylor() -> Any:
    import torch_pruning as tp

    return tp.importance.TaylorImportance()


def _random() -> Any:
    import torch_pruning as tp

    return tp.importance.RandomImportance()


IMPORTANCES: dict[str, Callable[..., Any]] = {
    "l1": partial(_magnitude, 1),
    "l2": partial(_magnitude, 2),
    "taylor": _taylor,
    "random": _random,
}
"""Criterion name → factory of a torch-pruning importance object."""

_NEEDS_GRADIENTS = frozenset({"taylor"})


def get_importance(name: str) -> Any:
    """Build the importance object of a criterion.

    Args:
        name: A key of :data:`IMPORTANCES`.

    Returns:
        A fresh torch-pruning importance object.

    Raises:
        ConfigError: If ``name`` is not a known criterion.
    """
    _check_name(name)
    return IMPORTANCES[name]()


def needs_gradients(name: str) -> bool:
    """Whether a criterion reads ``param.grad`` (so gradients must be accumulated first).

    Args:
        name: A key of :data:`IMPORTANCES`.

    Raises:
        ConfigError: If ``name`` is not a known criterion.
    """
    _check_name(name)
    return name in _NEEDS_GRADIENTS


def _check_name(name: str) -> None:
    if name not in IMPORTANCES:
        raise ConfigError(
            f"pruning criterion must be one of {sorted(IMPORTANCES)}, but got {name!r}"
        )
