"""hamnet: turn a trained network into the best deployable model for a target and budget.

Heavy libraries (onnxruntime, openvino, nncf, mlflow, prefect) are imported only by the
functions that need them, so ``import hamnet`` and ``hamnet --help`` stay fast.
"""

from __future__ import annotations

__version__ = "0.1.0"

from hamnet.errors import (
    ConfigError,
    DataError,
    ExportError,
    HamnetError,
    HardwareProfileError,
    MissingDependencyError,
    ModelLoadError,
    StageError,
)

__all__ = [
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
