"""MLflow tracking and model registry for optimization runs.

One *parent* run per optimization (config, plan, Pareto table and plot, recommended
metrics) and one *nested* run per candidate (params, metrics, lineage tags, model
files), logged as soon as its stage finishes so a later crash loses nothing. The
recommended candidate is registered as a new model version; the champion alias moves
to it only when it beats the current champion under the current constraints.

Everything goes through :class:`mlflow.tracking.MlflowClient` with explicit run ids
(never the fluent active-run stack), so calls from several threads or processes do not
interfere. ``mlflow`` is imported lazily.

Example:
    >>> tracker = Tracker(cfg.tracking)  # doctest: +SKIP
    >>> run_id = tracker.start_parent("nightly", config=cfg, tags={})  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from hamnet.core.candidate import Candidate, Metrics, is_number
from hamnet.core.config import ConstraintsSection, OptimizeConfig, TrackingSection

if TYPE_CHECKING:
    import pandas as pd
    from mlflow.entities.model_registry import ModelVersion
    from mlflow.tracking import MlflowClient

    from hamnet.evaluate.pareto import Assessment, Selection

logger = logging.getLogger("hamnet.tracking")

RunStatus = Literal["FINISHED", "FAILED", "KILLED"]

MAX_PARAM_LENGTH = 6000
MAX_TAG_LENGTH = 5000
_BATCH = 100  # MLflow accepts at most 100 params / tags per log_batch call

TAG_CANDIDATE_ID = "hamnet.candidate_id"
TAG_METRICS = "hamnet.metrics"
TAG_BASELINE_ACCURACY = "hamnet.baseline_accuracy"
TAG_SHA256 = "hamnet.artifact_sha256"


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


def _sqlite_path(uri: str) -> Path | None:
    prefix = "sqlite:///"
    if not uri.startswith(prefix) or uri[len(prefix) :] in ("", ":memory:"):
        return None
    return Path(uri[len(prefix) :].split("?", 1)[0])


TAG_HOST = "hamnet.host"
TAG_PID = "hamnet.pid"
TAG_PID_STARTED = "hamnet.pid_started"

REACHABLE_TIMEOUT_SECONDS = 5.0
"""How long :func:`check_reachable` waits for a tracking server before giving up."""


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


def _process_tags() -> dict[str, str]:
    """Tags that identify this process, so a later run can tell it died."""
    import socket

    import psutil

    return {
        TAG_HOST: socket.gethostname(),
        TAG_PID: str(os.getpid()),
        TAG_PID_STARTED: f"{psutil.Process().create_time():.3f}",
    }


def _process_alive(tags: Mapping[str, str]) -> bool:
    """Whether the process named by :func:`_process_tags` still runs (unknown: assume so)."""
    import psutil

    try:
        pid = int(tags[TAG_PID])
        started = float(tags[TAG_PID_STARTED])
    except (KeyError, ValueError):
        return True
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return False
        return abs(process.create_time() - started) < 0.01
    except psutil.NoSuchProcess:
        return False
    except psutil.Error:
        return True


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


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _bool_tag(value: bool) -> str:
    return "true" if value else "false"


@dataclass
class RegistrationResult:
    """The outcome of :meth:`Tracker.register`.

    Attributes:
        name: The registered model.
        version: The new model version.
        champion_moved: Whether the champion alias now points at the new version.
        message: One sentence saying what happened to the champion, with numbers.
        previous_champion: The version the alias pointed at before, if any.
    """

    name: str
    version: str
    champion_moved: bool
    message: str
    previous_champion: str | None = None


class Tracker:
    """Logs optimization runs, candidates and registrations to MLflow.

    For ``sqlite:///`` URIs a relative database path resolves against ``base_dir``
    (default: the current directory), and a new experiment stores its artifacts in
    ``mlruns/`` beside the database file, wherever the process runs from. MLflow's
    "View run at <url>" lines are silenced unless
    ``MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT`` is set.

    Args:
        cfg: The tracking section (URI, experiment, registered model, alias).
        base_dir: Folder a relative SQLite path resolves against.
    """

    def __init__(self, cfg: TrackingSection, *, base_dir: str | Path | None = None) -> None:
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
        from mlflow.tracking import MlflowClient

        self.cfg = cfg
        self.uri = resolve_tracking_uri(cfg.resolved_uri(), base_dir)
        db = _sqlite_path(self.uri)
        self.artifact_location: str | None = None
        if db is not None:
            db.parent.mkdir(parents=True, exist_ok=True)
            self.artifact_location = (db.parent / "mlruns").as_uri()
        check_reachable(self.uri)
        self.client: MlflowClient = MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)
        self.experiment_id = self._ensure_experiment(cfg.experiment)
        self._candidate_names: dict[str, str] = {}

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

    # ---------------------------------------------------------------- runs

    def start_parent(
        self,
        run_name: str,
        *,
        config: OptimizeConfig | None = None,
        params: Mapping[str, Any] | None = None,
        tags: Mapping[str, Any] | None = None,
    ) -> str:
        """Open the parent run of one optimization.

        The config is logged as the artifact ``config.yaml`` and as flattened params
        (``stages.train.epochs``...); ``params`` adds or overrides params.

        Args:
            run_name: The run's name.
            config: The run configuration.
            params: Extra (possibly nested) params.
            tags: Extra tags, e.g. ``{"prefect.flow_run_id": ...}``.

        Returns:
            The parent run id.
        """
        import yaml

        from hamnet.core.version import __version__

        run_tags = {"hamnet.kind": "optimization", "hamnet.version": __version__}
        run_tags.update(_process_tags())
        if config is not None:
            run_tags["hamnet.config_fingerprint"] = config.fingerprint()
            self.close_abandoned(run_tags["hamnet.config_fingerprint"], closed_by=run_name)
        run_tags.update({k: str(v) for k, v in (tags or {}).items()})
        run = self.client.create_run(self.experiment_id, run_name=run_name, tags=run_tags)
        run_id: str = run.info.run_id
        try:
            document: dict[str, Any] = config.model_dump(mode="json") if config else {}
            flat = flatten(document)
            flat.update(flatten(params or {}))
            self._log(run_id, params=flat)
            if document or params:
                text = yaml.safe_dump(document or dict(params or {}), sort_keys=False)
                self.client.log_text(run_id, text, "config.yaml")
        except Exception:
            self.client.set_terminated(run_id, "FAILED")
            raise
        return run_id

    def log_candidate(
        self,
        parent_run_id: str,
        candidate: Candidate,
        assessment: Assessment | None,
        *,
        model_file: bool,
        parent_name: str | None = None,
    ) -> str:
        """Log one candidate as a finished run nested under the parent run.

        Args:
            parent_run_id: The optimization's parent run.
            candidate: The (measured) candidate.
            assessment: Its assessment against the constraints, if made.
            model_file: Log the model file(s) under ``model/``.
            parent_name: Name of the candidate it was made from (resolved from the
                candidates this tracker logged when None).

        Returns:
            The nested run id.
        """
        parent_name = parent_name or self._candidate_names.get(candidate.parent_id or "")
        tags = {
            "mlflow.parentRunId": parent_run_id,
            TAG_CANDIDATE_ID: candidate.id,
            "hamnet.candidate_name": candidate.name,
            "hamnet.parent_candidate": candidate.parent_id or "none",
            "hamnet.stage": candidate.stage,
            "hamnet.method": candidate.method,
            "hamnet.runtime": candidate.runtime,
            "hamnet.precision": candidate.precision,
            "hamnet.rejected": _bool_tag(candidate.rejected is not None),
            "hamnet.meets_constraints": (
                _bool_tag(assessment.meets_constraints) if assessment else "unknown"
            ),
            "hamnet.kind": "candidate",
        }
        if parent_name:
            tags["hamnet.parent_candidate_name"] = parent_name
        if candidate.rejected:
            tags["hamnet.rejected_reason"] = candidate.rejected
        if assessment and assessment.violations:
            tags["hamnet.violations"] = "; ".join(assessment.violations)
        if candidate.notes:
            tags["mlflow.note.content"] = "\n".join(candidate.notes)
        if candidate.params.get("teachers"):  # distilled: lineage names the teacher(s)
            tags["hamnet.teachers"] = ", ".join(map(str, candidate.params["teachers"]))
            tags["hamnet.teacher_ids"] = ", ".join(map(str, candidate.params["teacher_ids"]))
        params = {
            "stage": candidate.stage,
            "method": candidate.method,
            "runtime": candidate.runtime,
            "precision": candidate.precision,
            "parent_candidate": candidate.parent_id or "none",
            "artifact.sha256": candidate.artifact.sha256,
            "artifact.format": candidate.artifact.format,
            "artifact.size_bytes": str(candidate.artifact.size_bytes),
            **flatten(candidate.params, "params."),
        }
        metrics: dict[str, float] = {}
        if candidate.metrics is not None:
            metrics.update(candidate.metrics.as_mlflow())
        if assessment is not None:
            metrics["accuracy_drop"] = assessment.accuracy_drop
            metrics["violation_score"] = assessment.violation_score
        if candidate.parity_max_abs_diff is not None:
            metrics["parity_max_abs_diff"] = candidate.parity_max_abs_diff

        run = self.client.create_run(
            self.experiment_id, run_name=candidate.name, tags=_clip_tags(tags)
        )
        run_id: str = run.info.run_id
        try:
            self._log(run_id, params=params, metrics=metrics)
            self.client.log_text(run_id, candidate.model_dump_json(indent=2), "candidate.json")
            if model_file:
                self._log_model_files(run_id, candidate)
        except Exception:
            self.client.set_terminated(run_id, "FAILED")
            raise
        self.client.set_terminated(run_id, "FINISHED")
        self._candidate_names[candidate.id] = candidate.name
        return run_id

    def _log_model_files(self, run_id: str, candidate: Candidate) -> bool:
        """Copy the candidate's model file(s) to ``model/`` of ``run_id``."""
        files = candidate.artifact.files
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            logger.warning(
                "candidate %s: model files missing, not logged: %s", candidate.name, missing
            )
            self.client.set_tag(run_id, "hamnet.model_logged", "false")
            return False
        for path in files:
            self.client.log_artifact(run_id, str(path), "model")
        self.client.set_tag(run_id, "hamnet.model_logged", "true")
        return True

    def log_selection(
        self,
        parent_run_id: str,
        df: pd.DataFrame,
        selection: Selection,
        figure_dir: str | Path | None = None,
    ) -> None:
        """Log the Pareto table, front and plot, and the recommended candidate's metrics.

        Writes ``pareto/candidates.csv``, ``pareto/front.csv`` and ``pareto/pareto.png``
        (the plot in ``figure_dir`` when present, else drawn anew) and, when present,
        ``pareto/candidates.md``.

        Args:
            parent_run_id: The optimization's parent run.
            df: The table from :func:`hamnet.evaluate.pareto.candidates_table`.
            selection: The selection.
            figure_dir: Folder where :func:`hamnet.evaluate.report.write_report` wrote its files.
        """
        from hamnet.evaluate.report import pareto_plot

        with tempfile.TemporaryDirectory(prefix="hamnet-pareto-") as tmp:
            folder = Path(tmp)
            df.to_csv(folder / "candidates.csv", index=False)
            df[df["on_front"].astype(bool)].to_csv(folder / "front.csv", index=False)
            given = Path(figure_dir) if figure_dir is not None else None
            plot = given / "pareto.png" if given is not None else None
            if plot is None or not plot.is_file():
                plot = folder / "pareto.png"
                pareto_plot(df, plot)
            paths = [folder / "candidates.csv", folder / "front.csv", plot]
            markdown = given / "candidates.md" if given is not None else None
            if markdown is not None and markdown.is_file():
                paths.append(markdown)
            for path in paths:
                self.client.log_artifact(parent_run_id, str(path), "pareto")

        rec = selection.recommended
        metrics: dict[str, float] = {
            "n_candidates": float(len(df)),
            "n_front": float(len(selection.front_ids)),
            "n_feasible": float(sum(a.meets_constraints for a in selection.assessments.values())),
        }
        tags = {
            "hamnet.recommended": rec.name if rec else "none",
            "hamnet.recommended_id": rec.id if rec else "none",
            "hamnet.constraints_satisfied": _bool_tag(selection.constraints_satisfied),
            "hamnet.selection_message": selection.message,
        }
        if rec is not None and rec.metrics is not None:
            metrics.update({f"recommended.{k}": v for k, v in rec.metrics.as_mlflow().items()})
            verdict = selection.assessments.get(rec.id)
            if verdict is not None:
                metrics["recommended.accuracy_drop"] = verdict.accuracy_drop
        self._log(parent_run_id, metrics=metrics, tags=tags)

    def end(
        self, run_id: str, status: RunStatus | str = "FINISHED", error: str | None = None
    ) -> None:
        """Close a run.

        Args:
            run_id: The run.
            status: ``FINISHED``, ``FAILED`` or ``KILLED``.
            error: Why it failed (stored in the tag ``hamnet.error``).
        """
        if status not in ("FINISHED", "FAILED", "KILLED"):
            raise ValueError(f"status must be FINISHED, FAILED or KILLED, but got {status!r}")
        if error:
            self.client.set_tag(run_id, "hamnet.error", _clip(error, MAX_TAG_LENGTH))
        self.client.set_terminated(run_id, status)

    def close_abandoned(self, config_fingerprint: str, *, closed_by: str) -> list[str]:
        """Close as FAILED the parent runs of this config whose process died without closing.

        A flow process killed with SIGKILL (or by the OOM killer, or a reboot) cannot
        close its MLflow parent run, which would stay RUNNING forever. A parent run
        whose tags name this host and a process that no longer exists (or is another
        process that reused the pid) is ended FAILED with the tag ``hamnet.error``
        saying why. Runs started on other hosts are left alone.

        Args:
            config_fingerprint: Only runs of this config (tag ``hamnet.config_fingerprint``).
            closed_by: Name of the run that found them (written into the tag).

        Returns:
            The run ids closed.
        """
        import socket

        query = (
            "tags.`hamnet.kind` = 'optimization' and attributes.status = 'RUNNING' and "
            f"tags.`hamnet.config_fingerprint` = '{config_fingerprint}'"
        )
        closed: list[str] = []
        host = socket.gethostname()
        for run in self.client.search_runs([self.experiment_id], filter_string=query):
            tags = run.data.tags
            if tags.get(TAG_HOST) != host or _process_alive(tags):
                continue
            error = (
                f"abandoned: process {tags.get(TAG_PID)} on {host} ended without closing this "
                f"run (killed?); closed as FAILED by run {closed_by!r}"
            )
            self.end(run.info.run_id, "FAILED", error=error)
            logger.warning("MLflow run %s: %s", run.info.run_id, error)
            closed.append(run.info.run_id)
        return closed

    def record_attempt(
        self, parent_run_id: str, stage: str, attempt: int, error: str | None = None
    ) -> None:
        """Record one attempt of a stage on the parent run (retries made visible).

        Tags ``hamnet.stage.<stage>.attempts`` (attempts so far),
        ``hamnet.stage.<stage>.first_error`` (the first failure, kept when later ones
        follow) and ``hamnet.stage.<stage>.error.<n>``; metric ``retries.<stage>``.

        Args:
            parent_run_id: The optimization's parent run.
            stage: The stage's name.
            attempt: 1 for the first try, 2 for the first retry...
            error: Why this attempt failed; None when it succeeded.
        """
        prefix = f"hamnet.stage.{stage}"
        tags = {f"{prefix}.attempts": str(attempt)}
        if error is not None:
            tags[f"{prefix}.error.{attempt}"] = error
            existing = self.client.get_run(parent_run_id).data.tags
            if f"{prefix}.first_error" not in existing:
                tags[f"{prefix}.first_error"] = error
        self._log(parent_run_id, tags=tags, metrics={f"retries.{stage}": float(attempt - 1)})

    # ------------------------------------------------------------ registry

    def register(
        self,
        candidate: Candidate,
        candidate_run_id: str,
        assessment: Assessment,
        *,
        objective: str,
        min_improvement: float,
        constraints: ConstraintsSection,
        baseline_accuracy: float | None = None,
    ) -> RegistrationResult:
        """Register a candidate as a new model version; move the champion if it wins.

        The version's source is the candidate run's ``model/`` folder (logged now if it
        was not). Its tags hold the candidate id, runtime, precision, metrics, the
        baseline accuracy and the constraints. The current champion is re-assessed
        under ``constraints`` from its stored metrics and baseline accuracy, and the
        alias moves only when :func:`hamnet.evaluate.pareto.beats` says the new version wins
        (the first registration always becomes champion).

        Args:
            candidate: The recommended, measured candidate.
            candidate_run_id: Its nested run (from :meth:`log_candidate`).
            assessment: Its assessment under ``constraints``.
            objective: The selection objective.
            min_improvement: Relative margin needed to take over the champion.
            constraints: The current constraints.
            baseline_accuracy: Accuracy of this run's baseline (derived from the
                assessment when None).

        Returns:
            The new version and what happened to the champion.

        Raises:
            ValueError: If no registered model is configured or the candidate was not
                measured.
        """
        from hamnet.evaluate.pareto import assess_metrics, beats, format_objective

        name = self.cfg.registered_model
        if not name:
            raise ValueError(
                "tracking.registered_model must be set to register a model, but got none"
            )
        if candidate.metrics is None:
            raise ValueError(f"candidate {candidate.name!r} must be measured before registration")
        metrics = candidate.metrics
        if baseline_accuracy is None:
            baseline_accuracy = metrics.accuracy + assessment.accuracy_drop
        self._ensure_registered_model(name)
        if not self.client.list_artifacts(candidate_run_id, "model"):
            self._log_model_files(candidate_run_id, candidate)
        run = self.client.get_run(candidate_run_id)
        source = f"{run.info.artifact_uri.rstrip('/')}/model"
        tags = {
            TAG_CANDIDATE_ID: candidate.id,
            "hamnet.candidate_name": candidate.name,
            "hamnet.stage": candidate.stage,
            "hamnet.method": candidate.method,
            "hamnet.runtime": candidate.runtime,
            "hamnet.precision": candidate.precision,
            "hamnet.format": candidate.artifact.format,
            TAG_SHA256: candidate.artifact.sha256,
            TAG_METRICS: metrics.model_dump_json(),
            TAG_BASELINE_ACCURACY: repr(baseline_accuracy),
            "hamnet.accuracy_drop": repr(assessment.accuracy_drop),
            "hamnet.constraints": constraints.model_dump_json(),
            "hamnet.meets_constraints": _bool_tag(assessment.meets_constraints),
            "hamnet.objective": objective,
            **{f"hamnet.metric.{k}": repr(v) for k, v in metrics.as_mlflow().items()},
        }
        description = (
            f"{candidate.name} ({candidate.runtime}, {candidate.precision}) from stage "
            f"{candidate.stage}: accuracy {100 * metrics.accuracy:.2f}%, latency p50 "
            f"{metrics.latency_p50_ms:.3f} ms, size {metrics.size_mb:.3f} MB"
        )
        existing = self._version_with_sha(name, candidate.artifact.sha256)
        if existing is not None:
            # The same model file is already registered: reuse that version instead of
            # adding an identical one on every (cached) rerun.
            new = str(existing.version)
        else:
            version = self.client.create_model_version(
                name,
                source=source,
                run_id=candidate_run_id,
                tags=_clip_tags(tags),
                description=description,
            )
            new = str(version.version)

        alias = self.cfg.champion_alias
        old = self._champion(name)
        previous = str(old.version) if old is not None else None
        moved: bool
        if old is None:
            moved = True
            message = (
                f"v{new} is the first {alias} of {name}: "
                f"{format_objective(objective, float(getattr(metrics, objective)))}"
            )
        elif (old.tags or {}).get(TAG_SHA256) == candidate.artifact.sha256:
            moved = False
            sha = candidate.artifact.sha256[:12]
            message = f"{alias} stays v{previous}: it is the recommended model (sha256 {sha})"
        else:
            old_metrics, old_baseline = _stored_metrics(old)
            if old_metrics is None or old_baseline is None:
                moved = False
                message = (
                    f"{alias} stays v{previous}: it has no hamnet metrics to compare with; "
                    f"move the alias to v{new} by hand if it should win"
                )
            else:
                old_meets = assess_metrics(
                    str((old.tags or {}).get(TAG_CANDIDATE_ID, previous)),
                    old_metrics,
                    old_baseline,
                    constraints,
                ).meets_constraints
                moved, reason = beats(
                    metrics,
                    assessment.meets_constraints,
                    old_metrics,
                    old_meets,
                    objective,
                    min_improvement,
                )
                message = (
                    f"{alias} moved from v{previous} to v{new}: {reason}"
                    if moved
                    else f"{alias} stays v{previous} over v{new}: {reason}"
                )
        if moved:
            self.client.set_registered_model_alias(name, alias, new)
        self.client.set_model_version_tag(
            name, new, "hamnet.champion_decision", _clip(message, MAX_TAG_LENGTH)
        )
        return RegistrationResult(
            name=name,
            version=new,
            champion_moved=moved,
            message=message,
            previous_champion=previous,
        )

    def _ensure_registered_model(self, name: str) -> None:
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_registered_model(name)
        except MlflowException:
            try:
                self.client.create_registered_model(
                    name, description="Models recommended by hamnet-optimize."
                )
            except MlflowException:  # created by another process meanwhile
                self.client.get_registered_model(name)

    def _version_with_sha(self, name: str, sha256: str) -> ModelVersion | None:
        for version in self.client.search_model_versions(f"name='{name}'"):
            if (version.tags or {}).get(TAG_SHA256) == sha256:
                return version
        return None

    def _champion(self, name: str) -> ModelVersion | None:
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_model_version_by_alias(name, self.cfg.champion_alias)
        except MlflowException:
            return None

    # ------------------------------------------------------------- helpers

    def log_trial(self, parent_run_id: str, stage: str, study_name: str, trial: Any) -> str:
        """Log one finished Optuna trial as a nested run of ``parent_run_id``.

        Params are the trial's sampled values; metrics its objective values, the
        measured metrics it recorded, and its per-epoch history (``val_accuracy`` etc.
        with the epoch as step); the run's status follows the trial's state (FAILED for
        FAIL, KILLED for PRUNED) and the failure traceback or prune reason is its note.

        Args:
            parent_run_id: The optimization's parent run.
            stage: The search stage (``nas`` or ``hpo``).
            study_name: The Optuna study the trial belongs to.
            trial: An ``optuna.trial.FrozenTrial``.

        Returns:
            The nested run id.
        """
        from mlflow.entities import Metric

        attrs = dict(trial.user_attrs)
        state = trial.state.name
        tags = {
            "mlflow.parentRunId": parent_run_id,
            "hamnet.kind": "trial",
            "hamnet.stage": stage,
            "hamnet.study": study_name,
            "hamnet.trial_number": str(trial.number),
            "hamnet.trial_state": state,
        }
        note = attrs.get("error") or attrs.get("prune_reason")
        if note:
            tags["mlflow.note.content"] = str(note)
        run = self.client.create_run(
            self.experiment_id, run_name=f"{stage}-trial-{trial.number}", tags=_clip_tags(tags)
        )
        run_id: str = run.info.run_id
        metrics = {f"objective_{i}": v for i, v in enumerate(trial.values or [])}
        metrics.update(
            {k: float(v) for k, v in (attrs.get("metrics") or {}).items() if is_number(v)}
        )
        if trial.duration is not None:
            metrics["trial_seconds"] = trial.duration.total_seconds()
        self._log(run_id, params=flatten(trial.params), metrics=metrics)
        now = int(time.time() * 1000)
        history = [
            Metric(key, float(value), now, int(record["epoch"]))
            for record in attrs.get("history") or []
            for key, value in record.items()
            if key != "epoch" and is_number(value)
        ]
        history += [
            Metric("intermediate_value", float(v), now, int(step))
            for step, v in trial.intermediate_values.items()
        ]
        for chunk in _chunks(history, 1000):
            self.client.log_batch(run_id, metrics=chunk)
        status = {"COMPLETE": "FINISHED", "FAIL": "FAILED", "PRUNED": "KILLED"}.get(state, "FAILED")
        self.client.set_terminated(run_id, status)
        return run_id

    def _log(
        self,
        run_id: str,
        *,
        params: Mapping[str, str] | None = None,
        metrics: Mapping[str, float] | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> None:
        """Log params, metrics and tags in batches MLflow accepts."""
        from mlflow.entities import Metric, Param, RunTag

        now = int(time.time() * 1000)
        param_list = [
            Param(_clip(k, 250), _clip(str(v), MAX_PARAM_LENGTH)) for k, v in (params or {}).items()
        ]
        metric_list = [Metric(k, float(v), now, 0) for k, v in (metrics or {}).items()]
        tag_list = [RunTag(k, v) for k, v in _clip_tags(tags or {}).items()]
        for chunk in _chunks(param_list):
            self.client.log_batch(run_id, params=chunk)
        for metric_chunk in _chunks(metric_list, 1000):
            self.client.log_batch(run_id, metrics=metric_chunk)
        for tag_chunk in _chunks(tag_list):
            self.client.log_batch(run_id, tags=tag_chunk)


def _chunks(items: list[Any], size: int = _BATCH) -> Iterable[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _clip_tags(tags: Mapping[str, Any]) -> dict[str, str]:
    return {k: _clip(str(v), MAX_TAG_LENGTH) for k, v in tags.items()}


def _stored_metrics(version: ModelVersion) -> tuple[Metrics | None, float | None]:
    """The metrics and baseline accuracy hamnet stored on a model version's tags."""
    tags = version.tags or {}
    try:
        metrics = Metrics.model_validate_json(tags[TAG_METRICS])
        baseline = float(tags[TAG_BASELINE_ACCURACY])
    except (KeyError, ValueError):
        return None, None
    return metrics, baseline


def log_benchmark_files(
    tracking_uri: str,
    run_name: str,
    paths: Iterable[str | Path],
    *,
    experiment: str = "hamnet-benchmarks",
) -> str | None:
    """Log a benchmark's output files as the artifacts of one MLflow run.

    Benchmarks write their tables and plots to disk first; MLflow is a second home for
    them, so a tracking server that cannot be reached is reported and skipped.

    Args:
        tracking_uri: The MLflow tracking URI.
        run_name: Name of the run (e.g. the benchmark's name).
        paths: Files to log.
        experiment: Experiment to log into.

    Returns:
        The run id, or None when logging failed (the reason is printed).
    """
    try:
        import mlflow

        mlflow.set_tracking_uri(tracking_uri)
        mlflow.set_experiment(experiment)
        with mlflow.start_run(run_name=run_name) as run:
            for path in paths:
                mlflow.log_artifact(str(path))
            return str(run.info.run_id)
    except Exception as err:  # the files are on disk either way
        print(f"MLflow logging skipped: {err}")
        return None
