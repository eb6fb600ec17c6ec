"""Start and stop the served stack a team runs: Prefect server + worker, MLflow server.

``hamnet stack up`` does, from the project folder:

1. ``prefect server start --host 127.0.0.1 --port <free>`` and waits for ``/api/health``;
2. ``prefect work-pool create hamnet-pool --type process`` (kept if it exists);
3. ``prefect deploy --all`` from ``prefect.yaml`` (deployment ``hamnet-optimize/default``
   with its nightly schedule);
4. ``prefect worker start --pool hamnet-pool`` in the project folder;
5. optionally ``mlflow server`` on 127.0.0.1 with a SQLite store, whose URL the worker
   gets as ``MLFLOW_TRACKING_URI``.

With ``database="postgresql"`` a PostgreSQL server is started first (its folder is
``.stack/postgres``; or a running server's URL is used) with one database each for
MLflow's backend store, the Optuna studies and the Prefect server, and MLflow and
Prefect run on those instead of SQLite (see :mod:`hamnet.ops.postgres`).

Everything binds to 127.0.0.1 unless a host is given. Process ids, URLs and logs go
under ``.stack/`` so ``hamnet stack down`` can stop them.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hamnet.core.errors import ConfigError, HamnetError
from hamnet.ops.postgres import PostgresServer, create_databases, database_url

WORK_POOL = "hamnet-pool"
STATE_FILE = "state.json"
DATABASES = {"mlflow": "hamnet_mlflow", "optuna": "hamnet_optuna", "prefect": "hamnet_prefect"}
"""The databases of a PostgreSQL-backed stack: one per service."""
DATABASE_KINDS = ("sqlite", "postgresql")
"""What ``hamnet stack up --database`` accepts."""
POSTGRES_FOLDER = "postgres"
"""The folder, in the stack's state folder, of the PostgreSQL server the stack starts."""


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that is free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wait_http(url: str, timeout: float, *, what: str, log: Path | None = None) -> None:
    """Poll ``url`` until it answers 200 or ``timeout`` seconds pass.

    Raises:
        HamnetError: On time-out, with the tail of the process log when given.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    tail = ""
    if log is not None and log.is_file():
        tail = "\n" + "\n".join(log.read_text(errors="replace").splitlines()[-20:])
    raise HamnetError(f"{what} did not answer at {url} within {timeout:.0f} s{tail}")


def _bin(name: str) -> str:
    """The console script ``name`` from this interpreter's environment."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


@dataclass
class Stack:
    """The processes of a served stack and how to reach them."""

    project_dir: str
    prefect_api_url: str
    mlflow_uri: str | None = None
    pids: dict[str, int] = field(default_factory=dict)
    logs: dict[str, str] = field(default_factory=dict)
    database: str = "sqlite"
    database_urls: dict[str, str] = field(default_factory=dict)
    """``{"mlflow"|"optuna"|"prefect": psycopg URL}`` on PostgreSQL (password included)."""
    postgres_dir: str | None = None
    """The folder of the PostgreSQL server this stack started (stopped by ``down``)."""

    @property
    def env(self) -> dict[str, str]:
        """Environment for clients of this stack (prefect CLI, worker, flows)."""
        env = dict(os.environ)
        env["PREFECT_API_URL"] = self.prefect_api_url
        # No HAMNET_PROJECT_DIR: `prefect deploy` records the project folder in the
        # deployment's pull step (prefect.yaml); a value set by the user passes through.
        env.setdefault("PREFECT_WORKER_QUERY_SECONDS", "2")
        if self.mlflow_uri:
            env["MLFLOW_TRACKING_URI"] = self.mlflow_uri
        if self.database_urls.get("optuna"):
            # the search stages' studies go to the team database unless a config names one
            env["HAMNET_SEARCH_STORAGE"] = self.database_urls["optuna"]
        return env

    def save(self, state_dir: Path) -> Path:
        """Write the stack's state to ``state_dir/state.json``."""
        state_dir.mkdir(parents=True, exist_ok=True)
        path = state_dir / STATE_FILE
        path.write_text(json.dumps(asdict(self), indent=2))
        path.chmod(0o600)  # database URLs carry a password
        return path

    def track(self, name: str, proc: subprocess.Popen[bytes], log: Path) -> None:
        """Record the process ``name``: its pid (its process group) and its log file."""
        self.pids[name] = proc.pid
        self.logs[name] = str(log)

    @classmethod
    def load(cls, state_dir: Path) -> Stack:
        """Read a saved stack.

        Raises:
            HamnetError: If no stack was started from ``state_dir``.
        """
        path = state_dir / STATE_FILE
        if not path.is_file():
            raise HamnetError(f"no stack state at {path}: start one with `hamnet stack up`")
        return cls(**json.loads(path.read_text()))


