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
from hamnet.core.candidate import Candidate, Metrics, is_number
from hamnet.core.config import OptimizeConfig
from hamnet.tracking.connection import Connection, bool_tag, chunks, clip_tags, flatten
from hamnet.tracking.reaper import close_abandoned, process_tags

if TYPE_CHECKING:
    import pandas as pd

    from hamnet.evaluate.pareto import Assessment, Selection
    from hamnet.tracking.mlflow_models import ModelContext

logger = logging.getLogger("hamnet.tracking")

TAG_CANDIDATE_ID = "hamnet.candidate_id"
TAG_RECOMMENDED = "hamnet.recommended"
"""Candidate-run tag: ``"true"`` on the recommended candidate of its parent, else ``"false"``."""
TAG_PARETO = "hamnet.pareto"
"""Candidate-run tag: ``"true"`` on the candidates of the Pareto front, else ``"false"``."""
TAG_RECOMMENDED_RUN = "hamnet.recommended_run_id"
"""Parent-run tag: the run id of the recommended candidate's run."""
TAG_REUSED_PREFIX = "hamnet.reused_run."
"""Parent-run tags ``hamnet.reused_run.<candidate id>``: an earlier run of a cached candidate."""

_TRIAL_STATUS = {"COMPLETE": "FINISHED", "FAIL": "FAILED", "PRUNED": "KILLED"}


def model_metrics(metrics: Metrics) -> dict[str, float]:
    """A candidate's measurements as MLflow metrics, under the names every run shares.

    The parameter count is ``param_count`` (a metric named ``params`` would sit beside the
    ``params.*`` params of the runs table).
    """
    values = metrics.as_mlflow()
    if "params" in values:
        values["param_count"] = values.pop("params")
    return values


