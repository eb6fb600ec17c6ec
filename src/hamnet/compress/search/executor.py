"""Run Optuna trials on Ray workers: ask in the driver, evaluate in a Ray task, tell.

The driver (:func:`run_search`) asks the study for a trial, runs the ``suggest``
function on it, and ships the suggested parameters to a Ray task that calls the
objective. Several tasks are in flight at once; the first one to finish is told to the
study. Workers reach the study themselves, through the same RDB storage URL, to
report intermediate values and ask the pruner (:class:`TrialContext`), so the study
must live in a database every worker can open: an in-memory study is refused. SQLite
is enough on one machine; a multi-node cluster needs a server database
(PostgreSQL, MySQL) reachable from every node.

A search is resumable: the budget counts the finished trials of the study, including
those finished by earlier runs, and trials that a killed driver left ``RUNNING`` are
marked ``FAIL`` with ``interrupted=True`` and their parameters queued again, so a
restarted search ends with the same number of finished trials and no completed trial
is run twice. Run one driver per study at a time: on start, every ``RUNNING`` trial is
taken as left behind.

Example:
    >>> handle = connect_ray(RaySettings(max_concurrent=2))
    >>> study = open_study("sqlite:///search.db", "digits", ["minimize"], None, None)
    >>> report = run_search(study, objective, suggest, SearchBudget(n_trials=20), handle)
    >>> handle.shutdown()
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

from hamnet.core.env import apply_defaults
from hamnet.core.errors import ConfigError

if TYPE_CHECKING:
    import optuna
    from optuna.storages import BaseStorage, RDBStorage
    from optuna.trial import FrozenTrial

    from hamnet.core.hardware import HardwareProfile

logger = logging.getLogger(__name__)

INTERRUPTED_ATTR = "interrupted"
"""User attribute set to ``True`` on trials a killed or aborted driver left unfinished."""
RETRY_OF_ATTR = "retry_of"
"""User attribute of a queued retry: the number of the interrupted trial it redoes."""
ERROR_ATTR = "error"
"""User attribute of a failed trial: the formatted traceback (last ``ERROR_ATTR_LIMIT`` chars)."""
ERROR_TYPE_ATTR = "error_type"
"""User attribute of a failed trial: the exception's class name."""
PRUNE_REASON_ATTR = "prune_reason"
"""User attribute of a pruned trial: why it was pruned."""
ERROR_ATTR_LIMIT = 4000

SQLITE_TIMEOUT_SECONDS = 60
"""How long a SQLite connection waits for a lock: driver and workers write concurrently."""
PROBE_TIMEOUT_SECONDS = 3.0
"""How long :func:`connect_ray` waits for a cluster's GCS port to accept a connection."""

_FINISHED_STATES = ("COMPLETE", "PRUNED", "FAIL")


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class RaySettings:
    """Where trials run and how many resources each one takes.

    Attributes:
        address: ``None`` starts a local Ray for this process; ``"auto"`` joins the
            cluster started on this machine with ``ray start``; ``"host:port"`` (the
            head's GCS port) or ``"ray://host:port"`` joins that cluster.
        num_cpus: CPUs a local Ray may use (``None``: all). Only with ``address=None``.
        cpus_per_trial: CPUs Ray reserves for each trial (Ray also sets the task's
            ``OMP_NUM_THREADS`` to it).
        gpus_per_trial: GPUs Ray reserves for each trial (fractions share a GPU).
        max_concurrent: Trials in flight at once; ``None``: as many as the cluster's
            resources fit when connecting. Trials that measure latency should not share
            a machine: use ``max_concurrent=1`` or enough ``cpus_per_trial``.
    """

    address: str | None = None
    num_cpus: int | None = None
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    max_concurrent: int | None = None

    def __post_init__(self) -> None:
        if self.address is not None and not self.address.strip():
            raise ConfigError("address must be None, 'auto' or 'host:port', but got ''.")
        if self.num_cpus is not None and self.num_cpus < 1:
            raise ConfigError(f"num_cpus must be at least 1, but got {self.num_cpus}.")
        if self.num_cpus is not None and self.address is not None:
            raise ConfigError(
                "num_cpus sets the size of a local Ray and must be None when joining a "
                f"cluster, but got num_cpus={self.num_cpus} with address={self.address!r}."
            )
        if self.cpus_per_trial < 0:
            raise ConfigError(f"cpus_per_trial must be >= 0, but got {self.cpus_per_trial}.")
        if self.gpus_per_trial < 0:
            raise ConfigError(f"gpus_per_trial must be >= 0, but got {self.gpus_per_trial}.")
        if self.max_concurrent is not None and self.max_concurrent < 1:
            raise ConfigError(f"max_concurrent must be at least 1, but got {self.max_concurrent}.")

    @classmethod
    def for_profile(
        cls,
        profile: HardwareProfile,
        *,
        address: str | None = None,
        max_concurrent: int | None = None,
    ) -> RaySettings:
        """Settings whose trials get the profile's threads and, for CUDA targets, one GPU.

        Args:
            profile: The hardware profile trials are measured for.
            address: As :attr:`address`.
            max_concurrent: As :attr:`max_concurrent`.

        Returns:
            ``cpus_per_trial = profile.threads or 1``, ``gpus_per_trial = 1`` on CUDA.
        """
        return cls(
            address=address,
            cpus_per_trial=float(profile.threads or 1),
            gpus_per_trial=1.0 if profile.device == "cuda" else 0.0,
            max_concurrent=max_concurrent,
        )


