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

import contextlib
import logging
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from hamnet.backends.export import TRANSFORMER_METADATA
from hamnet.backends.session import require
from hamnet.core.errors import ConfigError, DataError, ExportError

if TYPE_CHECKING:
    from hamnet.core.config import QuantizeStageConfig
    from hamnet.core.hardware import HardwareProfile

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
        reads_ort_contrib_ops: Whether it can quantize a graph that uses ONNX Runtime
            contrib operators (e.g. the fused attention of
            ``export.ort_fused_attention``); the others skip such graphs.
    """

    name: ClassVar[str]
    extra_notes: list[str]
    """Caveats found while quantizing one model (e.g. fusion not applicable); reset by
    each :meth:`quantize` call and copied onto the candidate after :attr:`notes`."""
    source_format: ClassVar[str] = "onnx"
    output_format: ClassVar[str]
    runtime: ClassVar[str]
    precision: ClassVar[str]
    needs_calibration: ClassVar[bool]
    notes: ClassVar[list[str]] = []
    reads_ort_contrib_ops: ClassVar[bool] = False

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


def _input_names(path: Path) -> list[str]:
    onnx = require("onnx")
    model = onnx.load(str(path), load_external_data=False)
    initializers = {t.name for t in model.graph.initializer}
    inputs = [str(i.name) for i in model.graph.input if i.name not in initializers]
    if not inputs:
        raise ExportError(
            f"quantization expects an ONNX model with at least one input, but {str(path)!r} "
            f"has none"
        )
    return inputs


def _input_name(path: Path) -> str:
    return _input_names(path)[0]


def _feeds(data: np.ndarray, names: list[str]) -> list[dict[str, np.ndarray]]:
    """One ``{input name: [1, ...]}`` feed per calibration sample."""
    from hamnet.backends.session import unpack_inputs

    feeds = []
    for i in range(len(data)):
        row = unpack_inputs(data[i : i + 1])
        if isinstance(row, dict):
            if sorted(row) != sorted(names):
                raise DataError(
                    f"calibration inputs must be named {names} (the model's inputs), but got "
                    f"{sorted(row)}"
                )
            feeds.append(row)
        else:
            feeds.append({names[0]: row})
    return feeds


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
    target = Path(work_dir).resolve() / "preprocessed.onnx"
    try:
        # When symbolic shape inference fails (e.g. on BERT graphs) quant_pre_process
        # leaves sym_shape_infer_temp.onnx and a <uuid>.data file in the current
        # directory: run it from the scratch folder so nothing leaks.
        with contextlib.chdir(target.parent):
            shape_inference.quant_pre_process(str(Path(source).resolve()), str(target))
    except Exception as err:
        logger.warning("quant_pre_process failed on %s, quantizing it as is: %s", source, err)
        return source
    return target


class _ArrayReader:
    """Feeds calibration inputs to ONNX Runtime in fixed-size batches.

    ``data`` is one array (fed as ``input_name``) or a structured array / mapping of
    named inputs (fed by name; ``input_name`` is then ignored).
    """

    def __init__(self, data: Any, input_name: str, batch_size: int) -> None:
        from hamnet.backends.session import pack_inputs

        self.data = pack_inputs(data)
        self.input_name = input_name
        self.batch_size = batch_size
        self._batches: Iterator[dict[str, np.ndarray]] = self._iterate()

    def _iterate(self) -> Iterator[dict[str, np.ndarray]]:
        from hamnet.backends.session import unpack_inputs

        for start in range(0, len(self.data), self.batch_size):
            batch = unpack_inputs(self.data[start : start + self.batch_size])
            yield batch if isinstance(batch, dict) else {self.input_name: batch}

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)

    def rewind(self) -> None:
        self._batches = self._iterate()


def make_calibration_reader(
    data: Any, input_name: str = "input", batch_size: int = CALIBRATION_BATCH_SIZE
) -> Any:
    """Return an ``onnxruntime.quantization.CalibrationDataReader`` over ``data``.

    Args:
        data: Inputs ``[N, ...]`` (one array), or named inputs (a mapping or a
            structured array), fed by name.
        input_name: The model's input name (for one array).
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
    reads_ort_contrib_ops = True
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
            dataset = nncf.Dataset(_nncf_items(data, _input_names(source)))
            quantized = nncf.quantize(ov_model, dataset, subset_size=len(data), **options)
            ov.save_model(quantized, str(target), compress_to_fp16=False)
        except Exception as err:
            raise self._fail(source, err) from err
        return target


