"""The generic family: any other traceable module or ONNX file."""

from __future__ import annotations

from typing import ClassVar

from hamnet.families.base import ModelFamily, ModelSource, PrunableGroup


class GenericFamily(ModelFamily):
    """Any model, optimized as ONNX with the backends' default quantizers."""

    name = "generic"
    description = "an ONNX model"
    prunable_groups: ClassVar[tuple[PrunableGroup, ...]] = (
        PrunableGroup("linear_neurons", "output neuron", "every Linear"),
    )
    detect_order = 100

    @classmethod
    def detect(cls, source: ModelSource) -> bool:
        """Every model: the fallback when no other family recognises it."""
        return True


PLUGIN = GenericFamily
