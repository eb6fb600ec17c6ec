"""OpenVINO IR with FP16-compressed weights."""

from __future__ import annotations

from typing import ClassVar

from hamnet.compress.quantize.base import QuantizationMethod, QuantizeJob


class OpenVINOFp16(QuantizationMethod):
    """OpenVINO IR with FP16-compressed weights."""

    name = "openvino_fp16"
    output_format = "openvino"
    backend = "openvino"
    runtime = "openvino"
    precision = "fp16"
    needs_calibration = False
    weight_only = True  # FP16 weights, FP32 compute (hamnet pins OpenVINO's precision)
    requires = ("openvino",)
    notes: ClassVar[list[str]] = [
        "Only the weights are stored as FP16: the file halves, but hamnet runs OpenVINO "
        "with FP32 inference precision, so on CPU the weights are decompressed and the "
        "model computes in FP32 (no speedup expected).",
    ]

    def _convert(self, job: QuantizeJob) -> None:
        from hamnet.backends.export import convert_openvino

        convert_openvino(job.source, job.target, compress_to_fp16=True)


PLUGIN = OpenVINOFp16
