"""Name-based lookup of the pruning plugins (criteria and allocations)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hamnet.core import registry
from hamnet.core.errors import ConfigError


def pruning_plugin(kind: str, name: str) -> Any:
    """The plugin class ``name`` of ``kind``.

    Raises:
        ConfigError: If ``name`` is not a known plugin of ``kind`` (the registry's
            message, with a did-you-mean hint, prefixed by ``pruning``).
    """
    try:
        return registry.load(kind, name)
    except ConfigError as err:
        raise ConfigError(f"pruning {err}") from None


def build_pruning_plugin(kind: str, name: str, options: Mapping[str, Any] | None) -> Any:
    """An instance of the plugin ``name`` of ``kind`` built with ``options``.

    Raises:
        ConfigError: If ``name`` is unknown or an option is invalid.
    """
    return pruning_plugin(kind, name)(**dict(options or {}))
