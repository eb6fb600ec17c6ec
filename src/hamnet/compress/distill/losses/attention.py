"""``attention``: attention transfer, on attention maps or on activation maps."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

from hamnet.compress.distill.losses.base import (
    DistillLoss,
    LayerMapping,
    LossOptions,
    Positive,
    one_of,
)

if TYPE_CHECKING:
    from hamnet.compress.distill.kd import BuildContext, DistillTerm
    from hamnet.compress.distill.mapping import LayerKind


class AttentionOptions(LossOptions):
    """Options of an ``attention`` term.

    Attributes:
        layers: ``"depth"`` or an explicit ``{student_layer: teacher_layer}`` mapping.
        source: ``"attention"`` (attention probes' maps) or ``"features"`` (activation
            maps of block outputs).
        distance: ``"mse"`` or ``"kl"`` (attention maps only).
        p: Exponent of the activation maps.
        per_head: Compare attention maps head by head (needs equal head counts).
    """

    layers: LayerMapping = "depth"
    source: Annotated[str, one_of("attention", "features")] = "attention"
    distance: Annotated[str, one_of("mse", "kl")] = "mse"
    p: Positive = 2.0
    per_head: bool = False


class AttentionKD(DistillLoss[AttentionOptions]):
    """Attention transfer (Zagoruyko & Komodakis 2017) from ``teachers[0]``.

    See :class:`~hamnet.compress.distill.kd.AttentionTransferLoss`.
    """

    name = "attention"
    Options = AttentionOptions
    reads_teacher_layers = True

    @classmethod
    def build(cls, options: AttentionOptions, context: BuildContext) -> DistillTerm:
        from hamnet.compress.distill.kd import AttentionTransferLoss

        kind: LayerKind = "attention" if options.source == "attention" else "feature"
        pairs = context.layer_pairs(cls.name, options.layers, kind)
        return AttentionTransferLoss(
            pairs, distance=options.distance, p=options.p, per_head=options.per_head
        )


PLUGIN = AttentionKD