@dataclass
class RayHandle:
    """A connection to Ray made (or found) by :func:`connect_ray`.

    Attributes:
        settings: The settings it was made with.
        address: The GCS address of the cluster (``host:port``).
        max_concurrent: Trials :func:`run_search` keeps in flight.
        resources: The cluster's total resources when connecting.
        owns_connection: Whether :func:`connect_ray` called ``ray.init`` (and
            :meth:`shutdown` therefore disconnects, stopping a local Ray it started).
    """

    settings: RaySettings
    address: str
    max_concurrent: int
    resources: dict[str, float] = field(default_factory=dict)
    owns_connection: bool = False

    def shutdown(self) -> None:
        """Disconnect from Ray if this handle connected; a Ray initialised elsewhere stays."""
        if not self.owns_connection:
            return
        import ray

        if ray.is_initialized():
            ray.shutdown()
        self.owns_connection = False

    def __enter__(self) -> RayHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()


@dataclass(frozen=True)
class SearchBudget:
    """When a search stops: after ``n_trials`` finished trials or ``timeout_seconds``.

    Whichever comes first. ``n_trials`` counts the study's finished trials (COMPLETE,
    PRUNED, FAIL; interrupted ones excepted), including those of earlier runs. When the
    time is up no new trial is asked, and the trials in flight are waited for, so a
    search can overrun ``timeout_seconds`` by up to one trial's duration.
    """

    n_trials: int | None = None
    timeout_seconds: float | None = None

    def __post_init__(self) -> None:
        if self.n_trials is None and self.timeout_seconds is None:
            raise ConfigError(
                "a search budget needs n_trials or timeout_seconds (or both), but got neither."
            )
        if self.n_trials is not None and self.n_trials < 1:
            raise ConfigError(f"n_trials must be positive, but got {self.n_trials}.")
        if self.timeout_seconds is not None and not self.timeout_seconds > 0:
            raise ConfigError(f"timeout_seconds must be positive, but got {self.timeout_seconds}.")


# --------------------------------------------------------------------------- objective side


@dataclass
class TrialOutcome:
    """What an objective may return: the objective values plus attributes to record.

    Attributes:
        values: One value per study direction.
        user_attrs: JSON-serialisable extras stored on the trial (e.g. metrics).
    """

    values: list[float]
    user_attrs: dict[str, Any] = field(default_factory=dict)


class PrunedTrial(Exception):
    """Raised by an objective to prune its trial; ``reason`` is recorded on the trial.

    ``optuna.TrialPruned`` works too (its message becomes the reason).
    """

    def __init__(self, reason: str = "") -> None:
        super().__init__(reason)
        self.reason = reason


