"""Run Optuna trials on Ray workers: the names of the search executor in one place.

The executor is split along its seams: :mod:`~hamnet.compress.search.cluster` (Ray
settings and connection), :mod:`~hamnet.compress.search.storage` (the study's RDB
storage, heartbeat and retries), :mod:`~hamnet.compress.search.driver` (the ask/tell
loop) and :mod:`~hamnet.compress.search.worker` (what runs in a Ray task). This module
re-exports their public names, so ``from hamnet.compress.search.executor import ...``
keeps working; :mod:`~hamnet.compress.search.driver` shows a whole search.
"""

from __future__ import annotations

from hamnet.compress.search.cluster import (
    PROBE_TIMEOUT_SECONDS,
    RayHandle,
    RaySettings,
    connect_ray,
)
from hamnet.compress.search.driver import (
    INTERRUPTED_ATTR,
    RETRY_OF_ATTR,
    SearchBudget,
    SearchReport,
    is_interrupted,
    requeue_interrupted,
    retry_of,
    run_search,
    tell,
)
from hamnet.compress.search.storage import (
    HEARTBEAT_INTERVAL_SECONDS,
    MAX_RETRY,
    SQLITE_TIMEOUT_SECONDS,
    StudyAddress,
    open_study,
    study_storage,
)
from hamnet.compress.search.worker import (
    ERROR_ATTR,
    ERROR_ATTR_LIMIT,
    ERROR_TYPE_ATTR,
    PRUNE_REASON_ATTR,
    ObjectiveFn,
    PrunedTrial,
    SuggestFn,
    TrialContext,
    TrialOutcome,
    TrialResult,
)

__all__ = [
    "ERROR_ATTR",
    "ERROR_ATTR_LIMIT",
    "ERROR_TYPE_ATTR",
    "HEARTBEAT_INTERVAL_SECONDS",
    "INTERRUPTED_ATTR",
    "MAX_RETRY",
    "PROBE_TIMEOUT_SECONDS",
    "PRUNE_REASON_ATTR",
    "RETRY_OF_ATTR",
    "SQLITE_TIMEOUT_SECONDS",
    "ObjectiveFn",
    "PrunedTrial",
    "RayHandle",
    "RaySettings",
    "SearchBudget",
    "SearchReport",
    "StudyAddress",
    "SuggestFn",
    "TrialContext",
    "TrialOutcome",
    "TrialResult",
    "connect_ray",
    "is_interrupted",
    "open_study",
    "requeue_interrupted",
    "retry_of",
    "run_search",
    "study_storage",
    "tell",
]
