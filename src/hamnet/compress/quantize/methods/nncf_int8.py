"""NNCF post-training INT8 quantization of the OpenVINO model (runs in OpenVINO)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from hamnet.backends.session import require
from hamnet.compress.quantize._calibration import nncf_items
from hamnet.compress.quantize._graph import has_attention, input_names
from hamnet.compress.quantize.base import QuantizationMethod

if TYPE_CHECKING:
    from hamnet.core.config import QuantizeStageConfig
    from hamnet.core.hardware import HardwareProfile


class NncfInt8(QuantizationMethod):
    """NNCF post-training INT8 quantization of the OpenVINO model (runs in OpenVINO).

    Graphs with attention (MatMul + Softmax) are quantized with
    ``model_type=TRANSFORMER`` and the ``MIXED`` preset, which keeps the sensitive
    attention parts accurate; other graphs use NNCF's defaults.
    """

    name = "nncf_int8"
    output_format = "openvino"
    backend = "openvino"
    runtime = "openvino"
    precision = "int8"
    needs_calibration = True
    requires = ("onnx", "openvino", "nncf")
    notes: ClassVar[list[str]] = [
        "Activation ranges come from the calibration samples; inputs outside them clip.",
        "INT8 kernels are fastest on CPUs with VNNI/AMX; without them the gain is smaller.",
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
        ov = require("openvino")
        nncf = require("nncf")
        assert data is not None
        options: dict[str, Any] = {}
        if has_attention(source):
            options["model_type"] = nncf.ModelType.TRANSFORMER
            options["preset"] = nncf.QuantizationPreset.MIXED
        ov_model = ov.convert_model(str(source))
        dataset = nncf.Dataset(nncf_items(data, input_names(source)))
        quantized = nncf.quantize(ov_model, dataset, subset_size=len(data), **options)
        ov.save_model(quantized, str(target), compress_to_fp16=False)


PLUGIN = NncfInt8
