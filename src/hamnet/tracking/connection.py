"""The MLflow connection every tracking module shares: URI, client, experiment, batching.

Everything goes through :class:`mlflow.tracking.MlflowClient` with explicit run ids
(never the fluent active-run stack), so calls from several threads or processes do not
interfere. ``mlflow`` is imported lazily.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from hamnet.core.config import TrackingSection

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

logger = logging.getLogger("hamnet.tracking")

RunStatus = Literal["FINISHED", "FAILED", "KILLED"]

MAX_PARAM_LENGTH = 6000
MAX_TAG_LENGTH = 5000
_BATCH = 100  # MLflow accepts at most 100 params / tags per log_batch call

REACHABLE_TIMEOUT_SECONDS = 5.0
"""How long :func:`check_reachable` waits for a tracking server before giving up."""


def resolve_tracking_uri(uri: str, base_dir: str | Path | None = None) -> str:
    """Make a ``sqlite:///relative.db`` URI absolute (against ``base_dir`` or the CWD).

    Other URIs are returned unchanged.
    """
    prefix = "sqlite:///"
    if not uri.startswith(prefix):
        return uri
    raw = uri[len(prefix) :]
    if raw in ("", ":memory:"):
        return uri
    path = Path(raw)
    if not path.is_absolute():
        path = Path(base_dir or Path.cwd()).resolve() / path
    return f"{prefix}{path}"


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI; None for other URIs and in-memory ones."""
    prefix = "sqlite:///"
    if not uri.startswith(prefix) or uri[len(prefix) :] in ("", ":memory:"):
        return None
    return Path(uri[len(prefix) :].split("?", 1)[0])


def check_reachable(uri: str, timeout: float = REACHABLE_TIMEOUT_SECONDS) -> None:
    """Fail fast when an ``http(s)://`` tracking server does not answer.

    One bounded request to the server's ``/health`` endpoint; any HTTP answer counts as
    reachable (authentication is MLflow's business). Other URIs (SQLite, files) are
    not network services and pass.

    Args:
        uri: The tracking URI.
        timeout: Seconds to wait for an answer.

    Raises:
        ConfigError: If the server cannot be reached within ``timeout``.
    """
    import urllib.error
    import urllib.request

    from hamnet.core.errors import ConfigError

    if not uri.startswith(("http://", "https://")):
        return
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout):
            return
    except urllib.error.HTTPError:
        return  # it answered
    except (OSError, ValueError) as err:
        reason = getattr(err, "reason", err)
        waited = time.perf_counter() - started
        raise ConfigError(
            f"the MLflow tracking server must be reachable before any stage runs, but "
            f"{uri} did not answer ({reason}; gave up after {waited:.1f} s). Start it, fix "
            f"tracking.mlflow_uri / $MLFLOW_TRACKING_URI, or set tracking.enabled: false"
        ) from None


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Flatten nested mappings into ``{"a.b.c": "value"}`` with string values.

    Lists and other non-string values are JSON-encoded; ``None`` becomes ``"null"``.
    """
    flat: dict[str, str] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, f"{name}."))
        elif isinstance(value, str):
            flat[name] = value
        else:
            flat[name] = json.dumps(value, sort_keys=True, default=str)
    return flat


def clip(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, ending in ``...`` when cut."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def clip_tags(tags: Mapping[str, Any]) -> dict[str, str]:
    """Tag values as strings MLflow accepts (at most :data:`MAX_TAG_LENGTH` long)."""
    return {k: clip(str(v), MAX_TAG_LENGTH) for k, v in tags.items()}


def bool_tag(value: bool) -> str:
    """``"true"`` or ``"false"``."""
    return "true" if value else "false"


def chunks(items: list[Any], size: int = _BATCH) -> Iterable[list[Any]]:
    """``items`` in consecutive lists of at most ``size``."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


class Connection:
    """An MLflow client bound to one tracking URI and one experiment.

    For ``sqlite:///`` URIs a relative database path resolves against ``base_dir``
    (default: the current directory), and a new experiment stores its artifacts in
    ``mlruns/`` beside the database file, wherever the process runs from. MLflow's
    "View run at <url>" lines are silenced unless
    ``MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT`` is set.

    Args:
        cfg: The tracking section (URI, experiment, registered model, alias).
        base_dir: Folder a relative SQLite path resolves against.

    Raises:
        ConfigError: An ``http(s)://`` tracking server that does not answer.
    """

    def __init__(self, cfg: TrackingSection, *, base_dir: str | Path | None = None) -> None:
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
        from mlflow.tracking import MlflowClient

        self.cfg = cfg
        self.uri = resolve_tracking_uri(cfg.resolved_uri(), base_dir)
        db = sqlite_path(self.uri)
        self.artifact_location: str | None = None
        if db is not None:
            db.parent.mkdir(parents=True, exist_ok=True)
            self.artifact_location = (db.parent / "mlruns").as_uri()
        check_reachable(self.uri)
        self.client: MlflowClient = MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)
        self.experiment_id = self._ensure_experiment(cfg.experiment)

    def _ensure_experiment(self, name: str) -> str:
        from mlflow.exceptions import MlflowException

        experiment = self.client.get_experiment_by_name(name)
        if experiment is None:
            try:
                return self.client.create_experiment(name, artifact_location=self.artifact_location)
            except MlflowException:  # created by another process meanwhile
                experiment = self.client.get_experiment_by_name(name)
                if experiment is None:
                    raise
        if experiment.lifecycle_stage == "deleted":
            logger.warning("restoring deleted MLflow experiment %r", name)
            self.client.restore_experiment(experiment.experiment_id)
        return str(experiment.experiment_id)

    def log(
        self,
        run_id: str,
        *,
        params: Mapping[str, str] | None = None,
        metrics: Mapping[str, float] | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> None:
        """Log params, metrics and tags to ``run_id`` in batches MLflow accepts."""
        from mlflow.entities import Metric, Param, RunTag

        now = int(time.time() * 1000)
        param_list = [
            Param(clip(k, 250), clip(str(v), MAX_PARAM_LENGTH)) for k, v in (params or {}).items()
        ]
        metric_list = [Metric(k, float(v), now, 0) for k, v in (metrics or {}).items()]
        tag_list = [RunTag(k, v) for k, v in clip_tags(tags or {}).items()]
        for chunk in chunks(param_list):
            self.client.log_batch(run_id, params=chunk)
        for metric_chunk in chunks(metric_list, 1000):
            self.client.log_batch(run_id, metrics=metric_chunk)
        for tag_chunk in chunks(tag_list):
            self.client.log_batch(run_id, tags=tag_chunk)

    def end(
        self, run_id: str, status: RunStatus | str = "FINISHED", error: str | None = None
    ) -> None:
        """Close a run.

        Args:
            run_id: The run.
            status: ``FINISHED``, ``FAILED`` or ``KILLED``.
            error: Why it failed (stored in the tag ``hamnet.error``).

        Raises:
            ValueError: An unknown status.
        """
        if status not in ("FINISHED", "FAILED", "KILLED"):
            raise ValueError(f"status must be FINISHED, FAILED or KILLED, but got {status!r}")
        if error:
            self.client.set_tag(run_id, "hamnet.error", clip(error, MAX_TAG_LENGTH))
        self.client.set_terminated(run_id, status)
