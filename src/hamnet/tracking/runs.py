"""Run logging: one parent run per optimization and nested runs under it.

The parent run holds the config, the plan, the Pareto table and plot, the recommended
candidate's metrics and every stage attempt; one nested run per candidate (params,
metrics, lineage tags, model files) is logged as soon as its stage finishes, so a later
crash loses nothing; search stages log one nested run per Optuna trial.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hamnet.compress.quantize.attribution import log_quantization_layers
from hamnet.core.candidate import Candidate, is_number
from hamnet.core.config import OptimizeConfig
from hamnet.tracking.connection import Connection, bool_tag, chunks, clip_tags, flatten
from hamnet.tracking.reaper import close_abandoned, process_tags

if TYPE_CHECKING:
    import pandas as pd

    from hamnet.evaluate.pareto import Assessment, Selection

logger = logging.getLogger("hamnet.tracking")

TAG_CANDIDATE_ID = "hamnet.candidate_id"

_TRIAL_STATUS = {"COMPLETE": "FINISHED", "FAIL": "FAILED", "PRUNED": "KILLED"}


def log_model_files(connection: Connection, run_id: str, candidate: Candidate) -> bool:
    """Copy the candidate's model file(s) to ``model/`` of ``run_id``.

    Returns:
        Whether the files were logged (False when one is missing on disk).
    """
    files = candidate.artifact.files
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        logger.warning("candidate %s: model files missing, not logged: %s", candidate.name, missing)
        connection.client.set_tag(run_id, "hamnet.model_logged", "false")
        return False
    for path in files:
        connection.client.log_artifact(run_id, str(path), "model")
    connection.client.set_tag(run_id, "hamnet.model_logged", "true")
    return True


class RunLogger:
    """Logs parent runs, candidate runs, selections, trials and stage attempts.

    Args:
        connection: The MLflow connection to log through.
    """

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self._candidate_names: dict[str, str] = {}

    @property
    def _client(self) -> Any:
        return self.connection.client

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
        (``stages.train.epochs``...); ``params`` adds or overrides params. Parent runs
        of the same config left RUNNING by a dead process are closed first
        (:func:`hamnet.tracking.reaper.close_abandoned`).

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
        run_tags.update(process_tags())
        if config is not None:
            run_tags["hamnet.config_fingerprint"] = config.fingerprint()
            close_abandoned(
                self.connection, run_tags["hamnet.config_fingerprint"], closed_by=run_name
            )
        run_tags.update({k: str(v) for k, v in (tags or {}).items()})
        run = self._client.create_run(
            self.connection.experiment_id, run_name=run_name, tags=run_tags
        )
        run_id: str = run.info.run_id
        try:
            document: dict[str, Any] = config.model_dump(mode="json") if config else {}
            flat = flatten(document)
            flat.update(flatten(params or {}))
            self.connection.log(run_id, params=flat)
            if document or params:
                text = yaml.safe_dump(document or dict(params or {}), sort_keys=False)
                self._client.log_text(run_id, text, "config.yaml")
        except Exception:
            self._client.set_terminated(run_id, "FAILED")
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
                candidates this logger logged when None).

        Returns:
            The nested run id.
        """
        parent_name = parent_name or self._candidate_names.get(candidate.parent_id or "")
        tags = _candidate_tags(parent_run_id, candidate, assessment, parent_name)
        run = self._client.create_run(
            self.connection.experiment_id, run_name=candidate.name, tags=clip_tags(tags)
        )
        run_id: str = run.info.run_id
        try:
            self.connection.log(
                run_id,
                params=_candidate_params(candidate),
                metrics=_candidate_metrics(candidate, assessment),
            )
            self._client.log_text(run_id, candidate.model_dump_json(indent=2), "candidate.json")
            log_quantization_layers(self._client, run_id, candidate)
            if model_file:
                log_model_files(self.connection, run_id, candidate)
        except Exception:
            self._client.set_terminated(run_id, "FAILED")
            raise
        self._client.set_terminated(run_id, "FINISHED")
        self._candidate_names[candidate.id] = candidate.name
        return run_id

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
        with tempfile.TemporaryDirectory(prefix="hamnet-pareto-") as tmp:
            for path in _pareto_files(df, Path(tmp), figure_dir):
                self._client.log_artifact(parent_run_id, str(path), "pareto")

        rec = selection.recommended
        metrics: dict[str, float] = {
            "n_candidates": float(len(df)),
            "n_front": float(len(selection.front_ids)),
            "n_feasible": float(sum(a.meets_constraints for a in selection.assessments.values())),
        }
        tags = {
            "hamnet.recommended": rec.name if rec else "none",
            "hamnet.recommended_id": rec.id if rec else "none",
            "hamnet.constraints_satisfied": bool_tag(selection.constraints_satisfied),
            "hamnet.selection_message": selection.message,
        }
        if rec is not None and rec.metrics is not None:
            metrics.update({f"recommended.{k}": v for k, v in rec.metrics.as_mlflow().items()})
            verdict = selection.assessments.get(rec.id)
            if verdict is not None:
                metrics["recommended.accuracy_drop"] = verdict.accuracy_drop
        self.connection.log(parent_run_id, metrics=metrics, tags=tags)

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
            existing = self._client.get_run(parent_run_id).data.tags
            if f"{prefix}.first_error" not in existing:
                tags[f"{prefix}.first_error"] = error
        self.connection.log(
            parent_run_id, tags=tags, metrics={f"retries.{stage}": float(attempt - 1)}
        )

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
        run = self._client.create_run(
            self.connection.experiment_id,
            run_name=f"{stage}-trial-{trial.number}",
            tags=clip_tags(tags),
        )
        run_id: str = run.info.run_id
        metrics = {f"objective_{i}": v for i, v in enumerate(trial.values or [])}
        metrics.update(
            {k: float(v) for k, v in (attrs.get("metrics") or {}).items() if is_number(v)}
        )
        if trial.duration is not None:
            metrics["trial_seconds"] = trial.duration.total_seconds()
        self.connection.log(run_id, params=flatten(trial.params), metrics=metrics)
        for chunk in chunks(_trial_history(trial), 1000):
            self._client.log_batch(run_id, metrics=chunk)
        self._client.set_terminated(run_id, _TRIAL_STATUS.get(state, "FAILED"))
        return run_id


