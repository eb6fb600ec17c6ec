"""The plan: which stages a configuration runs, in which order.

Every stage is a plugin of kind ``"stage"``, one module of :mod:`hamnet.pipeline.stages`
(see :class:`~hamnet.pipeline.stages.base.Stage`). Adding a stage means writing that one
module (its ``order`` places it, its ``section`` of ``config.stages`` switches it on);
the Prefect flow and the Python API pick it up from :func:`build_plan`.

The stage classes and helpers that used to live here are re-exported, so
``from hamnet.pipeline.plan import DistillStage`` keeps working.
"""

from __future__ import annotations

from typing import cast

from hamnet.core import registry
from hamnet.core.config import OptimizeConfig
from hamnet.core.errors import ConfigError
from hamnet.pipeline.stages._search import SearchStage
from hamnet.pipeline.stages.base import Stage, StageContext, child_name
from hamnet.pipeline.stages.distill import DistillStage
from hamnet.pipeline.stages.export import FUSED_NOTE, ExportStage
from hamnet.pipeline.stages.hpo import HPOStage
from hamnet.pipeline.stages.load import LoadStage, onnx_inputs
from hamnet.pipeline.stages.nas import NASStage
from hamnet.pipeline.stages.prune import PruneStage
from hamnet.pipeline.stages.quantize import QuantizeStage
from hamnet.pipeline.stages.train import TrainStage

__all__ = [
    "FUSED_NOTE",
    "PIPELINE_ORDER",
    "DistillStage",
    "ExportStage",
    "HPOStage",
    "LoadStage",
    "NASStage",
    "PruneStage",
    "QuantizeStage",
    "SearchStage",
    "Stage",
    "StageContext",
    "TrainStage",
    "build_plan",
    "child_name",
    "make_stage",
    "onnx_inputs",
    "pipeline_order",
    "stage_by_name",
    "stage_class",
]


def stage_class(name: str) -> type[Stage]:
    """Return the stage class registered as ``name``.

    Raises:
        ConfigError: If the name is unknown.
    """
    known = registry.entries("stage")
    if name not in known:
        raise ConfigError(f"unknown stage {name!r}: expected one of {sorted(known)}")
    return cast("type[Stage]", registry.load("stage", name))


def make_stage(name: str) -> Stage:
    """Instantiate the stage registered as ``name``.

    Raises:
        ConfigError: If the name is unknown.
    """
    return stage_class(name)()


stage_by_name = make_stage
"""The former name of :func:`make_stage`."""


def pipeline_order() -> tuple[str, ...]:
    """Every stage's name in the order stages run: baseline stages first, then by ``order``."""
    classes = [stage_class(name) for name in registry.names("stage")]
    classes.sort(key=lambda c: (c.baseline_source is None, c.order, c.name))
    return tuple(c.name for c in classes)


PIPELINE_ORDER: tuple[str, ...] = pipeline_order()
"""Order in which the built-in stages run (the baseline comes from ``load`` or ``train``)."""


def build_plan(config: OptimizeConfig) -> list[Stage]:
    """Return the ordered stages this configuration runs.

    The first stage makes the baseline: the one whose ``baseline_source`` is
    ``model.source`` (``train`` for ``train``, ``load`` for ``file``). Every later
    stage runs when its section of ``config.stages`` is set.

    Raises:
        ConfigError: No stage makes a baseline from ``model.source``.
    """
    stages = [make_stage(name) for name in pipeline_order()]
    baseline = [s for s in stages if s.baseline_source == config.model.source]
    if not baseline:
        raise ConfigError(
            f"model.source must be one a stage makes the baseline from "
            f"{sorted({str(s.baseline_source) for s in stages if s.baseline_source})}, but got "
            f"{config.model.source!r}"
        )
    later = [s for s in stages if s.baseline_source is None and s.settings(config) is not None]
    return [baseline[0], *later]
