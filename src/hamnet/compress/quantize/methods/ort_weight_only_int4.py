"""ONNX Runtime weight-only INT4: MatMul weights in 4-bit blocks (``MatMulNBits``), FP32
activations; for models whose size bound matters more than their latency."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from hamnet.backends.session import require
from hamnet.compress.quantize.base import QuantizationMethod, QuantizeJob

if TYPE_CHECKING:
    from hamnet.core.hardware import HardwareProfile

MIN_WEIGHT_SHARE = 0.5
"""The least share of a model's weight bytes its quantizable weights must hold: below it,
weight-only quantization would shrink the file by less than a third of what it can."""

MATMUL_OPS: tuple[str, ...] = ("MatMul",)
"""What ``MatMulNBitsQuantizer`` quantizes: MatMul nodes with a constant 2-D weight."""


def weight_share(source: Path, op_types: tuple[str, ...]) -> tuple[float, int]:
    """The share of an ONNX model's FP32 weight bytes that ``op_types`` nodes use as
    their constant weight (input 1), and the model's weight bytes in all.

    Args:
        source: The ONNX file.
        op_types: The operator types whose second input counts (e.g. ``("MatMul",)``).

    Returns:
        ``(share, total_bytes)``; ``(0.0, 0)`` for a model without weights.
    """
    import numpy as np
    import onnx

    graph = onnx.load(str(source)).graph
    sizes = {
        init.name: int(np.prod(init.dims)) * 4
        for init in graph.initializer
        if init.data_type == onnx.TensorProto.FLOAT
    }
    total = sum(sizes.values())
    used = {
        node.input[1]
        for node in graph.node
        if node.op_type in op_types and len(node.input) > 1 and node.input[1] in sizes
    }
    used = {name for name in used if _is_matrix(graph, name)}
    return (sum(sizes[n] for n in used) / total if total else 0.0), total


def _is_matrix(graph: object, name: str) -> bool:
    """Whether initializer ``name`` is a matrix (2-D, or N-D with unit leading dims)."""
    init = next(i for i in graph.initializer if i.name == name)  # type: ignore[attr-defined]
    dims = list(init.dims)
    return len(dims) >= 2 and all(d == 1 for d in dims[:-2])


def weight_share_reason(name: str, source: Path, op_types: tuple[str, ...]) -> str | None:
    """None when ``op_types`` weights hold at least :data:`MIN_WEIGHT_SHARE` of the
    model's weight bytes, else why a weight-only method does not apply to it."""
    share, total = weight_share(source, op_types)
    if share >= MIN_WEIGHT_SHARE:
        return None
    return (
        f"{name} quantizes constant weights of {'/'.join(op_types)} nodes, which must hold "
        f"at least {MIN_WEIGHT_SHARE:.0%} of the model's weights, but in "
        f"{Path(source).name} they hold {share:.0%} of {total / 1e6:.3f} MB: the file "
        "would barely shrink"
    )


class OrtWeightOnlyInt4(QuantizationMethod):
    """ONNX Runtime weight-only INT4: ``MatMulNBitsQuantizer`` (symmetric, blocks of
    ``weight_only_block_size`` weights per scale) turns every MatMul with a constant
    weight into a ``com.microsoft.MatMulNBits`` node; activations stay FP32.
    """

    name = "ort_weight_only_int4"
    output_format = "onnx"
    backend = "onnx"
    runtime = "onnxruntime"
    precision = "mixed"
    weight_only = True
    bits: ClassVar[int] = 4
    needs_calibration = False
    settings = ("weight_only_block_size",)
    requires = ("onnx", "onnxruntime", "onnx_ir")
    notes: ClassVar[list[str]] = [
        "Weight-only: MatMul weights are stored in 4 bits per block with one FP32 scale; "
        "the file shrinks ~6x on MatMul weights. On CPUs the MatMuls quantize their "
        "activations to INT8 per block at run time (accuracy_level 4), other ops stay FP32.",
        "Only MatMul nodes with constant weights are quantized (Gemm and Conv stay FP32); "
        "the output runs in ONNX Runtime only (com.microsoft.MatMulNBits).",
    ]

    def supported(self, profile: HardwareProfile) -> str | None:
        """Weight-only models compute in FP32: any profile that runs FP32 in the runtime."""
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

    @staticmethod
    def accuracy_level(profile: HardwareProfile) -> int | None:
        """``MatMulNBits``' compute type: 4 (INT8 activations, per block, at run time) on
        CPUs, where ONNX Runtime's FP32 path unpacks the weights at every call (measured on
        a 256x512 MatMul at batch 1: 8-bit weights 118 us with it, 6.2 us with level 4,
        FP32 8.8 us); None (the kernel's default) elsewhere."""
        return 4 if profile.device == "cpu" else None

    def applicable(self, source: Path) -> str | None:
        """Applies when MatMul constant weights hold most of the model's weights."""
        return super().applicable(source) or weight_share_reason(self.name, source, MATMUL_OPS)

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
