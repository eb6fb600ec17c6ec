"""One registry for every extension point of hamnet, loaded lazily.

Every extension (a quantization method, a pruning criterion, an allocation, a
distillation loss, a runtime, an Optuna sampler or pruner, a pipeline stage, a
model family) is a :class:`Plugin`: a small class with a ``name``, a pydantic
``Options`` model and capability attributes that callers read instead of testing
names (``output_format``, ``needs_gradients``, ``reads_teacher_layers``, ...).

Plugins are found by **where they live**, not by a hand-kept list: each kind owns
one package, and each public module of that package (not ``base``, not starting
with ``_``) is one plugin whose name is the module's name (a trailing ``_`` is
dropped, so ``global_.py`` is the ``global`` allocation). The module exposes its
class as ``PLUGIN``. Names are listed without importing anything, so a config can
be checked for typos without importing torch; a plugin's module is imported the
first time its class (or its options) is needed. Adding a plugin is one file.

Plugins from outside the package (a user's own quantizer, a test-only stage) are
added with :func:`register`, by import path, so nothing is imported until used::

    from hamnet.core import registry

    registry.register("quantizer", "my_int4", "my_pkg.quant:MyInt4")
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import pkgutil
from collections.abc import Iterable, Mapping
from functools import cache
from typing import Any, ClassVar, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from hamnet.core.errors import ConfigError

KIND_PACKAGES: dict[str, str] = {
    "quantizer": "hamnet.compress.quantize.methods",
    "criterion": "hamnet.compress.pruning.criteria",
    "allocation": "hamnet.compress.pruning.allocations",
    "kd_loss": "hamnet.compress.distill.losses",
    "runtime": "hamnet.backends.runtimes",
    "sampler": "hamnet.compress.search.samplers",
    "pruner": "hamnet.compress.search.pruners",
    "stage": "hamnet.pipeline.stages",
    "family": "hamnet.families",
}
"""Kind -> the package whose modules are that kind's built-in plugins."""

_NOT_PLUGINS = frozenset({"base"})
_extra: dict[str, dict[str, str]] = {}

P = TypeVar("P", bound="Plugin")


class NoOptions(BaseModel):
    """Options of a plugin that takes none: any key is a typo."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Plugin:
    """Base of every extension: a name, an options schema and capability attributes.

    Subclasses set ``kind`` once per extension point (in its ``base`` module) and
    ``name`` per plugin; ``Options`` defaults to no options at all.
    """

    kind: ClassVar[str] = ""
    name: ClassVar[str] = ""
    Options: ClassVar[type[BaseModel]] = NoOptions

    @classmethod
    def parse_options(cls, options: Mapping[str, Any] | None) -> BaseModel:
        """Validate ``options`` against this plugin's ``Options``.

        Raises:
            ConfigError: An unknown key or a bad value, named with the plugin.
        """
        try:
            return cls.Options.model_validate(dict(options or {}))
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or '<options>'}: {err['msg']}"
                for err in exc.errors()
            )
            raise ConfigError(
                f"options of {cls.kind} {cls.name!r} are invalid: {problems} "
                f"(accepted: {sorted(cls.Options.model_fields) or 'none'})"
            ) from None


def _check_kind(kind: str) -> None:
    if kind not in KIND_PACKAGES and kind not in _extra:
        raise ConfigError(f"plugin kind must be one of {sorted(KIND_PACKAGES)}, but got {kind!r}")


@cache
def _builtin_names(kind: str) -> dict[str, str]:
    """Plugin name -> module path of the package's plugin modules, found without import."""
    package = KIND_PACKAGES.get(kind)
    if package is None:
        return {}
    try:
        spec = importlib.util.find_spec(package)
    except ModuleNotFoundError:
        return {}
    if spec is None or not spec.submodule_search_locations:
        return {}
    found: dict[str, str] = {}
    for info in pkgutil.iter_modules(spec.submodule_search_locations):
        if info.name.startswith("_") or info.name in _NOT_PLUGINS:
            continue
        found[info.name.rstrip("_")] = f"{package}.{info.name}:PLUGIN"
    return found


def entries(kind: str) -> dict[str, str]:
    """Return ``{name: "module:attribute"}`` for every plugin of ``kind``.

    Raises:
        ConfigError: ``kind`` is not an extension point.
    """
    _check_kind(kind)
    return {**_builtin_names(kind), **_extra.get(kind, {})}


def names(kind: str) -> tuple[str, ...]:
    """Return the sorted plugin names of ``kind``, importing none of them."""
    return tuple(sorted(entries(kind)))


def did_you_mean(name: object, choices: Iterable[str]) -> str:
    """``" (did you mean 'x'?)"`` for the choice closest to ``name``, else ``""``."""
    close = difflib.get_close_matches(str(name), list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def check_name(kind: str, name: str) -> str:
    """Return ``name`` if it is a plugin of ``kind``.

    Raises:
        ConfigError: Unknown name, with the accepted ones and a did-you-mean hint.
    """
    known = entries(kind)
    if name in known:
        return name
    hint = did_you_mean(name, known)
    raise ConfigError(f"{kind} must be one of {sorted(known)}, but got {name!r}{hint}")


def load(kind: str, name: str) -> type[Plugin]:
    """Import and return the plugin class registered as ``name`` for ``kind``.

    Raises:
        ConfigError: Unknown name.
    """
    path = entries(kind)[check_name(kind, name)]
    return _import(path)


@cache
def _import(path: str) -> Any:
    module_name, _, attribute = path.partition(":")
    module = importlib.import_module(module_name)
    return getattr(module, attribute or "PLUGIN")


def create(kind: str, name: str, **kwargs: Any) -> Any:
    """Instantiate the plugin ``name`` of ``kind`` with ``kwargs``."""
    return load(kind, name)(**kwargs)


def register(kind: str, name: str, path: str) -> None:
    """Add a plugin from outside hamnet's packages, by ``"module:Class"`` import path.

    The module is imported only when the plugin is first used. Registering an
    existing name replaces it (tests use this to inject faults).
    """
    if ":" not in path:
        raise ConfigError(f"plugin path must look like 'module:Class', but got {path!r}")
    _extra.setdefault(kind, {})[name] = path


def unregister(kind: str, name: str) -> None:
    """Remove a plugin added with :func:`register` (no-op when absent)."""
    _extra.get(kind, {}).pop(name, None)
