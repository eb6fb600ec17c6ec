"""The optimization pipeline, written once and walked by the flow and by the API.

``PipelineRun`` holds one run's state: the plan (from the config), the candidates so
far, the MLflow parent run. Whoever drives it (the Prefect flow in ``flows/``, or
:func:`run_pipeline` here) calls :func:`execute_stage` for each stage of
``run.plan`` — the flow through a cached, retried Prefect task — hands the new
candidates to :meth:`PipelineRun.add`, and ends with :meth:`PipelineRun.finish`.

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
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from hamnet.core.artifacts import ArtifactStore
from hamnet.core.candidate import Candidate
from hamnet.core.config import OptimizeConfig
from hamnet.core.errors import StageError
from hamnet.core.hardware import HardwareProfile, load_profile
from hamnet.pipeline.plan import Stage, StageContext, build_plan, stage_by_name

if TYPE_CHECKING:
    import pandas as pd
    from rich.console import Console

    from hamnet.evaluate.pareto import Selection
    from hamnet.tracking.tracker import RegistrationResult, Tracker

logger = logging.getLogger("hamnet.pipeline")

FAULT_ENV = "HAMNET_INJECT_FAULT"
"""Fault injection for reliability tests: ``"<stage>:<n>"`` makes the first n attempts
of that stage raise (counted in a file under the workdir)."""


def _inject_fault(stage: str, workdir: Path) -> None:
    spec = os.environ.get(FAULT_ENV, "")
    if not spec:
        return
    target, _, times = spec.partition(":")
    if target != stage:
        return
    counter = workdir / f"fault-{stage}.count"
    done = int(counter.read_text()) if counter.is_file() else 0
    if done < int(times or 1):
        counter.write_text(str(done + 1))
        raise StageError(f"injected fault in stage {stage!r} (attempt {done + 1}, {FAULT_ENV})")


HANG_ENV = "HAMNET_INJECT_HANG"
"""Fault injection for reliability tests: ``"<stage>:<seconds>"`` makes that stage write
``hang-<stage>.started`` in the workdir and sleep, so a test can kill the process in the
middle of the stage."""


def _inject_hang(stage: str, workdir: Path) -> None:
    target, _, seconds = os.environ.get(HANG_ENV, "").partition(":")
    if target != stage:
        return
    (workdir / f"hang-{stage}.started").write_text(str(os.getpid()))
    time.sleep(float(seconds or 3600))


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
    """
    stage = stage_by_name(stage_name)
    ctx = make_context(config, base_dir)
    ctx.parent_run_id = parent_run_id
    _inject_fault(stage_name, ctx.store.root.parent)
    _inject_hang(stage_name, ctx.store.root.parent)
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


def measure_candidate(
    candidate: Candidate, known: dict[str, Candidate], ctx: StageContext
) -> Candidate:
    """Measure ``candidate`` and mark it rejected when it is slower than its parent."""
    from hamnet.evaluate.measure import measure_artifact

    params, flops = _model_size(candidate, known, ctx)
    metrics = measure_artifact(
        candidate.artifact,
        candidate.runtime,
        ctx.profile,
        ctx.dataset.x_test,
        ctx.dataset.y_test,
        ctx.config.measure,
        params=params,
        flops=flops,
        trust_checkpoint=ctx.config.model.trust_checkpoint,
    )
    rejected = candidate.rejected
    parent = known.get(candidate.parent_id or "")
    settings = ctx.config.measure
    margin = settings.slower_margin
    # The parent was timed earlier, maybe on a busier or an idler machine. A child that
    # is not clearly faster (within the margin either way, or slower) is therefore timed
    # again side by side with it before it is judged: a parent figure inflated by noise
    # must not let a slower child through, nor a lucky one reject an equal child.
    paired = bool(settings.paired_rounds)
    suspect = 1.0 - margin if paired else 1.0 + margin
    if (
        rejected is None
        and parent is not None
        and parent.metrics is not None
        and metrics.latency_p50_ms > parent.metrics.latency_p50_ms * suspect
    ):
        child_ms, parent_ms = metrics.latency_p50_ms, parent.metrics.latency_p50_ms
        how = "measured one after the other"
        if paired:
            child_ms, parent_ms = _paired_latency(candidate, parent, ctx)
            how = f"timed side by side in {settings.paired_rounds} interleaved rounds"
        if child_ms > parent_ms * (1.0 + margin):
            rejected = (
                f"slower than its parent {parent.name}: p50 {child_ms:.3f} ms vs "
                f"{parent_ms:.3f} ms, more than {margin:.0%} slower ({how})"
            )
        else:
            logger.info(
                "%s is not slower than its parent %s when timed side by side "
                "(%.4f vs %.4f ms): kept",
                candidate.name, parent.name, child_ms, parent_ms,
            )  # fmt: skip
    return candidate.model_copy(update={"metrics": metrics, "rejected": rejected})


