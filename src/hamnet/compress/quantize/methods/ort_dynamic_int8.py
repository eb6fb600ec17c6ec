"""ONNX Runtime dynamic quantization: INT8 weights, activations quantized per call."""

from __future__ import annotations

from typing import ClassVar

from hamnet.backends.session import require
from hamnet.compress.quantize._graph import preprocess
from hamnet.compress.quantize.base import QuantizationMethod, QuantizeJob


class OrtDynamicInt8(QuantizationMethod):
    """ONNX Runtime dynamic quantization: INT8 weights, activations quantized per call."""

    name = "ort_dynamic_int8"
    output_format = "onnx"
    backend = "onnx"
    runtime = "onnxruntime"
    precision = "int8"
    needs_calibration = False
    reads_ort_contrib_ops = True
    settings = ("per_channel", "reduce_range")
    requires = ("onnx", "onnxruntime")
    notes: ClassVar[list[str]] = [
        "Activation ranges are computed at every call: cheap to make, no calibration data, "
        "but MatMul-heavy models gain most; on convolutions it can be slower than FP32.",
        "On CPUs without VNNI, 8-bit weights can saturate unless reduce_range is on.",
    ]

    def _convert(self, job: QuantizeJob) -> None:
        quantization = require("onnxruntime.quantization", "onnxruntime")
        quantization.quantize_dynamic(
            str(preprocess(job.source, job.work)),
            str(job.target),
            per_channel=job.cfg.per_channel,
            reduce_range=job.reduce_range,
            weight_type=quantization.QuantType.QInt8,
        )


PLUGIN = OrtDynamicInt8
