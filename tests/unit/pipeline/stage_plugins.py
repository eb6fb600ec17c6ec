"""A stage from outside hamnet's packages, registered by tests."""

from __future__ import annotations

from typing import Any

from hamnet.compress.quantize.methods.ort_dynamic_int8 import OrtDynamicInt8
from hamnet.core.candidate import Candidate
from hamnet.core.config import OptimizeConfig
from hamnet.core.registry import NoOptions
from hamnet.pipeline.stages.base import Stage, StageContext


class AuditStage(Stage[NoOptions]):
    """Runs between export and quantize and adds nothing."""

    name = "audit"
    order = 65

    def settings(self, config: OptimizeConfig) -> NoOptions:
        return NoOptions()

    def run(self, inputs: list[Candidate], ctx: StageContext) -> list[Candidate]:
        return []


class BrokenInt8(OrtDynamicInt8):
    """An INT8 method that fails on every model (a quantizer bug, an unsupported graph)."""

    name = "broken_int8"

    def _convert(self, job: Any) -> None:
        raise RuntimeError("QAttention: hidden_size should be divisible by num_heads")
