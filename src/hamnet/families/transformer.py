"""The transformer family: attention in the graph (Hugging Face BERT-style encoders)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from hamnet.backends.onnx_graph import ATTENTION_OPS
from hamnet.families.base import ModelFamily, ModelSource, PrunableGroup, QuantizerChoice

FUSED_METHOD = "ort_fused_dynamic_int8"
"""ONNX Runtime transformer fusion + dynamic INT8 per channel."""


class TransformerFamily(ModelFamily):
    """Models with attention (a module with ``config.num_attention_heads``, or MatMul and
    Softmax in the graph).

    Given as a torch module (a Hugging Face encoder or classifier, or a module with
    ``nn.MultiheadAttention``), its attention heads and FFN neurons are pruned by
    :func:`hamnet.compress.pruning.modules.prune_module`; as ONNX it is quantized.
    """

    name = "transformer"
    description = "a transformer (attention in the graph)"
    prunable_groups: ClassVar[tuple[PrunableGroup, ...]] = (
        PrunableGroup("attention_heads", "head", "self-attention of every encoder layer"),
        PrunableGroup("ffn_channels", "intermediate channel", "FFN of every encoder layer"),
    )
    distill_targets: ClassVar[tuple[str, ...]] = (
        "the exported first output (last_hidden_state or logits)",
    )
    extra_quantizers: ClassVar[tuple[str, ...]] = (FUSED_METHOD,)
    pruner: ClassVar[str | None] = "hamnet.compress.pruning.hf:prune_bert"
    detect_order = 10
    # Measured on all-MiniLM-L6-v2, 30% removed, no recovery, cosine to the original:
    # taylor 0.80, hessian 0.73, l1 0.66 (docs/benchmark_any_model.md).
    prune_criterion: ClassVar[str] = "taylor"
    # AUTO's pruning ratios. A pretrained encoder loses fidelity fast: on all-MiniLM-L6-v2
    # (taylor, no recovery, cosine to the original on validation sentences) 10% of the
    # FFN neurons cost 0.968, 30% 0.889; 30% of heads + FFN 0.800, and 3 epochs of KD
    # brought 30% only to 0.934 (docs/benchmark_any_model.md). Only low ratios can stay
    # near a cosine of 0.99; the measurement decides whether they beat quantization alone.
    prune_ratios: ClassVar[tuple[float, ...]] = (0.1, 0.2)
    # Pretrained encoders take small steps: a few epochs at fine-tuning rates (the best
    # epoch on validation is kept). Two epochs, so that more unlabelled text (the user's
    # train_data) fits the same time; see docs/benchmark_any_model.md.
    recovery_training: ClassVar[Mapping[str, Any]] = {
        "epochs": 2, "learning_rate": 1e-4, "batch_size": 32, "warmup_epochs": 0,
    }  # fmt: skip

    @classmethod
    def detect(cls, source: ModelSource) -> bool:
        """A module with ``config.num_attention_heads`` (itself, or a submodule: a user's
        wrapper such as a mean-pooling sentence encoder), or a graph with MatMul and
        Softmax."""
        modules = getattr(source.module, "modules", None)
        for module in modules() if callable(modules) else [source.module]:
            config = getattr(module, "config", None)
            if getattr(config, "num_attention_heads", None) is not None:
                return True
        return source.onnx_op_types() >= ATTENTION_OPS

    @classmethod
    def preferred_quantizers(
        cls, precisions: Sequence[str], runtimes: Sequence[str], profile_name: str
    ) -> QuantizerChoice:
        """Fused dynamic INT8 first, plain dynamic INT8 beside it (ONNX Runtime only)."""
        if "int8" not in precisions or "onnxruntime" not in runtimes:
            return QuantizerChoice()
        return QuantizerChoice(
            [FUSED_METHOD, "ort_dynamic_int8"],
            "transformer (attention in the graph): ONNX Runtime transformer fusion + dynamic "
            f"INT8 per channel ({FUSED_METHOD}) and plain dynamic INT8 are tried first "
            "(static INT8 and NNCF lost accuracy on encoders and OpenVINO INT8 gave no "
            "speedup there); every other method of the chosen backends is measured beside "
            "them and the measurement decides",
        )


PLUGIN = TransformerFamily
