"""The ``hamnet-optimize`` flow: walk the configured plan of stages as Prefect tasks.

Run it on the embedded default (ephemeral Prefect API, local MLflow)::

    hamnet run configs/default.yaml

or through a deployment on a Prefect server (see README)::

    prefect deployment run hamnet-optimize/default --watch
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from prefect import State, flow
from prefect.runtime import deployment, flow_run

from hamnet.core.candidate import Candidate
from hamnet.core.config import load_config
from hamnet.pipeline.plan import Stage
from hamnet.pipeline.run import PipelineRun
from tasks.stages import stage_task

FLOW_NAME = "hamnet-optimize"
logger = logging.getLogger("hamnet.flows")


@flow(name=FLOW_NAME, description="Train, export, quantize, measure and select.")
def hamnet_optimize(
    config_path: str = "configs/default.yaml",
    overrides: dict[str, Any] | None = None,
    base_dir: str = ".",
) -> dict[str, Any]:
    """Optimize a model as ``config_path`` describes and register the recommended one.

    Args:
        config_path: The run's YAML config, relative to ``base_dir``.
        overrides: Nested settings merged over the file (e.g. ``{"seed": 1}``).
        base_dir: Project folder that relative paths resolve against.

    Returns:
        A summary: recommended candidate, cached stages, MLflow run, registry outcome.
    """
    _mark_process_and_reap(str(flow_run.id))
    base = Path(base_dir).resolve()
    config = load_config(base / config_path, overrides)
    tags = {
        "prefect.flow_run_id": str(flow_run.id),
        "prefect.flow_run_name": str(flow_run.name),
        "prefect.deployment": str(deployment.name or "none"),
    }
    with PipelineRun(config, base_dir=base, tags=tags) as run:
        for stage in run.plan:
            started = time.perf_counter()
            new, notes, cached = _run_stage(run, stage, base)
            if cached and not all(c.artifact.is_present() for c in new):
                # The cache outlived the artifact files (workdir cleaned): recompute.
                new, notes, cached = _run_stage(run, stage, base, refresh=True)
            run.add(stage, new, notes=notes, cached=cached, seconds=time.perf_counter() - started)
        result = run.finish()
    return result.summary()


def _mark_process_and_reap(flow_run_id: str) -> None:
    """Label this flow run with its process; mark CRASHED runs whose process died.

    A flow run killed together with its worker stays RUNNING in Prefect; the next run on
    the same host ends it (``hamnet.tracking.reaper``). Neither step may stop the run.
    """
    from hamnet.tracking.reaper import crash_abandoned_flow_runs, label_flow_run

    try:
        label_flow_run(flow_run_id)
        crash_abandoned_flow_runs(FLOW_NAME, current_flow_run_id=flow_run_id)
    except Exception as err:  # the API is reachable (we run in it); keep optimizing
        logger.warning("could not label or reap Prefect flow runs: %s", err)


def _run_stage(
    run: PipelineRun, stage: Stage, base: Path, *, refresh: bool = False
) -> tuple[list[Candidate], list[str], bool]:
    """Submit one stage as its Prefect task; return new candidates, notes, cache hit."""
    task = stage_task(stage.name, run.config.execution, run.workdir, refresh=refresh)
    state: State[tuple[list[Candidate], list[str]]] = task(  # type: ignore[call-overload,assignment]
        stage.name,
        run.scope(stage),
        run.candidates,
        config=run.config,
        base_dir=str(base),
        parent_run_id=run.parent_run_id,
        return_state=True,
    )
    new, notes = state.result()
    return new, notes, state.name == "Cached"