def _spawn(
    args: list[str], *, cwd: Path, env: dict[str, str], log: Path
) -> subprocess.Popen[bytes]:
    log.parent.mkdir(parents=True, exist_ok=True)
    handle = log.open("ab")
    return subprocess.Popen(
        args, cwd=cwd, env=env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True
    )


def _run(args: list[str], *, cwd: Path, env: dict[str, str], what: str) -> str:
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        raise HamnetError(
            f"{what} failed (exit {proc.returncode}): {' '.join(args)}\n"
            f"{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
        )
    return proc.stdout


def up(
    project_dir: str | Path = ".",
    *,
    host: str = "127.0.0.1",
    prefect_port: int | None = None,
    mlflow: bool = True,
    mlflow_port: int | None = None,
    state_dir: str | Path = ".stack",
    echo: bool = True,
    database: str = "sqlite",
    database_url: str | None = None,
    postgres_port: int | None = None,
) -> Stack:
    """Start Prefect server, work pool, deployments, worker and (optionally) MLflow.

    Args:
        project_dir: Folder with ``prefect.yaml`` (the worker runs flows from here).
        host: Address servers bind to. Keep the default 127.0.0.1 unless you mean it.
        prefect_port: Prefect server port (a free one when None).
        mlflow: Also start ``mlflow server``.
        mlflow_port: MLflow server port (a free one when None).
        state_dir: Where pids, URLs and logs go.
        echo: Print progress.
        database: ``"sqlite"`` (files in the project) or ``"postgresql"``: MLflow's
            store, the Optuna studies and the Prefect server on PostgreSQL.
        database_url: A running PostgreSQL server to use (implies ``"postgresql"``);
            ``None`` starts one in ``<state_dir>/postgres``.
        postgres_port: Port of the PostgreSQL server it starts (a free one when None).

    Returns:
        The started stack.

    Raises:
        ConfigError: If ``database`` is not one of :data:`DATABASE_KINDS`.
        HamnetError: If a server does not start (with its log's tail).
    """
    project = Path(project_dir).resolve()
    state = (project / state_dir).resolve()
    say = print if echo else (lambda *_a, **_k: None)
    kind = database_kind(database, database_url)
    prefect_port = prefect_port or free_port(host)
    stack = Stack(project_dir=str(project), prefect_api_url=f"http://{host}:{prefect_port}/api")
    env = server_env(stack, state)
    if kind == "postgresql":
        _start_database(stack, state, host, database_url, postgres_port, say=say)
    if mlflow:
        _start_mlflow(stack, env, host, mlflow_port or free_port(host), state=state, say=say)
    _start_prefect_server(stack, env, host, prefect_port, state=state, say=say)
    _deploy(project, env)
    say(f"deployed prefect.yaml to work pool {WORK_POOL!r}")
    log = state / "logs" / "prefect-worker.log"
    proc = _spawn(
        [_bin("prefect"), "worker", "start", "--pool", WORK_POOL, "--type", "process"],
        cwd=project, env=env, log=log,
    )  # fmt: skip
    stack.track("prefect-worker", proc, log)
    stack.save(state)
    if stack.mlflow_uri:
        wait_http(
            f"{stack.mlflow_uri}/health", 120, what="mlflow server", log=Path(stack.logs["mlflow"])
        )
        say("mlflow server ready")
    say(f"worker started (log {log}); stack state in {state / STATE_FILE}")
    return stack


