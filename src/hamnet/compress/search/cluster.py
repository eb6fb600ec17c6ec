"""Ray for a search: where trials run, how many at once, and the connection to it.

:func:`connect_ray` starts a local Ray or joins a cluster once and checks that one
trial's resources fit on some node; the :class:`RayHandle` it returns tells
:func:`~hamnet.compress.search.driver.run_search` how many trials to keep in flight.

Example:
    >>> handle = connect_ray(RaySettings(max_concurrent=2))
    >>> handle.max_concurrent
    2
    >>> handle.shutdown()
"""

from __future__ import annotations

import logging
import math
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hamnet.core.env import apply_defaults
from hamnet.core.errors import ConfigError

if TYPE_CHECKING:
    from hamnet.core.hardware import HardwareProfile

logger = logging.getLogger(__name__)

PROBE_TIMEOUT_SECONDS = 3.0
"""How long :func:`connect_ray` waits for a cluster's GCS port to accept a connection."""


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
