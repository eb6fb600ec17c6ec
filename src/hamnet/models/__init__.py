"""Model architectures hamnet can train from scratch."""

from __future__ import annotations

from hamnet.models.hamnet import (
    CHECKPOINT_FORMAT,
    FeedForward,
    HAMNet,
    HAMNetBlock,
    HAMNetConfig,
    MultiHeadSelfAttention,
    count_flops,
    count_parameters,
    folded_one_token_attention,
    load_checkpoint,
    ort_attention_export,
    save_checkpoint,
)

__all__ = [
    "CHECKPOINT_FORMAT",
    "FeedForward",
    "HAMNet",
    "HAMNetBlock",
    "HAMNetConfig",
    "MultiHeadSelfAttention",
    "count_flops",
    "count_parameters",
    "folded_one_token_attention",
    "load_checkpoint",
    "ort_attention_export",
    "save_checkpoint",
]
