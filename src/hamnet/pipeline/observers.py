"""Observers of a :class:`~hamnet.pipeline.run.PipelineRun`: what happens around its state.

The run itself only holds state (plan, candidates, stage records) and tells its
observers, in order, when it starts, when a stage is done, when it finishes (selection
made and report written), when it is done (the result final) and when it fails:

* :class:`ConsoleObserver` prints progress and the final table;
* :class:`RunIndexObserver` keeps ``<workdir>/runs/<run>.json`` up to date (atomically);
* :class:`MlflowObserver` logs the parent run, the candidates and the selection, and
  registers the recommended candidate;
* :class:`RetentionObserver` collects old files after the run (``retention.auto_gc``).

:func:`default_observers` builds these from the config; a caller may add its own.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

from hamnet.core.candidate import Candidate
from hamnet.core.config import OptimizeConfig
from hamnet.core.errors import StageError

if TYPE_CHECKING:
    from rich.console import Console

    from hamnet.pipeline.run import PipelineResult, PipelineRun, StageRecord
    from hamnet.tracking.mlflow_models import ModelContext
    from hamnet.tracking.tracker import Tracker

logger = logging.getLogger("hamnet.pipeline")


class RunObserver:
    """Base of the observers of a run; every method does nothing unless overridden."""

    def on_start(self, run: PipelineRun) -> None:
        """The run starts (its plan is known, no stage has run)."""

    def on_stage_done(self, run: PipelineRun, record: StageRecord, new: list[Candidate]) -> None:
        """A stage is done and its ``new`` candidates are in ``run.candidates``."""

    def on_finish(self, run: PipelineRun, result: PipelineResult) -> None:
        """The selection is made and reported; observers may fill ``result.registration``."""

    def on_done(self, run: PipelineRun, result: PipelineResult) -> None:
        """Every observer has finished; ``result`` is final (``seconds`` included)."""

    def on_error(self, run: PipelineRun, error: str) -> None:
        """The run failed with ``error`` (``"<ExceptionType>: <message>"``)."""


class ConsoleObserver(RunObserver):
    """Prints the run's progress, notes and final table with rich.

    Args:
        console: Where to print.
    """

    def __init__(self, console: Console) -> None:
        self.console = console

    def on_start(self, run: PipelineRun) -> None:
        plan = " -> ".join(s.name for s in run.plan)
        self.console.log(
            f"[bold]hamnet-optimize[/] {run.run_name}: plan {plan} on profile {run.profile.name!r}"
        )

    def on_stage_done(self, run: PipelineRun, record: StageRecord, new: list[Candidate]) -> None:
        from rich.markup import escape

        state = "cached" if record.cached else f"{record.seconds:.1f} s"
        names = ", ".join(c.name for c in new) or "nothing"
        self.console.log(f"[bold]{record.name}[/] ({state}): {escape(names)}")
        for note in record.notes:
            self.console.log(f"  [yellow]note[/] {escape(note)}")

    def on_finish(self, run: PipelineRun, result: PipelineResult) -> None:
        from hamnet.evaluate.report import render_table

        recommended = result.selection.recommended
        render_table(
            result.table,
            title=f"hamnet-optimize {run.run_name} (profile {run.profile.name})",
            recommended_name=recommended.name if recommended else None,
            console=self.console,
        )

    def on_done(self, run: PipelineRun, result: PipelineResult) -> None:
        cached = [s.name for s in result.stages if s.cached]
        self.console.log(
            f"done in {result.seconds:.1f} s; cached stages: "
            f"{', '.join(cached) if cached else 'none'}"
        )


class RunIndexObserver(RunObserver):
    """Writes the run index ``<workdir>/runs/<run>.json`` atomically after every event.

    The index lists the run's candidates and their artifacts; ``hamnet gc`` keeps what
    a running or recent run's index names, and a rerun finds what was made.
    """

    def on_start(self, run: PipelineRun) -> None:
        self.write(run, "running")  # from now on `hamnet gc` leaves this run's files alone

    def on_stage_done(self, run: PipelineRun, record: StageRecord, new: list[Candidate]) -> None:
        self.write(run, "running")

    def on_finish(self, run: PipelineRun, result: PipelineResult) -> None:
        recommended = result.selection.recommended
        self.write(
            run,
            "finished",
            front=set(result.selection.front_ids),
            recommended=recommended.id if recommended else None,
        )

    def on_error(self, run: PipelineRun, error: str) -> None:
        self.write(run, "failed", error=error)

    def write(
        self,
        run: PipelineRun,
        status: str,
        *,
        error: str | None = None,
        front: set[str] | None = None,
        recommended: str | None = None,
    ) -> None:
        """Write the index of ``run`` with ``status``; a failed write is a warning only."""
        from hamnet.core.artifacts import atomic_write_text

        document = {
            "run_name": run.run_name,
            "status": status,
            "error": error,
            "config_fingerprint": run.config.fingerprint(),
            "mlflow_run_id": run.parent_run_id,
            "stages": [s.name for s in run.stages],
            "started": run.started_at,
            "updated": time.time(),
            "candidates": [
                {
                    "id": c.id,
                    "name": c.name,
                    "stage": c.stage,
                    "artifact": c.artifact.model_dump(mode="json"),
                    "on_front": c.id in (front or set()),
                    "recommended": c.id == recommended,
                }
                for c in run.candidates
            ],
        }
        try:
            atomic_write_text(run.index_path, json.dumps(document, indent=1))
        except OSError as err:
            logger.warning("could not write the run index %s: %s", run.index_path, err)


class MlflowObserver(RunObserver):
    """Logs the run to MLflow: parent run, candidates, selection, registration.

    Opens the parent run on start (its id becomes ``run.parent_run_id``) and logs the
    validation split as its dataset input; logs each stage's candidates as soon as the
    stage is done, each with its MLflow model when ``tracking.log_models`` is set; and
    on finish logs the Pareto front, marks the recommended and front candidate runs,
    registers the recommended candidate's MLflow model (when
    ``tracking.registered_model`` is set), links the parent to that run and version,
    and closes the parent run; a failed run's parent run is closed FAILED.

    A stage that came from the cache logs no new candidate runs: a candidate whose
    earlier run is found in the experiment (with its model, when models are logged) is
    pointed to from the parent (``hamnet.reused_run.<candidate id>``) instead.
    """

    def __init__(self) -> None:
        self.tracker: Tracker | None = None
        self.candidate_runs: dict[str, str] = {}
        self.reused: dict[str, str] = {}
        self._model_context: ModelContext | None = None

    def on_start(self, run: PipelineRun) -> None:
        from hamnet.tracking.tracker import Tracker

        plan = " -> ".join(s.name for s in run.plan)
        self.tracker = Tracker(run.config.tracking, base_dir=run.base_dir)
        run.parent_run_id = self.tracker.start_parent(
            run.run_name,
            config=run.config,
            tags={"hamnet.plan": plan, "hamnet.hardware_profile": run.profile.name, **run.tags},
        )

    def model_context(self, run: PipelineRun) -> ModelContext:
        """The input example and runtime settings candidates' models are logged with.

        Built once, on first use: it loads the data set (the validation split gives the
        example) and logs the split as the parent run's dataset input.
        """
        if self._model_context is None:
            from hamnet.core.artifacts import ArtifactStore
            from hamnet.pipeline.stages.base import StageContext
            from hamnet.tracking.mlflow_models import ModelContext

            cfg = run.config
            store = ArtifactStore(run.workdir / "artifacts")
            ctx = StageContext(config=cfg, profile=run.profile, store=store, base_dir=run.base_dir)
            dataset = ctx.dataset
            if self.tracker is not None and run.parent_run_id is not None:
                self.tracker.runs.log_dataset(
                    run.parent_run_id,
                    dataset.x_val,
                    dataset.y_val,
                    name=_data_name(cfg),
                    source=_data_source(cfg),
                )
            self._model_context = ModelContext.from_inputs(
                dataset.x_val, run.profile, trust_checkpoint=cfg.model.trust_checkpoint
            )
        return self._model_context

    def on_stage_done(self, run: PipelineRun, record: StageRecord, new: list[Candidate]) -> None:
        from hamnet.evaluate.pareto import assess

        if self.tracker is None or run.parent_run_id is None:
            return
        baseline = _accuracy(run.baseline)
        log_models = run.config.tracking.log_models
        context = self.model_context(run)
        reused: dict[str, str] = {}
        for candidate in new:
            try:
                earlier = (
                    self.tracker.runs.find_candidate_run(candidate.id, with_model=log_models)
                    if record.cached
                    else None
                )
                if earlier is not None:
                    reused[candidate.id] = earlier
                    self.candidate_runs[candidate.id] = earlier
                    continue
                self.candidate_runs[candidate.id] = self.tracker.log_candidate(
                    run.parent_run_id,
                    candidate,
                    assess(candidate, baseline, run.config.constraints),
                    model=context if log_models else None,
                    parent_name=run.name_of(candidate.parent_id),
                )
            except Exception as err:
                raise StageError(
                    f"MLflow tracking at {self.tracker.uri} must accept the candidates, "
                    f"but logging {candidate.name} after stage {record.name} failed "
                    f"({type(err).__name__}: {_first_line(err)}). The artifacts made so "
                    f"far stay in {run.workdir} (index {run.index_path}); rerun the "
                    f"same config to resume from the cache"
                ) from err
        self.reused.update(reused)
        self.tracker.runs.link_reused(run.parent_run_id, reused)

    def on_finish(self, run: PipelineRun, result: PipelineResult) -> None:
        from rich.markup import escape

        if self.tracker is None or run.parent_run_id is None:
            return
        cfg = run.config
        selection = result.selection
        self.tracker.log_selection(
            run.parent_run_id,
            result.table,
            selection,
            run.report_dir,
            candidate_runs=self.candidate_runs,
            reused=self.reused,
        )
        recommended = selection.recommended
        if recommended is not None and cfg.tracking.registered_model:
            registration = self.tracker.register(
                recommended,
                self.candidate_runs[recommended.id],
                selection.assessments[recommended.id],
                baseline_accuracy=_accuracy(run.baseline),
                objective=cfg.selection.objective,
                min_improvement=cfg.selection.champion_min_improvement,
                constraints=cfg.constraints,
                model=self.model_context(run),
            )
            result.registration = registration
            self.tracker.log(
                run.parent_run_id,
                tags={
                    "hamnet.registered_model": registration.name,
                    "hamnet.registered_version": registration.version,
                    "hamnet.registered_model_uri": (
                        f"models:/{registration.name}/{registration.version}"
                    ),
                    "hamnet.champion_moved": "true" if registration.champion_moved else "false",
                },
            )
            run.console.log(f"[bold]registry[/] {escape(registration.message)}")
        self.tracker.end(run.parent_run_id, "FINISHED")

    def on_error(self, run: PipelineRun, error: str) -> None:
        if self.tracker is None or run.parent_run_id is None:
            return
        try:
            self.tracker.end(run.parent_run_id, "FAILED", error=error)
        except Exception as err:  # keep the run's own error visible
            logger.warning("could not close the MLflow parent run as FAILED: %s", err)
        self.tracker, run.parent_run_id = None, None  # nothing more may be logged to it


class RetentionObserver(RunObserver):
    """Deletes old runs' files after a run finishes (``retention`` section), and says what."""

    def on_finish(self, run: PipelineRun, result: PipelineResult) -> None:
        from hamnet.pipeline.gc import collect

        retention = run.config.retention
        if not retention.auto_gc:
            return
        report = collect(
            run.workdir,
            keep_runs=retention.keep_runs,
            max_age_days=retention.max_age_days,
            apply=True,
        )
        if report.items:
            run.console.log(f"[bold]gc[/] {report.summary()}")


def default_observers(config: OptimizeConfig, console: Console) -> list[RunObserver]:
    """The observers every run has: console, run index, MLflow (when enabled), retention."""
    observers: list[RunObserver] = [ConsoleObserver(console), RunIndexObserver()]
    if config.tracking.enabled:
        observers.append(MlflowObserver())
    observers.append(RetentionObserver())
    return observers


def _data_name(config: OptimizeConfig) -> str:
    """The data set's name: ``digits``, or the data file's name."""
    data = config.data
    return "digits" if data.source == "digits" else Path(str(data.path)).name


def _data_source(config: OptimizeConfig) -> str:
    """Where the data comes from: scikit-learn's digits, or the data file's path."""
    data = config.data
    return "sklearn.datasets.load_digits" if data.source == "digits" else str(data.path)


def _accuracy(candidate: Candidate) -> float:
    if candidate.metrics is None:
        raise StageError(f"candidate {candidate.name} was not measured")
    return candidate.metrics.accuracy


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:300] if text else ""
