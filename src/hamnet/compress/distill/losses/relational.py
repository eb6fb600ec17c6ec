"""``relational``: relational KD, distances and angles between the samples' embeddings."""

from __future__ import annotations

from typing import TYPE_CHECKING

from hamnet.compress.distill.losses.base import DistillLoss, LossOptions, NonNegative

if TYPE_CHECKING:
    from hamnet.compress.distill.kd import BuildContext, DistillTerm


class RelationalOptions(LossOptions):
    """Options of a ``relational`` term.

    Attributes:
        distance_weight: Weight of the RKD-distance term (paper: 1).
        angle_weight: Weight of the RKD-angle term (paper: 2).
    """

    distance_weight: NonNegative = 1.0
    angle_weight: NonNegative = 2.0


class RelationalKD(DistillLoss[RelationalOptions]):
    """Relational KD (Park et al. 2019) from ``teachers[0]``'s embedding (or logits).

    See :class:`~hamnet.compress.distill.kd.RelationalLoss`.
    """

    name = "relational"
    Options = RelationalOptions

    @classmethod
    def build(cls, options: RelationalOptions, context: BuildContext) -> DistillTerm:
        from hamnet.compress.distill.kd import RelationalLoss

        context.first_teacher(cls.name)
        return RelationalLoss(
            distance_weight=options.distance_weight, angle_weight=options.angle_weight
        )


PLUGIN = RelationalKD