def _paired_latency(
    candidate: Candidate, parent: Candidate, ctx: StageContext
) -> tuple[float, float]:
    """p50 latency of ``candidate`` and ``parent``, timed in interleaved rounds."""
    from hamnet.backends.session import load_session, pack_inputs
    from hamnet.evaluate.measure import paired_latency_ms

    trust = ctx.config.model.trust_checkpoint
    sessions = [
        load_session(c.artifact, c.runtime, ctx.profile, trust_checkpoint=trust)
        for c in (candidate, parent)
    ]
    x_one = pack_inputs(ctx.dataset.x_test)[: ctx.profile.latency_batch_size]
    settings = ctx.config.measure
    child_ms, parent_ms = paired_latency_ms(
        sessions, x_one, warmup=settings.warmup, repeats=settings.repeats,
        rounds=settings.paired_rounds,
    )  # fmt: skip
    return child_ms, parent_ms


def _model_size(
    candidate: Candidate, known: dict[str, Candidate], ctx: StageContext
) -> tuple[int, int]:
    """Parameters and FLOPs: counted on torch models, inherited by their exports."""
    if candidate.artifact.format == "torch":
        from hamnet.models import count_flops, count_parameters, load_checkpoint

        model = load_checkpoint(candidate.artifact.path, trust=ctx.config.model.trust_checkpoint)
        return count_parameters(model), count_flops(model, model.config.input_size)
    ancestor = known.get(candidate.parent_id or "")
    while ancestor is not None:
        if ancestor.metrics is not None:
            return ancestor.metrics.params, ancestor.metrics.flops
        ancestor = known.get(ancestor.parent_id or "")
    if candidate.artifact.format == "onnx":
        return _onnx_parameter_count(candidate.artifact.path), 0
    return 0, 0


