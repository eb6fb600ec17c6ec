"""Package attributes imported from their home modules on first use.

A package that re-exports names of heavy submodules (torch, torch-pruning) uses
:func:`lazy_exports` so that importing the package stays light.

Example:
    >>> __getattr__, __dir__ = lazy_exports(__name__, {"apply_plan": "structured"})
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Iterable, Mapping
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(
    package: str, homes: Mapping[str, str], public: Iterable[str] = ()
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """Build a package's module-level ``__getattr__`` and ``__dir__``.

    Args:
        package: The package's ``__name__``.
        homes: Exported name → the submodule (relative to ``package``) that defines it.
        public: Further names ``__dir__`` lists (the package's ``__all__``).

    Returns:
        ``(__getattr__, __dir__)``: the first imports a name from its home and caches
        it in the package, or raises :class:`AttributeError` for a name not in ``homes``.
    """
    listed = frozenset(public) | frozenset(homes)

    def __getattr__(name: str) -> Any:
        module = homes.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{module}"), name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return sorted({*vars(sys.modules[package]), *listed})

    return __getattr__, __dir__
