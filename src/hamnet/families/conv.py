"""The convolutional family: a 4-D (image-like) input."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from hamnet.families.base import ModelFamily, ModelSource, PrunableGroup, QuantizerChoice


class ConvFamily(ModelFamily):
    """Convolutional nets: filters pruned when given as a torch module; quantized as ONNX."""

    name = "conv"
    description = "a convolutional net (a 4-D input)"
    prunable_groups: ClassVar[tuple[PrunableGroup, ...]] = (
        PrunableGroup("conv_filters", "output filter", "every Conv2d"),
    )
    detect_order = 20

    @classmethod
    def detect(cls, source: ModelSource) -> bool:
        """An ONNX graph with a 4-D input; a bare module with a 2-D or 3-D convolution."""
        if source.path is not None or source.input_dims is not None:
            return any(len(dims) == 4 for dims in source.onnx_inputs().values())
        if source.module is None:
            return False
        from torch import nn

        return any(isinstance(m, (nn.Conv2d, nn.Conv3d)) for m in source.module.modules())

    @classmethod
    def preferred_quantizers(
        cls, precisions: Sequence[str], runtimes: Sequence[str], profile_name: str
    ) -> QuantizerChoice:
        """OpenVINO INT8 via NNCF where OpenVINO runs, else ONNX Runtime static INT8."""
        if "int8" not in precisions:
            return QuantizerChoice()
        if "openvino" in runtimes:
            return QuantizerChoice(
                ["nncf_int8"],
                "convolutional net (4-D input): OpenVINO INT8 via NNCF is tried first (the "
                "fastest INT8 recipe measured on convolutions; ONNX Runtime dynamic INT8 was "
                "slower than FP32 there); every other method of the chosen backends is "
                "measured beside it and the measurement decides",
            )
        return QuantizerChoice(
            ["ort_static_int8"],
            f"convolutional net (4-D input): profile {profile_name!r} lists no OpenVINO, so "
            f"ONNX Runtime static INT8 (calibrated) is tried first instead of NNCF; every "
            f"other method of the chosen backends is measured beside it",
        )


PLUGIN = ConvFamily
