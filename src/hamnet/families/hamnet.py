"""The HAMNet family: hamnet's own transformer over feature tokens, from a checkpoint."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

from hamnet.families.base import ModelFamily, ModelSource, PrunableGroup


class HamnetFamily(ModelFamily):
    """HAMNet checkpoints and instances: every goal (pruning, distillation, quantization).

    The pipeline loads the checkpoint, exports it to ONNX/OpenVINO itself and prunes
    heads and channels with its structured pruning stage. Training from a config
    (baseline, students, search trials) and replaying pruning plans build HAMNets
    directly: they are this family's own, so the stages that do them call
    :mod:`hamnet.models` and :mod:`hamnet.compress.pruning` without asking the family.
    """

    name = "hamnet"
    description = "a HAMNet checkpoint"
    loads_checkpoint = True
    prunable_groups: ClassVar[tuple[PrunableGroup, ...]] = (
        PrunableGroup("attention_heads", "head", "MultiHeadSelfAttention of every block"),
        PrunableGroup("ffn_channels", "hidden channel", "FeedForward of every block"),
    )
    distill_targets: ClassVar[tuple[str, ...]] = ("logits", "hidden states of every block")
    prune_reason = "latency-bound HAMNet: structured pruning removes heads and channels"
    detect_order = 0

    @classmethod
    def detect(cls, source: ModelSource) -> bool:
        """A HAMNet instance, or a ``.pt``/``.pth`` hamnet checkpoint file."""
        if source.module is not None:
            from hamnet.models import HAMNet

            return isinstance(source.module, HAMNet)
        return source.is_checkpoint

    @classmethod
    def load(cls, path: Path, *, trust_checkpoint: bool = False) -> Any:
        """Load the checkpoint as a HAMNet.

        Raises:
            ModelLoadError: If the file is not a hamnet checkpoint.
        """
        from hamnet.models import load_checkpoint

        return load_checkpoint(path, trust=trust_checkpoint)

    @classmethod
    def predict(cls, path: Path, x: Any, *, trust_checkpoint: bool = False) -> Any:
        """The checkpoint's logits on the feature matrix ``x``."""
        from hamnet.training.trainer import predict_logits

        return predict_logits(cls.load(path, trust_checkpoint=trust_checkpoint), x)

    @classmethod
    def export_onnx(
        cls,
        module: Any,
        example_inputs: Any,
        path: Path,
        *,
        input_names: Sequence[str] | None = None,
        dynamic_axes: Mapping[str, Mapping[int, str]] | None = None,
        opset: int = 17,
        ort_fused_attention: bool = False,
        trim_padding: str | None = None,
    ) -> Path:
        """Export the HAMNet as the pipeline does (one ``input``, ``logits`` out).

        ``example_inputs``, ``input_names`` and ``dynamic_axes`` are fixed by the
        HAMNet's config and ignored; a HAMNet has no padding to trim (``trim_padding``
        is ignored too).
        """
        from hamnet.backends.export import export_onnx

        return export_onnx(
            module,
            module.config.input_size,
            path,
            opset=opset,
            ort_fused_attention=ort_fused_attention,
        )

    @classmethod
    def fusable_attention(cls, module: Any) -> bool:
        """Whether the HAMNet has attention to fuse (one token: attention is one linear map)."""
        return bool(module.config.num_tokens > 1)

    @classmethod
    def check_data(cls, path: Path, dataset: Any, *, trust_checkpoint: bool = False) -> None:
        """Check the checkpoint's ``input_size`` against the data's features.

        Raises:
            ModelLoadError: If the file is not a hamnet checkpoint.
            DataError: If the sizes differ.
        """
        model = cls.load(path, trust_checkpoint=trust_checkpoint)
        dataset.check_input_size(model.config.input_size)

    @classmethod
    def fits_builtin_data(cls, path: Path, *, trust_checkpoint: bool = False) -> bool:
        """Whether the built-in digits data fits (64 inputs, 10 classes)."""
        cfg = cls.load(path, trust_checkpoint=trust_checkpoint).config
        return bool(cfg.input_size == 64 and cfg.num_classes == 10)


PLUGIN = HamnetFamily
