"""``multi_teacher``: soft targets from a weighted mixture of the teachers' probabilities."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Annotated

from pydantic import model_validator

from hamnet.compress.distill.losses.base import DistillLoss, LossOptions, Positive, one_of
from hamnet.core.errors import ConfigError

if TYPE_CHECKING:
    from hamnet.compress.distill.kd import BuildContext, DistillTerm


class MultiTeacherOptions(LossOptions):
    """Options of a ``multi_teacher`` term.

    Attributes:
        temperature: Softening temperature ``T``.
        weighting: ``"fixed"`` (``weights``, uniform when omitted), ``"confidence"`` (per
            sample, by the probability of the true label) or ``"entropy"`` (per sample,
            sharper teachers weigh more).
        weights: One weight per teacher, for ``"fixed"``: non-negative, positive sum.
    """

    temperature: Positive = 4.0
    weighting: Annotated[str, one_of("fixed", "confidence", "entropy")] = "fixed"
    weights: list[float] | None = None

    @model_validator(mode="after")
    def _weights(self) -> MultiTeacherOptions:
        if self.weights is None:
            return self
        if self.weighting != "fixed":
            raise ValueError(f"weights apply to weighting 'fixed' only, but got {self.weighting!r}")
        if any(not math.isfinite(w) or w < 0 for w in self.weights) or not sum(self.weights):
            raise ValueError(
                f"weights must be non-negative with a positive sum, but got {self.weights}"
            )
        return self


class MultiTeacherKD(DistillLoss[MultiTeacherOptions]):
    """Soft targets from an ensemble of teachers.

    See :class:`~hamnet.compress.distill.kd.MultiTeacherLoss`.
    """

    name = "multi_teacher"
    Options = MultiTeacherOptions
    reads_every_teacher = True

    @classmethod
    def build(cls, options: MultiTeacherOptions, context: BuildContext) -> DistillTerm:
        from hamnet.compress.distill.kd import MultiTeacherLoss

        context.first_teacher(cls.name)
        if options.weights is not None and len(options.weights) != len(context.teachers):
            raise ConfigError(
                f"multi_teacher needs one weight per teacher ({len(context.teachers)}), but "
                f"got {options.weights}"
            )
        return MultiTeacherLoss(
            temperature=options.temperature, weighting=options.weighting, weights=options.weights
        )


PLUGIN = MultiTeacherKD
