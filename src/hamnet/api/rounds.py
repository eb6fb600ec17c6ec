"""The AUTO escalation round loop, and running one round in-process or through Prefect.

A round is one pipeline run of a compiled configuration. :func:`run_rounds` runs up
to ``n_rounds`` of them (AUTO's second round escalates), stops at the first round
whose pick meets the constraints, and keeps the round whose pick is nearest to
meeting them (:func:`nearness`): an escalation can also land further away.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hamnet.core.errors import HamnetError, MissingDependencyError

if TYPE_CHECKING:
    from hamnet.core.candidate import Candidate
    from hamnet.core.config import OptimizeConfig
    from hamnet.evaluate.pareto import Selection
    from hamnet.pipeline.run import PipelineResult


def nearness(selection: Selection) -> tuple[bool, float]:
    """Sort key of a round's pick: meeting the constraints first, then violation score."""
    rec = selection.recommended
    if rec is None:
        return (True, math.inf)
    assessment = selection.assessments.get(rec.id)
    score = assessment.violation_score if assessment is not None else math.inf
    return (not selection.constraints_satisfied, score)


def student_search_line(config: OptimizeConfig, result: PipelineResult) -> str | None:
    """What a round's student search did, in one line (None: the round ran none)."""
    nas = config.stages.nas
    if nas is None or nas.mode != "students":
        return None
    budget = f"{nas.timeout_seconds / 60:.3g} min" if nas.timeout_seconds else "no time limit"
    kept = [c for c in result.candidates if c.stage == "nas"]
    rec = result.selection.recommended
    line = (
        f"student search ({budget}): {len(kept)} student(s) distilled from "
        f"{nas.students.teacher!r} joined the Pareto front with their exported and "
        f"quantized children"
    )
    if rec is not None and _descends_from(rec, kept, result.candidates):
        line += f"; the recommended model {rec.name!r} is one of them"
    return line


def _descends_from(candidate: Candidate, roots: list[Candidate], every: list[Candidate]) -> bool:
    """Whether ``candidate`` is one of ``roots`` or a descendant of one."""
    by_id = {c.id: c for c in every}
    ids = {c.id for c in roots}
    current: Candidate | None = candidate
    while current is not None:
        if current.id in ids:
            return True
        current = by_id.get(current.parent_id or "")
    return False


@dataclass
class RoundsOutcome:
    """The kept round of :func:`run_rounds`.

    Attributes:
        result: The kept round's pipeline result.
        config: The kept round's configuration.
        rounds: One line per round, plus which round was kept when there were several.
    """

    result: PipelineResult
    config: OptimizeConfig
    rounds: list[str] = field(default_factory=list)


@dataclass
class RoundRunner:
    """Runs compiled configurations as pipeline rounds under one work directory.

    Attributes:
        root: The work directory; round ``i`` runs in ``root/round-i``.
        verbose: Print the pipeline's progress.
        use_prefect: Run each round as a ``hamnet-optimize`` flow run.
    """

    root: Path
    verbose: bool = False
    use_prefect: bool = False

    def run_rounds(
        self, compile_round: Callable[[int], OptimizeConfig], n_rounds: int
    ) -> RoundsOutcome:
        """Run up to ``n_rounds`` rounds; keep the one nearest to the constraints.

        Args:
            compile_round: The configuration of round ``index`` (0-based; 1 and later
                escalate).
            n_rounds: Rounds allowed (at least 1).

        Returns:
            The kept round.
        """
        kept: RoundsOutcome | None = None
        kept_round = 1
        lines: list[str] = []
        for index in range(n_rounds):
            config = compile_round(index)
            outcome = self.run(config, self.root / f"round-{index + 1}")
            stages = " -> ".join(s.name for s in outcome.stages)
            lines.append(f"round {index + 1}: {stages}: {outcome.selection.message}")
            students = student_search_line(config, outcome)
            if students:
                lines.append(f"round {index + 1}: {students}")
            if kept is None or nearness(outcome.selection) < nearness(kept.result.selection):
                kept, kept_round = RoundsOutcome(outcome, config), index + 1
            if outcome.selection.constraints_satisfied:
                break
        if kept is None:
            raise ValueError(f"n_rounds must be a positive integer, but got {n_rounds!r}")
        if len(lines) > 1:
            lines.append(
                f"result: round {kept_round}'s recommendation (nearest to the constraints)"
            )
        kept.rounds = lines
        return kept

    def run(self, config: OptimizeConfig, base_dir: Path) -> PipelineResult:
        """Run one configuration in ``base_dir``, in this process or as a flow run."""
        from rich.console import Console

        base_dir.mkdir(parents=True, exist_ok=True)
        if self.use_prefect:
            return run_prefect(config, base_dir)
        from hamnet.pipeline.run import run_pipeline

        return run_pipeline(config, base_dir=base_dir, console=Console(quiet=not self.verbose))


