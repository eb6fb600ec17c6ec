"""NNCF weight compression of the OpenVINO model: INT8 or INT4 weights, FP32 activations;
for models whose size bound matters more than their latency."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from hamnet.backends.session import require
from hamnet.compress.quantize.base import QuantizationMethod, QuantizeJob
from hamnet.compress.quantize.methods.ort_weight_only_int4 import weight_share_reason

if TYPE_CHECKING:
    from hamnet.core.hardware import HardwareProfile

WEIGHT_OPS: tuple[str, ...] = ("MatMul", "Gemm")
"""The ONNX operators whose weights NNCF compresses (OpenVINO reads both as MatMul)."""


class NncfWeightCompression(QuantizationMethod):
    """NNCF ``compress_weights`` on the OpenVINO model: ``int8_asym`` (per-channel INT8
    weights) or ``int4_sym`` (INT4 weights in groups of ``weight_only_block_size``; NNCF
    keeps the last layer in INT8), as ``nncf_weight_mode`` says; activations stay FP32.
    """

    name = "nncf_weight_compression"
    output_format = "openvino"
    backend = "openvino"
    runtime = "openvino"
    precision = "mixed"
    weight_only = True
    needs_calibration = False
    settings = ("nncf_weight_mode", "weight_only_block_size")
    requires = ("onnx", "openvino", "nncf")
    notes: ClassVar[list[str]] = [
        "Weight-only: MatMul weights are stored in INT8 (per channel) or INT4 (per group), "
        "activations stay FP32; the file shrinks ~4x (INT8) to ~7x (INT4) on those weights, "
        "latency at small batches barely changes.",
    ]

    def supported(self, profile: HardwareProfile) -> str | None:
        """Weight-compressed models compute in FP32: any profile that runs OpenVINO in FP32."""
        if self.runtime not in profile.runtime_names:
            return (
                f"{self.name} needs runtime {self.runtime!r}, but profile {profile.name!r} "
                f"lists runtimes {profile.runtime_names}"
            )
        if "fp32" not in profile.precisions:
            return (
                f"{self.name} keeps FP32 activations, so the profile must support fp32, but "
                f"profile {profile.name!r} supports {list(profile.precisions)}"
            )
        return None

    def applicable(self, source: Path) -> str | None:
        """Applies when MatMul/Gemm constant weights hold most of the model's weights."""
        return super().applicable(source) or weight_share_reason(self.name, source, WEIGHT_OPS)

    def _convert(self, job: QuantizeJob) -> None:
        ov = require("openvino")
        nncf = require("nncf")
        options: dict[str, Any] = {}
        if job.cfg.nncf_weight_mode == "int4_sym":
            options = {
                "mode": nncf.CompressWeightsMode.INT4_SYM,
                "group_size": job.cfg.weight_only_block_size,
                "ratio": 1.0,
            }
        else:
            options = {"mode": nncf.CompressWeightsMode.INT8_ASYM}
        quiet = logging.getLogger("nncf")
        level = quiet.level
        quiet.setLevel(logging.WARNING)  # it prints a statistics table at INFO
        try:
            compressed = nncf.compress_weights(ov.convert_model(str(job.source)), **options)
        finally:
            quiet.setLevel(level)
        ov.save_model(compressed, str(job.target), compress_to_fp16=False)


PLUGIN = NncfWeightCompression