def _onnx_parameter_count(path: str) -> int:
    import numpy as np
    import onnx

    model = onnx.load(path)
    return int(sum(int(np.prod(init.dims)) for init in model.graph.initializer))


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
        return {
            "recommended": rec.name if rec else None,
            "recommended_id": rec.id if rec else None,
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
    """One optimization run: its plan, its candidates and its MLflow parent run.

    Use it as a context manager so the MLflow parent run is closed as FAILED when
    anything raises (candidates already logged stay in MLflow).

    Args:
        config: The run configuration.
        base_dir: Folder relative config paths resolve against.
        run_name: Name of the MLflow parent run.
        tags: Extra MLflow tags for the parent run (e.g. the Prefect flow run id).
        console: Where progress and the final table are printed.
    """

    def __init__(
        self,
        config: OptimizeConfig,
        *,
        base_dir: str | Path = ".",
        run_name: str | None = None,
        tags: dict[str, str] | None = None,
        console: Console | None = None,
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
        self._tags = dict(tags or {})
        self._started = time.perf_counter()
        self._started_at = time.time()
        self.tracker: Tracker | None = None
        self.parent_run_id: str | None = None
        self._candidate_runs: dict[str, str] = {}

    @property
    def workdir(self) -> Path:
        """The run's working folder (artifact store, reports)."""
        return self.base_dir / self.config.workdir

    def __enter__(self) -> PipelineRun:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is not None:
            error = f"{exc_type.__name__ if exc_type else ''}: {exc}"
            self._write_index("failed", error=error)
            try:
                self._end_tracking("FAILED", error=error)
            except Exception as err:  # keep the original error visible
                logger.warning("could not close the MLflow parent run as FAILED: %s", err)
                self.tracker, self.parent_run_id = None, None

    def start(self) -> None:
        """Open the MLflow parent run (when tracking is enabled)."""
        cfg = self.config
        plan = " -> ".join(s.name for s in self.plan)
        self.console.log(
            f"[bold]hamnet-optimize[/] {self.run_name}: plan {plan} on profile "
            f"{self.profile.name!r}"
        )
        self._write_index("running")  # from now on `hamnet gc` leaves this run's files alone
        if not cfg.tracking.enabled:
            return
        from hamnet.tracking.tracker import Tracker

        self.tracker = Tracker(cfg.tracking, base_dir=self.base_dir)
        self.parent_run_id = self.tracker.start_parent(
            self.run_name,
            config=cfg,
            tags={"hamnet.plan": plan, "hamnet.hardware_profile": self.profile.name, **self._tags},
        )

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
        """Record a stage's new candidates and log them to MLflow right away."""
        from rich.markup import escape

        for candidate in new:
            candidate.artifact.verify()
            _touch(Path(candidate.artifact.path).parent)  # last use, for `hamnet gc`
        self.candidates.extend(new)
        record = StageRecord(stage.name, [c.id for c in new], cached, seconds, list(notes or []))
        self.stages.append(record)
        self._write_index("running")
        state = "cached" if cached else f"{seconds:.1f} s"
        names = ", ".join(c.name for c in new) or "nothing"
        self.console.log(f"[bold]{stage.name}[/] ({state}): {escape(names)}")
        for note in record.notes:
            self.console.log(f"  [yellow]note[/] {escape(note)}")
        if self.tracker is not None and self.parent_run_id is not None:
            from hamnet.evaluate.pareto import assess

            baseline = self.baseline
            for candidate in new:
                assessment = assess(candidate, _accuracy(baseline), self.config.constraints)
                try:
                    self._candidate_runs[candidate.id] = self.tracker.log_candidate(
                        self.parent_run_id,
                        candidate,
                        assessment,
                        model_file=self.config.tracking.log_models,
                        parent_name=self._name_of(candidate.parent_id),
                    )
                except Exception as err:
                    raise StageError(
                        f"MLflow tracking at {self.tracker.uri} must accept the candidates, "
                        f"but logging {candidate.name} after stage {stage.name} failed "
                        f"({type(err).__name__}: {_first_line(err)}). The artifacts made so "
                        f"far stay in {self.workdir} (index {self.index_path}); rerun the "
                        f"same config to resume from the cache"
                    ) from err

    @property
    def baseline(self) -> Candidate:
        """The candidate every other one is compared with."""
        if not self.candidates:
            raise StageError("no baseline yet: the first stage produced no candidate")
        return self.candidates[0]

    def _name_of(self, candidate_id: str | None) -> str | None:
        return next((c.name for c in self.candidates if c.id == candidate_id), None)

    def finish(self) -> PipelineResult:
        """Select the recommended candidate, report, log the front, register it."""
        from rich.markup import escape

        from hamnet.evaluate.pareto import candidates_table, select
        from hamnet.evaluate.report import render_table, write_report

        cfg = self.config
        selection = select(self.candidates, self.baseline, cfg.constraints, cfg.selection)
        table = candidates_table(self.candidates, selection)
        report_dir = self.workdir / "reports" / self.run_name
        files = write_report(table, selection, report_dir)
        recommended = selection.recommended
        render_table(
            table,
            title=f"hamnet-optimize {self.run_name} (profile {self.profile.name})",
            recommended_name=recommended.name if recommended else None,
            console=self.console,
        )
        registration = None
        if self.tracker is not None and self.parent_run_id is not None:
            self.tracker.log_selection(self.parent_run_id, table, selection, report_dir)
            if recommended is not None and cfg.tracking.registered_model:
                registration = self.tracker.register(
                    recommended,
                    self._candidate_runs[recommended.id],
                    selection.assessments[recommended.id],
                    baseline_accuracy=_accuracy(self.baseline),
                    objective=cfg.selection.objective,
                    min_improvement=cfg.selection.champion_min_improvement,
                    constraints=cfg.constraints,
                )
                self.console.log(f"[bold]registry[/] {escape(registration.message)}")
            self._end_tracking("FINISHED")
        self._write_index(
            "finished",
            front=set(selection.front_ids),
            recommended=recommended.id if recommended else None,
        )
        if cfg.retention.auto_gc:
            self._collect_garbage()
        cached = [s.name for s in self.stages if s.cached]
        seconds = time.perf_counter() - self._started
        self.console.log(
            f"done in {seconds:.1f} s; cached stages: {', '.join(cached) if cached else 'none'}"
        )
        return PipelineResult(
            candidates=list(self.candidates),
            selection=selection,
            table=table,
            stages=list(self.stages),
            report_files=files,
            mlflow_run_id=self.parent_run_id,
            registration=registration,
            seconds=seconds,
        )

    @property
    def index_path(self) -> Path:
        """This run's index: its candidates and artifacts, updated after every stage."""
        return self.workdir / "runs" / f"{self.run_name}.json"

    def _write_index(
        self,
        status: str,
        *,
        error: str | None = None,
        front: set[str] | None = None,
        recommended: str | None = None,
    ) -> None:
        """Write :attr:`index_path` atomically (what ``hamnet gc`` keeps and reruns find)."""
        import json

        from hamnet.core.artifacts import atomic_write_text

        document = {
            "run_name": self.run_name,
            "status": status,
            "error": error,
            "config_fingerprint": self.config.fingerprint(),
            "mlflow_run_id": self.parent_run_id,
            "stages": [s.name for s in self.stages],
            "started": self._started_at,
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
                for c in self.candidates
            ],
        }
        try:
            atomic_write_text(self.index_path, json.dumps(document, indent=1))
        except OSError as err:
            logger.warning("could not write the run index %s: %s", self.index_path, err)

    def _collect_garbage(self) -> None:
        from hamnet.pipeline.gc import collect

        retention = self.config.retention
        report = collect(
            self.workdir,
            keep_runs=retention.keep_runs,
            max_age_days=retention.max_age_days,
            apply=True,
        )
        if report.items:
            self.console.log(f"[bold]gc[/] {report.summary()}")

    def _end_tracking(self, status: str, error: str | None = None) -> None:
        if self.tracker is None or self.parent_run_id is None:
            return
        self.tracker.end(self.parent_run_id, status, error=error)
        if status == "FAILED":  # nothing more may be logged to a closed run
            self.tracker, self.parent_run_id = None, None


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:300] if text else ""


def _touch(path: Path) -> None:
    with contextlib.suppress(OSError):
        os.utime(path)


def _accuracy(candidate: Candidate) -> float:
    if candidate.metrics is None:
        raise StageError(f"candidate {candidate.name} was not measured")
    return candidate.metrics.accuracy


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
