"""Exceptions raised by hamnet.

Every error derives from :class:`HamnetError`. Subclasses also inherit the builtin
exception a user would naturally catch (``ValueError``, ``FileNotFoundError``...), so
``except ValueError`` keeps working. Messages say what was expected and what was got.
"""

from __future__ import annotations


class HamnetError(Exception):
    """Root of every error hamnet raises on purpose."""


class ConfigError(HamnetError, ValueError):
    """A configuration file or value is invalid (unknown key, wrong type, out of range)."""


class ModelLoadError(HamnetError, FileNotFoundError):
    """A model file is missing, unreadable, or not in a supported format."""


class DataError(HamnetError, ValueError):
    """A data file is missing or unreadable, or its content does not fit the model."""


class HardwareProfileError(HamnetError, RuntimeError):
    """A hardware profile is unknown or its hardware is not present on this machine."""


class MissingDependencyError(HamnetError, ImportError):
    """An optional dependency needed for the requested feature is not installed."""


class ExportError(HamnetError, RuntimeError):
    """A model could not be exported, or the exported model does not match its source."""


class StageError(HamnetError, RuntimeError):
    """A pipeline stage failed for a reason that is not the user's input."""


class ConstraintsNotMetError(HamnetError):
    """No candidate meets the constraints (raised only where a caller asks for strictness)."""
