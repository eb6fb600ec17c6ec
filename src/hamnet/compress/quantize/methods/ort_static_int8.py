"""ONNX Runtime static quantization in QDQ format, calibrated with MinMax."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from hamnet.backends.session import require
from hamnet.compress.quantize._calibration import make_calibration_reader
from hamnet.compress.quantize._graph import input_names, preprocess
from hamnet.compress.quantize.base import QuantizationMethod, resolve_reduce_range

if TYPE_CHECKING:
    from hamnet.core.config import QuantizeStageConfig
    from hamnet.core.hardware import HardwareProfile


class OrtStaticInt8(QuantizationMethod):
    """ONNX Runtime static quantization in QDQ format, calibrated with MinMax.

    Weights are signed INT8 (per channel when configured); activations are unsigned
    INT8 (``QUInt8``), which kept accuracy better than signed activations on the small
    models measured (ReLU/softmax outputs are non-negative, so an asymmetric unsigned
    range wastes no code).
    """

    name = "ort_static_int8"
    output_format = "onnx"
    backend = "onnx"
    runtime = "onnxruntime"
    precision = "int8"
    needs_calibration = True
    settings = ("per_channel", "reduce_range")
    requires = ("onnx", "onnxruntime")
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
        reader = make_calibration_reader(data, input_names(source)[0])
        with tempfile.TemporaryDirectory() as work:
            prepared = preprocess(source, Path(work))
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


PLUGIN = OrtStaticInt8
