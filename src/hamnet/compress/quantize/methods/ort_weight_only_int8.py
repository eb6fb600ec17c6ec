"""ONNX Runtime weight-only INT8: MatMul weights in 8-bit blocks (``MatMulNBits`` with
``bits=8``), FP32 activations; no calibration, close to FP32 accuracy."""

from __future__ import annotations

from typing import ClassVar

from hamnet.compress.quantize.methods.ort_weight_only_int4 import OrtWeightOnlyInt4


class OrtWeightOnlyInt8(OrtWeightOnlyInt4):
    """ONNX Runtime weight-only INT8: ``MatMulNBitsQuantizer`` with ``bits=8`` (symmetric,
    blocks of ``weight_only_block_size`` weights per scale); activations stay FP32.
    """

    name = "ort_weight_only_int8"
    bits: ClassVar[int] = 8
    notes: ClassVar[list[str]] = [
        "Weight-only: MatMul weights are stored in 8 bits per block with one FP32 scale; "
        "the file shrinks ~3.5x on MatMul weights with outputs close to FP32. On CPUs the "
        "MatMuls quantize their activations to INT8 per block at run time (accuracy_level "
        "4; without it ONNX Runtime unpacks 8-bit weights at every call, ~13x slower).",
        "Only MatMul nodes with constant weights are quantized (Gemm and Conv stay FP32); "
        "the output runs in ONNX Runtime only (com.microsoft.MatMulNBits).",
    ]


PLUGIN = OrtWeightOnlyInt8
