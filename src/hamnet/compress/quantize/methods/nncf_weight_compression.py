"""NNCF weight compression of the OpenVINO model: INT8 or INT4 weights, FP32 activations;
for models whose size bound matters more than their latency."""

from __future__ import annotations

import logging
from typing import Any, ClassVar

from hamnet.backends.session import require
from hamnet.compress.quantize._weight_only import WeightOnlyMethod
from hamnet.compress.quantize.base import QuantizeJob

WEIGHT_OPS: tuple[str, ...] = ("MatMul", "Gemm")
"""The ONNX operators whose weights NNCF compresses (OpenVINO reads both as MatMul)."""


class NncfWeightCompression(WeightOnlyMethod):
    """NNCF ``compress_weights`` on the OpenVINO model: ``int8_asym`` (per-channel INT8
    weights) or ``int4_sym`` (INT4 weights in groups of ``weight_only_block_size``; NNCF
    keeps the last layer in INT8), as ``nncf_weight_mode`` says; activations stay FP32.
    """

    name = "nncf_weight_compression"
    output_format = "openvino"
    backend = "openvino"
    runtime = "openvino"
    weight_ops = WEIGHT_OPS
    settings = ("nncf_weight_mode", "weight_only_block_size")
    requires = ("onnx", "openvino", "nncf")
    notes: ClassVar[list[str]] = [
        "Weight-only: MatMul weights are stored in INT8 (per channel) or INT4 (per group), "
        "activations stay FP32; the file shrinks ~4x (INT8) to ~7x (INT4) on those weights, "
        "latency at small batches barely changes.",
    ]

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
