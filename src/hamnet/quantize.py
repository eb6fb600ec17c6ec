"""Post-training quantization of FP32 ONNX models: one class per method, one registry.

Every method reads an FP32 ONNX file and writes one model in its output format that
its :attr:`~QuantizationMethod.runtime` runs. :data:`QUANTIZERS` maps the names used in
``stages.quantize.methods`` to the classes. :meth:`QuantizationMethod.supported` says
why a method does not apply to a hardware profile, so a stage can skip it with a reason
instead of producing a model the target cannot run well.

Example:
    >>> method = get_quantizer("nncf_int8")
    >>> if method.supported(profile) is None:
    ...     xml = method.quantize(src, out_dir, calibration=x_cal, cfg=cfg, profile=profile)
"""

from __future__ import annotations

import logging
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from hamnet.errors import ConfigError, DataError, ExportError
from hamnet.runtimes import require

if TYPE_CHECKING:
    from hamnet.config import QuantizeStageConfig
    from hamnet.hardware import HardwareProfile

logger = logging.getLogger("hamnet.quantize")

CALIBRATION_BATCH_SIZE = 32
"""Rows per calibration batch fed to ONNX Runtime's calibrator."""


def resolve_reduce_range(cfg: QuantizeStageConfig, profile: HardwareProfile) -> bool:
    """Return whether ONNX Runtime INT8 weights use 7 bits (``reduce_range``).

    ``cfg.reduce_range == "auto"`` follows ``profile.int8_reduce_range`` (True on CPUs
    without VNNI, whose u8*s8 instructions saturate with full 8-bit weights).
    """
    if cfg.reduce_range == "auto":
        return bool(profile.int8_reduce_range)
    return bool(cfg.reduce_range)


