"""A stage from outside hamnet's packages, registered by tests."""

from __future__ import annotations

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
