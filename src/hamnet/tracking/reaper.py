"""Closing the MLflow parent runs of optimization processes that died without closing them.

A flow process killed with SIGKILL (or by the OOM killer, or a reboot) cannot close its
MLflow parent run, which would stay RUNNING forever. Every parent run carries tags that
identify its process (:func:`process_tags`); the next run of the same config ends those
whose process is gone (:func:`close_abandoned`).

The same holds for the Prefect flow run around it: a worker killed together with its
flow run leaves the run RUNNING in Prefect, and no one reports it. Each
``hamnet-optimize`` flow run labels itself with the same process tags
(:func:`label_flow_run`); the next flow run on the host marks CRASHED those RUNNING
runs whose process is gone (:func:`crash_abandoned_flow_runs`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from uuid import UUID

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


def label_flow_run(flow_run_id: str | UUID) -> dict[str, str]:
    """Label a Prefect flow run with :func:`process_tags` of this process.

    Call it from inside the flow run (the process that runs the flow), with a Prefect
    API configured.

    Args:
        flow_run_id: The flow run to label.

    Returns:
        The labels written.
    """
    from uuid import UUID

    from prefect.client.orchestration import get_client

    labels = process_tags()
    with get_client(sync_client=True) as client:
        client.update_flow_run_labels(UUID(str(flow_run_id)), labels)  # type: ignore[arg-type]
    return labels


def crash_abandoned_flow_runs(
    flow_name: str, *, current_flow_run_id: str | UUID | None = None
) -> list[str]:
    """Mark CRASHED the RUNNING runs of ``flow_name`` whose process died on this host.

    A run counts as abandoned when its labels (:func:`label_flow_run`) name this host and
    a process that no longer exists, or a later process that reused the pid. Runs
    without the labels, runs of other hosts and the current run are left alone. The
    state is forced (a run whose process is gone cannot take part in the transition)
    and its message says which process ended and who found it.

    Args:
        flow_name: The flow whose runs are checked (``hamnet-optimize``).
        current_flow_run_id: The run doing the check (skipped, named in the message).

    Returns:
        The ids of the runs marked CRASHED.
    """
    import socket

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowFilter,
        FlowFilterName,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.states import Crashed

    host = socket.gethostname()
    current = str(current_flow_run_id) if current_flow_run_id is not None else None
    crashed: list[str] = []
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=[flow_name])),
            flow_run_filter=FlowRunFilter(
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.RUNNING]))
            ),
        )
        for run in runs:
            labels = {key: str(value) for key, value in (run.labels or {}).items()}
            if str(run.id) == current or TAG_PID not in labels:
                continue
            if labels.get(TAG_HOST) != host or process_alive(labels):
                continue
            message = (
                f"abandoned: process {labels[TAG_PID]} on {host} ended without reporting "
                f"this flow run (killed with its worker?); marked CRASHED by flow run "
                f"{current or 'unknown'}"
            )
            client.set_flow_run_state(run.id, Crashed(message=message), force=True)
            logger.warning("Prefect flow run %s (%s): %s", run.name, run.id, message)
            crashed.append(str(run.id))
    return crashed
