"""ONNX Runtime static quantization in QDQ format, calibrated with MinMax."""

from __future__ import annotations

from typing import ClassVar

from hamnet.backends.session import require
from hamnet.compress.quantize._calibration import make_calibration_reader
from hamnet.compress.quantize._graph import input_names, preprocess
from hamnet.compress.quantize.base import QuantizationMethod, QuantizeJob


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

    def _convert(self, job: QuantizeJob) -> None:
        quantization = require("onnxruntime.quantization", "onnxruntime")
        reader = make_calibration_reader(job.calibration, input_names(job.source)[0])
        quantization.quantize_static(
            str(preprocess(job.source, job.work)),
            str(job.target),
            reader,
            quant_format=quantization.QuantFormat.QDQ,
            per_channel=job.cfg.per_channel,
            reduce_range=job.reduce_range,
            activation_type=quantization.QuantType.QUInt8,
            weight_type=quantization.QuantType.QInt8,
            calibrate_method=quantization.CalibrationMethod.MinMax,
        )


PLUGIN = OrtStaticInt8
