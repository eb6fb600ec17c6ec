"""ONNX model converted to FP16 (inputs and outputs stay FP32) for GPUs."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from hamnet.backends.session import require
from hamnet.compress.quantize.base import QuantizationMethod, QuantizeJob

if TYPE_CHECKING:
    from hamnet.core.hardware import HardwareProfile


class OnnxFp16(QuantizationMethod):
    """ONNX model converted to FP16 (inputs and outputs stay FP32) for GPUs."""

    name = "onnx_fp16"
    output_format = "onnx"
    backend = "onnx"
    runtime = "onnxruntime"
    precision = "fp16"
    needs_calibration = False
    requires = ("onnx", "onnxruntime")
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

    def _convert(self, job: QuantizeJob) -> None:
        onnx = require("onnx")
        float16 = require("onnxruntime.transformers.float16", "onnxruntime")
        model = onnx.load(str(job.source))
        converted = float16.convert_float_to_float16(model, keep_io_types=True)
        onnx.save(converted, str(job.target))


PLUGIN = OnnxFp16
