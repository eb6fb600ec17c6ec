"""Serve on Ray Serve: N replicas of hamnet's app behind Ray Serve's HTTP proxy.

Each replica builds its own :class:`~hamnet.serving.state.ServingState` (loads every
arm's model and runs it once) and answers through the same FastAPI app as the
single-process server (``@serve.ingress``, with the app built on the replica), so the
HTTP API, validation, metrics and A/B routing are identical. What changes is the
batching: each arm batches with Ray Serve's ``@serve.batch`` (:class:`ServeBatcher`,
at most ``max_batch_size`` rows per call, counted by ``batch_size_fn``), and the proxy
spreads requests over the replicas, on one machine or a cluster.

Ray is imported by the functions that use it (``pip install 'hamnet[serve]'``).

Example:
    >>> settings = ServeSettings(arms={"main": "model.onnx"})  # doctest: +SKIP
    >>> with RayServer(settings, address="local", replicas=2, port=8000):  # doctest: +SKIP
    ...     ...  # POST http://127.0.0.1:8000/predict
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from types import TracebackType
from typing import Any

import numpy as np

from hamnet.core.errors import ConfigError, MissingDependencyError
from hamnet.serving.batching import (
    BatchResult,
    InferenceCaller,
    RunFn,
    run_alone,
    run_together,
)
from hamnet.serving.state import ServeSettings

logger = logging.getLogger("hamnet.serving")

APP_NAME = "hamnet"
"""The Ray Serve application name of ``hamnet serve --ray-address``."""

QUIET_LOGS = {"enable_access_log": False, "log_level": "WARNING"}
"""Ray Serve's logging for the proxy and the replicas: one access-log line per request
costs about as much as a small model's inference."""


def require_serve() -> Any:
    """Import ``ray.serve``, or say which extra installs it.

    Raises:
        MissingDependencyError: If ``ray[serve]`` is not installed.
    """
    try:
        from ray import serve
    except ImportError as err:
        raise MissingDependencyError(
            f"serving on Ray needs ray[serve], but it could not be imported ({err}); "
            "install the serve extra: pip install 'hamnet[serve]'"
        ) from err
    return serve


def _rows(items: list[np.ndarray]) -> int:
    return sum(len(x) for x in items)


