"""The model registry and the champion policy.

The recommended candidate of a run is registered as a new model version (or reuses
the version that already holds the same model file). Whether the champion alias moves
to it is decided by :func:`decide_champion`, a pure function of the two versions'
stored facts; :class:`ModelRegistry` reads those facts from MLflow and applies the
decision.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hamnet.core.candidate import Candidate, Metrics
from hamnet.core.config import ConstraintsSection
from hamnet.tracking.connection import MAX_TAG_LENGTH, Connection, bool_tag, clip, clip_tags
from hamnet.tracking.runs import TAG_CANDIDATE_ID

if TYPE_CHECKING:
    from mlflow.entities.model_registry import ModelVersion

    from hamnet.evaluate.pareto import Assessment
    from hamnet.tracking.mlflow_models import ModelContext

TAG_METRICS = "hamnet.metrics"
TAG_BASELINE_ACCURACY = "hamnet.baseline_accuracy"
TAG_SHA256 = "hamnet.artifact_sha256"
TAG_DECISION = "hamnet.champion_decision"


@dataclass
class RegistrationResult:
    """The outcome of :meth:`ModelRegistry.register`.

    Attributes:
        name: The registered model.
        version: The new model version.
        champion_moved: Whether the champion alias now points at the new version.
        message: One sentence saying what happened to the champion, with numbers.
        previous_champion: The version the alias pointed at before, if any.
    """

    name: str
    version: str
    champion_moved: bool
    message: str
    previous_champion: str | None = None


@dataclass(frozen=True)
class VersionFacts:
    """What the champion policy knows about one registered model version.

    Attributes:
        version: The version number, as a string.
        sha256: Content hash of its model file.
        candidate_id: The hamnet candidate it was made from.
        metrics: Its stored measurements; None when it was not registered by hamnet.
        baseline_accuracy: Accuracy of the baseline of the run that registered it.
        meets_constraints: Whether it meets the constraints; None to assess it from
            ``metrics`` and ``baseline_accuracy`` under the current constraints.
    """

    version: str
    sha256: str
    candidate_id: str
    metrics: Metrics | None
    baseline_accuracy: float | None
    meets_constraints: bool | None = None


@dataclass(frozen=True)
class ChampionDecision:
    """Whether the champion alias moves to the new version, and why (one sentence)."""

    move: bool
    message: str


def decide_champion(
    new: VersionFacts,
    current: VersionFacts | None,
    *,
    model: str,
    alias: str,
    objective: str,
    min_improvement: float,
    constraints: ConstraintsSection,
) -> ChampionDecision:
    """Decide whether the champion alias moves from ``current`` to ``new``.

    The first registration always becomes champion; the same model file never replaces
    itself; a champion without hamnet metrics stays (a person moves it by hand).
    Otherwise the champion is re-assessed under the current ``constraints`` and
    :func:`hamnet.evaluate.pareto.beats` decides: a model that meets the constraints
    beats one that does not, else the new one must be better on ``objective`` by more
    than ``min_improvement`` (relative).

    Args:
        new: The version just registered (``metrics`` and ``meets_constraints`` set).
        current: The version the alias points at, None when there is none.
        model: The registered model's name.
        alias: The champion alias.
        objective: The selection objective.
        min_improvement: Relative margin needed to take over the champion.
        constraints: The current constraints.

    Returns:
        The decision and its message.

    Raises:
        ValueError: ``new`` has no metrics or no constraints verdict.
    """
    from hamnet.evaluate.pareto import assess_metrics, beats, format_objective

    if new.metrics is None or new.meets_constraints is None:
        raise ValueError(
            f"the new version must carry metrics and a constraints verdict, but v{new.version} "
            f"has metrics={new.metrics is not None}, meets_constraints={new.meets_constraints}"
        )
    if current is None:
        value = format_objective(objective, float(getattr(new.metrics, objective)))
        return ChampionDecision(True, f"v{new.version} is the first {alias} of {model}: {value}")
    if current.sha256 == new.sha256:
        return ChampionDecision(
            False,
            f"{alias} stays v{current.version}: it is the recommended model "
            f"(sha256 {new.sha256[:12]})",
        )
    if current.metrics is None or current.baseline_accuracy is None:
        return ChampionDecision(
            False,
            f"{alias} stays v{current.version}: it has no hamnet metrics to compare with; "
            f"move the alias to v{new.version} by hand if it should win",
        )
    current_meets = current.meets_constraints
    if current_meets is None:
        current_meets = assess_metrics(
            current.candidate_id, current.metrics, current.baseline_accuracy, constraints
        ).meets_constraints
    moved, reason = beats(
        new.metrics, new.meets_constraints, current.metrics, current_meets,
        objective, min_improvement,
    )  # fmt: skip
    if moved:
        return ChampionDecision(
            True, f"{alias} moved from v{current.version} to v{new.version}: {reason}"
        )
    return ChampionDecision(
        False, f"{alias} stays v{current.version} over v{new.version}: {reason}"
    )


def stored_facts(version: ModelVersion) -> VersionFacts:
    """The facts hamnet stored on a model version's tags (metrics None when absent)."""
    tags = version.tags or {}
    number = str(version.version)
    metrics: Metrics | None
    baseline: float | None
    try:
        metrics = Metrics.model_validate_json(tags[TAG_METRICS])
        baseline = float(tags[TAG_BASELINE_ACCURACY])
    except (KeyError, ValueError):
        metrics, baseline = None, None
    return VersionFacts(
        version=number,
        sha256=str(tags.get(TAG_SHA256, "")),
        candidate_id=str(tags.get(TAG_CANDIDATE_ID, number)),
        metrics=metrics,
        baseline_accuracy=baseline,
    )