class TrialContext:
    """The objective's view of its trial, inside the Ray worker.

    The worker re-opens the study from the same storage URL, so intermediate values and
    attributes land in the study's database while the trial runs, and the study's
    pruner sees every other trial's reports.

    Attributes:
        trial_id: Optuna's storage id of the trial.
        number: The trial's number in the study.
        params: The parameters the driver's ``suggest`` chose.
    """

    def __init__(
        self,
        trial: optuna.Trial,
        storage: BaseStorage,
        params: dict[str, Any],
        *,
        multi_objective: bool,
    ) -> None:
        self.trial_id: int = trial._trial_id
        self.number: int = trial.number
        self.params: dict[str, Any] = params
        self._trial = trial
        self._storage = storage
        self._multi_objective = multi_objective

    def report(self, value: float, step: int) -> None:
        """Store an intermediate value of the trial (used by the pruner).

        Multi-objective studies store it too, but Optuna's pruners never use it.

        Args:
            value: The value at ``step`` (castable to float).
            step: A non-negative step (epoch); a step reported twice keeps its first value.
        """
        if self._multi_objective:
            self._storage.set_trial_intermediate_value(self.trial_id, int(step), float(value))
        else:
            self._trial.report(value, step)

    def should_prune(self) -> bool:
        """Ask the study's pruner about this trial; always ``False`` for multi-objective."""
        if self._multi_objective:
            return False
        return self._trial.should_prune()

    def set_user_attr(self, key: str, value: Any) -> None:
        """Store a JSON-serialisable attribute on the trial now."""
        self._trial.set_user_attr(key, value)


ObjectiveFn: TypeAlias = Callable[
    [TrialContext, dict[str, Any]], "float | Sequence[float] | TrialOutcome"
]
"""Objective run in a Ray worker: ``(context, params) -> value(s) | TrialOutcome``.

It is pickled once per search and must be loadable on the workers: a module-level
function (or a dataclass with ``__call__``) in an installed module. Raise
:class:`PrunedTrial` (or ``optuna.TrialPruned``) to prune; any other exception fails the
trial and the search goes on.
"""

SuggestFn: TypeAlias = Callable[["optuna.Trial"], Mapping[str, Any]]
"""Runs in the driver on the asked trial and returns the parameters to evaluate.

An ``optuna.TrialPruned``, :class:`PrunedTrial` or an exception of a class named
``InfeasibleParams`` (see :mod:`hamnet.compress.search.space`) prunes the trial with its message
without dispatching it; any other exception fails the trial and stops the search.
"""


@dataclass(frozen=True)
class _StudyAddress:
    """How a worker re-opens the study: storage URL, engine options, name, pruner."""

    url: str
    engine_kwargs: dict[str, Any]
    study_name: str
    pruner: Any
    multi_objective: bool


@dataclass
class _TrialResult:
    """What a worker sends back to the driver."""

    state: Literal["complete", "pruned", "fail"]
    values: list[float] | None = None
    message: str = ""
    error_type: str = ""
    user_attrs: dict[str, Any] = field(default_factory=dict)


_WORKER_STORAGES: dict[str, RDBStorage] = {}


def _worker_storage(address: _StudyAddress) -> RDBStorage:
    import optuna

    key = address.url + json.dumps(address.engine_kwargs, sort_keys=True, default=str)
    storage = _WORKER_STORAGES.get(key)
    if storage is None:
        storage = optuna.storages.RDBStorage(address.url, engine_kwargs=address.engine_kwargs)
        _WORKER_STORAGES[key] = storage
    return storage


def _load_study_in_worker(address: _StudyAddress) -> tuple[optuna.Study, RDBStorage]:
    import optuna

    storage = _worker_storage(address)
    study = optuna.load_study(
        study_name=address.study_name,
        storage=storage,
        sampler=optuna.samplers.RandomSampler(),  # workers never sample
        pruner=address.pruner,
    )
    return study, storage


def _probe_worker(address: _StudyAddress, objective: Any) -> str:
    """Run in a Ray task before any trial: can a worker load the objective and the study?"""
    del objective  # unpickling it is the check
    _load_study_in_worker(address)
    import ray

    return str(ray.get_runtime_context().get_node_id())


def _values_of(outcome: Any) -> tuple[list[float], dict[str, Any]]:
    if isinstance(outcome, TrialOutcome):
        return [float(v) for v in outcome.values], dict(outcome.user_attrs)
    if isinstance(outcome, Sequence) and not isinstance(outcome, str):
        return [float(v) for v in outcome], {}
    try:
        return [float(outcome)], {}
    except (TypeError, ValueError):
        raise TypeError(
            "the objective must return a float, a sequence of floats or a TrialOutcome, "
            f"but returned {type(outcome).__name__}: {outcome!r:.200}"
        ) from None


def _clip(text: str, limit: int = ERROR_ATTR_LIMIT) -> str:
    return text if len(text) <= limit else "…" + text[-(limit - 1) :]


