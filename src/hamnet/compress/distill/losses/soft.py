"""``soft``: Hinton's soft targets, the KL divergence of softened teacher and student logits."""

from __future__ import annotations

from typing import TYPE_CHECKING

from hamnet.compress.distill.losses.base import DistillLoss, LossOptions, Positive

if TYPE_CHECKING:
    from hamnet.compress.distill.kd import BuildContext, DistillTerm


class SoftOptions(LossOptions):
    """Options of a ``soft`` term.

    Attributes:
        temperature: Softening temperature ``T``.
    """

    temperature: Positive = 4.0


class SoftKD(DistillLoss[SoftOptions]):
    """Soft targets (Hinton et al. 2015) from the mean of the teachers' logits.

    See :class:`~hamnet.compress.distill.kd.SoftTargetLoss`.
    """

    name = "soft"
    Options = SoftOptions
    reads_every_teacher = True

    @classmethod
    def build(cls, options: SoftOptions, context: BuildContext) -> DistillTerm:
        from hamnet.compress.distill.kd import SoftTargetLoss

        context.first_teacher(cls.name)
        return SoftTargetLoss(options.temperature)


PLUGIN = SoftKD