def _candidate_tags(
    parent_run_id: str,
    candidate: Candidate,
    assessment: Assessment | None,
    parent_name: str | None,
) -> dict[str, str]:
    """Lineage and verdict tags of a candidate's nested run."""
    tags = {
        "mlflow.parentRunId": parent_run_id,
        TAG_CANDIDATE_ID: candidate.id,
        "hamnet.candidate_name": candidate.name,
        "hamnet.parent_candidate": candidate.parent_id or "none",
        "hamnet.stage": candidate.stage,
        "hamnet.method": candidate.method,
        "hamnet.runtime": candidate.runtime,
        "hamnet.precision": candidate.precision,
        "hamnet.rejected": bool_tag(candidate.rejected is not None),
        "hamnet.meets_constraints": (
            bool_tag(assessment.meets_constraints) if assessment else "unknown"
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
    if candidate.teachers:
        tags["hamnet.teachers"] = ", ".join(candidate.teacher_names)
        tags["hamnet.teacher_ids"] = ", ".join(candidate.teacher_ids)
    return tags


def _candidate_params(candidate: Candidate) -> dict[str, str]:
    return {
        "stage": candidate.stage,
        "method": candidate.method,
        "runtime": candidate.runtime,
        "precision": candidate.precision,
        "parent_candidate": candidate.parent_id or "none",
        "artifact.sha256": candidate.artifact.sha256,
        "artifact.format": candidate.artifact.format,
        "artifact.size_bytes": str(candidate.artifact.size_bytes),
        **flatten({**candidate.params, **candidate.lineage_params()}, "params."),
    }


def _candidate_metrics(candidate: Candidate, assessment: Assessment | None) -> dict[str, float]:
    metrics: dict[str, float] = {}
    if candidate.metrics is not None:
        metrics.update(candidate.metrics.as_mlflow())
    if assessment is not None:
        metrics["accuracy_drop"] = assessment.accuracy_drop
        metrics["violation_score"] = assessment.violation_score
    if candidate.parity_max_abs_diff is not None:
        metrics["parity_max_abs_diff"] = candidate.parity_max_abs_diff
    return metrics


def _pareto_files(df: pd.DataFrame, folder: Path, figure_dir: str | Path | None) -> list[Path]:
    """Write the table and front to ``folder``; return them with the plot and Markdown."""
    from hamnet.evaluate.report import pareto_plot

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
    return paths


def _trial_history(trial: Any) -> list[Any]:
    """A trial's per-epoch records and intermediate values as MLflow metrics with steps."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    attrs = trial.user_attrs
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
    return history


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