def candidate_run_name(candidate: Candidate) -> str:
    """A short run name: ``<stage>/<method>/<first 6 characters of the id>``."""
    return f"{candidate.stage}/{candidate.method}/{candidate.id[:6]}"


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
        model: ModelContext | None = None,
        parent_name: str | None = None,
    ) -> str:
        """Log one candidate as a finished run nested under the parent run.

        The run is named :func:`candidate_run_name`; with ``model`` its model is logged
        as an MLflow model (:func:`hamnet.tracking.mlflow_models.log_candidate_model`).

        Args:
            parent_run_id: The optimization's parent run.
            candidate: The (measured) candidate.
            assessment: Its assessment against the constraints, if made.
            model: The input example and runtime settings to log the model with; None
                logs no model.
            parent_name: Name of the candidate it was made from (resolved from the
                candidates this logger logged when None).

        Returns:
            The nested run id.
        """
        parent_name = parent_name or self._candidate_names.get(candidate.parent_id or "")
        tags = _candidate_tags(parent_run_id, candidate, assessment, parent_name)
        run = self._client.create_run(
            self.connection.experiment_id,
            run_name=candidate_run_name(candidate),
            tags=clip_tags(tags),
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
            if model is not None:
                self.log_model(run_id, candidate, model)
        except Exception:
            self._client.set_terminated(run_id, "FAILED")
            raise
        self._client.set_terminated(run_id, "FINISHED")
        self._candidate_names[candidate.id] = candidate.name
        return run_id

    def log_model(self, run_id: str, candidate: Candidate, model: ModelContext) -> str:
        """Log ``candidate``'s MLflow model to its run (once: a run holding one keeps it).

        Returns:
            The logged model's URI, ``models:/<model_id>``.
        """
        from hamnet.tracking.mlflow_models import TAG_MODEL_URI, log_candidate_model

        existing = self._client.get_run(run_id).data.tags.get(TAG_MODEL_URI)
        if existing:
            return str(existing)
        return log_candidate_model(self.connection, run_id, candidate, model).uri

    def find_candidate_run(self, candidate_id: str, *, with_model: bool) -> str | None:
        """The earliest finished candidate run of ``candidate_id`` in the experiment.

        A cached rerun points to it instead of logging the same candidate again.

        Args:
            candidate_id: The candidate's id (same lineage and content, same id).
            with_model: Only a run that holds the candidate's MLflow model counts.

        Returns:
            The run id, or None when there is none.
        """
        from hamnet.tracking.mlflow_models import TAG_MODEL_URI

        query = (
            f"tags.`{TAG_CANDIDATE_ID}` = '{candidate_id}' and "
            "tags.`hamnet.kind` = 'candidate' and attributes.status = 'FINISHED'"
        )
        runs = self._client.search_runs(
            [self.connection.experiment_id],
            filter_string=query,
            order_by=["attributes.start_time ASC"],
            max_results=50,
        )
        for run in runs:
            if not with_model or run.data.tags.get(TAG_MODEL_URI):
                return str(run.info.run_id)
        return None

    def link_reused(self, parent_run_id: str, reused: Mapping[str, str]) -> None:
        """Point the parent run to the earlier runs of its cached candidates.

        Tags ``hamnet.reused_run.<candidate id>`` = run id, and
        ``hamnet.reused_runs`` = how many.

        Args:
            parent_run_id: The optimization's parent run.
            reused: Candidate id -> the earlier run that logged it.
        """
        if not reused:
            return
        tags = {f"{TAG_REUSED_PREFIX}{cid}": run_id for cid, run_id in reused.items()}
        existing = self._client.get_run(parent_run_id).data.tags
        count = sum(1 for k in existing if k.startswith(TAG_REUSED_PREFIX)) + sum(
            1 for k in tags if k not in existing
        )
        tags["hamnet.reused_runs"] = str(count)
        self.connection.log(parent_run_id, tags=tags)

    def log_dataset(
        self,
        run_id: str,
        features: Any,
        targets: Any,
        *,
        name: str,
        source: str,
        context: str = "validation",
    ) -> None:
        """Log a data split as an MLflow dataset input of ``run_id``.

        Args:
            run_id: The run (the optimization's parent run).
            features: One array or named arrays.
            targets: Labels (None when unlabelled).
            name: The dataset's name.
            source: Where the data comes from (a path or a package data set).
            context: What the split is for (``"validation"``, ``"test"``...).
        """
        from mlflow.data.code_dataset_source import CodeDatasetSource
        from mlflow.data.numpy_dataset import from_numpy
        from mlflow.entities import DatasetInput, InputTag

        from hamnet.backends.inputs import unpack_inputs

        data_source = CodeDatasetSource({"hamnet.data_source": source})
        dataset = from_numpy(
            unpack_inputs(features), source=data_source, targets=targets, name=name
        )
        self._client.log_inputs(
            run_id,
            datasets=[
                DatasetInput(
                    dataset._to_mlflow_entity(),
                    tags=[InputTag("mlflow.data.context", context)],
                )
            ],
        )

    def log_selection(
        self,
        parent_run_id: str,
        df: pd.DataFrame,
        selection: Selection,
        figure_dir: str | Path | None = None,
        *,
        candidate_runs: Mapping[str, str] | None = None,
        reused: Iterable[str] = (),
    ) -> None:
        """Log the Pareto table, front and plot, the recommended candidate's metrics, and
        mark the candidate runs.

        Writes ``pareto/candidates.csv``, ``pareto/front.csv`` and ``pareto/pareto.png``
        (the plot in ``figure_dir`` when present, else drawn anew) and, when present,
        ``pareto/candidates.md``. The parent gets the recommended candidate's metrics
        under the names its candidate run has (``accuracy``, ``latency_p50_ms``,
        ``size_mb``, ``accuracy_drop``...), the counts ``n_candidates``, ``n_front``,
        ``n_feasible``, and the tags ``hamnet.recommended_name``,
        ``hamnet.recommended_id`` and :data:`TAG_RECOMMENDED_RUN`. Each candidate run
        this parent logged gets the tags :data:`TAG_RECOMMENDED` and :data:`TAG_PARETO`
        and the metrics ``recommended`` and ``pareto_front`` (1 or 0); the recommended
        one also its ``test_accuracy``. Runs of earlier parents (``reused``) keep theirs.

        Args:
            parent_run_id: The optimization's parent run.
            df: The table from :func:`hamnet.evaluate.pareto.candidates_table`.
            selection: The selection.
            figure_dir: Folder where :func:`hamnet.evaluate.report.write_report` wrote its files.
            candidate_runs: Candidate id -> its run (this parent's and reused ones).
            reused: Ids of candidates whose run belongs to an earlier parent.
        """
        with tempfile.TemporaryDirectory(prefix="hamnet-pareto-") as tmp:
            for path in _pareto_files(df, Path(tmp), figure_dir):
                self._client.log_artifact(parent_run_id, str(path), "pareto")

        runs = dict(candidate_runs or {})
        rec = selection.recommended
        metrics: dict[str, float] = {
            "n_candidates": float(len(df)),
            "n_front": float(len(selection.front_ids)),
            "n_feasible": float(sum(a.meets_constraints for a in selection.assessments.values())),
        }
        tags = {
            "hamnet.recommended_name": rec.name if rec else "none",
            "hamnet.recommended_id": rec.id if rec else "none",
            TAG_RECOMMENDED_RUN: runs.get(rec.id, "none") if rec else "none",
            "hamnet.constraints_satisfied": bool_tag(selection.constraints_satisfied),
            "hamnet.selection_message": selection.message,
        }
        if rec is not None and rec.metrics is not None:
            metrics.update(model_metrics(rec.metrics))
            verdict = selection.assessments.get(rec.id)
            if verdict is not None:
                metrics["accuracy_drop"] = verdict.accuracy_drop
        self.connection.log(parent_run_id, metrics=metrics, tags=tags)
        own = {cid: run_id for cid, run_id in runs.items() if cid not in set(reused)}
        front = set(selection.front_ids)
        for cid, run_id in own.items():
            is_rec, on_front = rec is not None and cid == rec.id, cid in front
            marks = {"recommended": float(is_rec), "pareto_front": float(on_front)}
            if is_rec and rec is not None and rec.metrics and rec.metrics.test_accuracy is not None:
                marks["test_accuracy"] = rec.metrics.test_accuracy
            self.connection.log(
                run_id,
                metrics=marks,
                tags={TAG_RECOMMENDED: bool_tag(is_rec), TAG_PARETO: bool_tag(on_front)},
            )

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
        metrics.update(model_metrics(candidate.metrics))
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