def _evaluate(
    address: _StudyAddress,
    objective: ObjectiveFn,
    trial_id: int,
    params: dict[str, Any],
) -> _TrialResult:
    """The Ray task: evaluate one trial and report how it ended (never raises)."""
    import optuna
    import ray

    attrs: dict[str, Any] = {
        "worker_started_at": time.time(),
        "worker_node_id": str(ray.get_runtime_context().get_node_id()),
        "worker_pid": os.getpid(),
    }
    try:
        study, storage = _load_study_in_worker(address)
        trial = optuna.trial.Trial(study, trial_id)
        context = TrialContext(trial, storage, params, multi_objective=address.multi_objective)
        values, user_attrs = _values_of(objective(context, dict(params)))
        result = _TrialResult("complete", values=values, user_attrs=user_attrs)
    except (PrunedTrial, optuna.TrialPruned) as exc:
        reason = exc.reason if isinstance(exc, PrunedTrial) else str(exc)
        result = _TrialResult("pruned", message=reason or type(exc).__name__)
    except Exception as exc:
        result = _TrialResult(
            "fail", message=_clip(traceback.format_exc()), error_type=type(exc).__name__
        )
    attrs["worker_finished_at"] = time.time()
    result.user_attrs = {**attrs, **result.user_attrs}
    return result


# --------------------------------------------------------------------------- connect


def _host_port(address: str) -> tuple[str, int]:
    bare = address.split("://", 1)[1] if "://" in address else address
    host, sep, port = bare.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ConfigError(f"Ray address must be None, 'auto' or 'host:port', but got {address!r}.")
    return host.strip("[]"), int(port)


def _check_reachable(address: str) -> None:
    host, port = _host_port(address)
    try:
        with socket.create_connection((host, port), timeout=PROBE_TIMEOUT_SECONDS):
            pass
    except OSError as err:
        raise ConfigError(
            f"cannot reach a Ray cluster at {address!r} ({host}:{port} refused or timed out "
            f"after {PROBE_TIMEOUT_SECONDS:g} s: {err}). Start its head with "
            f"`ray start --head --port={port}`, or set address to None for a local Ray."
        ) from None


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0] if text else ''}"


def _use_token_auth_if_available() -> None:
    """Join with token authentication when this machine has a Ray token.

    Ray 2.60 enables token auth on clusters it starts wherever a token exists
    (``~/.ray/auth_token``, made by the first local ``ray.init``), but a driver joining
    by address only sends the token when ``RAY_AUTH_MODE=token``; without it
    ``ray.init`` retries for ~20 s and fails. An explicit ``RAY_AUTH_MODE`` wins.
    """
    if "RAY_AUTH_MODE" in os.environ:
        return
    token_path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH", "~/.ray/auth_token")).expanduser()
    if os.environ.get("RAY_AUTH_TOKEN") or token_path.is_file():
        os.environ["RAY_AUTH_MODE"] = "token"


def _capacity(nodes: list[dict[str, Any]], settings: RaySettings) -> int:
    """How many trials fit on the cluster's nodes at once."""
    total = 0
    for node in nodes:
        resources = node.get("Resources", {})
        fits = []
        if settings.cpus_per_trial > 0:
            fits.append(math.floor(resources.get("CPU", 0) / settings.cpus_per_trial + 1e-9))
        if settings.gpus_per_trial > 0:
            fits.append(math.floor(resources.get("GPU", 0) / settings.gpus_per_trial + 1e-9))
        total += min(fits) if fits else int(resources.get("CPU", 1))
    return max(1, total)


def _check_resources(settings: RaySettings, address: str) -> tuple[dict[str, float], int]:
    import ray

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    resources = {k: float(v) for k, v in ray.cluster_resources().items()}
    largest_cpu = max((n.get("Resources", {}).get("CPU", 0.0) for n in nodes), default=0.0)
    largest_gpu = max((n.get("Resources", {}).get("GPU", 0.0) for n in nodes), default=0.0)
    if settings.gpus_per_trial > largest_gpu:
        raise ConfigError(
            f"gpus_per_trial={settings.gpus_per_trial:g} needs a Ray node with that many GPUs, "
            f"but the cluster at {address} has {resources.get('GPU', 0.0):g} GPUs "
            f"(largest node: {largest_gpu:g}). Set gpus_per_trial to 0 or join a GPU cluster."
        )
    if settings.cpus_per_trial > largest_cpu:
        raise ConfigError(
            f"cpus_per_trial={settings.cpus_per_trial:g} needs a Ray node with that many CPUs, "
            f"but the largest node of the cluster at {address} has {largest_cpu:g}."
        )
    return resources, settings.max_concurrent or _capacity(nodes, settings)