class QuantizationMethod(ABC):
    """One way to turn an FP32 ONNX model into a smaller or faster one.

    Attributes:
        name: Key in :data:`QUANTIZERS` and ``stages.quantize.methods``.
        source_format: Artifact format it reads.
        output_format: Artifact format it writes (``"onnx"`` or ``"openvino"``).
        runtime: The runtime that runs its output.
        precision: Precision of the output's weights.
        needs_calibration: Whether :meth:`quantize` needs calibration inputs.
        notes: Honest caveats, copied onto every candidate it makes.
    """

    name: ClassVar[str]
    source_format: ClassVar[str] = "onnx"
    output_format: ClassVar[str]
    runtime: ClassVar[str]
    precision: ClassVar[str]
    needs_calibration: ClassVar[bool]
    notes: ClassVar[list[str]] = []

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

    @abstractmethod
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

        Args:
            source: The FP32 ONNX model (one input ``[batch, features]``).
            out_dir: Folder to write the result into (created when missing).
            calibration: Float32 inputs ``[N, features]``; required when
                :attr:`needs_calibration` is True, ignored otherwise.
            cfg: The quantize stage settings (per-channel, reduce-range).
            profile: The target hardware.

        Returns:
            The main output file: ``model.onnx`` or ``model.xml``.

        Raises:
            ExportError: If the underlying tool fails.
            DataError: If calibration data is needed but missing or malformed.
            MissingDependencyError: If the tool is not installed.
        """

    def _calibration(self, calibration: np.ndarray | None) -> np.ndarray:
        if calibration is None or len(calibration) == 0:
            raise DataError(
                f"{self.name} needs calibration inputs [N, features], but got "
                f"{'none' if calibration is None else 'an empty array'}"
            )
        data = np.ascontiguousarray(calibration, dtype=np.float32)
        if data.ndim != 2:
            raise DataError(
                f"{self.name} needs 2-D calibration inputs [N, features], but got shape "
                f"{data.shape}"
            )
        return data

    def _fail(self, source: Path, err: Exception) -> ExportError:
        return ExportError(f"{self.name} failed on {str(source)!r}: {type(err).__name__}: {err}")


def _input_name(path: Path) -> str:
    onnx = require("onnx")
    model = onnx.load(str(path), load_external_data=False)
    initializers = {t.name for t in model.graph.initializer}
    inputs = [i.name for i in model.graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise ExportError(
            f"quantization expects an ONNX model with one input, but {str(path)!r} has {inputs}"
        )
    return str(inputs[0])


def _op_types(path: Path) -> set[str]:
    onnx = require("onnx")
    model = onnx.load(str(path), load_external_data=False)
    return {node.op_type for node in model.graph.node}


def _preprocess(source: Path, work_dir: Path) -> Path:
    """Run ONNX Runtime's ``quant_pre_process`` (shape inference + optimization).

    Falls back to the source file when pre-processing fails: it only helps the
    quantizer pick better nodes, it is never required for a correct result.
    """
    shape_inference = require("onnxruntime.quantization.shape_inference", "onnxruntime")
    target = work_dir / "preprocessed.onnx"
    try:
        shape_inference.quant_pre_process(str(source), str(target))
    except Exception as err:
        logger.warning("quant_pre_process failed on %s, quantizing it as is: %s", source, err)
        return source
    return target


class _ArrayReader:
    """Feeds a calibration array to ONNX Runtime in fixed-size batches."""

    def __init__(self, data: np.ndarray, input_name: str, batch_size: int) -> None:
        self.data = data
        self.input_name = input_name
        self.batch_size = batch_size
        self._batches: Iterator[dict[str, np.ndarray]] = self._iterate()

    def _iterate(self) -> Iterator[dict[str, np.ndarray]]:
        for start in range(0, len(self.data), self.batch_size):
            yield {self.input_name: self.data[start : start + self.batch_size]}

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)

    def rewind(self) -> None:
        self._batches = self._iterate()


def make_calibration_reader(
    data: np.ndarray, input_name: str = "input", batch_size: int = CALIBRATION_BATCH_SIZE
) -> Any:
    """Return an ``onnxruntime.quantization.CalibrationDataReader`` over ``data``.

    Args:
        data: Float32 inputs ``[N, features]``.
        input_name: The model's input name.
        batch_size: Rows per batch.
    """
    quantization = require("onnxruntime.quantization", "onnxruntime")

    class ArrayCalibrationReader(_ArrayReader, quantization.CalibrationDataReader):  # type: ignore[misc,name-defined]
        pass

    return ArrayCalibrationReader(data, input_name, batch_size)


class OrtDynamicInt8(QuantizationMethod):
    """ONNX Runtime dynamic quantization: INT8 weights, activations quantized per call."""

    name = "ort_dynamic_int8"
    output_format = "onnx"
    runtime = "onnxruntime"
    precision = "int8"
    needs_calibration = False
    notes: ClassVar[list[str]] = [
        "Activation ranges are computed at every call: cheap to make, no calibration data, "
        "but MatMul-heavy models gain most; on convolutions it can be slower than FP32.",
        "On CPUs without VNNI, 8-bit weights can saturate unless reduce_range is on.",
    ]

    def quantize(
        self,
        source: Path,
        out_dir: Path,
        *,
        calibration: np.ndarray | None,
        cfg: QuantizeStageConfig,
        profile: HardwareProfile,
    ) -> Path:
        quantization = require("onnxruntime.quantization", "onnxruntime")
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        target = out_dir / "model.onnx"
        with tempfile.TemporaryDirectory() as work:
            prepared = _preprocess(Path(source), Path(work))
            try:
                quantization.quantize_dynamic(
                    str(prepared),
                    str(target),
                    per_channel=cfg.per_channel,
                    reduce_range=resolve_reduce_range(cfg, profile),
                    weight_type=quantization.QuantType.QInt8,
                )
            except Exception as err:
                raise self._fail(source, err) from err
        return target


class OrtStaticInt8(QuantizationMethod):
    """ONNX Runtime static quantization in QDQ format, calibrated with MinMax.

    Weights are signed INT8 (per channel when configured); activations are unsigned
    INT8 (``QUInt8``), which kept accuracy better than signed activations on the small
    models measured (ReLU/softmax outputs are non-negative, so an asymmetric unsigned
    range wastes no code).
    """

    name = "ort_static_int8"
    output_format = "onnx"
    runtime = "onnxruntime"
    precision = "int8"
    needs_calibration = True
    notes: ClassVar[list[str]] = [
        "Activation ranges come from the calibration samples; inputs outside them clip.",
        "On CPUs without VNNI, 8-bit weights can saturate unless reduce_range is on.",
    ]

    def quantize(
        self,
        source: Path,
        out_dir: Path,
        *,
        calibration: np.ndarray | None,
        cfg: QuantizeStageConfig,
        profile: HardwareProfile,
    ) -> Path:
        quantization = require("onnxruntime.quantization", "onnxruntime")
        data = self._calibration(calibration)
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        target = out_dir / "model.onnx"
        source = Path(source)
        reader = make_calibration_reader(data, _input_name(source))
        with tempfile.TemporaryDirectory() as work:
            prepared = _preprocess(source, Path(work))
            try:
                quantization.quantize_static(
                    str(prepared),
                    str(target),
                    reader,
                    quant_format=quantization.QuantFormat.QDQ,
                    per_channel=cfg.per_channel,
                    reduce_range=resolve_reduce_range(cfg, profile),
                    activation_type=quantization.QuantType.QUInt8,
                    weight_type=quantization.QuantType.QInt8,
                    calibrate_method=quantization.CalibrationMethod.MinMax,
                )
            except Exception as err:
                raise self._fail(source, err) from err
        return target


def has_attention(path: Path) -> bool:
    """Return whether an ONNX graph contains attention (both MatMul and Softmax)."""
    ops = _op_types(Path(path))
    return "MatMul" in ops and "Softmax" in ops


class NncfInt8(QuantizationMethod):
    """NNCF post-training INT8 quantization of the OpenVINO model (runs in OpenVINO).

    Graphs with attention (MatMul + Softmax) are quantized with
    ``model_type=TRANSFORMER`` and the ``MIXED`` preset, which keeps the sensitive
    attention parts accurate; other graphs use NNCF's defaults.
    """

    name = "nncf_int8"
    output_format = "openvino"
    runtime = "openvino"
    precision = "int8"
    needs_calibration = True
    notes: ClassVar[list[str]] = [
        "Activation ranges come from the calibration samples; inputs outside them clip.",
        "INT8 kernels are fastest on CPUs with VNNI/AMX; without them the gain is smaller.",
    ]

    def quantize(
        self,
        source: Path,
        out_dir: Path,
        *,
        calibration: np.ndarray | None,
        cfg: QuantizeStageConfig,
        profile: HardwareProfile,
    ) -> Path:
        ov = require("openvino")
        nncf = require("nncf")
        data = self._calibration(calibration)
        source = Path(source)
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        target = out_dir / "model.xml"
        transformer = has_attention(source)
        options: dict[str, Any] = {}
        if transformer:
            options["model_type"] = nncf.ModelType.TRANSFORMER
            options["preset"] = nncf.QuantizationPreset.MIXED
        try:
            ov_model = ov.convert_model(str(source))
            dataset = nncf.Dataset([row[None, :] for row in data])
            quantized = nncf.quantize(ov_model, dataset, subset_size=len(data), **options)
            ov.save_model(quantized, str(target), compress_to_fp16=False)
        except Exception as err:
            raise self._fail(source, err) from err
        return target


class OpenVINOFp16(QuantizationMethod):
    """OpenVINO IR with FP16-compressed weights."""

    name = "openvino_fp16"
    output_format = "openvino"
    runtime = "openvino"
    precision = "fp16"
    needs_calibration = False
    notes: ClassVar[list[str]] = [
        "Only the weights are stored as FP16: the file halves, but hamnet runs OpenVINO "
        "with FP32 inference precision, so on CPU the weights are decompressed and the "
        "model computes in FP32 (no speedup expected).",
    ]

    def quantize(
        self,
        source: Path,
        out_dir: Path,
        *,
        calibration: np.ndarray | None,
        cfg: QuantizeStageConfig,
        profile: HardwareProfile,
    ) -> Path:
        from hamnet.export import convert_openvino

        out_dir = Path(out_dir)
        return convert_openvino(source, out_dir / "model.xml", compress_to_fp16=True)


class OnnxFp16(QuantizationMethod):
    """ONNX model converted to FP16 (inputs and outputs stay FP32) for GPUs."""

    name = "onnx_fp16"
    output_format = "onnx"
    runtime = "onnxruntime"
    precision = "fp16"
    needs_calibration = False
    notes: ClassVar[list[str]] = [
        "Inputs and outputs stay FP32 (Cast nodes at the edges); everything inside is FP16.",
        "Meant for GPUs with FP16 units; ONNX Runtime's CPU provider lacks or emulates many "
        "FP16 kernels.",
    ]

    def supported(self, profile: HardwareProfile) -> str | None:
        reason = super().supported(profile)
        if reason is None and profile.device != "cuda":
            reason = (
                f"{self.name} is for CUDA devices (FP16 kernels), but profile "
                f"{profile.name!r} has device {profile.device!r}; ONNX Runtime's CPU provider "
                "lacks or emulates most FP16 kernels, so it would be slower, not faster"
            )
        return reason

    def quantize(
        self,
        source: Path,
        out_dir: Path,
        *,
        calibration: np.ndarray | None,
        cfg: QuantizeStageConfig,
        profile: HardwareProfile,
    ) -> Path:
        onnx = require("onnx")
        float16 = require("onnxruntime.transformers.float16", "onnxruntime")
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        target = out_dir / "model.onnx"
        try:
            model = onnx.load(str(source))
            converted = float16.convert_float_to_float16(model, keep_io_types=True)
            onnx.save(converted, str(target))
        except Exception as err:
            raise self._fail(Path(source), err) from err
        return target


QUANTIZERS: dict[str, type[QuantizationMethod]] = {
    cls.name: cls for cls in (OrtDynamicInt8, OrtStaticInt8, NncfInt8, OpenVINOFp16, OnnxFp16)
}
"""Every quantization method by the name ``stages.quantize.methods`` uses."""


def get_quantizer(name: str) -> QuantizationMethod:
    """Instantiate the quantization method called ``name``.

    Raises:
        ConfigError: If no method has that name.
    """
    try:
        return QUANTIZERS[name]()
    except KeyError:
        raise ConfigError(
            f"unknown quantization method {name!r}: expected one of {sorted(QUANTIZERS)}"
        ) from None
