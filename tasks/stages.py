"""One Prefect task per pipeline stage.

The task body is a single call into ``hamnet.pipeline.run``; names, retries, caching and
time limits are set here from the run's ``execution`` section. The cache key hashes
the stage's config scope and its input candidates (artifact paths + sha256), never
tensors, plus this file's source (``INPUTS + TASK_SOURCE``), and results persist
under the run's workdir, so a rerun with the same config reuses finished stages.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import Task, task
from prefect.cache_policies import INPUTS, NO_CACHE, TASK_SOURCE

from hamnet.core.candidate import Candidate
from hamnet.core.config import ExecutionSection, OptimizeConfig
from hamnet.pipeline.run import execute_stage, record_attempt

STAGE_CACHE_POLICY = (INPUTS - "config" - "base_dir" - "parent_run_id") + TASK_SOURCE
"""``config`` is excluded: the stage's ``scope`` argument carries the parts that matter;
``parent_run_id`` only says where search trials are logged."""


@task(name="stage", cache_policy=STAGE_CACHE_POLICY, persist_result=True)
def run_stage(
    stage_name: str,
    scope: dict[str, Any],
    inputs: list[Candidate],
    *,
    config: OptimizeConfig,
    base_dir: str,
    parent_run_id: str | None = None,
) -> tuple[list[Candidate], list[str]]:
    """Run one stage of the plan and measure its new candidates.

    Every attempt is recorded on the MLflow parent run (``hamnet.stage.<name>.attempts``,
    ``.first_error``), so retries are visible in MLflow as well as in Prefect.
    """
    from prefect.runtime import task_run

    attempt = int(task_run.run_count or 1)
    try:
        result = execute_stage(
            config, stage_name, inputs, base_dir=base_dir, parent_run_id=parent_run_id
        )
    except Exception as err:
        record_attempt(
            config, stage_name, attempt, parent_run_id=parent_run_id, base_dir=base_dir, error=err
        )
        raise
    record_attempt(config, stage_name, attempt, parent_run_id=parent_run_id, base_dir=base_dir)
    return result


def stage_task(
    stage_name: str, execution: ExecutionSection, workdir: Path, *, refresh: bool = False
) -> Task[..., tuple[list[Candidate], list[str]]]:
    """Return :func:`run_stage` configured for ``stage_name`` and the run's policies."""
    return run_stage.with_options(
        name=stage_name,
        task_run_name=stage_name,
        retries=execution.retries,
        retry_delay_seconds=execution.retry_delay_seconds,
        timeout_seconds=execution.stage_timeout_seconds,
        cache_policy=STAGE_CACHE_POLICY if execution.cache else NO_CACHE,
        result_storage=workdir / "prefect-results",
        refresh_cache=refresh,
    )
