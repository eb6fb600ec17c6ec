"""NNCF post-training INT8 quantization of the OpenVINO model (runs in OpenVINO)."""

from __future__ import annotations

from typing import Any, ClassVar

from hamnet.backends.session import require
from hamnet.compress.quantize._calibration import nncf_items
from hamnet.compress.quantize._graph import has_attention, input_names
from hamnet.compress.quantize.base import QuantizationMethod, QuantizeJob


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

    def _convert(self, job: QuantizeJob) -> None:
        ov = require("openvino")
        nncf = require("nncf")
        options: dict[str, Any] = {}
        if has_attention(job.source):
            options["model_type"] = nncf.ModelType.TRANSFORMER
            options["preset"] = nncf.QuantizationPreset.MIXED
        ov_model = ov.convert_model(str(job.source))
        dataset = nncf.Dataset(nncf_items(job.calibration, input_names(job.source)))
        quantized = nncf.quantize(ov_model, dataset, subset_size=len(job.calibration), **options)
        ov.save_model(quantized, str(job.target), compress_to_fp16=False)


PLUGIN = NncfInt8