def connect_ray(settings: RaySettings | None = None) -> RayHandle:
    """Start or join Ray once, and check that trials fit on it.

    A Ray already initialised in this process is reused (a process can be connected to
    one cluster only; asking for another address is an error).

    Args:
        settings: Where to run and what each trial takes; default: a local Ray.

    Returns:
        A handle for :func:`run_search`; its :meth:`RayHandle.shutdown` undoes only what
        this call did.

    Raises:
        ConfigError: If the cluster cannot be reached (checked with a
            ``PROBE_TIMEOUT_SECONDS`` socket probe before ``ray.init``, which could wait
            much longer), Ray is already connected elsewhere, or no node has the CPUs
            or GPUs one trial asks for.
    """
    settings = settings or RaySettings()
    if settings.address not in (None, "auto"):
        _check_reachable(settings.address)
    apply_defaults()
    import ray

    owns = False
    if ray.is_initialized():
        current = ray.get_runtime_context().gcs_address
        if settings.address not in (None, "auto") and (
            _host_port(settings.address)[1] != _host_port(current)[1]
        ):
            raise ConfigError(
                f"Ray is already connected to {current} in this process and cannot also join "
                f"{settings.address!r}; run the search in its own process."
            )
    else:
        try:
            if settings.address is None:
                ray.init(address="local", num_cpus=settings.num_cpus, include_dashboard=False)
            else:
                _use_token_auth_if_available()
                ray.init(address=settings.address)
        except (ConnectionError, RuntimeError, ValueError) as err:
            cause = f" ({_first_line(err.__cause__)})" if err.__cause__ else ""
            raise ConfigError(
                f"cannot connect to Ray at {settings.address or 'a new local instance'!r}: "
                f"{_first_line(err)}{cause}"
            ) from None
        owns = True
    address = str(ray.get_runtime_context().gcs_address)
    try:
        resources, max_concurrent = _check_resources(settings, address)
    except ConfigError:
        if owns:
            ray.shutdown()
        raise
    logger.info("Ray at %s: %s; up to %d trials at once", address, resources, max_concurrent)
    return RayHandle(settings, address, max_concurrent, resources, owns)


# --------------------------------------------------------------------------- storage


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


def _open_storage(storage_url: str) -> RDBStorage:
    import optuna

    url, engine_kwargs, shown = _storage_url_and_kwargs(storage_url)
    try:
        return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs)
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
) -> optuna.Study:
    """Create the study, or load it when it exists (to resume a search).

    A relative SQLite path is made absolute (workers may run in another directory),
    its folder is created, and SQLite connections wait up to ``SQLITE_TIMEOUT_SECONDS``
    for locks, since the driver and the workers write at the same time.

    Args:
        storage_url: An SQLAlchemy database URL (``sqlite:///path.db``,
            ``postgresql://...``). In-memory storage is refused: workers must reach it.
        study_name: The study's name in the storage.
        directions: ``"minimize"`` or ``"maximize"`` per objective.
        sampler: Optuna sampler (``None``: Optuna's default).
        pruner: Optuna pruner (``None``: Optuna's default, a median pruner); workers use
            a copy of it.

    Returns:
        The study.

    Raises:
        ConfigError: If the storage cannot be opened (naming the URL, password hidden),
            a direction is unknown, or an existing study has other directions.
    """
    import optuna

    wanted = [str(d).lower() for d in directions]
    if not wanted or any(d not in ("minimize", "maximize") for d in wanted):
        raise ConfigError(
            f"directions must be a non-empty list of 'minimize'/'maximize', but got "
            f"{list(directions)}."
        )
    storage = _open_storage(storage_url)
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
    return study


def _study_address(study: optuna.Study) -> _StudyAddress:
    import optuna

    # Optuna keeps no public handle on a study's storage; RDB storages are wrapped in a
    # cache whose backend holds the URL and engine options the workers need.
    storage = getattr(study, "_storage", None)
    backend = getattr(storage, "_backend", storage)
    if not isinstance(backend, optuna.storages.RDBStorage):
        raise ConfigError(
            f"run_search needs a study in an RDB storage the Ray workers can open (see "
            f"open_study), but study {study.study_name!r} uses {type(backend).__name__}."
        )
    _storage_url_and_kwargs(backend.url)  # refuses in-memory SQLite
    return _StudyAddress(
        url=backend.url,
        engine_kwargs=dict(backend.engine_kwargs),
        study_name=study.study_name,
        pruner=study.pruner,
        multi_objective=len(study.directions) > 1,
    )


