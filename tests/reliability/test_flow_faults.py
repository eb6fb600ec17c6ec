"""Faults of the flow process on a real Prefect API and real MLflow: retries, SIGKILL,
two runs at once.

Flows that must die or run beside another one run in subprocesses pointed at this
session's Prefect API (no second ephemeral server); the stage hooks of
:mod:`.faults` make a stage raise or hang where the test wants it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import write_config

from hamnet.pipeline.hooks import stage_hooks

from . import faults
from .conftest import FaultTable, Stopwatch, flow_config, run_flow

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("prefect_harness")]

_RUNNER = Path(faults.__file__)


def _spawn(project: Path, cfg: dict[str, Any], name: str, *faults: str) -> subprocess.Popen[str]:
    """Start the flow in a subprocess on this session's Prefect API.

    ``faults`` are options of the runner in :mod:`.faults` (``--hang``, ``stage:seconds``).
    """
    from prefect.settings import PREFECT_API_URL

    path = write_config(project, cfg, name)
    full_env = {**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value())}
    return subprocess.Popen(
        [sys.executable, str(_RUNNER), str(path), str(project), *faults],
        cwd=project, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def _mlflow(project: Path) -> Any:
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{project / 'mlflow.db'}"
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _parents(client: Any) -> list[Any]:
    exp = client.get_experiment_by_name("tests")
    runs = client.search_runs([exp.experiment_id], "tags.`hamnet.kind` = 'optimization'")
    return list(runs)


def _children(client: Any, parent_id: str) -> list[Any]:
    exp = client.get_experiment_by_name("tests")
    query = f"tags.`mlflow.parentRunId` = '{parent_id}'"
    return list(client.search_runs([exp.experiment_id], query))


def test_a_retried_stage_shows_its_attempts_and_first_error_in_prefect_and_mlflow(
    project: Path,
    fault_table: FaultTable,
    request: pytest.FixtureRequest,
) -> None:
    from uuid import UUID

    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    cfg = flow_config(project, 21, execution={"retries": 2, "cache": False})
    with stage_hooks(faults.FailFirstAttempts("export", times=1)):
        summary = run_flow(project, cfg)
    assert summary["recommended"] is not None

    parent = _mlflow(project).get_run(summary["mlflow_run_id"])
    tags, metrics = parent.data.tags, parent.data.metrics
    assert tags["hamnet.stage.export.attempts"] == "2"
    assert tags["hamnet.stage.export.first_error"].startswith(
        "StageError: injected fault in stage 'export' (attempt 1"
    )
    assert tags["hamnet.stage.train.attempts"] == "1"
    assert "hamnet.stage.train.first_error" not in tags
    assert metrics["retries.export"] == 1.0 and metrics["retries.train"] == 0.0

    flow_filter = FlowRunFilter(id=FlowRunFilterId(any_=[UUID(tags["prefect.flow_run_id"])]))
    with get_client(sync_client=True) as client:
        task_runs = {t.name: t for t in client.read_task_runs(flow_run_filter=flow_filter)}
        export = task_runs["export"]
        states = client.read_task_run_states(export.id)
    assert export.run_count == 2 and task_runs["train"].run_count == 1
    assert export.state is not None and export.state.is_completed()
    retry_states = [s for s in states if s.name in ("AwaitingRetry", "Retrying")]
    assert retry_states, [s.name for s in states]
    fault_table.add(
        request,
        "stage raises on its first attempt (hook `FailFirstAttempts('export', times=1)`)",
        "retried by Prefect (task run_count 2), flow completed; MLflow parent tags "
        "`hamnet.stage.export.attempts=2`, `.first_error`, metric `retries.export=1`",
        "nothing",
        export.total_run_time.total_seconds(),
    )


def test_sigkill_mid_stage_then_rerun_reuses_finished_stages_and_fails_the_old_run(
    project: Path, fault_table: FaultTable, request: pytest.FixtureRequest
) -> None:
    cfg = flow_config(project, 22)
    workdir = project / ".hamnet"
    proc = _spawn(project, cfg, "kill.yaml", "--hang", "export:600")
    marker = workdir / "hang-export.started"
    try:
        deadline = time.monotonic() + 240
        while not marker.is_file():
            assert proc.poll() is None, proc.communicate()[0]
            assert time.monotonic() < deadline, "the flow never reached the export stage"
            time.sleep(0.2)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL

    client = _mlflow(project)
    (killed,) = [r for r in _parents(client) if r.info.status == "RUNNING"]
    killed_children = _children(client, killed.info.run_id)
    assert [r.data.tags["hamnet.stage"] for r in killed_children] == ["train"]
    kept = {r.data.tags["hamnet.candidate_id"] for r in killed_children}
    index = json.loads(next((workdir / "runs").glob("*.json")).read_text())
    assert index["status"] == "running" and [c["stage"] for c in index["candidates"]] == ["train"]

    with Stopwatch() as sw:
        summary = run_flow(project, cfg, "kill.yaml")
    assert summary["cached_stages"] == ["train"]  # the interrupted export alone is redone
    assert [s["name"] for s in summary["stages"]] == ["train", "export"]
    # the baseline trained before the kill is reused: the rerun's parent points to its
    # run instead of logging it again
    tags = client.get_run(summary["mlflow_run_id"]).data.tags
    reused = {
        k.removeprefix("hamnet.reused_run."): v
        for k, v in tags.items()
        if k.startswith("hamnet.reused_run.")
    }
    assert reused == {r.data.tags["hamnet.candidate_id"]: r.info.run_id for r in killed_children}
    assert set(reused) == kept
    closed = client.get_run(killed.info.run_id)
    assert closed.info.status == "FAILED"
    assert closed.data.tags["hamnet.error"].startswith(
        f"abandoned: process {killed.data.tags['hamnet.pid']} on "
    )
    assert client.get_run(summary["mlflow_run_id"]).info.status == "FINISHED"
    fault_table.add(
        request,
        "flow process SIGKILLed in the middle of a stage (export)",
        "rerun with the same config: train from the Prefect cache, only export redone; "
        "the killed attempt's MLflow parent run closed FAILED (`hamnet.error: abandoned...`)",
        "nothing (baseline artifact and its MLflow run kept)",
        sw.seconds,
    )


def test_two_flows_at_once_with_different_configs_clobber_nothing(
    project: Path, fault_table: FaultTable, request: pytest.FixtureRequest
) -> None:
    from hamnet.core.artifacts import ArtifactRef
    from hamnet.core.config import TrackingSection
    from hamnet.tracking.tracker import Tracker

    Tracker(TrackingSection(mlflow_uri=f"sqlite:///{project / 'mlflow.db'}", experiment="tests"))
    procs = [_spawn(project, flow_config(project, seed), f"c{seed}.yaml") for seed in (31, 32)]
    outputs = [p.communicate(timeout=400)[0] for p in procs]
    for proc, out in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, out
    summaries = [
        json.loads(line.split("SUMMARY ", 1)[1])
        for out in outputs
        for line in out.splitlines()
        if line.startswith("SUMMARY ")
    ]
    assert len(summaries) == 2

    client = _mlflow(project)
    workdir = project / ".hamnet"
    indexes = [json.loads(p.read_text()) for p in (workdir / "runs").glob("*.json")]
    assert sorted(i["mlflow_run_id"] for i in indexes) == sorted(
        s["mlflow_run_id"] for s in summaries
    )
    shas = set()
    spans = []
    for index in indexes:
        assert index["status"] == "finished"
        run = client.get_run(index["mlflow_run_id"])
        assert run.info.status == "FINISHED"
        spans.append((run.info.start_time / 1000, run.info.end_time / 1000))
        children = {r.data.tags["hamnet.candidate_id"] for r in _children(client, run.info.run_id)}
        assert children == {c["id"] for c in index["candidates"]}  # its own, all of them
        for entry in index["candidates"]:
            ArtifactRef.model_validate(entry["artifact"]).verify()  # content intact
            shas.add(entry["artifact"]["sha256"])
    # different seeds: two baselines, each with a plain and an ORT fused-attention ONNX;
    # six different model files, none overwritten
    assert len(shas) == 6
    leftovers = [p for p in workdir.rglob("*") if p.name.startswith((".put-", ".tmp-"))]
    assert leftovers == []
    assert len(list((workdir / "prefect-results").iterdir())) >= 4
    (a_start, a_end), (b_start, b_end) = spans
    overlap = max(0.0, min(a_end, b_end) - max(a_start, b_start))
    fault_table.add(
        request,
        "two flow runs at once, different configs, same workdir and MLflow DB",
        f"both finished (their MLflow runs overlapped {overlap:.1f} s); each MLflow parent "
        "run holds exactly its own candidates; every artifact verifies against its sha256; "
        "no temp files left",
        "nothing clobbered",
        None,
    )
