"""What every pipeline stage is: candidates in, new candidates out, one config section.

A stage is a :class:`~hamnet.core.registry.Plugin` of kind ``"stage"``: one module of
:mod:`hamnet.pipeline.stages` exposing its class as ``PLUGIN``. Its ``Options`` is the
type of its config section (``config.stages.<section>``), its ``order`` places it in
the pipeline, and a stage that makes the baseline names the ``model.source`` it serves.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar, cast

from pydantic import BaseModel

from hamnet.core.artifacts import ArtifactRef, ArtifactStore
from hamnet.core.candidate import Candidate
from hamnet.core.config import OptimizeConfig
from hamnet.core.errors import ConfigError
from hamnet.core.hardware import HardwareProfile
from hamnet.core.registry import NoOptions, Plugin
from hamnet.families.base import ModelFamily, ModelSource, detect_family, get_family

if TYPE_CHECKING:
    from hamnet.training.data import Dataset

S = TypeVar("S", bound=BaseModel)


@dataclass
class StageContext:
    """What a stage may use besides its input candidates.

    Attributes:
        config: The whole run configuration.
        profile: The hardware profile candidates are measured on.
        store: Where model files go.
        base_dir: Folder relative paths in the config resolve against.
        notes: Messages the stage wants the user to see (e.g. a skipped method).
        parent_run_id: The run's MLflow parent run when tracking is on (search stages
            log their trials under it).
    """

    config: OptimizeConfig
    profile: HardwareProfile
    store: ArtifactStore
    base_dir: Path
    notes: list[str] = field(default_factory=list)
    parent_run_id: str | None = None

    @cached_property
    def dataset(self) -> Dataset:
        """The configured data set, loaded once per context.

        A HAMNet (trained here, or a ``.pt`` checkpoint) takes feature vectors, so N-D
        inputs (e.g. images) are flattened for it; any other model (ONNX, a user's
        module) gets them as stored.
        """
        from hamnet.models.sources import is_hamnet_checkpoint
        from hamnet.training.data import load_dataset

        data = load_dataset(self.config.data, base_dir=self.base_dir)
        model = self.config.model
        if model.source == "train":
            return data.flattened()
        path = self.resolve(str(model.path))
        hamnet = path.suffix.lower() in (".pt", ".pth") and is_hamnet_checkpoint(path)
        return data.flattened() if hamnet else data

    @property
    def device(self) -> str:
        """The torch device stages train on: ``cuda`` for a CUDA profile, else ``cpu``."""
        return "cuda" if self.profile.device == "cuda" else "cpu"

    def resolve(self, path: str) -> Path:
        """Resolve a config path against :attr:`base_dir`."""
        p = Path(path).expanduser()
        return p if p.is_absolute() else self.base_dir / p


class Stage(Plugin, ABC, Generic[S]):
    """A step of the pipeline: candidates in, new candidates out.

    Attributes:
        section: Key under ``config.stages`` that configures the stage (None: none
            needed); the stage runs when that section is set.
        order: Place in the pipeline; stages run by increasing order.
        baseline_source: For a stage that makes the baseline, the ``model.source`` it
            serves (``"train"`` or ``"file"``); None for every later stage.
    """

    kind = "stage"
    Options: ClassVar[type[BaseModel]] = NoOptions
    section: ClassVar[str | None] = None
    order: ClassVar[int] = 0
    baseline_source: ClassVar[str | None] = None

    def settings(self, config: OptimizeConfig) -> S | None:
        """Return this stage's config section, or None when it is not set."""
        return cast("S | None", getattr(config.stages, self.section) if self.section else None)

    def options(self, config: OptimizeConfig) -> S:
        """Return this stage's config section, which a running stage needs.

        Raises:
            ConfigError: The section is not set.
        """
        settings = self.settings(config)
        if settings is None:
            raise ConfigError(
                f"stage {self.name!r} needs the config section stages.{self.section}, but it "
                f"is not set"
            )
        return settings

    def cache_scope(self, config: OptimizeConfig) -> dict[str, Any]:
        """Return everything in the config that can change this stage's output.

        The Prefect task hashes it (with the input candidates) into the cache key, so
        changing, say, the constraints does not retrain the baseline.
        """
        from hamnet.core.version import __version__

        settings = self.settings(config)
        return {
            "hamnet": __version__,
            "stage": self.name,
            "settings": settings.model_dump(mode="json") if settings is not None else None,
            "seed": config.seed,
            "model": config.model.model_dump(mode="json"),
            "data": config.data.model_dump(mode="json"),
            "measure": config.measure.model_dump(mode="json"),
            "hardware_profile": config.hardware_profile,
        }

    def input_files(self, config: OptimizeConfig) -> list[str]:
        """Files (config paths) the stage reads besides data and model: their content
        is hashed into the cache key, so editing one reruns the stage."""
        return []

    @abstractmethod
    def run(self, inputs: list[Candidate], ctx: StageContext) -> list[Candidate]:
        """Produce new candidates from ``inputs`` (which are never modified)."""


def child_name(parent: Candidate, suffix: str) -> str:
    """The name of a candidate made from ``parent``: ``suffix`` under the baseline,
    else ``<parent>+<suffix>``."""
    return suffix if parent.stage in ("train", "load") else f"{parent.name}+{suffix}"


def candidate_family(candidate: Candidate) -> type[ModelFamily]:
    """The model family of a candidate's model file (see :func:`detect_family`).

    A ``torch`` artifact is a hamnet checkpoint, an ``onnx`` one an ONNX file; any
    other format (an OpenVINO IR) is left to the ``generic`` family.
    """
    formats = {"torch": True, "onnx": False}
    if candidate.artifact.format not in formats:
        return get_family("generic")
    source = ModelSource(
        path=Path(candidate.artifact.path), checkpoint=formats[candidate.artifact.format]
    )
    return detect_family(source)


def store_plan(ctx: StageContext, plan: Any, ref: ArtifactRef) -> Path:
    """Save a pruning plan beside the store as ``plans/<artifact sha256>.json``."""
    plan_dir = ctx.store.root / "plans"
    plan_dir.mkdir(parents=True, exist_ok=True)
    saved: Path = plan.save(plan_dir / f"{ref.sha256}.json")
    return saved


def pruned_suffix(ratio: float, criterion: str, allocation: str, cfg: Any) -> str:
    """A pruned child's name suffix: ``pruned-50``, plus the criterion and allocation
    when the stage tries several."""
    suffix = f"pruned-{round(100 * ratio)}"
    if (len(cfg.criteria), len(cfg.allocations)) != (1, 1):
        suffix += f"-{criterion}-{allocation}"
    return suffix