def run_prefect(config: OptimizeConfig, base_dir: Path) -> PipelineResult:
    """Run ``config`` as a ``hamnet-optimize`` flow run and rebuild the pipeline result.

    The configuration is written to ``base_dir/config.yaml`` and the flow walks it
    exactly as ``hamnet run`` does (an ephemeral Prefect API unless ``PREFECT_API_URL``
    is set). The candidates are the stage tasks' (persisted) results, read back from
    the Prefect API; the selection is recomputed from them and must name the same
    recommended candidate as the flow's summary.

    Raises:
        MissingDependencyError: If Prefect or the flow code cannot be imported.
        StageError: If the flow run fails or its results cannot be read back.
    """
    import yaml

    try:
        from flows.hamnet_optimize import hamnet_optimize
    except ImportError as err:
        raise MissingDependencyError(
            f"use_prefect=True needs prefect and the project's flows package on sys.path "
            f"(run from the project folder), but the import failed: {err}"
        ) from err
    config_path = base_dir / "config.yaml"
    config_path.write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
    state = hamnet_optimize(  # type: ignore[call-overload]
        config_path=str(config_path), base_dir=str(base_dir), return_state=True
    )
    if not state.is_completed():
        _raise_flow_failure(state)
    summary: dict[str, Any] = state.result()
    return _rebuild_result(config, summary, _flow_task_results(state.state_details.flow_run_id))


def _raise_flow_failure(state: Any) -> None:
    from hamnet.core.errors import StageError

    message = getattr(state, "message", None) or state.name
    try:
        state.result()
    except HamnetError:
        raise
    except Exception as err:
        raise StageError(f"hamnet-optimize flow run failed: {err}") from err
    raise StageError(f"hamnet-optimize flow run must complete, but ended {message!r}")


def _rebuild_result(
    config: OptimizeConfig, summary: dict[str, Any], records: list[tuple[str, Any, bool, float]]
) -> PipelineResult:
    """The pipeline result of a flow run, from its stage tasks' results and summary."""
    from hamnet.core.errors import StageError
    from hamnet.evaluate.pareto import candidates_table, select
    from hamnet.pipeline.run import PipelineResult, StageRecord

    candidates: list[Candidate] = []
    stages: list[StageRecord] = []
    for name, (new, notes), cached, seconds in records:
        candidates.extend(new)
        stages.append(StageRecord(name, [c.id for c in new], cached, seconds, list(notes)))
    if not candidates:
        raise StageError("the hamnet-optimize flow run produced no candidate")
    selection = select(candidates, candidates[0], config.constraints, config.selection)
    rec = selection.recommended
    if (rec.id if rec else None) != summary.get("recommended_id"):
        raise StageError(
            f"the candidates read back from Prefect must select the flow's recommended "
            f"candidate {summary.get('recommended_id')!r}, but select "
            f"{rec.id if rec else None!r}"
        )
    return PipelineResult(
        candidates=candidates,
        selection=selection,
        table=candidates_table(candidates, selection),
        stages=stages,
        report_files={k: Path(v) for k, v in (summary.get("report_files") or {}).items()},
        mlflow_run_id=summary.get("mlflow_run_id"),
        registration=None,
        seconds=float(summary.get("seconds") or 0.0),
    )


def _flow_task_results(flow_run_id: Any) -> list[tuple[str, Any, bool, float]]:
    """``(stage, (candidates, notes), cached, seconds)`` of a flow run's stage tasks.

    Tasks are ordered by start time; when a stage ran twice (a cache hit whose files
    were gone is recomputed), the last run counts.
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.client.schemas.sorting import TaskRunSort

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])),
            sort=TaskRunSort.EXPECTED_START_TIME_ASC,
        )
    latest: dict[str, Any] = {}
    for run in runs:
        latest[run.name] = run  # later runs of the same stage replace earlier ones
    out = []
    for name, run in latest.items():
        state = run.state
        if state is None or not state.is_completed():
            continue
        value = state.result()
        seconds = float(run.total_run_time.total_seconds()) if run.total_run_time else 0.0
        out.append((name, value, state.name == "Cached", seconds))
    return out