def server_env(stack: Stack, state: Path) -> dict[str, str]:
    """Environment of the stack's own processes: the clients' one, Prefect's home in ``state``.

    Args:
        stack: The stack being started.
        state: Its state folder (``PREFECT_HOME`` goes under it).

    Returns:
        :attr:`Stack.env` with Prefect's home set and analytics and tracking off.
    """
    env = stack.env
    env["PREFECT_HOME"] = str(state / "prefect-home")
    env["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    env["DO_NOT_TRACK"] = "1"
    return env


def mlflow_server_command(
    project: Path, host: str, port: int, *, backend_store_uri: str | None = None
) -> list[str]:
    """The ``mlflow server`` command line: a SQLite store and artifacts in ``project``.

    Args:
        project: The project folder (``mlflow.db`` and ``mlartifacts/`` live there).
        host: Address the server binds to.
        port: Its port.
        backend_store_uri: Another store (a PostgreSQL URL) instead of ``mlflow.db``.

    Returns:
        The arguments, the console script first.
    """
    return [
        _bin("mlflow"), "server",
        "--backend-store-uri", backend_store_uri or f"sqlite:///{project / 'mlflow.db'}",
        "--default-artifact-root", str(project / "mlartifacts"),
        "--host", host, "--port", str(port), "--workers", "1",
    ]  # fmt: skip


def _start_mlflow(
    stack: Stack, env: dict[str, str], host: str, port: int, *, state: Path, say: Callable[..., Any]
) -> None:
    """Spawn ``mlflow server`` and point ``stack`` and ``env`` at it (readiness checked later)."""
    stack.mlflow_uri = f"http://{host}:{port}"
    env["MLFLOW_TRACKING_URI"] = stack.mlflow_uri
    project = Path(stack.project_dir)
    log = state / "logs" / "mlflow.log"
    proc = _spawn(
        mlflow_server_command(
            project, host, port, backend_store_uri=stack.database_urls.get("mlflow")
        ),
        cwd=project, env={**env, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}, log=log,
    )  # fmt: skip
    stack.track("mlflow", proc, log)
    say(f"mlflow server starting on {stack.mlflow_uri} (log {log})")


def _start_prefect_server(
    stack: Stack, env: dict[str, str], host: str, port: int, *, state: Path, say: Callable[..., Any]
) -> None:
    """Spawn ``prefect server start``, save the stack's state and wait for its health check."""
    log = state / "logs" / "prefect-server.log"
    proc = _spawn(
        [_bin("prefect"), "server", "start", "--host", host, "--port", str(port)],
        cwd=Path(stack.project_dir), env={**env, **prefect_database_env(stack)}, log=log,
    )  # fmt: skip
    stack.track("prefect-server", proc, log)
    stack.save(state)
    say(f"prefect server starting on {stack.prefect_api_url} (log {log})")
    wait_http(f"{stack.prefect_api_url}/health", 120, what="prefect server", log=log)
    say("prefect server ready")


def database_kind(database: str, database_url: str | None = None) -> str:
    """``"sqlite"`` or ``"postgresql"`` (``"postgres"`` too; a URL means PostgreSQL).

    Raises:
        ConfigError: If ``database`` is neither.
    """
    kind = {"postgres": "postgresql"}.get(str(database).lower(), str(database).lower())
    if kind not in DATABASE_KINDS:
        raise ConfigError(
            f"the stack's database must be one of {list(DATABASE_KINDS)}, but got {database!r}."
        )
    return "postgresql" if database_url is not None else kind


def prefect_database_env(stack: Stack) -> dict[str, str]:
    """The Prefect server's database setting: its PostgreSQL database (asyncpg), else none."""
    url = stack.database_urls.get("prefect")
    if url is None:
        return {}
    return {
        "PREFECT_SERVER_DATABASE_CONNECTION_URL": database_url(
            url, DATABASES["prefect"], driver="asyncpg"
        )
    }


def _start_database(
    stack: Stack,
    state: Path,
    host: str,
    url: str | None,
    port: int | None,
    *,
    say: Callable[..., Any],
) -> None:
    """Start PostgreSQL (unless ``url`` names a running one) and create the stack's databases."""
    stack.database = "postgresql"
    if url is None:
        server = PostgresServer(state / POSTGRES_FOLDER, host=host, port=port)
        stack.postgres_dir = str(server.root)
        stack.save(state)  # `hamnet stack down` stops it even if a later step fails
        server.start()
        url = server.url()
        say(f"postgresql ready on {host}:{server.port} (data in {server.data_dir})")
    stack.database_urls = create_databases(url, DATABASES)
    stack.save(state)
    say(f"databases {sorted(DATABASES.values())} ready")


def _deploy(project: Path, env: dict[str, str]) -> None:
    """Create the work pool unless it exists, then deploy ``prefect.yaml``."""
    pools = _run([_bin("prefect"), "work-pool", "ls"], cwd=project, env=env, what="list pools")
    if WORK_POOL not in pools:
        _run(
            [_bin("prefect"), "work-pool", "create", WORK_POOL, "--type", "process"],
            cwd=project, env=env, what="create work pool",
        )  # fmt: skip
    _run([_bin("prefect"), "--no-prompt", "deploy", "--all"], cwd=project, env=env, what="deploy")


def down(
    project_dir: str | Path = ".", *, state_dir: str | Path = ".stack", echo: bool = True
) -> None:
    """Stop every process of the stack started from ``project_dir``."""
    state = Path(project_dir).resolve() / state_dir
    stack = Stack.load(state)
    for name, pid in reversed(list(stack.pids.items())):
        stop_process_group(pid)
        if echo:
            print(f"stopped {name} (pid {pid})")
    server = PostgresServer(stack.postgres_dir) if stack.postgres_dir else None
    if server is not None and server.is_running():
        server.stop()
        if echo:
            print(f"stopped postgresql (its data stays in {server.root})")
    (state / STATE_FILE).unlink(missing_ok=True)


def stop_process_group(pid: int, timeout: float = 15.0) -> None:
    """Send SIGTERM to a process group, then SIGKILL if it is still alive after ``timeout``."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if os.waitpid(pid, os.WNOHANG)[0] == pid:  # our child, now reaped
                return
        except ChildProcessError:
            pass
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
