"""MLflow tracking and model registry for optimization runs, behind one facade.

One *parent* run per optimization (config, plan, Pareto table and plot, recommended
metrics) and one *nested* run per candidate (params, metrics, lineage tags, model
files), logged as soon as its stage finishes so a later crash loses nothing. The
recommended candidate is registered as a new model version; the champion alias moves
to it only when it beats the current champion under the current constraints.

The work is done by the modules beside this one: :mod:`~hamnet.tracking.connection`
(client, experiment, batching), :mod:`~hamnet.tracking.runs` (run logging),
:mod:`~hamnet.tracking.champion` (registry and champion policy) and
:mod:`~hamnet.tracking.reaper` (closing runs of killed processes). :class:`Tracker`
bundles them for callers that want one object.

Example:
    >>> tracker = Tracker(cfg.tracking)  # doctest: +SKIP
    >>> run_id = tracker.start_parent("nightly", config=cfg, tags={})  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from hamnet.core.candidate import Candidate
from hamnet.core.config import ConstraintsSection, OptimizeConfig, TrackingSection
from hamnet.tracking.champion import (
    TAG_BASELINE_ACCURACY,
    TAG_METRICS,
    TAG_SHA256,
    ChampionDecision,
    ModelRegistry,
    RegistrationResult,
    VersionFacts,
    decide_champion,
)
from hamnet.tracking.connection import (
    MAX_PARAM_LENGTH,
    MAX_TAG_LENGTH,
    REACHABLE_TIMEOUT_SECONDS,
    Connection,
    RunStatus,
    check_reachable,
    flatten,
    resolve_tracking_uri,
)
from hamnet.tracking.reaper import TAG_HOST, TAG_PID, TAG_PID_STARTED, close_abandoned
from hamnet.tracking.runs import TAG_CANDIDATE_ID, RunLogger, log_benchmark_files

if TYPE_CHECKING:
    from collections.abc import Mapping

    import pandas as pd

    from hamnet.evaluate.pareto import Assessment, Selection

__all__ = [
    "MAX_PARAM_LENGTH",
    "MAX_TAG_LENGTH",
    "REACHABLE_TIMEOUT_SECONDS",
    "TAG_BASELINE_ACCURACY",
    "TAG_CANDIDATE_ID",
    "TAG_HOST",
    "TAG_METRICS",
    "TAG_PID",
    "TAG_PID_STARTED",
    "TAG_SHA256",
    "ChampionDecision",
    "RegistrationResult",
    "RunStatus",
    "Tracker",
    "VersionFacts",
    "check_reachable",
    "decide_champion",
    "flatten",
    "log_benchmark_files",
    "resolve_tracking_uri",
]


class Tracker(Connection):
    """Logs optimization runs, candidates and registrations to MLflow.

    A :class:`~hamnet.tracking.connection.Connection` with a
    :class:`~hamnet.tracking.runs.RunLogger` (:attr:`runs`) and a
    :class:`~hamnet.tracking.champion.ModelRegistry` (:attr:`registry`) on it; its
    methods delegate to them.

    Args:
        cfg: The tracking section (URI, experiment, registered model, alias).
        base_dir: Folder a relative SQLite path resolves against.
    """

    def __init__(self, cfg: TrackingSection, *, base_dir: str | Path | None = None) -> None:
        super().__init__(cfg, base_dir=base_dir)
        self.runs = RunLogger(self)
        self.registry = ModelRegistry(self)

    def start_parent(
        self,
        run_name: str,
        *,
        config: OptimizeConfig | None = None,
        params: Mapping[str, Any] | None = None,
        tags: Mapping[str, Any] | None = None,
    ) -> str:
        """Open the parent run of one optimization (see :meth:`RunLogger.start_parent`)."""
        return self.runs.start_parent(run_name, config=config, params=params, tags=tags)

    def log_candidate(
        self,
        parent_run_id: str,
        candidate: Candidate,
        assessment: Assessment | None,
        *,
        model_file: bool,
        parent_name: str | None = None,
    ) -> str:
        """Log one candidate as a nested run (see :meth:`RunLogger.log_candidate`)."""
        return self.runs.log_candidate(
            parent_run_id, candidate, assessment, model_file=model_file, parent_name=parent_name
        )

    def log_selection(
        self,
        parent_run_id: str,
        df: pd.DataFrame,
        selection: Selection,
        figure_dir: str | Path | None = None,
    ) -> None:
        """Log the Pareto table, front and plot (see :meth:`RunLogger.log_selection`)."""
        self.runs.log_selection(parent_run_id, df, selection, figure_dir)

    def record_attempt(
        self, parent_run_id: str, stage: str, attempt: int, error: str | None = None
    ) -> None:
        """Record one attempt of a stage (see :meth:`RunLogger.record_attempt`)."""
        self.runs.record_attempt(parent_run_id, stage, attempt, error)

    def log_trial(self, parent_run_id: str, stage: str, study_name: str, trial: Any) -> str:
        """Log one finished Optuna trial (see :meth:`RunLogger.log_trial`)."""
        return self.runs.log_trial(parent_run_id, stage, study_name, trial)

    def close_abandoned(self, config_fingerprint: str, *, closed_by: str) -> list[str]:
        """Close parent runs of dead processes (see :func:`.reaper.close_abandoned`)."""
        return close_abandoned(self, config_fingerprint, closed_by=closed_by)

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
    ) -> RegistrationResult:
        """Register a candidate, maybe move the champion (see :meth:`ModelRegistry.register`)."""
        return self.registry.register(
            candidate,
            candidate_run_id,
            assessment,
            objective=objective,
            min_improvement=min_improvement,
            constraints=constraints,
            baseline_accuracy=baseline_accuracy,
        )

    def _log(
        self,
        run_id: str,
        *,
        params: Mapping[str, str] | None = None,
        metrics: Mapping[str, float] | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> None:
        self.log(run_id, params=params, metrics=metrics, tags=tags)
