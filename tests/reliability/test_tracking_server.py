"""The MLflow tracking server unreachable: at start (fail fast) and in the middle of a run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import write_config

from hamnet.ops.stack import free_port, stop_process_group, wait_http
from hamnet.pipeline.hooks import stage_hooks

from .conftest import FaultTable, Stopwatch, files_under, flow_config, run_flow
from .faults import HangInStage


def test_unreachable_server_at_start_is_a_clear_error_before_any_training(
    project: Path, fault_table: FaultTable, request: pytest.FixtureRequest
) -> None:
    from typer.testing import CliRunner

    from hamnet.ops.cli import app

    url = f"http://127.0.0.1:{free_port()}"  # nobody listens there
    path = write_config(project, flow_config(project, 41, tracking={"mlflow_uri": url}))
    with Stopwatch() as sw:
        result = CliRunner().invoke(
            app, ["run", str(path), "--no-prefect", "--base-dir", str(project)]
        )
    assert result.exit_code == 2, result.output
    assert "the MLflow tracking server must be reachable before any stage runs" in result.output
    assert url in result.output
    assert files_under(project / ".hamnet") == []  # nothing trained, nothing written
    fault_table.add(
        request,
        "MLflow tracking server unreachable at start",
        f"`hamnet run` exits 2 after {sw.seconds:.1f} s: 'the MLflow tracking server must be "
        "reachable before any stage runs, but <url> did not answer (Connection refused...)'",
        "nothing (no stage started)",
    )


@pytest.mark.integration
@pytest.mark.usefixtures("prefect_harness")
def test_server_lost_mid_run_fails_clearly_and_the_rerun_uses_what_was_made(
    project: Path,
    monkeypatch: pytest.MonkeyPatch,
    fault_table: FaultTable,
    request: pytest.FixtureRequest,
) -> None:
    from hamnet.core.artifacts import ArtifactRef
    from hamnet.core.errors import StageError

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = project / "mlflow-server.log"
    server = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "mlflow"), "server",
            "--backend-store-uri", f"sqlite:///{project / 'server.db'}",
            "--default-artifact-root", str(project / "server-artifacts"),
            "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
        ],
        cwd=project, stdout=log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True,
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
    )  # fmt: skip
    workdir = project / ".hamnet"
    marker = workdir / "hang-export.started"

    def stop_server_once_export_runs() -> None:
        deadline = time.monotonic() + 300
        while not marker.is_file() and time.monotonic() < deadline:
            time.sleep(0.1)
        stop_process_group(server.pid)

    try:
        wait_http(f"{url}/health", 240, what="mlflow server", log=log)
        monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # fail now, not in 4 min
        stopper = threading.Thread(target=stop_server_once_export_runs, daemon=True)
        stopper.start()
        cfg = flow_config(project, 42, tracking={"mlflow_uri": url})
        with pytest.raises(StageError) as info, stage_hooks(HangInStage("export", 5)):
            run_flow(project, cfg)
        stopper.join(timeout=60)
    finally:
        stop_process_group(server.pid)
    message = str(info.value)
    assert f"MLflow tracking at {url} must accept the candidates" in message
    assert "rerun the same config to resume from the cache" in message

    (index_path,) = (workdir / "runs").glob("*.json")
    index = json.loads(index_path.read_text())
    assert index["status"] == "failed" and "StageError" in index["error"]
    # the baseline and its two ONNX exports (plain and ORT fused attention)
    assert [c["stage"] for c in index["candidates"]] == ["train", "export", "export"]
    for entry in index["candidates"]:
        ArtifactRef.model_validate(entry["artifact"]).verify()  # still on disk, intact

    local = {"mlflow_uri": f"sqlite:///{project / 'mlflow.db'}"}
    with Stopwatch() as sw:
        summary = run_flow(project, flow_config(project, 42, tracking=local))
    assert summary["cached_stages"] == ["train", "export"]
    run_name = Path(summary["report_files"]["csv"]).parent.name
    rerun = json.loads((workdir / "runs" / f"{run_name}.json").read_text())
    assert [c["id"] for c in rerun["candidates"]] == [c["id"] for c in index["candidates"]]
    fault_table.add(
        request,
        "MLflow tracking server stopped in the middle of a run (during export)",
        "run fails with StageError 'MLflow tracking at <url> must accept the candidates, but "
        "logging ... failed'; run index `runs/<run>.json` marked failed, artifacts on disk; "
        "rerun (tracking back) takes train and export from the cache",
        "nothing (both stages' artifacts kept and reused)",
        sw.seconds,
    )
