"""hamnet: turn a trained network into the best deployable model for a target and budget.

Heavy libraries (onnxruntime, openvino, nncf, mlflow, prefect) are imported only by the
functions that need them, so ``import hamnet`` and ``hamnet --help`` stay fast.
"""

from __future__ import annotations

from hamnet.core import moved
from hamnet.core.api_names import API_NAMES
from hamnet.core.errors import (
    ConfigError,
    DataError,
    ExportError,
    HamnetError,
    HardwareProfileError,
    MissingDependencyError,
    ModelLoadError,
    StageError,
)
from hamnet.core.version import __version__

moved.install()  # pre-restructure module paths (hamnet.config, hamnet.pruning, ...) still import


def __getattr__(name: str) -> object:
    """Load the Python API (``hamnet.api``) on first use, keeping ``import hamnet`` light."""
    if name in API_NAMES:
        from hamnet.api import optimizer

        return getattr(optimizer, name)
    raise AttributeError(f"module 'hamnet' has no attribute {name!r}")


__all__ = [
    *API_NAMES,
    "ConfigError",
    "DataError",
    "ExportError",
    "HamnetError",
    "HardwareProfileError",
    "MissingDependencyError",
    "ModelLoadError",
    "StageError",
    "__version__",
]
