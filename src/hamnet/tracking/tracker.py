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

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

from hamnet.core.config import TrackingSection
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

P = ParamSpec("P")
R = TypeVar("R")

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


def _delegate(
    part: str, method: Callable[Concatenate[Any, P], R]
) -> Callable[Concatenate[Any, P], R]:
    """A method that calls ``method`` on the attribute ``part`` of its instance.

    The facade's methods are made with it so that each signature and docstring has one
    home, in the class that does the work.
    """

    @functools.wraps(method)
    def call(self: Any, /, *args: P.args, **kwargs: P.kwargs) -> R:
        return method(getattr(self, part), *args, **kwargs)

    return call


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

    start_parent = _delegate("runs", RunLogger.start_parent)
    log_candidate = _delegate("runs", RunLogger.log_candidate)
    log_selection = _delegate("runs", RunLogger.log_selection)
    record_attempt = _delegate("runs", RunLogger.record_attempt)
    log_trial = _delegate("runs", RunLogger.log_trial)
    register = _delegate("registry", ModelRegistry.register)

    def close_abandoned(self, config_fingerprint: str, *, closed_by: str) -> list[str]:
        """Close parent runs of dead processes (see :func:`.reaper.close_abandoned`)."""
        return close_abandoned(self, config_fingerprint, closed_by=closed_by)
