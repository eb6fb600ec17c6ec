"""What a distillation loss reads: one model's outputs on a batch, and what to capture."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class DistillOutputs:
    """One model's outputs on one batch, as the distillation losses read them.

    Attributes:
        logits: Class scores ``[B, C]``.
        features: Module name → that module's output (e.g. ``blocks.0`` → ``[B, T, hidden]``).
        attentions: Module name → attention map ``[B, heads, T, T]`` (the output of an
            ``attn_probe``).
        embedding: The pooled representation the classifier reads ``[B, D]`` (for HAMNet
            ``norm(h).mean(dim=1)``), or None when it was not captured.
    """

    logits: torch.Tensor
    features: dict[str, torch.Tensor] = field(default_factory=dict)
    attentions: dict[str, torch.Tensor] = field(default_factory=dict)
    embedding: torch.Tensor | None = None

    def detach(self) -> DistillOutputs:
        """A copy whose tensors are cut from the autograd graph."""
        return DistillOutputs(
            logits=self.logits.detach(),
            features={k: v.detach() for k, v in self.features.items()},
            attentions={k: v.detach() for k, v in self.attentions.items()},
            embedding=None if self.embedding is None else self.embedding.detach(),
        )


@dataclass(frozen=True)
class CaptureSpec:
    """Which intermediate outputs of one model a set of losses reads.

    Attributes:
        features: Module names whose outputs go to :attr:`DistillOutputs.features`.
        attentions: Module names (attention probes) whose outputs go to
            :attr:`DistillOutputs.attentions`.
        embedding: Whether :attr:`DistillOutputs.embedding` is needed.
    """

    features: tuple[str, ...] = ()
    attentions: tuple[str, ...] = ()
    embedding: bool = False

    def __or__(self, other: CaptureSpec) -> CaptureSpec:
        return CaptureSpec(
            features=tuple(dict.fromkeys(self.features + other.features)),
            attentions=tuple(dict.fromkeys(self.attentions + other.attentions)),
            embedding=self.embedding or other.embedding,
        )

    @property
    def is_empty(self) -> bool:
        """True when only the logits are needed."""
        return not (self.features or self.attentions or self.embedding)
