"""The documented Prefect path as a new user walks it, with no hamnet variable anywhere.

From a copy of the project: ``prefect server start`` on a free loopback port, ``prefect
work-pool create``, ``prefect deploy --all`` (from the project folder), ``prefect worker
start --pool hamnet-pool`` started in ANOTHER folder without ``HAMNET_PROJECT_DIR``, then
``prefect deployment run hamnet-optimize/<name> --watch``. Checks, in order: the nightly
schedule in ``prefect deployment inspect``; the local deployment completes; a run killed
with its worker stays RUNNING until the next run marks it CRASHED, and that next run is
the ``remote`` deployment, which clones a ``file://`` git repository of the project; a
project folder that moved away fails at the pull step with a message naming it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import REPO, tiny_config

from hamnet.ops.stack import WORK_POOL, free_port, stop_process_group, wait_http

pytestmark = pytest.mark.integration

PREFECT = str(Path(sys.executable).parent / "prefect")
SMALL = {  # train one epoch, export ONNX, measure briefly; MLflow is tested elsewhere
    "stages": {"train": {"epochs": 1}, "export": {"formats": ["onnx"]}, "quantize": None},
    "measure": {"warmup": 1, "repeats": 5, "max_eval_samples": 64},
    "tracking": {"enabled": False},
}


@dataclass
class Served:
    """A Prefect server, its deployments and a process worker, all on loopback."""

    root: Path
    project: Path
    repository: Path
    api_url: str
    env: dict[str, str]
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def prefect(self, *args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
        """Run the prefect CLI from the project folder (as a user would)."""
        return subprocess.run(
            [PREFECT, *args], cwd=self.project, env=self.env, capture_output=True, text=True,
            timeout=timeout,
        )  # fmt: skip

    def start_worker(self) -> subprocess.Popen[bytes]:
        """``prefect worker start`` from a folder that is NOT the project, no hamnet variable."""
        folder = self.root / "worker-home"
        folder.mkdir(exist_ok=True)
        log = (self.root / "worker.log").open("ab")
        env = {k: v for k, v in self.env.items() if k != "HAMNET_PROJECT_DIR"}
        proc = subprocess.Popen(
            [PREFECT, "worker", "start", "--pool", WORK_POOL, "--type", "process"],
            cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        self.procs["worker"] = proc
        return proc

    def run(self, name: str, *extra: str, watch: bool = True) -> tuple[str, str]:
        """``prefect deployment run`` one deployment; return (flow run id, CLI output)."""
        args = ["deployment", "run", f"hamnet-optimize/{name}", *extra]
        if watch:
            args += ["--watch", "--watch-timeout", "200"]
        proc = self.prefect(*args)
        out = proc.stdout + proc.stderr
        found = re.search(r"UUID:\s*([0-9a-f-]{36})", out)
        assert found, out[-3000:]
        return found.group(1), out

    def worker_output(self) -> str:
        """What the workers printed (their flow runs' output included)."""
        return (self.root / "worker.log").read_text(errors="replace")

    def client(self) -> Any:
        from prefect.client.orchestration import get_client

        return get_client(sync_client=True)

    def flow_run(self, flow_run_id: str) -> Any:
        from prefect.settings import PREFECT_API_URL, temporary_settings

        with temporary_settings({PREFECT_API_URL: self.api_url}), self.client() as client:
            return client.read_flow_run(flow_run_id)


def _git_repository(project: Path, where: Path) -> Path:
    """A git repository (one commit) with the project's files: what a team would push."""
    shutil.copytree(project, where)
    git = ["git", "-c", "user.name=hamnet-tests", "-c", "user.email=tests@hamnet.invalid"]
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "project"]):
        subprocess.run([*git, *args], cwd=where, check=True, capture_output=True)
    return where


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    if shutil.which("git") is None:
        pytest.skip("git is not on PATH (the remote deployment clones a repository)")
    root = tmp_path_factory.mktemp("prefect-user-path")
    project = root / "project"
    for name in ("configs", "hardware_profiles", "flows", "tasks"):
        shutil.copytree(REPO / name, project / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "prefect.yaml", project / "prefect.yaml")
    (project / "configs" / "default.yaml").write_text(yaml.safe_dump(tiny_config(seed=31, **SMALL)))
    repository = _git_repository(project, root / "hamnet-repo")

    port = free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    env = dict(os.environ)
    env.pop("HAMNET_PROJECT_DIR", None)
    env.update(
        PREFECT_API_URL=api_url,
        PREFECT_HOME=str(root / "prefect-home"),
        PREFECT_WORKER_QUERY_SECONDS="2",
        PREFECT_LOGGING_LEVEL="INFO",
        # the code under test, whichever hamnet is installed in the environment
        PYTHONPATH=os.pathsep.join(
            [str(REPO / "src"), *filter(None, [os.environ.get("PYTHONPATH")])]
        ),
    )
    served = Served(root, project, repository, api_url, env)
    log = (root / "server.log").open("ab")
    served.procs["server"] = subprocess.Popen(
        [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        wait_http(f"{api_url}/health", 120, what="prefect server", log=root / "server.log")
        for args in (
            ["work-pool", "create", WORK_POOL, "--type", "process"],
            ["variable", "set", "hamnet_repository", repository.as_uri()],
            ["--no-prompt", "deploy", "--all"],
        ):
            done = served.prefect(*args)
            assert done.returncode == 0, (args, done.stdout[-2000:], done.stderr[-2000:])
        served.start_worker()
        yield served
    finally:
        for proc in reversed(list(served.procs.values())):
            stop_process_group(proc.pid)


def test_inspect_shows_the_nightly_schedule(served: Served) -> None:
    shown = served.prefect("deployment", "inspect", "hamnet-optimize/default")
    assert shown.returncode == 0, shown.stderr[-2000:]
    assert "0 2 * * *" in shown.stdout and "UTC" in shown.stdout
    # the pull step carries the folder `prefect deploy` ran in, not a variable
    assert str(served.project) in shown.stdout
    assert "HAMNET_PROJECT_DIR" not in shown.stdout


def test_deployment_runs_from_a_worker_without_the_project_variable(served: Served) -> None:
    flow_run_id, out = served.run("default")
    state = served.flow_run(flow_run_id).state
    assert state.is_completed(), (state, out[-3000:], served.worker_output()[-3000:])
    labels = served.flow_run(flow_run_id).labels
    assert {"hamnet.host", "hamnet.pid", "hamnet.pid_started"} <= set(labels)


def test_killed_run_is_crashed_by_the_next_run_which_clones_the_project(served: Served) -> None:
    slow = json.dumps({"overrides": {"stages": {"train": {"epochs": 2000, "patience": 2000}}}})
    killed_id, out = served.run("default", "--params", slow, watch=False)
    deadline = time.monotonic() + 150
    pid = None
    while pid is None and time.monotonic() < deadline:
        run = served.flow_run(killed_id)
        pid = (run.labels or {}).get("hamnet.pid")
        time.sleep(1)
    assert pid is not None, ("the flow run never labelled its process", out[-2000:])
    assert served.flow_run(killed_id).state.is_running()

    # The worker and its flow run die together (SIGKILL, as an OOM kill or reboot would).
    worker = served.procs.pop("worker")
    os.killpg(worker.pid, signal.SIGKILL)
    worker.wait(timeout=30)
    with contextlib.suppress(ProcessLookupError):  # gone with its worker's group
        os.kill(int(pid), signal.SIGKILL)
    time.sleep(3)
    assert served.flow_run(killed_id).state.is_running()  # no one told Prefect

    served.start_worker()
    next_id, out = served.run("remote")
    state = served.flow_run(next_id).state
    assert state.is_completed(), (state, out[-3000:], served.worker_output()[-3000:])
    ran_from = re.findall(r"runs from the project folder (\S+)", served.worker_output())
    assert ran_from[0] == str(served.project)  # the local deployment
    assert Path(ran_from[-1]).name == served.repository.name  # a fresh clone ...
    assert Path(ran_from[-1]) != served.repository  # ... in the worker's temp folder

    killed = served.flow_run(killed_id).state
    assert killed.is_crashed(), killed
    assert f"process {pid}" in (killed.message or "") and next_id in (killed.message or "")


def test_a_moved_project_folder_fails_at_the_pull_step(served: Served) -> None:
    moved = served.root / "project-moved"
    served.project.rename(moved)
    try:
        served.project = moved  # the CLI runs from somewhere that exists
        flow_run_id, out = served.run("default")
        state = served.flow_run(flow_run_id).state
        assert state.is_crashed(), (state, out[-2000:])
        logs = served.worker_output()
        expected = str(served.root / "project")
        assert "must be a folder holding flows/hamnet_optimize.py" in logs, logs[-3000:]
        assert f"but got '{expected}', where there is nothing" in logs, logs[-3000:]
    finally:
        moved.rename(served.root / "project")
        served.project = served.root / "project"
