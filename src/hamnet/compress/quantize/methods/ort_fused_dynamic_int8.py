"""ONNX Runtime transformer fusion, then dynamic INT8 with per-channel weights."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from hamnet.backends.session import require
from hamnet.compress.quantize._graph import transformer_shape
from hamnet.compress.quantize.base import QuantizationMethod, QuantizeJob


class OrtFusedDynamicInt8(QuantizationMethod):
    """ONNX Runtime transformer fusion, then dynamic INT8 with per-channel weights.

    ``onnxruntime.transformers.optimizer.optimize_model(model_type="bert")`` fuses
    embeddings + LayerNorm, attention, GELU and skip-LayerNorm into ONNX Runtime's
    contrib ops, with ``num_heads``/``hidden_size`` from the file's metadata when known
    (see :data:`hamnet.backends.export.TRANSFORMER_METADATA`); the fused graph is then
    quantized dynamically (INT8 weights per output channel, ``reduce_range`` as
    configured). The best plain recipe measured for BERT-style encoders on CPU (see
    FACTS.md).

    It applies only to graphs with attention (MatMul + Softmax): :meth:`applicable`
    says why not otherwise. When fusion finds no attention block to fuse, the
    unfused graph is quantized and the candidate's notes say so.
    """

    name = "ort_fused_dynamic_int8"
    output_format = "onnx"
    backend = "onnx"
    runtime = "onnxruntime"
    precision = "int8"
    needs_calibration = False
    needs_attention = True
    settings = ("reduce_range",)
    requires = ("onnx", "onnxruntime")
    notes: ClassVar[list[str]] = [
        "Transformer fusion (ONNX Runtime contrib ops: Attention, EmbedLayerNormalization, "
        "SkipLayerNormalization): the model runs in ONNX Runtime only.",
        "Weights INT8 per channel, activations quantized per call; no calibration data.",
    ]

    def _convert(self, job: QuantizeJob) -> None:
        quantization = require("onnxruntime.quantization", "onnxruntime")
        onnx = require("onnx")
        # Shape inference cannot type the outputs of ONNX Runtime's contrib ops;
        # every tensor of these graphs is float.
        quantization.quantize_dynamic(
            str(self._fuse(job.source, job.work / "fused.onnx")),
            str(job.target),
            per_channel=True,
            reduce_range=job.reduce_range,
            weight_type=quantization.QuantType.QInt8,
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )

    def _fuse(self, source: Path, target: Path) -> Path:
        """Write the BERT-fused graph to ``target``; return it, or ``source`` if none fused."""
        optimizer = require("onnxruntime.transformers.optimizer", "onnxruntime")
        num_heads, hidden_size = transformer_shape(source)
        fused = optimizer.optimize_model(
            str(source),
            model_type="bert",
            num_heads=num_heads,
            hidden_size=hidden_size,
            use_gpu=False,
        )
        stats = fused.get_fused_operator_statistics()
        fused.save_model_to_file(str(target))
        attention = int(stats.get("Attention", 0)) + int(stats.get("MultiHeadAttention", 0))
        if attention == 0:
            self.extra_notes.append(
                "ONNX Runtime's BERT fusion found no attention block to fuse in this "
                "graph: the unfused graph was quantized (plain dynamic INT8)."
            )
            return source
        fused_ops = {k: v for k, v in stats.items() if v}
        self.extra_notes.append(f"fused operators: {fused_ops}")
        return target


PLUGIN = OrtFusedDynamicInt8
