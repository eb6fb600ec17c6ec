"""ONNX Runtime weight-only INT4: MatMul weights in 4-bit blocks (``MatMulNBits``), FP32
activations; for models whose size bound matters more than their latency."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, ClassVar

from hamnet.backends.session import require
from hamnet.compress.quantize._weight_only import WeightOnlyMethod
from hamnet.compress.quantize.base import QuantizeJob

if TYPE_CHECKING:
    from hamnet.core.hardware import HardwareProfile

MATMUL_OPS: tuple[str, ...] = ("MatMul",)
"""What ``MatMulNBitsQuantizer`` quantizes: MatMul nodes with a constant 2-D weight."""


class OrtWeightOnlyInt4(WeightOnlyMethod):
    """ONNX Runtime weight-only INT4: ``MatMulNBitsQuantizer`` (symmetric, blocks of
    ``weight_only_block_size`` weights per scale) turns every MatMul with a constant
    weight into a ``com.microsoft.MatMulNBits`` node; activations stay FP32.
    """

    name = "ort_weight_only_int4"
    output_format = "onnx"
    backend = "onnx"
    runtime = "onnxruntime"
    weight_ops = MATMUL_OPS
    bits: ClassVar[int] = 4
    settings = ("weight_only_block_size",)
    requires = ("onnx", "onnxruntime", "onnx_ir")
    notes: ClassVar[list[str]] = [
        "Weight-only: MatMul weights are stored in 4 bits per block with one FP32 scale; "
        "the file shrinks ~6x on MatMul weights. On CPUs the MatMuls quantize their "
        "activations to INT8 per block at run time (accuracy_level 4), other ops stay FP32.",
        "Only MatMul nodes with constant weights are quantized (Gemm and Conv stay FP32); "
        "the output runs in ONNX Runtime only (com.microsoft.MatMulNBits).",
    ]

    @staticmethod
    def accuracy_level(profile: HardwareProfile) -> int | None:
        """``MatMulNBits``' compute type: 4 (INT8 activations, per block, at run time) on
        CPUs, where ONNX Runtime's FP32 path unpacks the weights at every call (measured on
        a 256x512 MatMul at batch 1: 8-bit weights 118 us with it, 6.2 us with level 4,
        FP32 8.8 us); None (the kernel's default) elsewhere."""
        return 4 if profile.device == "cpu" else None

    def _convert(self, job: QuantizeJob) -> None:
        onnx = require("onnx")
        require("onnx_ir", "onnx-ir")
        nbits = require("onnxruntime.quantization.matmul_nbits_quantizer", "onnxruntime")
        quiet = logging.getLogger(nbits.__name__)
        level = quiet.level
        quiet.setLevel(logging.WARNING)  # it logs every node at INFO
        try:
            quantizer = nbits.MatMulNBitsQuantizer(
                onnx.load(str(job.source)),
                bits=self.bits,
                block_size=job.cfg.weight_only_block_size,
                is_symmetric=True,
                accuracy_level=self.accuracy_level(job.profile),
                op_types_to_quantize=MATMUL_OPS,
            )
            quantizer.process()
        finally:
            quiet.setLevel(level)
        quantizer.model.save_model_to_file(str(job.target), use_external_data_format=False)


PLUGIN = OrtWeightOnlyInt4
