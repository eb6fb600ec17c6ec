"""Post-training quantization of FP32 ONNX models: the plugin base and its lookup.

Every method is a ``quantizer`` plugin (see :mod:`hamnet.core.registry`): one module
of :mod:`hamnet.compress.quantize.methods`, named as ``stages.quantize.methods``
names it, whose ``PLUGIN`` subclasses :class:`QuantizationMethod`. A method reads an
FP32 ONNX file and writes one model in its :attr:`~QuantizationMethod.output_format`
that its :attr:`~QuantizationMethod.runtime` runs. :meth:`QuantizationMethod.supported`
and :meth:`QuantizationMethod.applicable` say why a method does not apply to a
hardware profile or a model, so a stage can skip it with a reason instead of producing
a model the target cannot run well.

Example:
    >>> method = get_quantizer("nncf_int8")
    >>> if method.supported(profile) is None and method.applicable(src) is None:
    ...     xml = method.quantize(src, out_dir, calibration=x_cal, cfg=cfg, profile=profile)
"""

from __future__ import annotations

import tempfile
from abc import ABC
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Literal

import numpy as np

from hamnet.compress.quantize._calibration import CALIBRATION_BATCH_SIZE, make_calibration_reader
from hamnet.compress.quantize._graph import has_attention, transformer_shape
from hamnet.core import registry
from hamnet.core.errors import ConfigError, DataError, ExportError, HamnetError
from hamnet.core.registry import Plugin

if TYPE_CHECKING:
    from hamnet.core.config import QuantizeStageConfig
    from hamnet.core.hardware import HardwareProfile

__all__ = [
    "CALIBRATION_BATCH_SIZE",
    "QuantizationMethod",
    "QuantizeJob",
    "get_quantizer",
    "has_attention",
    "make_calibration_reader",
    "quantizer_class",
    "quantizers_where",
    "resolve_reduce_range",
    "transformer_shape",
]

KIND = "quantizer"
"""The registry kind of every quantization method."""


def resolve_reduce_range(cfg: QuantizeStageConfig, profile: HardwareProfile) -> bool:
    """Return whether ONNX Runtime INT8 weights use 7 bits (``reduce_range``).

    ``cfg.reduce_range == "auto"`` follows ``profile.int8_reduce_range`` (True on CPUs
    without VNNI, whose u8*s8 instructions saturate with full 8-bit weights).
    """
    if cfg.reduce_range == "auto":
        return bool(profile.int8_reduce_range)
    return bool(cfg.reduce_range)


@dataclass(frozen=True)
class QuantizeJob:
    """What :meth:`QuantizationMethod._convert` works on.

    Attributes:
        source: The FP32 ONNX model.
        target: The file to write (``model.onnx`` or ``model.xml``); its folder exists.
        work: A scratch folder, removed afterwards.
        data: The checked calibration inputs when the method needs them, else None.
        cfg: The quantize stage settings.
        profile: The target hardware.
    """

    source: Path
    target: Path
    work: Path
    data: np.ndarray | None
    cfg: QuantizeStageConfig
    profile: HardwareProfile

    @property
    def calibration(self) -> np.ndarray:
        """The checked calibration inputs.

        Raises:
            DataError: If the method was given none (it does not need calibration).
        """
        if self.data is None:
            raise DataError("calibration inputs must be given to this method, but got none")
        return self.data

    @property
    def reduce_range(self) -> bool:
        """Whether ONNX Runtime INT8 weights use 7 bits (see :func:`resolve_reduce_range`)."""
        return resolve_reduce_range(self.cfg, self.profile)


