"""Quiet, local defaults for the libraries hamnet drives (set only when unset)."""

from __future__ import annotations

import os

DEFAULTS = {
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
    "RAY_USAGE_STATS_ENABLED": "0",
    "MLFLOW_ENABLE_TELEMETRY": "false",
    "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    "TF_CPP_MIN_LOG_LEVEL": "2",
}


def apply_defaults() -> None:
    """Disable telemetry and lengthen the ephemeral Prefect start-up timeout.

    Call before importing prefect, mlflow or ray. Values already in the environment win.
    """
    for key, value in DEFAULTS.items():
        os.environ.setdefault(key, value)
