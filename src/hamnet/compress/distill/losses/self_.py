"""``self``: self-distillation, from the student's own final logits or an earlier snapshot."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

from hamnet.compress.distill.losses.base import DistillLoss, LossOptions, Positive, one_of
from hamnet.core.errors import ConfigError

if TYPE_CHECKING:
    from hamnet.compress.distill.kd import BuildContext, DistillTerm


class SelfOptions(LossOptions):
    """Options of a ``self`` term.

    Attributes:
        mode: ``"deep"`` (shallow blocks learn from the final logits through auxiliary
            classifiers; no teacher) or ``"snapshot"`` (soft targets from ``teachers[0]``,
            an earlier checkpoint of the student).
        temperature: Softening temperature ``T``.
        layers: Student blocks taught by the final logits (``"deep"``; default: every
            block but the last).
    """

    mode: Annotated[str, one_of("deep", "snapshot")] = "deep"
    temperature: Positive = 4.0
    layers: list[str] | None = None


class SelfKD(DistillLoss[SelfOptions]):
    """Self-distillation (Be Your Own Teacher, or born-again from a snapshot).

    See :class:`~hamnet.compress.distill.kd.SelfDistillLoss`.
    """

    name = "self"
    Options = SelfOptions
    needs_teacher = False

    @classmethod
    def build(cls, options: SelfOptions, context: BuildContext) -> DistillTerm:
        from torch import nn

        from hamnet.compress.distill.capture import block_layers, check_layers
        from hamnet.compress.distill.kd import SelfDistillLoss

        if options.mode == "snapshot":
            context.first_teacher(f"{cls.name} (mode snapshot)")
            return SelfDistillLoss("snapshot", temperature=options.temperature)
        student = context.student
        norm, head = getattr(student, "norm", None), getattr(student, "head", None)
        if not isinstance(norm, nn.Module) or not isinstance(head, nn.Module):
            raise ConfigError(
                f"deep self-distillation needs a student with 'norm' and 'head' modules (like "
                f"HAMNet), but {type(student).__name__} lacks them"
            )
        layers = options.layers
        if layers is None:
            layers = block_layers(student)[:-1]
            if not layers:
                raise ConfigError(
                    "deep self-distillation needs a student with at least 2 blocks, but it has 1"
                )
        check_layers(student, layers, side="student")
        return SelfDistillLoss(
            "deep", temperature=options.temperature, norm=norm, head=head, layers=layers
        )


PLUGIN = SelfKD
