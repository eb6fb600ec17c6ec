"""ONNX Runtime dynamic quantization: INT8 weights, activations quantized per call."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from hamnet.backends.session import require
from hamnet.compress.quantize._graph import preprocess
from hamnet.compress.quantize.base import QuantizationMethod, resolve_reduce_range

if TYPE_CHECKING:
    from hamnet.core.config import QuantizeStageConfig
    from hamnet.core.hardware import HardwareProfile


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

    def _convert(
        self,
        source: Path,
        target: Path,
        work: Path,
        *,
        data: np.ndarray | None,
        cfg: QuantizeStageConfig,
        profile: HardwareProfile,
    ) -> None:
        quantization = require("onnxruntime.quantization", "onnxruntime")
        quantization.quantize_dynamic(
            str(preprocess(source, work)),
            str(target),
            per_channel=cfg.per_channel,
            reduce_range=resolve_reduce_range(cfg, profile),
            weight_type=quantization.QuantType.QInt8,
        )


PLUGIN = OrtDynamicInt8
