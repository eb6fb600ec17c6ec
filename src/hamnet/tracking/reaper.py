"""Closing the MLflow parent runs of optimization processes that died without closing them.

A flow process killed with SIGKILL (or by the OOM killer, or a reboot) cannot close its
MLflow parent run, which would stay RUNNING forever. Every parent run carries tags that
identify its process (:func:`process_tags`); the next run of the same config ends those
whose process is gone (:func:`close_abandoned`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hamnet.tracking.connection import Connection

logger = logging.getLogger("hamnet.tracking")

TAG_HOST = "hamnet.host"
TAG_PID = "hamnet.pid"
TAG_PID_STARTED = "hamnet.pid_started"


def process_tags() -> dict[str, str]:
    """Tags that identify this process, so a later run can tell it died."""
    import socket

    import psutil

    return {
        TAG_HOST: socket.gethostname(),
        TAG_PID: str(os.getpid()),
        TAG_PID_STARTED: f"{psutil.Process().create_time():.3f}",
    }


def process_alive(tags: Mapping[str, str]) -> bool:
    """Whether the process named by :func:`process_tags` still runs (unknown: assume so)."""
    import psutil

    try:
        pid = int(tags[TAG_PID])
        started = float(tags[TAG_PID_STARTED])
    except (KeyError, ValueError):
        return True
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return False
        return abs(process.create_time() - started) < 0.01
    except psutil.NoSuchProcess:
        return False
    except psutil.Error:
        return True


def close_abandoned(
    connection: Connection, config_fingerprint: str, *, closed_by: str
) -> list[str]:
    """Close as FAILED the parent runs of this config whose process died without closing.

    A parent run whose tags name this host and a process that no longer exists (or is
    another process that reused the pid) is ended FAILED with the tag ``hamnet.error``
    saying why. Runs started on other hosts are left alone.

    Args:
        connection: The MLflow connection (its experiment is searched).
        config_fingerprint: Only runs of this config (tag ``hamnet.config_fingerprint``).
        closed_by: Name of the run that found them (written into the tag).

    Returns:
        The run ids closed.
    """
    import socket

    query = (
        "tags.`hamnet.kind` = 'optimization' and attributes.status = 'RUNNING' and "
        f"tags.`hamnet.config_fingerprint` = '{config_fingerprint}'"
    )
    closed: list[str] = []
    host = socket.gethostname()
    for run in connection.client.search_runs([connection.experiment_id], filter_string=query):
        tags = run.data.tags
        if tags.get(TAG_HOST) != host or process_alive(tags):
            continue
        error = (
            f"abandoned: process {tags.get(TAG_PID)} on {host} ended without closing this "
            f"run (killed?); closed as FAILED by run {closed_by!r}"
        )
        connection.end(run.info.run_id, "FAILED", error=error)
        logger.warning("MLflow run %s: %s", run.info.run_id, error)
        closed.append(run.info.run_id)
    return closed