class QuantizationMethod(Plugin, ABC):
    """One way to turn an FP32 ONNX model into a smaller or faster one.

    Capability attributes, read by callers instead of testing names:

    Attributes:
        name: The module's name in :mod:`hamnet.compress.quantize.methods`, as
            ``stages.quantize.methods`` names it.
        source_format: Artifact format it reads.
        output_format: Artifact format it writes (``"onnx"`` or ``"openvino"``).
        backend: The API backend whose models it makes (``"onnx"`` or ``"openvino"``).
        runtime: The runtime that runs its output.
        precision: Precision of the output's weights (``"int8"`` or ``"fp16"``).
        needs_calibration: Whether :meth:`quantize` needs calibration inputs.
        reads_ort_contrib_ops: Whether it can quantize a graph that uses ONNX Runtime
            contrib operators (e.g. the fused attention of
            ``export.ort_fused_attention``); the others skip such graphs.
        needs_attention: Whether it applies only to graphs with attention (a
            transformer-only method, not one for any graph of its backend).
        tunes_accuracy: Whether it tunes against an accuracy budget on validation data
            (``tune`` of :class:`~hamnet.compress.quantize.accuracy_aware.AccuracyAwareQuantizer`),
            so the quantize stage gives it the validation split and the budget.
        settings: The ``stages.quantize`` keys that change its output.
        requires: The Python packages :meth:`quantize` imports.
        notes: Honest caveats, copied onto every candidate it makes.
        extra_notes: Caveats found while quantizing one model (e.g. fusion not
            applicable); reset by each :meth:`quantize` call and copied onto the
            candidate after :attr:`notes`.
    """

    kind: ClassVar[str] = KIND
    source_format: ClassVar[Literal["onnx"]] = "onnx"
    output_format: ClassVar[Literal["onnx", "openvino"]]
    backend: ClassVar[Literal["onnx", "openvino"]]
    runtime: ClassVar[Literal["onnxruntime", "openvino"]]
    precision: ClassVar[Literal["int8", "fp16", "mixed"]]
    needs_calibration: ClassVar[bool]
    reads_ort_contrib_ops: ClassVar[bool] = False
    needs_attention: ClassVar[bool] = False
    tunes_accuracy: ClassVar[bool] = False
    weight_only: ClassVar[bool] = False  # low-precision weights, FP32 compute: size, not speed
    settings: ClassVar[tuple[str, ...]] = ()
    requires: ClassVar[tuple[str, ...]] = ()
    notes: ClassVar[list[str]] = []
    extra_notes: list[str]

    def __init__(self) -> None:
        self.extra_notes = []

    def applicable(self, source: Path) -> str | None:
        """Return None if the method applies to the model ``source``, else the reason."""
        from hamnet.backends.export import uses_ort_contrib_ops

        if not self.reads_ort_contrib_ops and uses_ort_contrib_ops(source):
            return (
                f"{self.name} needs a standard ONNX graph, but {Path(source).name} uses ONNX "
                "Runtime contrib operators (com.microsoft); only ort_dynamic_int8 quantizes it"
            )
        if self.needs_attention and not has_attention(Path(source)):
            return (
                f"{self.name} fuses transformer attention, but {str(source)!r} has no "
                f"attention (MatMul + Softmax); use ort_dynamic_int8 for it"
            )
        return None

    def supported(self, profile: HardwareProfile) -> str | None:
        """Return None if the method applies to ``profile``, else the reason it does not."""
        if self.precision not in profile.precisions:
            return (
                f"{self.name} makes {self.precision} models, but profile {profile.name!r} "
                f"supports precisions {list(profile.precisions)}"
            )
        if self.runtime not in profile.runtime_names:
            return (
                f"{self.name} needs runtime {self.runtime!r}, but profile {profile.name!r} "
                f"lists runtimes {profile.runtime_names}"
            )
        return None

    def quantize(
        self,
        source: Path,
        out_dir: Path,
        *,
        calibration: np.ndarray | None,
        cfg: QuantizeStageConfig,
        profile: HardwareProfile,
    ) -> Path:
        """Quantize ``source`` into ``out_dir``.

        The steps every method shares: reset :attr:`extra_notes`, check the
        calibration inputs when :attr:`needs_calibration`, refuse a graph without
        attention when :attr:`needs_attention`, create ``out_dir``, then call
        :meth:`_convert` with a scratch folder, turning any failure that is no
        :class:`~hamnet.core.errors.HamnetError` into an :class:`ExportError`.

        Args:
            source: The FP32 ONNX model (one input of any rank, or several named
                inputs).
            out_dir: Folder to write the result into (created when missing).
            calibration: Inputs ``[N, ...]``: one array, or a structured array with a
                field per named input (see :func:`hamnet.backends.session.pack_inputs`);
                required when :attr:`needs_calibration` is True, ignored otherwise.
            cfg: The quantize stage settings (per-channel, reduce-range).
            profile: The target hardware.

        Returns:
            The main output file: ``model.onnx`` or ``model.xml``.

        Raises:
            ExportError: If the underlying tool fails.
            DataError: If calibration data is needed but missing or malformed.
            MissingDependencyError: If the tool is not installed.
        """
        self.extra_notes = []
        source = Path(source)
        data = self._calibration(calibration) if self.needs_calibration else None
        if self.needs_attention:
            reason = self.applicable(source)
            if reason:
                raise ExportError(reason)
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        target = out_dir / ("model.xml" if self.output_format == "openvino" else "model.onnx")
        with tempfile.TemporaryDirectory() as work:
            try:
                self._convert(QuantizeJob(source, target, Path(work), data, cfg, profile))
            except HamnetError:
                raise
            except Exception as err:
                raise self._fail(source, err) from err
        return target

    def _convert(self, job: QuantizeJob) -> None:
        """Write the quantized ``job.source`` to ``job.target``: the step each method owns."""
        raise NotImplementedError(
            f"quantizer {self.name!r} must override _convert (or quantize), but overrides neither"
        )

    def _calibration(self, calibration: np.ndarray | None) -> np.ndarray:
        from hamnet.backends.session import pack_inputs

        if calibration is None or len(calibration) == 0:
            raise DataError(
                f"{self.name} needs calibration inputs [N, features], but got "
                f"{'none' if calibration is None else 'an empty array'}"
            )
        data = pack_inputs(calibration)
        if data.dtype.names is None and data.ndim < 2:
            raise DataError(
                f"{self.name} needs 2-D calibration inputs [N, features], but got shape "
                f"{data.shape}"
            )
        return data

    def _fail(self, source: Path, err: Exception) -> ExportError:
        return ExportError(f"{self.name} failed on {str(source)!r}: {type(err).__name__}: {err}")


