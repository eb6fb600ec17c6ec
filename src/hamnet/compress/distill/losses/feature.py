"""``feature``: FitNets-style hints, the MSE between paired student and teacher layers."""

from __future__ import annotations

from typing import TYPE_CHECKING

from hamnet.compress.distill.losses.base import DistillLoss, LayerMapping, LossOptions

if TYPE_CHECKING:
    from hamnet.compress.distill.kd import BuildContext, DistillTerm


class FeatureOptions(LossOptions):
    """Options of a ``feature`` term.

    Attributes:
        layers: ``"depth"`` (blocks paired by relative depth) or an explicit
            ``{student_layer: teacher_layer}`` mapping.
        normalize: Layer-normalise both features before comparing them.
    """

    layers: LayerMapping = "depth"
    normalize: bool = False


class FeatureKD(DistillLoss[FeatureOptions]):
    """Feature matching on the layers of ``teachers[0]``.

    See :class:`~hamnet.compress.distill.kd.FeatureLoss`.
    """

    name = "feature"
    Options = FeatureOptions
    reads_teacher_layers = True

    @classmethod
    def build(cls, options: FeatureOptions, context: BuildContext) -> DistillTerm:
        from hamnet.compress.distill.kd import FeatureLoss

        pairs = context.layer_pairs(cls.name, options.layers, "feature")
        return FeatureLoss(pairs, normalize=options.normalize)


PLUGIN = FeatureKD
