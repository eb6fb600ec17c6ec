"""Benchmark a model file outside the pipeline, with the pipeline's measurement code.

:class:`Benchmarker` measures an existing model file (ONNX, OpenVINO IR or a hamnet
``.pt`` checkpoint) on a hardware profile through :func:`hamnet.evaluate.measure.measure_artifact`,
the one code path every pipeline candidate is measured with, and returns one
:class:`ModelMetrics` per runtime.

Formats and runtimes: ``.onnx`` runs in ONNX Runtime and OpenVINO, ``.xml`` (OpenVINO
IR, with its ``.bin`` beside it) in OpenVINO, and a hamnet ``.pt`` checkpoint (written
by :func:`hamnet.models.save_checkpoint`) in PyTorch eager mode. The runtimes declare
these formats: a file's format comes from its suffix
(:func:`hamnet.backends.session.format_of`), and the runtime that owns the format reads
its input width and weight precision (:meth:`~hamnet.backends.session.Runtime.input_dims`,
:meth:`~hamnet.backends.session.Runtime.weight_precision`), so a runtime added as a plugin
is benchmarked the same way. Only the runtimes the profile lists and this machine has
installed are used by default.

:meth:`Benchmarker.profile_ops` says where the time goes, operator by operator, in the
runtimes that have a profiler (ONNX Runtime, OpenVINO): the INT8, FP32,
quantize/dequantize and reorder shares, and whether the CPU has VNNI or AMX (see
:mod:`hamnet.evaluate.op_profile`).

Example:
    >>> bench = Benchmarker("x86-avx2", warmup=5, repeats=50)
    >>> for m in bench.benchmark("model.onnx"):
    ...     print(m.runtime, m.latency_p50_ms)
    >>> for p in bench.profile_ops("model_int8.onnx"):
    ...     print(p.runtime, p.summary())
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from hamnet.backends.session import (
    format_of,
    get_runtime,
    input_dims,
    main_suffixes,
    runtime_class,
    weight_precision,
)
from hamnet.core.artifacts import ArtifactFormat, ArtifactRef, artifact_files, hash_files
from hamnet.core.errors import ConfigError, DataError, ModelLoadError
from hamnet.core.hardware import HardwareProfile, load_profile

if TYPE_CHECKING:
    from hamnet.core.candidate import Metrics
    from hamnet.evaluate.op_profile import OpProfile


@dataclass(frozen=True)
class ModelMetrics:
    """What one model measured in one runtime (a view over :class:`~hamnet.core.candidate.Metrics`).

    Attributes:
        runtime: The runtime that ran the model.
        precision: ``"fp32"``, ``"fp16"`` or ``"int8"`` as read from the file, or None
            when it cannot be told.
        latency_p50_ms: Median latency of one call at ``batch_size`` rows.
        latency_p90_ms: 90th percentile latency.
        throughput_sps: Samples per second at the profile's throughput batch size.
        batch_size: Rows per call when timing latency (the profile's latency batch).
        size_mb: Model file size in MB (10^6 bytes), siblings included.
        peak_memory_mb: RSS increase while loading and running the model.
        accuracy: Top-1 accuracy on the given labels; None when no labels were given.
        accuracy_kind: ``"top1_accuracy"`` or None.
        threads: Intra-op threads used.
    """

    runtime: str
    precision: str | None
    latency_p50_ms: float
    latency_p90_ms: float
    throughput_sps: float
    batch_size: int
    size_mb: float
    peak_memory_mb: float
    accuracy: float | None
    accuracy_kind: str | None
    threads: int | None

    @classmethod
    def from_metrics(
        cls, metrics: Metrics, *, precision: str | None, labelled: bool
    ) -> ModelMetrics:
        """Build from a candidate's :class:`~hamnet.core.candidate.Metrics`."""
        return cls(
            runtime=metrics.runtime,
            precision=precision,
            latency_p50_ms=metrics.latency_p50_ms,
            latency_p90_ms=metrics.latency_p90_ms,
            throughput_sps=metrics.throughput_sps,
            batch_size=metrics.latency_batch_size,
            size_mb=metrics.size_mb,
            peak_memory_mb=metrics.peak_memory_mb,
            accuracy=metrics.accuracy if labelled else None,
            accuracy_kind=metrics.accuracy_kind if labelled else None,
            threads=metrics.threads,
        )

    def to_dict(self) -> dict[str, Any]:
        """Return the fields as a JSON-ready dict."""
        return asdict(self)


def _format_of(path: Path) -> ArtifactFormat:
    """The format of a model file, from its suffix as the runtimes declare them."""
    fmt = format_of(path)
    if fmt is None:
        raise ModelLoadError(
            f"cannot benchmark {str(path)!r}: expected a model file ending in "
            f"{sorted(main_suffixes())}, but got {path.suffix or 'no suffix'!r}"
        )
    return fmt


def _reference(path: Path) -> ArtifactRef:
    """Return a reference to the model file where it lies (nothing is copied)."""
    fmt = _format_of(path)
    files = artifact_files(path, fmt)
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise ModelLoadError(f"cannot benchmark {str(path)!r}: files {missing} do not exist")
    return ArtifactRef(
        path=str(path.resolve()),
        sha256=hash_files(files),
        format=fmt,
        size_bytes=sum(f.stat().st_size for f in files),
    )


def _feature_count(ref: ArtifactRef) -> int | None:
    """Return the model's static feature count (input dim 1), or None when dynamic."""
    dims = input_dims(ref.path, ref.format)
    features = dims[1] if len(dims) == 2 else None
    return features if isinstance(features, int) and features > 0 else None


class Benchmarker:
    """Measure model files on a hardware profile, one :class:`ModelMetrics` per runtime.

    Args:
        hardware: A hardware profile name (see ``hamnet profiles``) or YAML path.
        warmup: Untimed calls before timing.
        repeats: Timed calls for latency (and the cap on throughput calls); at least 5.
        runtimes: Runtimes to measure in; default: the profile's runtimes that are
            installed and can load the model's format.

    Raises:
        HardwareProfileError: If the profile is unknown or this machine lacks its hardware.
        ConfigError: If a runtime is unknown, or warmup/repeats are out of range.
    """

    def __init__(
        self,
        hardware: str = "x86-avx2",
        *,
        warmup: int = 20,
        repeats: int = 200,
        runtimes: Sequence[str] | None = None,
    ) -> None:
        from pydantic import ValidationError

        from hamnet.core.config import MeasureSection, _format_validation_error

        self.profile: HardwareProfile = load_profile(hardware)
        try:
            self.settings = MeasureSection(warmup=warmup, repeats=repeats)
        except ValidationError as err:
            raise ConfigError(_format_validation_error(err, "Benchmarker")) from None
        self.runtimes = None if runtimes is None else list(runtimes)
        for name in self.runtimes or []:
            get_runtime(name)  # ConfigError naming the known runtimes

    def _runtimes_for(self, ref: ArtifactRef) -> list[str]:
        if self.runtimes is not None:
            for name in self.runtimes:
                formats = runtime_class(name).formats
                if ref.format not in formats:
                    raise ConfigError(
                        f"runtime {name!r} loads formats {list(formats)}, but {ref.path!r} "
                        f"is a {ref.format} model"
                    )
            return self.runtimes
        names = [
            name
            for name in self.profile.runtime_names
            if ref.format in runtime_class(name).formats and runtime_class(name).is_available()
        ]
        if not names:
            raise ConfigError(
                f"hardware profile {self.profile.name!r} lists no installed runtime that "
                f"loads {ref.format} models (it lists {self.profile.runtime_names})"
            )
        return names

    def _inputs(self, ref: ArtifactRef, x: Any, input_shape: Sequence[int] | None) -> np.ndarray:
        from hamnet.backends.session import pack_inputs

        if x is not None:
            packed = pack_inputs(x)
            if len(packed) == 0 or (packed.dtype.names is None and packed.ndim < 2):
                raise DataError(
                    f"x must be a non-empty array [samples, ...] of at least 2 axes (or a dict "
                    f"of named arrays), but got shape {packed.shape}"
                )
            return packed
        batch = self.profile.latency_batch_size
        if input_shape is not None:
            shape = tuple(int(d) for d in input_shape)
            if len(shape) == 1:
                shape = (batch, shape[0])
            if len(shape) < 2 or min(shape) < 1:
                raise DataError(
                    f"input_shape must be [features] or [batch, ...] with positive sizes, but "
                    f"got {list(input_shape)}"
                )
        else:
            features = _feature_count(ref)
            if features is None:
                raise DataError(f"{ref.path!r} has no static feature count: pass x or input_shape")
            shape = (batch, features)
        return np.random.default_rng(0).standard_normal(shape).astype(np.float32)

    def benchmark(
        self,
        model_path: str | Path,
        x: Any = None,
        y: np.ndarray | None = None,
        *,
        input_shape: Sequence[int] | None = None,
    ) -> list[ModelMetrics]:
        """Measure one model file in each runtime.

        Args:
            model_path: An ``.onnx``, OpenVINO ``.xml`` or hamnet ``.pt`` file.
            x: Inputs ``[samples, ...]`` of any rank, or a dict of named arrays for
                models with several inputs (integer token ids keep their dtype); None
                for random float inputs of ``input_shape`` or of the model's static
                feature count (as many rows as the profile's latency batch size).
            y: Integer labels for ``x``; accuracy is reported only when given.
            input_shape: ``[features]`` or ``[batch, ...]`` for random inputs.

        Returns:
            One :class:`ModelMetrics` per runtime, in the profile's preference order.

        Raises:
            ModelLoadError: If the file is missing, of an unknown kind, or unloadable.
            ConfigError: If a requested runtime cannot load the model's format.
            HardwareProfileError: If the profile does not list a requested runtime, or
                the machine lacks its provider or device.
            DataError: If ``x`` and ``y`` do not line up or no input shape is known.
        """
        from hamnet.evaluate.measure import measure_artifact

        ref = _reference(Path(model_path))
        names = self._runtimes_for(ref)
        x_test = self._inputs(ref, x, input_shape)
        labelled = y is not None
        y_test = None
        if labelled:
            y_test = np.asarray(y)
            if len(y_test) != len(x_test):
                raise DataError(
                    f"x and y must have the same length, but got {len(x_test)} and {len(y_test)}"
                )
        precision = weight_precision(ref.path, ref.format)
        return [
            ModelMetrics.from_metrics(
                measure_artifact(
                    ref,
                    name,
                    self.profile,
                    x_test,
                    y_test,
                    self.settings,
                    params=0,
                    flops=0,
                    require_score=labelled,
                ),
                precision=precision,
                labelled=labelled,
            )
            for name in names
        ]

    def compare(
        self,
        model_paths: Sequence[str | Path],
        x: Any = None,
        y: np.ndarray | None = None,
        *,
        input_shape: Sequence[int] | None = None,
    ) -> list[tuple[str, ModelMetrics]]:
        """Benchmark several model files on the same inputs.

        Returns:
            ``(path, metrics)`` for every model and runtime, models in the given order.
        """
        return [
            (str(path), metrics)
            for path in model_paths
            for metrics in self.benchmark(path, x, y, input_shape=input_shape)
        ]

    def profile_ops(
        self,
        model_path: str | Path,
        x: Any = None,
        *,
        input_shape: Sequence[int] | None = None,
        runs: int = 50,
    ) -> list[OpProfile]:
        """Profile one model file operator by operator in each runtime that can.

        Args:
            model_path: An ``.onnx`` or OpenVINO ``.xml`` file.
            x: Inputs as for :meth:`benchmark`; the first latency batch of them runs.
            input_shape: ``[features]`` or ``[batch, ...]`` for random inputs.
            runs: Profiled calls (after this benchmarker's warm-up calls).

        Returns:
            One :class:`~hamnet.evaluate.op_profile.OpProfile` per runtime that has an
            operator profiler (ONNX Runtime, OpenVINO), in the profile's order; empty
            when none of the model's runtimes has one (PyTorch).

        Raises:
            ModelLoadError: If the file is missing, of an unknown kind, or unloadable.
            ConfigError: If a requested runtime cannot load the model's format, or
                ``runs`` is not positive.
        """
        from hamnet.backends.session import pack_inputs
        from hamnet.evaluate.op_profile import PROFILED_RUNTIMES, profile_ops

        ref = _reference(Path(model_path))
        names = [n for n in self._runtimes_for(ref) if n in PROFILED_RUNTIMES]
        x_one = pack_inputs(self._inputs(ref, x, input_shape))[: self.profile.latency_batch_size]
        return [
            profile_ops(ref, name, self.profile, x_one, warmup=self.settings.warmup, runs=runs)
            for name in names
        ]