def quantizer_class(name: str) -> type[QuantizationMethod]:
    """Return the class of the quantization method called ``name``, importing its module.

    Raises:
        ConfigError: If no method has that name, or its plugin is no
            :class:`QuantizationMethod`.
    """
    known = registry.names(KIND)
    if name not in known:
        hint = registry.did_you_mean(name, known)
        raise ConfigError(
            f"unknown quantization method {name!r}: expected one of {list(known)}{hint}"
        )
    cls = registry.load(KIND, name)
    if not (isinstance(cls, type) and issubclass(cls, QuantizationMethod)):
        raise ConfigError(
            f"quantizer {name!r} must be a QuantizationMethod subclass, but got {cls!r}"
        )
    return cls


def quantizers_where(**capabilities: object) -> list[str]:
    """Return the sorted names of the methods whose capability attributes equal ``capabilities``.

    Example:
        >>> quantizers_where(backend="onnx", precision="int8", needs_attention=False)
        ['ort_dynamic_int8', 'ort_static_int8']

    Raises:
        ConfigError: A key is no capability attribute of :class:`QuantizationMethod`.
    """
    unknown = sorted(
        k
        for k in capabilities
        if not hasattr(QuantizationMethod, k) and k not in QuantizationMethod.__annotations__
    )
    if unknown:
        raise ConfigError(
            f"capabilities must be attributes of QuantizationMethod, but got {unknown}"
        )
    return [
        name
        for name in registry.names(KIND)
        if all(getattr(quantizer_class(name), k) == v for k, v in capabilities.items())
    ]


def get_quantizer(name: str) -> QuantizationMethod:
    """Instantiate the quantization method called ``name``.

    Raises:
        ConfigError: If no method has that name.
    """
    return quantizer_class(name)()
