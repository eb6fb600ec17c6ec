"""The study's database: an Optuna RDB storage every Ray worker can open.

:func:`open_study` creates or loads a study in an SQLAlchemy database (SQLite by
default; a multi-node cluster, or a team sharing its studies, needs a server database
reachable from every node: ``postgresql://`` URLs get the psycopg 3 driver of the
``postgres`` extra, a connect timeout and pre-ping of pooled connections). Its
storage records a heartbeat of each running trial (the driver beats for the trials it
has in flight), so a trial whose driver was killed goes stale after the grace period
and Optuna fails it and queues a retry of it
(:class:`optuna.storages.RetryHeartbeatStaleTrialCallback`).

Example:
    >>> study = open_study("sqlite:///search.db", "digits", ["minimize"], None, None)
    >>> study_storage(study).get_heartbeat_interval()
    5
"""

from __future__ import annotations

import importlib.util
import warnings
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hamnet.core.errors import ConfigError, MissingDependencyError

if TYPE_CHECKING:
    import optuna
    from optuna.storages import RDBStorage
    from sqlalchemy.engine import URL

POSTGRES_DRIVERNAME = "postgresql+psycopg"
"""The SQLAlchemy driver a ``postgresql://`` URL gets (psycopg 3, the ``postgres`` extra)."""
POSTGRES_CONNECT_TIMEOUT_SECONDS = 10
"""How long a PostgreSQL connection attempt waits: a server that is down fails fast."""
SQLITE_TIMEOUT_SECONDS = 60
"""How long a SQLite connection waits for a lock: driver and workers write concurrently."""
HEARTBEAT_INTERVAL_SECONDS = 5
"""How often the driver records the heartbeat of each trial it has in flight."""
MAX_RETRY = 3
"""How many times a trial interrupted by a killed driver is queued again."""

_STORAGES: weakref.WeakKeyDictionary[optuna.Study, RDBStorage] = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class StudyAddress:
    """How a worker re-opens the study: storage URL, engine options, name, pruner."""

    url: str
    engine_kwargs: dict[str, Any]
    study_name: str
    pruner: Any
    multi_objective: bool