class ServeBatcher:
    """An arm's batcher on a Ray Serve replica: ``@serve.batch`` collects the calls.

    Calls are queued by Ray Serve and run together once ``max_batch_size`` rows are
    waiting or ``batch_window_ms`` has passed since the first one (Ray's window is
    fixed: a lone request waits it out, so keep it short, or 0 to run what is queued
    at once). The batch runs through an :class:`InferenceCaller` (on the replica's
    event loop when fast, else in a worker thread). A request of ``max_batch_size``
    rows or more, or every request when batching is off, runs alone.

    Args:
        run: The arm's inference function.
        settings: Supplies ``batch_window_ms`` and ``inline_below_ms``.
        max_batch_size: Most rows per inference call.
        on_batch: Called with the row count of every inference call.
    """

    def __init__(
        self,
        run: RunFn,
        settings: ServeSettings,
        max_batch_size: int,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        serve = require_serve()
        self.caller = InferenceCaller(run, inline_below_ms=settings.inline_below_ms)
        self.max_batch_size = max_batch_size
        self.on_batch = on_batch
        self.enabled = settings.batch_window_ms > 0 and max_batch_size > 1
        self._batched: Callable[[np.ndarray], Any] | None = None
        if self.enabled:
            # One queue per arm: decorate this instance's closure, not a class method
            # (Ray keeps one queue per decorated function).
            self._batched = serve.batch(
                max_batch_size=max_batch_size,
                batch_wait_timeout_s=settings.batch_window_ms / 1000.0,
                batch_size_fn=_rows,
            )(self._run_batch)

    async def start(self) -> None:
        """Nothing to start: Ray Serve creates the queue on the first call."""

    async def stop(self) -> None:
        """Nothing to stop: the queue goes with the replica."""

    async def submit(self, x: np.ndarray) -> BatchResult:
        """Run ``x`` (``[rows, features]``) in the next batch and return its outputs.

        Raises:
            Exception: Whatever the run function raised for the batch.
        """
        if self._batched is None or len(x) >= self.max_batch_size:
            return await run_alone(self.caller, x, self.on_batch)
        result: BatchResult = await self._batched(x)
        return result

    async def _run_batch(self, xs: list[np.ndarray]) -> list[BatchResult]:
        return await run_together(self.caller, xs, self.on_batch)


def serve_batcher(
    run: RunFn, settings: ServeSettings, max_batch: int, on_batch: Callable[[int], None]
) -> ServeBatcher:
    """The batcher factory of a Ray Serve replica (see :class:`ServeBatcher`)."""
    return ServeBatcher(run, settings, max_batch, on_batch)


def build_application(
    settings: ServeSettings,
    *,
    replicas: int = 1,
    replica_cpus: float = 1.0,
    max_ongoing_requests: int | None = None,
) -> Any:
    """The Ray Serve application: ``replicas`` copies of hamnet's app.

    Args:
        settings: How to serve (the same settings as the single-process server).
        replicas: Number of replicas.
        replica_cpus: CPUs Ray reserves for each replica.
        max_ongoing_requests: Requests one replica takes at once (default: twice the
            batch size, at least 64, so batches can fill; Ray's own default is 5).

    Returns:
        A bound deployment, for ``serve.run``.

    Raises:
        ConfigError: If ``replicas`` < 1, ``replica_cpus`` < 0 or
            ``max_ongoing_requests`` < 1.
        MissingDependencyError: If ``ray[serve]`` is not installed.
    """
    if replicas < 1:
        raise ConfigError(f"replicas must be at least 1, but got {replicas}")
    if replica_cpus < 0:
        raise ConfigError(f"replica_cpus must be non-negative, but got {replica_cpus}")
    if max_ongoing_requests is not None and max_ongoing_requests < 1:
        raise ConfigError(
            f"max_ongoing_requests must be at least 1, but got {max_ongoing_requests}"
        )
    serve = require_serve()
    ongoing = max_ongoing_requests or max(64, 2 * (settings.max_batch_size or 32))

    @serve.ingress()
    class HamnetReplica:
        """One replica: loads the models and answers through hamnet's FastAPI app."""

        def __init__(self, settings: ServeSettings) -> None:
            from hamnet.serving.state import ServingState

            self.state = ServingState.build(settings, batcher=serve_batcher)

        def __serve_build_asgi_app__(self) -> Any:
            from hamnet.serving.app import create_app

            return create_app(self.state)

    deployment = serve.deployment(
        HamnetReplica,
        name="HamnetReplica",
        num_replicas=replicas,
        max_ongoing_requests=ongoing,
        ray_actor_options={"num_cpus": replica_cpus},
        logging_config=QUIET_LOGS,
    )
    return deployment.bind(settings)


class RayServer:
    """``hamnet serve --ray-address``: connect to Ray, run the app, tear it down.

    On entry it connects to ``address`` (``local`` starts a Ray instance for this
    process, ``auto`` joins the cluster started by ``ray start`` on this machine, or a
    cluster address), starts Ray Serve's HTTP proxy on ``host:port`` and deploys
    :func:`build_application` as the application ``hamnet`` at ``/``, waiting until
    every replica has loaded its models. On exit it deletes the application; when it
    started Ray itself (``local``) it also shuts Serve and Ray down.

    Args:
        settings: How to serve.
        address: ``local``, ``auto``, or a Ray cluster address.
        replicas: Number of replicas.
        host: Where the HTTP proxy listens.
        port: The proxy's TCP port.
        replica_cpus: CPUs Ray reserves for each replica.
        max_ongoing_requests: Requests one replica takes at once.

    Raises:
        ConfigError: If ``address`` is empty or ``replicas`` < 1.
        MissingDependencyError: If ``ray[serve]`` is not installed.
    """

    def __init__(
        self,
        settings: ServeSettings,
        *,
        address: str,
        replicas: int = 1,
        host: str = "127.0.0.1",
        port: int = 8000,
        replica_cpus: float = 1.0,
        max_ongoing_requests: int | None = None,
    ) -> None:
        if not address.strip():
            raise ConfigError("the Ray address must be local, auto or host:port, but got ''")
        if replicas < 1:
            raise ConfigError(f"replicas must be at least 1, but got {replicas}")
        self.settings = settings
        self.address = address.strip()
        self.replicas = replicas
        self.host = host
        self.port = port
        self.replica_cpus = replica_cpus
        self.max_ongoing_requests = max_ongoing_requests
        self._started_ray = False

    @property
    def url(self) -> str:
        """Where the proxy answers."""
        return f"http://{self.host}:{self.port}"

    def start(self) -> None:
        """Connect to Ray, start the proxy and deploy; returns once the replicas are up."""
        serve = require_serve()
        import ray

        app = build_application(
            self.settings, replicas=self.replicas, replica_cpus=self.replica_cpus,
            max_ongoing_requests=self.max_ongoing_requests,
        )  # fmt: skip
        if not ray.is_initialized():
            ray.init(address=self.address, include_dashboard=False)
            self._started_ray = self.address == "local"
        try:
            serve.start(
                http_options={"host": self.host, "port": self.port}, logging_config=QUIET_LOGS
            )
            serve.run(app, name=APP_NAME, route_prefix="/", blocking=False)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Delete the application; shut Serve and Ray down when this process started Ray."""
        import ray
        from ray import serve

        if not ray.is_initialized():
            return
        try:
            if self._started_ray:
                serve.shutdown()
            else:
                serve.delete(APP_NAME)
        finally:
            if self._started_ray:
                ray.shutdown()
                self._started_ray = False

    def __enter__(self) -> RayServer:
        self.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
