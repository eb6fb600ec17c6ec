"""What the weight-only quantizers share: their capabilities, the FP32-activation check of
a profile, and the rule that their weights must hold most of the model's bytes."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from hamnet.compress.quantize.base import QuantizationMethod

if TYPE_CHECKING:
    from hamnet.core.hardware import HardwareProfile

MIN_WEIGHT_SHARE = 0.5
"""The least share of a model's weight bytes its quantizable weights must hold: below it,
weight-only quantization would shrink the file by less than a third of what it can."""


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


class WeightOnlyMethod(QuantizationMethod):
    """Integer weights, FP32 activations: a smaller file at about the FP32 latency.

    Subclasses set :attr:`weight_ops` (the operators whose constant weights they
    quantize) and the usual plugin attributes.
    """

    precision = "mixed"
    weight_only = True
    needs_calibration = False
    weight_ops: tuple[str, ...] = ("MatMul",)

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

    def applicable(self, source: Path) -> str | None:
        """Applies when :attr:`weight_ops` constant weights hold most of the weights."""
        return super().applicable(source) or weight_share_reason(self.name, source, self.weight_ops)