def _storage_url_and_kwargs(storage_url: str) -> tuple[str, dict[str, Any], str]:
    """Normalise a storage URL; returns (url, engine kwargs, URL safe to show)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    if not isinstance(storage_url, str) or not storage_url.strip():
        raise ConfigError(
            "the study storage must be a database URL such as 'sqlite:///search.db', "
            f"but got {storage_url!r}: in-memory studies cannot be reached by Ray workers."
        )
    try:
        parsed = make_url(storage_url)
    except ArgumentError as err:
        raise ConfigError(
            f"study storage {storage_url!r} is not a database URL "
            f"(expected e.g. 'sqlite:///search.db'): {err}"
        ) from None
    shown = parsed.render_as_string(hide_password=True)
    if parsed.get_backend_name() in ("postgresql", "postgres"):
        return _postgres_url_and_kwargs(parsed, shown)
    if parsed.get_backend_name() != "sqlite":
        return storage_url, {}, shown
    database = parsed.database or ""
    if (
        database in ("", ":memory:")
        or database.startswith("file::memory:")
        or parsed.query.get("mode") == "memory"
    ):
        raise ConfigError(
            f"study storage {shown!r} is an in-memory SQLite database, but Ray workers run in "
            "other processes and must open the study: use a file, e.g. 'sqlite:///search.db'."
        )
    path = Path(database).expanduser().resolve()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"study storage {shown!r} cannot be created: {err}") from None
    url = parsed.set(database=str(path)).render_as_string(hide_password=False)
    return url, {"connect_args": {"timeout": SQLITE_TIMEOUT_SECONDS}}, shown


def _postgres_url_and_kwargs(parsed: URL, shown: str) -> tuple[str, dict[str, Any], str]:
    """A PostgreSQL URL with the psycopg driver unless one is named; engine kwargs for it."""
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername=POSTGRES_DRIVERNAME)
    if parsed.drivername == POSTGRES_DRIVERNAME and importlib.util.find_spec("psycopg") is None:
        raise MissingDependencyError(
            f"study storage {shown!r} is a PostgreSQL database, which needs the psycopg "
            "package, but it is not installed: pip install 'hamnet[postgres]'"
        )
    kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if parsed.drivername == POSTGRES_DRIVERNAME:
        kwargs["connect_args"] = {"connect_timeout": POSTGRES_CONNECT_TIMEOUT_SECONDS}
    return parsed.render_as_string(hide_password=False), kwargs, shown


def _open_storage(
    storage_url: str, heartbeat_interval: int, grace_period: int | None, max_retry: int | None
) -> RDBStorage:
    import optuna
    from optuna.exceptions import ExperimentalWarning

    url, engine_kwargs, shown = _storage_url_and_kwargs(storage_url)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExperimentalWarning)
            return optuna.storages.RDBStorage(
                url,
                engine_kwargs=engine_kwargs,
                heartbeat_interval=heartbeat_interval,
                grace_period=grace_period,
                heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(
                    max_retry=max_retry
                ),
            )
    except Exception as err:  # driver missing, bad dialect, unwritable file, server down
        cause = err.__cause__ or err
        detail = str(cause).strip().splitlines()[0] if str(cause).strip() else ""
        raise ConfigError(
            f"study storage {shown!r} cannot be opened: {type(cause).__name__}: {detail}"
        ) from None


def open_study(
    storage_url: str,
    study_name: str,
    directions: Sequence[str],
    sampler: optuna.samplers.BaseSampler | None,
    pruner: optuna.pruners.BasePruner | None,
    *,
    heartbeat_interval: int = HEARTBEAT_INTERVAL_SECONDS,
    grace_period: int | None = None,
    max_retry: int | None = MAX_RETRY,
) -> optuna.Study:
    """Create the study, or load it when it exists (to resume a search).

    A relative SQLite path is made absolute (workers may run in another directory),
    its folder is created, and SQLite connections wait up to ``SQLITE_TIMEOUT_SECONDS``
    for locks, since the driver and the workers write at the same time.

    Args:
        storage_url: An SQLAlchemy database URL (``sqlite:///path.db``,
            ``postgresql://user:password@host:5432/db``; ``postgresql://`` and
            ``postgres://`` use psycopg 3). In-memory storage is refused: workers must
            reach it.
        study_name: The study's name in the storage.
        directions: ``"minimize"`` or ``"maximize"`` per objective.
        sampler: Optuna sampler (``None``: Optuna's default).
        pruner: Optuna pruner (``None``: Optuna's default, a median pruner); workers use
            a copy of it.
        heartbeat_interval: Seconds between two heartbeats of a running trial.
        grace_period: Seconds without a heartbeat after which a running trial is stale
            (``None``: twice ``heartbeat_interval``). A restarted search waits for the
            trials its killed predecessor left running to go stale.
        max_retry: How many times a stale trial is queued again (``None``: always).

    Returns:
        The study.

    Raises:
        ConfigError: If the storage cannot be opened (naming the URL, password hidden),
            a direction is unknown, or an existing study has other directions.
        MissingDependencyError: A PostgreSQL URL without psycopg installed.
    """
    import optuna

    wanted = [str(d).lower() for d in directions]
    if not wanted or any(d not in ("minimize", "maximize") for d in wanted):
        raise ConfigError(
            f"directions must be a non-empty list of 'minimize'/'maximize', but got "
            f"{list(directions)}."
        )
    if heartbeat_interval < 1:
        raise ConfigError(f"heartbeat_interval must be at least 1, but got {heartbeat_interval}.")
    if grace_period is not None and grace_period <= heartbeat_interval:
        raise ConfigError(
            f"grace_period must be longer than heartbeat_interval ({heartbeat_interval} s), "
            f"but got {grace_period}."
        )
    storage = _open_storage(storage_url, heartbeat_interval, grace_period, max_retry)
    study = optuna.create_study(
        storage=storage,
        study_name=study_name,
        directions=[optuna.study.StudyDirection[d.upper()] for d in wanted],
        sampler=sampler,
        pruner=pruner,
        load_if_exists=True,
    )
    existing = [d.name.lower() for d in study.directions]
    if existing != wanted:
        raise ConfigError(
            f"study {study_name!r} in {_storage_url_and_kwargs(storage_url)[2]!r} was created "
            f"with directions {existing}, but got {wanted}: use the same directions to resume "
            "it, or a new study_name."
        )
    _STORAGES[study] = storage
    return study


def study_storage(study: optuna.Study) -> RDBStorage:
    """Return the RDB storage :func:`open_study` opened ``study`` in.

    Raises:
        ConfigError: ``study`` was not opened with :func:`open_study` (an in-memory
            study, or one whose storage the Ray workers may not reach).
    """
    storage = _STORAGES.get(study)
    if storage is None:
        raise ConfigError(
            f"run_search needs a study in an RDB storage the Ray workers can open, opened "
            f"with open_study, but study {study.study_name!r} was made otherwise."
        )
    return storage


def study_address(study: optuna.Study) -> StudyAddress:
    """Return what a worker needs to open ``study`` (see :func:`study_storage`)."""
    storage = study_storage(study)
    return StudyAddress(
        url=storage.url,
        engine_kwargs=dict(storage.engine_kwargs),
        study_name=study.study_name,
        pruner=study.pruner,
        multi_objective=len(study.directions) > 1,
    )
