"""OpenVINO IR with FP16-compressed weights."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from hamnet.compress.quantize.base import QuantizationMethod

if TYPE_CHECKING:
    from hamnet.core.config import QuantizeStageConfig
    from hamnet.core.hardware import HardwareProfile


class OpenVINOFp16(QuantizationMethod):
    """OpenVINO IR with FP16-compressed weights."""

    name = "openvino_fp16"
    output_format = "openvino"
    backend = "openvino"
    runtime = "openvino"
    precision = "fp16"
    needs_calibration = False
    requires = ("openvino",)
    notes: ClassVar[list[str]] = [
        "Only the weights are stored as FP16: the file halves, but hamnet runs OpenVINO "
        "with FP32 inference precision, so on CPU the weights are decompressed and the "
        "model computes in FP32 (no speedup expected).",
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
        from hamnet.backends.export import convert_openvino

        convert_openvino(source, target, compress_to_fp16=True)


PLUGIN = OpenVINOFp16
