"""The served stack's pure pieces: environments, command lines, saved state."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from hamnet.core.errors import HamnetError
from hamnet.ops.stack import STATE_FILE, Stack, mlflow_server_command, server_env


def _stack(tmp_path: Path) -> Stack:
    return Stack(project_dir=str(tmp_path), prefect_api_url="http://127.0.0.1:4200/api")


def test_server_env_adds_prefect_home_and_turns_tracking_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HAMNET_PROJECT_DIR", raising=False)
    stack = _stack(tmp_path)
    stack.mlflow_uri = "http://127.0.0.1:5000"
    env = server_env(stack, tmp_path / ".stack")
    assert env["PREFECT_API_URL"] == "http://127.0.0.1:4200/api"
    assert "HAMNET_PROJECT_DIR" not in env  # prefect deploy records the folder
    assert env["MLFLOW_TRACKING_URI"] == "http://127.0.0.1:5000"
    assert env["PREFECT_HOME"] == str(tmp_path / ".stack" / "prefect-home")
    assert env["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false"
    assert env["DO_NOT_TRACK"] == "1"


def test_mlflow_server_command_binds_the_host_with_a_sqlite_store(tmp_path: Path) -> None:
    args = mlflow_server_command(tmp_path, "127.0.0.1", 5123)
    assert Path(args[0]).name == "mlflow" and args[1] == "server"
    options = dict(zip(args[2::2], args[3::2], strict=True))
    assert options == {
        "--backend-store-uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "--default-artifact-root": str(tmp_path / "mlartifacts"),
        "--host": "127.0.0.1",
        "--port": "5123",
        "--workers": "1",
    }


def test_tracked_processes_survive_a_save_and_load(tmp_path: Path) -> None:
    stack = _stack(tmp_path)
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    stack.track("worker", proc, tmp_path / "worker.log")
    state = tmp_path / ".stack"
    assert stack.save(state) == state / STATE_FILE
    loaded = Stack.load(state)
    assert loaded == stack
    assert loaded.pids == {"worker": proc.pid}
    assert loaded.logs == {"worker": str(tmp_path / "worker.log")}
    with pytest.raises(HamnetError, match="no stack state"):
        Stack.load(tmp_path / "elsewhere")


def test_a_team_database_reaches_the_search_stages(tmp_path: Path) -> None:
    from hamnet.pipeline.stages._search import SEARCH_STORAGE_ENV

    stack = _stack(tmp_path)
    assert SEARCH_STORAGE_ENV not in stack.env or stack.env[SEARCH_STORAGE_ENV] == (
        os.environ.get(SEARCH_STORAGE_ENV)
    )
    url = "postgresql+psycopg://hamnet:pw@127.0.0.1:5433/hamnet_optuna"
    stack.database_urls = {"optuna": url}
    assert stack.env[SEARCH_STORAGE_ENV] == url
