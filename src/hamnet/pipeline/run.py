"""The optimization pipeline, written once and walked by the flow and by the API.

``PipelineRun`` holds one run's state: the plan (from the config), the candidates so
far, the stage records. Whoever drives it (the Prefect flow in ``flows/``, or
:func:`run_pipeline` here) calls :func:`execute_stage` for each stage of
``run.plan`` — the flow through a cached, retried Prefect task — hands the new
candidates to :meth:`PipelineRun.add`, and ends with :meth:`PipelineRun.finish`. The
run's observers (:mod:`hamnet.pipeline.observers`) print progress, keep the run index,
log to MLflow and collect old files; stage hooks (:mod:`hamnet.pipeline.hooks`) run
before every stage attempt.

Example:
    >>> from hamnet.core.config import load_config
    >>> from hamnet.pipeline.run import run_pipeline
    >>> result = run_pipeline(load_config("configs/default.yaml"))  # doctest: +SKIP
    >>> result.selection.recommended.name  # doctest: +SKIP
    'openvino-fp32+nncf-int8'
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from hamnet.core.artifacts import ArtifactStore
from hamnet.core.candidate import Candidate
from hamnet.core.config import OptimizeConfig
from hamnet.core.errors import StageError
from hamnet.core.hardware import HardwareProfile, load_profile
from hamnet.pipeline.hooks import before_stage
from hamnet.pipeline.measuring import measure_candidate, score_on_test
from hamnet.pipeline.observers import MlflowObserver, RunObserver, default_observers
from hamnet.pipeline.plan import Stage, StageContext, build_plan, stage_by_name

if TYPE_CHECKING:
    import pandas as pd
    from rich.console import Console

    from hamnet.evaluate.pareto import Selection
    from hamnet.tracking.tracker import RegistrationResult, Tracker

__all__ = [
    "PipelineResult",
    "PipelineRun",
    "StageRecord",
    "execute_stage",
    "make_context",
    "measure_candidate",
    "preflight",
    "record_attempt",
    "run_pipeline",
]

logger = logging.getLogger("hamnet.pipeline")


def preflight(config: OptimizeConfig, base_dir: str | Path = ".") -> None:
    """Check the inputs before any work starts, so bad input fails fast and cleanly.

    Loads the hardware profile (refusing absent hardware), checks the MLflow tracking
    server answers (a few seconds at most), loads the data (missing file, label column,
    bad values), and, for a model file, checks it exists and fits the data.

    Raises:
        HamnetError: A subclass naming what was expected and what was got.
    """
    from hamnet.pipeline.plan import LoadStage

    workdir = Path(base_dir).resolve() / config.workdir
    existed = workdir.exists()
    try:
        ctx = make_context(config, base_dir)
        if config.tracking.enabled:
            from hamnet.tracking.tracker import check_reachable, resolve_tracking_uri

            check_reachable(resolve_tracking_uri(config.tracking.resolved_uri(), ctx.base_dir))
        dataset = ctx.dataset
        if config.model.source == "file":
            LoadStage.check_model_file(ctx)
        elif config.model.hamnet.input_size is not None:
            dataset.check_input_size(config.model.hamnet.input_size)
        distill = config.stages.distill
        if distill is not None and distill.student is not None:
            # A configured student that cannot be built fails here, before any training.
            from hamnet.pipeline.stages._user_modules import check_module_student

            check_module_student(ctx)
    except BaseException:
        if not existed:  # bad input leaves no partial state: not even an empty workdir
            _remove_empty_tree(workdir)
        raise


def _remove_empty_tree(folder: Path) -> None:
    """Remove ``folder`` if it holds folders only (no file anywhere below it)."""
    if folder.is_dir() and not any(p.is_file() for p in folder.rglob("*")):
        import shutil

        shutil.rmtree(folder, ignore_errors=True)


def make_context(config: OptimizeConfig, base_dir: str | Path = ".") -> StageContext:
    """Build what stages need: profile (checked present), store, data (lazily)."""
    base = Path(base_dir).resolve()
    profile = load_profile(config.hardware_profile)
    workdir = base / config.workdir
    return StageContext(
        config=config, profile=profile, store=ArtifactStore(workdir / "artifacts"), base_dir=base
    )


def execute_stage(
    config: OptimizeConfig,
    stage_name: str,
    inputs: list[Candidate],
    *,
    base_dir: str | Path = ".",
    parent_run_id: str | None = None,
) -> tuple[list[Candidate], list[str]]:
    """Run one stage and measure what it made.

    Every new candidate is measured by the same code path; one that is slower than its
    parent (by more than ``measure.slower_margin``, timed side by side with it unless it
    is clearly faster) is kept but marked ``rejected`` so it is never recommended.

    Args:
        config: The run configuration.
        stage_name: A name from :data:`hamnet.pipeline.plan.STAGES`.
        inputs: Every candidate so far (measured).
        base_dir: Folder relative config paths resolve against.
        parent_run_id: The run's MLflow parent run, for stages that log runs of their
            own (search trials); it never changes what a stage produces.

    Returns:
        The new, measured candidates and the stage's notes for the user.

    Raises:
        Exception: Whatever the stage, the measurement or a stage hook
            (:mod:`hamnet.pipeline.hooks`, called before the stage runs) raised.
    """
    stage = stage_by_name(stage_name)
    ctx = make_context(config, base_dir)
    ctx.parent_run_id = parent_run_id
    before_stage(stage_name, ctx)
    produced = stage.run(inputs, ctx)
    known = {c.id: c for c in inputs}
    measured: list[Candidate] = []
    for candidate in produced:
        measured_candidate = measure_candidate(candidate, known, ctx)
        known[measured_candidate.id] = measured_candidate
        measured.append(measured_candidate)
    return measured, ctx.notes


def record_attempt(
    config: OptimizeConfig,
    stage_name: str,
    attempt: int,
    *,
    parent_run_id: str | None,
    base_dir: str | Path = ".",
    error: BaseException | None = None,
) -> None:
    """Record one attempt of a stage (and why it failed) on the MLflow parent run.

    Never raises: the stage's own outcome matters more than the bookkeeping, so a
    tracking failure is logged as a warning.

    Args:
        config: The run configuration (its tracking section).
        stage_name: The stage.
        attempt: 1 for the first try, 2 for the first retry...
        parent_run_id: The run's MLflow parent run; nothing is recorded when None.
        base_dir: Folder a relative SQLite tracking URI resolves against.
        error: The exception the attempt raised; None when it succeeded.
    """
    if parent_run_id is None or not config.tracking.enabled:
        return
    from hamnet.tracking.tracker import Tracker

    text = None if error is None else f"{type(error).__name__}: {error}"
    try:
        tracker = Tracker(config.tracking, base_dir=base_dir)
        tracker.record_attempt(parent_run_id, stage_name, attempt, text)
    except Exception as err:  # bookkeeping must not mask the stage's outcome
        logger.warning("could not record attempt %d of %s in MLflow: %s", attempt, stage_name, err)


@dataclass
class StageRecord:
    """What one stage did in this run."""

    name: str
    candidates: list[str]
    cached: bool
    seconds: float
    notes: list[str] = field(default_factory=list)


@dataclass
class PipelineResult:
    """The outcome of a run: every candidate, the selection, and where things went."""

    candidates: list[Candidate]
    selection: Selection
    table: pd.DataFrame
    stages: list[StageRecord]
    report_files: dict[str, Path]
    mlflow_run_id: str | None
    registration: RegistrationResult | None
    seconds: float

    def summary(self) -> dict[str, Any]:
        """A small JSON-able summary (the flow's return value)."""
        rec = self.selection.recommended
        metrics = rec.metrics if rec else None
        return {
            "recommended": rec.name if rec else None,
            "recommended_id": rec.id if rec else None,
            "accuracy_kind": metrics.accuracy_kind if metrics else None,
            "validation_accuracy": metrics.accuracy if metrics else None,
            "test_accuracy": metrics.test_accuracy if metrics else None,
            "constraints_satisfied": self.selection.constraints_satisfied,
            "message": self.selection.message,
            "candidates": len(self.candidates),
            "cached_stages": [s.name for s in self.stages if s.cached],
            "stages": [
                {"name": s.name, "cached": s.cached, "seconds": round(s.seconds, 2)}
                for s in self.stages
            ],
            "mlflow_run_id": self.mlflow_run_id,
            "registered_version": self.registration.version if self.registration else None,
            "champion_message": self.registration.message if self.registration else None,
            "report_files": {k: str(v) for k, v in self.report_files.items()},
            "seconds": round(self.seconds, 2),
        }


class PipelineRun:
    """One optimization run's state: its plan, its candidates and its stage records.

    What happens around the state (console output, the run index, MLflow, retention)
    is done by its observers (:mod:`hamnet.pipeline.observers`), told in order when the
    run starts, when a stage is done, when it finishes and when it fails. Use it as a
    context manager so a failure reaches the observers (the MLflow parent run is closed
    as FAILED, the index marked failed; candidates already logged stay).

    Args:
        config: The run configuration.
        base_dir: Folder relative config paths resolve against.
        run_name: Name of the run (and of its MLflow parent run).
        tags: Extra MLflow tags for the parent run (e.g. the Prefect flow run id).
        console: Where progress and the final table are printed.
        observers: Observers to tell after the default ones
            (:func:`~hamnet.pipeline.observers.default_observers`).

    Attributes:
        parent_run_id: The MLflow parent run, set when tracking is on and the run started.
    """

    def __init__(
        self,
        config: OptimizeConfig,
        *,
        base_dir: str | Path = ".",
        run_name: str | None = None,
        tags: dict[str, str] | None = None,
        console: Console | None = None,
        observers: Sequence[RunObserver] = (),
    ) -> None:
        from rich.console import Console

        self.config = config
        self.base_dir = Path(base_dir).resolve()
        preflight(config, self.base_dir)
        self.plan: list[Stage] = build_plan(config)
        self.profile: HardwareProfile = load_profile(config.hardware_profile)
        self.console = console or Console()
        self.candidates: list[Candidate] = []
        self.stages: list[StageRecord] = []
        self.run_name = run_name or f"{config.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        self.tags = dict(tags or {})
        self.parent_run_id: str | None = None
        self.started_at = time.time()
        self._started = time.perf_counter()
        self.observers: list[RunObserver] = [
            *default_observers(config, self.console),
            *observers,
        ]

    @property
    def workdir(self) -> Path:
        """The run's working folder (artifact store, reports)."""
        return self.base_dir / self.config.workdir

    @property
    def report_dir(self) -> Path:
        """Where this run's report (table, plot) is written."""
        return self.workdir / "reports" / self.run_name

    @property
    def tracker(self) -> Tracker | None:
        """The MLflow tracker of this run's MLflow observer; None when not tracking."""
        return next((o.tracker for o in self.observers if isinstance(o, MlflowObserver)), None)

    @property
    def index_path(self) -> Path:
        """This run's index: its candidates and artifacts, updated after every stage."""
        return self.workdir / "runs" / f"{self.run_name}.json"

    def __enter__(self) -> PipelineRun:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            return
        error = f"{exc_type.__name__ if exc_type else ''}: {exc}"
        for observer in self.observers:
            try:
                observer.on_error(self, error)
            except Exception as err:  # keep the original error visible
                logger.warning("%s could not record the failure: %s", type(observer).__name__, err)

    def start(self) -> None:
        """Tell the observers the run starts (the MLflow parent run opens)."""
        for observer in self.observers:
            observer.on_start(self)

    def scope(self, stage: Stage) -> dict[str, Any]:
        """What can change ``stage``'s output: hashed into its cache key.

        Besides the stage's config scope this holds the content hashes of the data
        file and of the model file, so editing either invalidates the cache.
        """
        from hamnet.core.artifacts import hash_files
        from hamnet.training.data import data_fingerprint

        scope = stage.cache_scope(self.config)
        scope["data_fingerprint"] = data_fingerprint(self.config.data, self.base_dir)
        if self.config.model.path:
            model_file = self.base_dir / self.config.model.path
            scope["model_sha256"] = hash_files([model_file]) if model_file.is_file() else None
        for name in stage.input_files(self.config):
            path = Path(name).expanduser()
            path = path if path.is_absolute() else self.base_dir / path
            scope[f"file_sha256:{name}"] = hash_files([path]) if path.is_file() else None
        return scope

    def add(
        self,
        stage: Stage,
        new: list[Candidate],
        *,
        notes: list[str] | None = None,
        cached: bool = False,
        seconds: float = 0.0,
    ) -> None:
        """Record a stage's new candidates and tell the observers (MLflow logs them now).

        Raises:
            ArtifactError: A new candidate's model file is missing or was changed.
            StageError: An observer could not record them (e.g. MLflow went away).
        """
        for candidate in new:
            candidate.artifact.verify()
            _touch(Path(candidate.artifact.path).parent)  # last use, for `hamnet gc`
        self.candidates.extend(new)
        record = StageRecord(stage.name, [c.id for c in new], cached, seconds, list(notes or []))
        self.stages.append(record)
        for observer in self.observers:
            observer.on_stage_done(self, record, new)

    @property
    def baseline(self) -> Candidate:
        """The candidate every other one is compared with."""
        if not self.candidates:
            raise StageError("no baseline yet: the first stage produced no candidate")
        return self.candidates[0]

    def name_of(self, candidate_id: str | None) -> str | None:
        """The name of the candidate ``candidate_id`` of this run, None if unknown."""
        return next((c.name for c in self.candidates if c.id == candidate_id), None)

    def finish(self) -> PipelineResult:
        """Select the recommended candidate, score it on the test split, write the report,
        tell the observers.

        Every candidate was measured on the validation split, and the selection (Pareto
        front, constraints, recommended pick) reads those figures. Then the recommended
        candidate and the baseline, only they, are scored once on the test split
        (``metrics.test_accuracy``); the report shows both figures.

        Returns:
            The result; its ``registration`` is set when MLflow registered a model.
        """
        from hamnet.evaluate.pareto import candidates_table, select, with_test_scores
        from hamnet.evaluate.report import write_report

        cfg = self.config
        selection = select(self.candidates, self.baseline, cfg.constraints, cfg.selection)
        if selection.recommended is not None:
            scored = score_on_test(
                [selection.recommended, self.baseline], make_context(cfg, self.base_dir)
            )
            self.candidates = [scored.get(c.id, c) for c in self.candidates]
            selection = with_test_scores(selection, scored)
        table = candidates_table(self.candidates, selection)
        files = write_report(table, selection, self.report_dir)
        result = PipelineResult(
            candidates=list(self.candidates),
            selection=selection,
            table=table,
            stages=list(self.stages),
            report_files=files,
            mlflow_run_id=self.parent_run_id,
            registration=None,
            seconds=0.0,
        )
        for observer in self.observers:
            observer.on_finish(self, result)
        result.seconds = time.perf_counter() - self._started
        for observer in self.observers:
            observer.on_done(self, result)
        return result


def _touch(path: Path) -> None:
    with contextlib.suppress(OSError):
        os.utime(path)


def run_pipeline(
    config: OptimizeConfig,
    *,
    base_dir: str | Path = ".",
    run_name: str | None = None,
    console: Console | None = None,
) -> PipelineResult:
    """Walk the plan in this process, without Prefect (no caching or retries).

    The Prefect flow ``hamnet-optimize`` walks the same plan with cached, retried
    tasks; use this from notebooks, tests and the Python API.
    """
    with PipelineRun(config, base_dir=base_dir, run_name=run_name, console=console) as run:
        for stage in run.plan:
            started = time.perf_counter()
            new, notes = execute_stage(
                config, stage.name, run.candidates, base_dir=base_dir,
                parent_run_id=run.parent_run_id,
            )  # fmt: skip
            run.add(stage, new, notes=notes, seconds=time.perf_counter() - started)
        return run.finish()