def _nncf_items(data: np.ndarray, names: list[str]) -> list[Any]:
    """One calibration item per sample: an array, or ``{name: array}`` for named inputs."""
    if data.dtype.names is None:
        return [data[i : i + 1] for i in range(len(data))]
    return _feeds(data, names)


def transformer_shape(path: Path) -> tuple[int, int]:
    """``(num_heads, hidden_size)`` recorded in an ONNX file's metadata, or zeros."""
    onnx = require("onnx")
    model = onnx.load(str(path), load_external_data=False)
    props = {p.key: p.value for p in model.metadata_props}
    values = []
    for key in TRANSFORMER_METADATA:
        try:
            values.append(int(props.get(key, 0)))
        except ValueError:
            values.append(0)
    return values[0], values[1]


class OrtFusedDynamicInt8(QuantizationMethod):
    """ONNX Runtime transformer fusion, then dynamic INT8 with per-channel weights.

    ``onnxruntime.transformers.optimizer.optimize_model(model_type="bert")`` fuses
    embeddings + LayerNorm, attention, GELU and skip-LayerNorm into ONNX Runtime's
    contrib ops, with ``num_heads``/``hidden_size`` from the file's metadata when known
    (see :data:`TRANSFORMER_METADATA`); the fused graph is then quantized dynamically
    (INT8 weights per output channel, ``reduce_range`` as configured). The best plain
    recipe measured for BERT-style encoders on CPU (see FACTS.md).

    It applies only to graphs with attention (MatMul + Softmax): :meth:`applicable`
    says why not otherwise. When fusion finds no attention block to fuse, the
    unfused graph is quantized and the candidate's notes say so.
    """

    name = "ort_fused_dynamic_int8"
    output_format = "onnx"
    runtime = "onnxruntime"
    precision = "int8"
    needs_calibration = False
    notes: ClassVar[list[str]] = [
        "Transformer fusion (ONNX Runtime contrib ops: Attention, EmbedLayerNormalization, "
        "SkipLayerNormalization): the model runs in ONNX Runtime only.",
        "Weights INT8 per channel, activations quantized per call; no calibration data.",
    ]

    def applicable(self, source: Path) -> str | None:
        reason = super().applicable(source)
        if reason:
            return reason
        if not has_attention(Path(source)):
            return (
                f"{self.name} fuses transformer attention, but {str(source)!r} has no "
                f"attention (MatMul + Softmax); use ort_dynamic_int8 for it"
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
        quantization = require("onnxruntime.quantization", "onnxruntime")
        optimizer = require("onnxruntime.transformers.optimizer", "onnxruntime")
        self.extra_notes = []
        source = Path(source)
        reason = self.applicable(source)
        if reason:
            raise ExportError(reason)
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        target = out_dir / "model.onnx"
        num_heads, hidden_size = transformer_shape(source)
        with tempfile.TemporaryDirectory() as work:
            fused_path = Path(work) / "fused.onnx"
            try:
                fused = optimizer.optimize_model(
                    str(source),
                    model_type="bert",
                    num_heads=num_heads,
                    hidden_size=hidden_size,
                    use_gpu=False,
                )
                stats = fused.get_fused_operator_statistics()
                fused.save_model_to_file(str(fused_path))
            except Exception as err:
                raise self._fail(source, err) from err
            attention = int(stats.get("Attention", 0)) + int(stats.get("MultiHeadAttention", 0))
            if attention == 0:
                self.extra_notes.append(
                    "ONNX Runtime's BERT fusion found no attention block to fuse in this "
                    "graph: the unfused graph was quantized (plain dynamic INT8)."
                )
                fused_path = source
            else:
                fused_ops = {k: v for k, v in stats.items() if v}
                self.extra_notes.append(f"fused operators: {fused_ops}")
            onnx = require("onnx")
            try:
                # Shape inference cannot type the outputs of ONNX Runtime's contrib ops;
                # every tensor of these graphs is float.
                quantization.quantize_dynamic(
                    str(fused_path),
                    str(target),
                    per_channel=True,
                    reduce_range=resolve_reduce_range(cfg, profile),
                    weight_type=quantization.QuantType.QInt8,
                    extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
                )
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
        from hamnet.backends.export import convert_openvino

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
    cls.name: cls
    for cls in (
        OrtDynamicInt8,
        OrtStaticInt8,
        NncfInt8,
        OpenVINOFp16,
        OnnxFp16,
        OrtFusedDynamicInt8,
    )
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
