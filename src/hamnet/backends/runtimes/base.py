"""The two classes every runtime implements: :class:`Runtime` and :class:`InferenceSession`.

A :class:`Runtime` is the registry's ``runtime`` plugin: it names the artifact formats it
loads (:attr:`Runtime.formats`), the formats it owns with their file suffixes
(:attr:`Runtime.file_suffixes`), the library that provides it, reads the input dims and
the weights' precision of the files it owns (:meth:`Runtime.input_dims`,
:meth:`Runtime.weight_precision`), and loads a stored model into an
:class:`InferenceSession`. Heavy libraries are imported inside methods.
"""

from __future__ import annotations

import importlib
import importlib.util
from abc import ABC, abstractmethod
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from hamnet.core.errors import MissingDependencyError, ModelLoadError
from hamnet.core.registry import Plugin

if TYPE_CHECKING:
    from hamnet.backends.inputs import Inputs
    from hamnet.core.artifacts import ArtifactRef
    from hamnet.core.hardware import RuntimeSpec


PREPARED: set[tuple[str, ...]] = set()
"""Runtimes (with provider or device) already warmed up in this process."""


def require(module: str, package: str | None = None) -> Any:
    """Import an optional dependency, or explain how to install it.

    Args:
        module: The module to import, e.g. ``"onnxruntime.quantization"``.
        package: The pip package that provides it (defaults to the top-level module).

    Returns:
        The imported module.

    Raises:
        MissingDependencyError: If the import fails.
    """
    try:
        return importlib.import_module(module)
    except ImportError as err:
        pip_name = package or module.split(".")[0]
        raise MissingDependencyError(
            f"{module} is required for this feature but could not be imported ({err}); "
            f"install it with `pip install {pip_name}`"
        ) from err


class InferenceSession(ABC):
    """A loaded model that maps a batch of inputs to its first output as float32.

    Inputs are one array of any rank (axis 0 is the batch; a HAMNet takes float32
    ``[B, F]``) or, for models with several inputs, a mapping ``{input name: array}``
    (or a structured array from :func:`~hamnet.backends.inputs.pack_inputs`). Integer
    inputs (token ids, attention masks) keep their dtype; floating point inputs run as
    float32.

    Attributes:
        runtime: Name of the runtime that runs the model (a ``runtime`` plugin name).
    """

    runtime: str

    @abstractmethod
    def run(self, x: Inputs) -> np.ndarray:
        """Return the model's first output for a batch of inputs.

        Args:
            x: One array ``[batch, ...]`` or a mapping of named arrays ``[batch, ...]``.

        Returns:
            Float32 output ``[batch, ...]`` (logits ``[batch, classes]`` for a
            classifier); a new array the caller may keep.

        Raises:
            DataError: If named inputs do not match the model's inputs.
            ValueError: If a single array has the wrong rank.
        """


class Runtime(Plugin, ABC):
    """Loads artifacts of some formats into :class:`InferenceSession` objects.

    Attributes:
        name: The runtime's name in hardware profiles and the registry.
        formats: The artifact formats it can load.
        file_suffixes: The formats this runtime owns (it defines their files), each
            with its files' suffixes, the main file's first (e.g. OpenVINO IR:
            ``(".xml", ".bin")``).
        package: The pip package that provides it.
        module: The module imported to use it.
    """

    kind: ClassVar[str] = "runtime"
    formats: ClassVar[tuple[str, ...]]
    file_suffixes: ClassVar[Mapping[str, tuple[str, ...]]] = {}
    package: ClassVar[str]
    module: ClassVar[str]

    @classmethod
    def is_available(cls) -> bool:
        """Return whether the runtime's library is installed (without importing it)."""
        return importlib.util.find_spec(cls.module) is not None

    @classmethod
    def input_dims(cls, path: Path) -> list[int | None]:
        """Read the dims of a model file's first input, for a format this runtime owns.

        Serving reads a model's feature count through this; a runtime that owns a
        format (:attr:`file_suffixes`) overrides it.

        Args:
            path: The model's main file.

        Returns:
            The first input's dims, None for a dynamic axis (e.g. ``[None, 16]``).

        Raises:
            ModelLoadError: If the file cannot be read, or the runtime cannot read input
                dims (this default).
        """
        raise ModelLoadError(
            f"runtime {cls.name!r} must implement Runtime.input_dims to read a model's "
            f"input, but it does not (reading {str(path)!r})"
        )

    @classmethod
    def weight_precision(cls, path: Path) -> str | None:
        """Tell the weights' precision of a model file, for a format this runtime owns.

        Args:
            path: The model's main file.

        Returns:
            ``"fp32"``, ``"fp16"`` or ``"int8"``; None when it cannot be told (this
            default).

        Raises:
            ModelLoadError: If the file cannot be read.
        """
        return None

    def prepare(self, spec: RuntimeSpec) -> None:
        """Import the runtime's library (and plugins) ahead of loading a model.

        Measurement calls this before it samples memory, so a library's one-time import
        is not charged to the first model measured.

        Raises:
            MissingDependencyError: If the library is not installed.
        """
        require(self.module, self.package)

    @abstractmethod
    def load(
        self,
        artifact: ArtifactRef,
        spec: RuntimeSpec,
        threads: int | None,
        *,
        trust_checkpoint: bool = False,
    ) -> InferenceSession:
        """Load a stored model.

        Args:
            artifact: The model; its format must be one of :attr:`formats`.
            spec: The hardware profile's settings for this runtime (providers, device).
            threads: Intra-op threads; None lets the runtime use every core.
            trust_checkpoint: Allow pickled code in torch checkpoints (only for
                checkpoints you made yourself).

        Returns:
            A session ready to run.

        Raises:
            ModelLoadError: If the file is missing or has a format this runtime cannot load.
            HardwareProfileError: If the requested provider or device is absent.
            MissingDependencyError: If the runtime's library is not installed.
        """

    def throughput_session(
        self,
        artifact: ArtifactRef,
        spec: RuntimeSpec,
        threads: int | None,
        *,
        trust_checkpoint: bool = False,
    ) -> InferenceSession | None:
        """Return a session tuned for throughput, or None when the latency one serves.

        Runtimes that compile differently for throughput (OpenVINO's ``THROUGHPUT``
        hint) override this; measurement uses it for the throughput figure only.
        """
        return None

    def _check(self, artifact: ArtifactRef) -> Path:
        if artifact.format not in self.formats:
            raise ModelLoadError(
                f"runtime {self.name!r} loads formats {list(self.formats)}, but the artifact "
                f"{artifact.path!r} has format {artifact.format!r}"
            )
        path = Path(artifact.path)
        missing = [str(p) for p in artifact.files if not p.is_file()]
        if missing:
            raise ModelLoadError(
                f"cannot load {artifact.format} model for {self.name!r}: files {missing} "
                f"do not exist"
            )
        return path