def _version_tags(
    candidate: Candidate,
    metrics: Metrics,
    assessment: Assessment,
    baseline_accuracy: float,
    constraints: ConstraintsSection,
    objective: str,
) -> dict[str, str]:
    return {
        TAG_CANDIDATE_ID: candidate.id,
        "hamnet.candidate_name": candidate.name,
        "hamnet.stage": candidate.stage,
        "hamnet.method": candidate.method,
        "hamnet.runtime": candidate.runtime,
        "hamnet.precision": candidate.precision,
        "hamnet.format": candidate.artifact.format,
        TAG_SHA256: candidate.artifact.sha256,
        TAG_METRICS: metrics.model_dump_json(),
        TAG_BASELINE_ACCURACY: repr(baseline_accuracy),
        "hamnet.accuracy_drop": repr(assessment.accuracy_drop),
        "hamnet.constraints": constraints.model_dump_json(),
        "hamnet.meets_constraints": bool_tag(assessment.meets_constraints),
        "hamnet.objective": objective,
        **{f"hamnet.metric.{k}": repr(v) for k, v in metrics.as_mlflow().items()},
    }


class ModelRegistry:
    """Registers recommended candidates and moves the champion alias by :func:`decide_champion`.

    Args:
        connection: The MLflow connection; its tracking section names the registered
            model and the champion alias.
    """

    def __init__(self, connection: Connection) -> None:
        self.connection = connection

    @property
    def _client(self) -> Any:
        return self.connection.client

    def register(
        self,
        candidate: Candidate,
        candidate_run_id: str,
        assessment: Assessment,
        *,
        objective: str,
        min_improvement: float,
        constraints: ConstraintsSection,
        baseline_accuracy: float | None = None,
        model: ModelContext | None = None,
    ) -> RegistrationResult:
        """Register a candidate as a new model version; move the champion if it wins.

        The version's source is the candidate's MLflow model (``models:/<model_id>``,
        see :mod:`hamnet.tracking.mlflow_models`), logged now with ``model`` when its run
        holds none, so ``models:/<name>@<alias>`` loads with ``mlflow.pyfunc.load_model``
        and carries the model's signature. Its tags hold the candidate id, runtime,
        precision, metrics, the baseline accuracy and the constraints. The same model
        file registered before reuses its version instead of adding an identical one on
        every (cached) rerun.

        Args:
            candidate: The recommended, measured candidate.
            candidate_run_id: Its nested run (from
                :meth:`hamnet.tracking.runs.RunLogger.log_candidate`).
            assessment: Its assessment under ``constraints``.
            objective: The selection objective.
            min_improvement: Relative margin needed to take over the champion.
            constraints: The current constraints.
            baseline_accuracy: Accuracy of this run's baseline (derived from the
                assessment when None).
            model: The input example and runtime settings, to log the candidate's MLflow
                model when its run holds none.

        Returns:
            The new version and what happened to the champion.

        Raises:
            ValueError: If no registered model is configured, the candidate was not
                measured, or its run holds no MLflow model and ``model`` is None.
        """
        name = self.connection.cfg.registered_model
        if not name:
            raise ValueError(
                "tracking.registered_model must be set to register a model, but got none"
            )
        if candidate.metrics is None:
            raise ValueError(f"candidate {candidate.name!r} must be measured before registration")
        metrics = candidate.metrics
        if baseline_accuracy is None:
            baseline_accuracy = metrics.accuracy + assessment.accuracy_drop
        tags = _version_tags(
            candidate, metrics, assessment, baseline_accuracy, constraints, objective
        )
        description = (
            f"{candidate.name} ({candidate.runtime}, {candidate.precision}) from stage "
            f"{candidate.stage}: accuracy {100 * metrics.accuracy:.2f}%, latency p50 "
            f"{metrics.latency_p50_ms:.3f} ms, size {metrics.size_mb:.3f} MB"
        )
        new = self._version_of(name, candidate, candidate_run_id, tags, description, model)
        alias = self.connection.cfg.champion_alias
        old = self._champion(name)
        decision = decide_champion(
            VersionFacts(
                version=new,
                sha256=candidate.artifact.sha256,
                candidate_id=candidate.id,
                metrics=metrics,
                baseline_accuracy=baseline_accuracy,
                meets_constraints=assessment.meets_constraints,
            ),
            stored_facts(old) if old is not None else None,
            model=name,
            alias=alias,
            objective=objective,
            min_improvement=min_improvement,
            constraints=constraints,
        )
        if decision.move:
            self._client.set_registered_model_alias(name, alias, new)
        self._client.set_model_version_tag(
            name, new, TAG_DECISION, clip(decision.message, MAX_TAG_LENGTH)
        )
        return RegistrationResult(
            name=name,
            version=new,
            champion_moved=decision.move,
            message=decision.message,
            previous_champion=str(old.version) if old is not None else None,
        )

    def _version_of(
        self,
        name: str,
        candidate: Candidate,
        candidate_run_id: str,
        tags: dict[str, str],
        description: str,
        model: ModelContext | None,
    ) -> str:
        """The version holding the candidate's MLflow model: an existing one, or a new one."""
        from hamnet.tracking.mlflow_models import TAG_MODEL_URI, log_candidate_model

        self._ensure_registered_model(name)
        uri = self._client.get_run(candidate_run_id).data.tags.get(TAG_MODEL_URI)
        if not uri:
            if model is None:
                raise ValueError(
                    f"candidate run {candidate_run_id} must hold the MLflow model of "
                    f"{candidate.name!r} (tag {TAG_MODEL_URI}) or a model context must be "
                    "given to log it, but it holds none and none was given"
                )
            uri = log_candidate_model(self.connection, candidate_run_id, candidate, model).uri
        existing = self._version_with_sha(name, candidate.artifact.sha256)
        if existing is not None and (existing.tags or {}).get("hamnet.model_uri"):
            return str(existing.version)
        model_id = uri.removeprefix("models:/")
        # The logged model's artifact location, not its models:/ URI: MLflow resolves
        # the latter through the process-wide tracking URI, not this client's.
        version = self._client.create_model_version(
            name,
            source=self._client.get_logged_model(model_id).artifact_location,
            run_id=candidate_run_id,
            tags=clip_tags({**tags, "hamnet.model_uri": uri}),
            description=description,
            model_id=model_id,
        )
        return str(version.version)

    def _ensure_registered_model(self, name: str) -> None:
        from mlflow.exceptions import MlflowException

        try:
            self._client.get_registered_model(name)
        except MlflowException:
            try:
                self._client.create_registered_model(
                    name, description="Models recommended by hamnet-optimize."
                )
            except MlflowException:  # created by another process meanwhile
                self._client.get_registered_model(name)

    def _version_with_sha(self, name: str, sha256: str) -> ModelVersion | None:
        for version in self._client.search_model_versions(f"name='{name}'"):
            if (version.tags or {}).get(TAG_SHA256) == sha256:
                return version
        return None

    def _champion(self, name: str) -> ModelVersion | None:
        from mlflow.exceptions import MlflowException

        try:
            return self._client.get_model_version_by_alias(name, self.connection.cfg.champion_alias)
        except MlflowException:
            return None