# --------------------------------------------------------------------------- driver


@dataclass(frozen=True)
class SearchReport:
    """How a :func:`run_search` call went.

    Attributes:
        study_name: The study searched.
        state_counts: Trials per Optuna state name at the end (``FAIL`` includes
            interrupted ones).
        n_finished: Finished trials counted by the budget (interrupted ones excepted).
        n_interrupted: Trials marked ``interrupted`` (left by killed or aborted runs).
        trials_run: Trials finished by this call.
        resumed: Counted trials found finished at the start (from earlier runs).
        requeued: Interrupted trials whose parameters this call queued again.
        wall_seconds: Duration of the call.
        stopped_by: ``"n_trials"`` or ``"timeout"``.
        best_trials: ``study.best_trials`` at the end (the Pareto front if
            multi-objective; empty if no trial completed).
    """

    study_name: str
    state_counts: dict[str, int]
    n_finished: int
    n_interrupted: int
    trials_run: int
    resumed: int
    requeued: int
    wall_seconds: float
    stopped_by: Literal["n_trials", "timeout"]
    best_trials: list[FrozenTrial]

    def summary(self) -> str:
        """One line for logs."""
        counts = ", ".join(f"{k.lower()} {v}" for k, v in sorted(self.state_counts.items()))
        return (
            f"study {self.study_name!r}: {self.trials_run} trials run in "
            f"{self.wall_seconds:.1f} s (stopped by {self.stopped_by}); {counts}; "
            f"{self.resumed} resumed, {self.requeued} requeued"
        )


def _is_counted(trial: FrozenTrial) -> bool:
    return trial.state.name in _FINISHED_STATES and not trial.user_attrs.get(INTERRUPTED_ATTR)


def _mark_interrupted(study: optuna.Study, trial: FrozenTrial) -> None:
    """FAIL a trial that will not finish, flag it, and queue its parameters again."""
    from optuna.trial import TrialState

    study._storage.set_trial_user_attr(trial._trial_id, INTERRUPTED_ATTR, True)
    study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
    study.enqueue_trial(dict(trial.params), user_attrs={RETRY_OF_ATTR: trial.number})


def requeue_interrupted(study: optuna.Study) -> int:
    """Fail the trials a killed driver left ``RUNNING`` and queue their parameters again.

    Assumes no other driver is working on the study.

    Returns:
        How many trials were queued again.
    """
    from optuna.trial import TrialState

    stale = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for trial in stale:
        _mark_interrupted(study, trial)
        logger.warning(
            "trial %d was left running by an earlier run: marked FAIL (interrupted) and "
            "queued again",
            trial.number,
        )
    return len(stale)


def _is_prune_request(exc: BaseException) -> bool:
    import optuna

    return isinstance(exc, PrunedTrial | optuna.TrialPruned) or any(
        cls.__name__ == "InfeasibleParams" for cls in type(exc).__mro__
    )


def _set_attr(trial: optuna.Trial, key: str, value: Any) -> None:
    try:
        trial.set_user_attr(key, value)
    except (TypeError, ValueError):  # not JSON-serialisable
        trial.set_user_attr(key, repr(value))


def _tell(study: optuna.Study, trial: optuna.Trial, result: _TrialResult) -> FrozenTrial:
    from optuna.trial import TrialState

    for key, value in result.user_attrs.items():
        _set_attr(trial, key, value)
    if result.state == "complete":
        try:
            return study.tell(trial, result.values, state=TrialState.COMPLETE)
        except ValueError as err:  # NaN, or not one value per direction
            result = _TrialResult(
                "fail", message=f"invalid objective values: {err}", error_type="ValueError"
            )
    if result.state == "pruned":
        trial.set_user_attr(PRUNE_REASON_ATTR, result.message)
        return study.tell(trial, state=TrialState.PRUNED)
    trial.set_user_attr(ERROR_ATTR, result.message)
    trial.set_user_attr(ERROR_TYPE_ATTR, result.error_type)
    return study.tell(trial, state=TrialState.FAIL)


