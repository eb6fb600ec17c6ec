"""Module paths from before the layered packages keep working, with a DeprecationWarning.

``import hamnet.pruning`` (now :mod:`hamnet.compress.pruning`) or
``from hamnet.config import OptimizeConfig`` (now :mod:`hamnet.core.config`) import the
new module under the old name. Where the old name is now a package of its own
(``hamnet.pipeline``, ``hamnet.training``, ``hamnet.tracking``), that package forwards
the old module's names through :func:`forward_old_names`.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import warnings
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

MOVED_MODULES: dict[str, str] = {
    "hamnet._env": "hamnet.core.env",
    "hamnet.errors": "hamnet.core.errors",
    "hamnet.config": "hamnet.core.config",
    "hamnet.artifacts": "hamnet.core.artifacts",
    "hamnet.candidate": "hamnet.core.candidate",
    "hamnet.hardware": "hamnet.core.hardware",
    "hamnet.data": "hamnet.training.data",
    "hamnet.runtimes": "hamnet.backends.session",
    "hamnet.export": "hamnet.backends.export",
    "hamnet.quantize": "hamnet.compress.quantize.base",
    "hamnet.measure": "hamnet.evaluate.measure",
    "hamnet.pareto": "hamnet.evaluate.pareto",
    "hamnet.report": "hamnet.evaluate.report",
    "hamnet.pruning": "hamnet.compress.pruning",
    "hamnet.distill.losses": "hamnet.compress.distill.kd",
    "hamnet.distill": "hamnet.compress.distill",
    "hamnet.search": "hamnet.compress.search",
    "hamnet.stages": "hamnet.pipeline.plan",
    "hamnet.gc": "hamnet.pipeline.gc",
    "hamnet.benchmarker": "hamnet.api.benchmarker",
    "hamnet.cli": "hamnet.ops.cli",
    "hamnet.stack": "hamnet.ops.stack",
}
"""Old module -> new module; submodules of a moved package follow it
(``hamnet.pruning.hf`` -> ``hamnet.compress.pruning.hf``)."""


_LONGEST_FIRST = sorted(MOVED_MODULES, key=len, reverse=True)


def new_name(old: str) -> str | None:
    """The current module for the pre-restructure module ``old``, or None if it did not move."""
    if not old.startswith("hamnet."):  # the finder is asked about every import in the process
        return None
    for prefix in _LONGEST_FIRST:
        if old == prefix or old.startswith(prefix + "."):
            return MOVED_MODULES[prefix] + old[len(prefix) :]
    return None


class _MovedModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports an old module path as the module that now holds its code."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if new_name(fullname) is None:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        new = new_name(spec.name)
        assert new is not None  # find_spec answered only for moved modules
        warnings.warn(
            f"{spec.name} moved to {new}; the old path will be removed in a later release",
            DeprecationWarning,
            stacklevel=2,
        )
        return importlib.import_module(new)

    def exec_module(self, module: ModuleType) -> None:
        """Nothing to run: the new module was executed when it was imported."""


def install() -> None:
    """Let the old module paths import (once per process)."""
    if not any(isinstance(f, _MovedModuleFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _MovedModuleFinder())


def forward_old_names(package: str, old_modules: Sequence[str]) -> Callable[[str], Any]:
    """A package ``__getattr__`` that finds names of the module the package replaced.

    Args:
        package: The package's ``__name__`` (e.g. ``"hamnet.pipeline"``).
        old_modules: The modules (relative to ``package``) that now hold the old module's
            names, searched in order.

    Returns:
        The ``__getattr__``: it imports the first of ``old_modules`` that has the name,
        with a DeprecationWarning naming the new home.
    """

    def __getattr__(name: str) -> Any:
        if not name.startswith("__"):
            for module in old_modules:
                home = importlib.import_module(f"{package}.{module}")
                if hasattr(home, name):
                    warnings.warn(
                        f"{package}.{name} moved to {package}.{module}.{name}",
                        DeprecationWarning,
                        stacklevel=2,
                    )
                    return getattr(home, name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