def _fetch(ref: Any) -> _TrialResult:
    import ray

    try:
        result: _TrialResult = ray.get(ref)
        return result
    except ray.exceptions.RayError as err:  # worker process died, task cancelled, node lost
        return _TrialResult("fail", message=_clip(str(err)), error_type=type(err).__name__)


class _ProgressBar:
    """Trials done out of the budget, with the best value so far."""

    def __init__(self, study: optuna.Study, total: int | None, done: int, enabled: bool) -> None:
        self._study = study
        self._enabled = enabled
        self._single = len(study.directions) == 1
        self._best: float | None = None
        if enabled and self._single:
            try:
                self._best = study.best_value
            except ValueError:
                self._best = None
        self._progress: Any = None
        self._task: Any = None
        self._total = total
        self._done = done

    def _description(self) -> str:
        if self._single:
            best = "-" if self._best is None else f"{self._best:.4g}"
            return f"trials (best {best})"
        return f"trials (pareto front {len(self._study.best_trials)})"

    @contextmanager
    def running(self) -> Iterator[_ProgressBar]:
        if not self._enabled:
            yield self
            return
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        columns = (
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
        )
        with Progress(*columns) as progress:
            self._progress = progress
            self._task = progress.add_task(
                self._description(), total=self._total, completed=self._done
            )
            yield self

    def advance(self, trial: FrozenTrial) -> None:
        if self._progress is None:
            return
        if self._single and trial.state.name == "COMPLETE" and trial.value is not None:
            minimize = self._study.direction.name == "MINIMIZE"
            if self._best is None or (trial.value < self._best) == minimize:
                self._best = trial.value
        self._progress.update(self._task, advance=1, description=self._description())


def _check_workers(remote: Any, address: _StudyAddress, objective_ref: Any) -> None:
    import ray

    try:
        ray.get(remote.remote(address, objective_ref))
    except ray.exceptions.RayError as err:
        raise ConfigError(
            f"a Ray worker cannot load the objective or open study {address.study_name!r}: "
            f"{_clip(str(err), 2000)}\nThe objective must be importable on the workers "
            "(a module-level function of an installed module) and the storage reachable "
            "from them."
        ) from None


def run_search(
    study: optuna.Study,
    objective: ObjectiveFn,
    suggest: SuggestFn,
    budget: SearchBudget,
    ray: RayHandle,
    *,
    on_trial_end: Callable[[FrozenTrial], None] | None = None,
    progress: bool = True,
) -> SearchReport:
    """Run trials of ``study`` on Ray until the budget is spent.

    The driver asks a trial, calls ``suggest(trial)`` and starts one Ray task per trial
    (``num_cpus=cpus_per_trial``, ``num_gpus=gpus_per_trial``, no Ray retries), keeping
    up to ``ray.max_concurrent`` in flight; each finished task is told to the study:
    COMPLETE with its values, PRUNED (``prune_reason`` attribute) when the objective
    raised :class:`PrunedTrial` or ``optuna.TrialPruned``, FAIL (``error`` attribute:
    the traceback, clipped to ``ERROR_ATTR_LIMIT`` characters) when it raised anything
    else, returned invalid values, or its worker died. The search goes on after a
    failure. Workers record ``worker_started_at``, ``worker_finished_at`` (epoch
    seconds), ``worker_node_id`` and ``worker_pid`` on every trial.

    On start, trials left ``RUNNING`` by a killed driver are failed with
    ``interrupted=True`` and their parameters queued again (``retry_of`` attribute). If
    this call itself is interrupted (Ctrl-C, an exception), its in-flight Ray tasks are
    cancelled and their trials handled the same way before the exception propagates.
    When ``timeout_seconds`` is up, no trial is asked any more and the ones in flight
    are waited for.

    Args:
        study: A study from :func:`open_study` (any RDB storage the workers can open).
        objective: Picklable objective run in the workers (see :data:`ObjectiveFn`).
        suggest: Chooses the parameters in the driver (see :data:`SuggestFn`).
        budget: When to stop.
        ray: The handle from :func:`connect_ray`.
        on_trial_end: Called in the driver with each told trial (e.g. to log it); its
            exceptions are logged and do not stop the search.
        progress: Show a progress bar with the best value so far.

    Returns:
        Counts, timings and the best trials.

    Raises:
        ConfigError: If the study is not in an RDB storage, or a worker cannot load the
            objective or open the study (checked with one probe task before any trial).
        Exception: Whatever ``suggest`` raised, other than a prune request (the trial is
            failed first).
    """
    import ray as ray_module

    started = time.monotonic()
    address = _study_address(study)
    requeued = requeue_interrupted(study)
    finished = sum(1 for t in study.get_trials(deepcopy=False) if _is_counted(t))
    resumed = finished
    deadline = None if budget.timeout_seconds is None else started + budget.timeout_seconds
    remote = ray_module.remote(_evaluate).options(
        num_cpus=ray.settings.cpus_per_trial,
        num_gpus=ray.settings.gpus_per_trial,
        max_retries=0,
        name="hamnet-trial",
    )
    probe = ray_module.remote(_probe_worker).options(
        num_cpus=ray.settings.cpus_per_trial,
        num_gpus=ray.settings.gpus_per_trial,
        max_retries=0,
        name="hamnet-probe",
    )
    objective_ref = ray_module.put(objective)
    address_ref = ray_module.put(address)
    _check_workers(probe, address, objective_ref)

    in_flight: dict[Any, optuna.Trial] = {}
    stopped_by: Literal["n_trials", "timeout"] = "n_trials"
    bar = _ProgressBar(study, budget.n_trials, finished, progress)

    def may_ask() -> bool:
        nonlocal stopped_by
        if budget.n_trials is not None and finished + len(in_flight) >= budget.n_trials:
            stopped_by = "n_trials"
            return False
        if deadline is not None and time.monotonic() >= deadline:
            stopped_by = "timeout"
            return False
        return True

    def finish(frozen: FrozenTrial) -> None:
        nonlocal finished
        finished += 1
        logger.info(
            "trial %d %s%s",
            frozen.number,
            frozen.state.name,
            f" {frozen.values}" if frozen.values else "",
        )
        bar.advance(frozen)
        if on_trial_end is not None:
            try:
                on_trial_end(frozen)
            except Exception:
                logger.exception("on_trial_end failed for trial %d", frozen.number)

    with bar.running():
        try:
            while True:
                while len(in_flight) < ray.max_concurrent and may_ask():
                    trial = study.ask()
                    try:
                        params = dict(suggest(trial))
                    except Exception as exc:
                        if not _is_prune_request(exc):
                            _tell(study, trial, _suggest_failure(exc))
                            raise
                        reason = str(exc) or type(exc).__name__
                        finish(_tell(study, trial, _TrialResult("pruned", message=reason)))
                        continue
                    ref = remote.remote(address_ref, objective_ref, trial._trial_id, params)
                    in_flight[ref] = trial
                if not in_flight:
                    break
                ready, _ = ray_module.wait(list(in_flight), num_returns=1)
                for ref in ready:
                    trial = in_flight.pop(ref)
                    finish(_tell(study, trial, _fetch(ref)))
        except BaseException:
            _abandon(study, in_flight)
            raise

    counts: dict[str, int] = {}
    interrupted = 0
    for t in study.get_trials(deepcopy=False):
        counts[t.state.name] = counts.get(t.state.name, 0) + 1
        interrupted += bool(t.user_attrs.get(INTERRUPTED_ATTR))
    report = SearchReport(
        study_name=study.study_name,
        state_counts=counts,
        n_finished=finished,
        n_interrupted=interrupted,
        trials_run=finished - resumed,
        resumed=resumed,
        requeued=requeued,
        wall_seconds=time.monotonic() - started,
        stopped_by=stopped_by,
        best_trials=study.best_trials,
    )
    logger.info(report.summary())
    return report


def _suggest_failure(exc: Exception) -> _TrialResult:
    text = "".join(traceback.format_exception(exc))
    return _TrialResult("fail", message=_clip(text), error_type=type(exc).__name__)


def _abandon(study: optuna.Study, in_flight: dict[Any, optuna.Trial]) -> None:
    """Cancel in-flight tasks of an aborted search; fail and requeue their trials."""
    import ray

    for ref, trial in in_flight.items():
        try:
            ray.cancel(ref, force=True)
        except Exception:  # already finished, or Ray is gone
            logger.debug("cannot cancel the task of trial %d", trial.number, exc_info=True)
        try:
            _mark_interrupted(study, study._storage.get_trial(trial._trial_id))
        except Exception:  # the next run's requeue_interrupted will do it
            logger.warning("trial %d left RUNNING", trial.number, exc_info=True)
    in_flight.clear()
