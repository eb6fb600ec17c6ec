"""Constraints, the Pareto front and the recommended candidate.

Selection reads ``Metrics.accuracy``, the validation-split figure; the test split is
scored once afterwards, for the recommended candidate and the baseline only
(:func:`with_test_scores` adds those figures to the selection's message).

Every measured candidate is *assessed* against the run's constraints (accuracy drop
from the baseline, latency, size). The Pareto front is the set of candidates no other
candidate beats on accuracy, latency p50 and size at once. The recommended candidate is
the best one, by the configured objective, among those that meet the constraints; when
none does, it is the nearest one (smallest relative excess), reported with what it
violates. A rejected candidate (e.g. slower than its parent) is never recommended while
any other is left.

Example:
    >>> from hamnet.evaluate.pareto import select
    >>> selection = select(candidates, baseline, cfg.constraints, cfg.selection)  # doctest: +SKIP
    >>> selection.message  # doctest: +SKIP
    'recommended ort-static-int8: meets all constraints; accuracy 97.22%, ...'
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Literal

from hamnet.core.candidate import Candidate, Metrics
from hamnet.core.config import ConstraintsSection, SelectionSection

if TYPE_CHECKING:
    import pandas as pd

Objective = Literal["latency_p50_ms", "size_mb", "accuracy", "throughput_sps"]

MAXIMIZED: frozenset[str] = frozenset({"accuracy", "throughput_sps"})
"""Objectives where larger is better; the others are minimized."""

_TOLERANCE = 1e-9
_MIN_DROP_SCALE = 1e-3  # relative excess of an accuracy drop when max_accuracy_drop is 0


@dataclass(frozen=True)
class Assessment:
    """How one candidate fares against the constraints.

    Attributes:
        candidate_id: The assessed candidate.
        meets_constraints: True when every constraint holds and it is not rejected.
        violations: One sentence per violated constraint (with numbers), and the
            rejection reason for a rejected candidate.
        accuracy_drop: Baseline accuracy minus the candidate's (a fraction: 0.01 is one
            point; negative when the candidate is more accurate).
        violation_score: Sum of the relative excesses over the limits (0 when every
            limit holds); ranks the nearest candidate when none is feasible.
    """

    candidate_id: str
    meets_constraints: bool
    violations: list[str] = field(default_factory=list)
    accuracy_drop: float = 0.0
    violation_score: float = 0.0


def assess_metrics(
    candidate_id: str,
    metrics: Metrics,
    baseline_accuracy: float,
    constraints: ConstraintsSection,
    *,
    rejected: str | None = None,
) -> Assessment:
    """Assess measured metrics against ``constraints`` (see :func:`assess`).

    Args:
        candidate_id: Id recorded in the assessment.
        metrics: The measurements.
        baseline_accuracy: Accuracy of the baseline the drop is counted from.
        constraints: The limits; ``None`` limits are not checked.
        rejected: Why the candidate may never be recommended, if it may not.

    Returns:
        The assessment.
    """
    drop = baseline_accuracy - metrics.accuracy
    violations: list[str] = []
    score = 0.0
    limit = constraints.max_accuracy_drop
    if limit is not None and drop > limit + _TOLERANCE:
        violations.append(
            f"accuracy drop {100 * drop:.1f} points exceeds max_accuracy_drop "
            f"{100 * limit:.1f} points"
        )
        score += (drop - limit) / max(limit, _MIN_DROP_SCALE)
    limit = constraints.max_latency_ms
    if limit is not None and metrics.latency_p50_ms > limit * (1 + _TOLERANCE):
        violations.append(
            f"latency p50 {metrics.latency_p50_ms:.2f} ms exceeds max_latency_ms {limit:.2f} ms"
        )
        score += (metrics.latency_p50_ms - limit) / limit
    limit = constraints.target_size_mb
    if limit is not None and metrics.size_mb > limit * (1 + _TOLERANCE):
        violations.append(f"size {metrics.size_mb:.2f} MB exceeds target_size_mb {limit:.2f} MB")
        score += (metrics.size_mb - limit) / limit
    if rejected:
        violations.append(f"rejected: {rejected}")
    return Assessment(
        candidate_id=candidate_id,
        meets_constraints=not violations,
        violations=violations,
        accuracy_drop=drop,
        violation_score=score,
    )


def assess(
    candidate: Candidate, baseline_accuracy: float, constraints: ConstraintsSection
) -> Assessment:
    """Check a measured candidate against the constraints.

    Args:
        candidate: A measured candidate.
        baseline_accuracy: Accuracy of the baseline (the drop is absolute, in the same
            unit as ``constraints.max_accuracy_drop``).
        constraints: The run's constraints.

    Returns:
        The assessment; a rejected candidate never meets the constraints.

    Raises:
        ValueError: If the candidate was not measured.
    """
    metrics = _metrics(candidate)
    return assess_metrics(
        candidate.id, metrics, baseline_accuracy, constraints, rejected=candidate.rejected
    )


def _metrics(candidate: Candidate) -> Metrics:
    if candidate.metrics is None:
        raise ValueError(
            f"candidate {candidate.name!r} ({candidate.id}) must be measured before it is "
            f"assessed, but it has no metrics"
        )
    return candidate.metrics


def dominates(a: Metrics, b: Metrics) -> bool:
    """True when ``a`` is at least as good as ``b`` on accuracy, latency p50 and size,
    and better on one of them."""
    at_least = (
        a.accuracy >= b.accuracy and a.latency_p50_ms <= b.latency_p50_ms and a.size_mb <= b.size_mb
    )
    better = a.accuracy > b.accuracy or a.latency_p50_ms < b.latency_p50_ms or a.size_mb < b.size_mb
    return at_least and better


def pareto_front(candidates: Sequence[Candidate]) -> list[Candidate]:
    """Return the non-dominated candidates (max accuracy, min latency p50, min size).

    Rejected and unmeasured candidates are left out. Candidates with identical
    measurements are all kept.

    Args:
        candidates: Any candidates.

    Returns:
        The front, sorted by latency p50 (then by accuracy, best first).
    """
    pool = [c for c in candidates if c.metrics is not None and not c.rejected]
    front = [
        c for c in pool if not any(dominates(_metrics(o), _metrics(c)) for o in pool if o is not c)
    ]
    return sorted(front, key=lambda c: (_metrics(c).latency_p50_ms, -_metrics(c).accuracy))


def objective_key(objective: str) -> Callable[[Metrics], tuple[float, ...]]:
    """Return a sort key ranking metrics best-first by ``objective``.

    Ties are broken by accuracy (higher first), then size (smaller first), then
    latency p50.

    Raises:
        ValueError: If ``objective`` is not a known objective.
    """
    if objective not in ("latency_p50_ms", "size_mb", "accuracy", "throughput_sps"):
        raise ValueError(
            f"objective must be one of latency_p50_ms, size_mb, accuracy, throughput_sps, "
            f"but got {objective!r}"
        )
    sign = -1.0 if objective in MAXIMIZED else 1.0

    def key(m: Metrics) -> tuple[float, ...]:
        return (sign * float(getattr(m, objective)), -m.accuracy, m.size_mb, m.latency_p50_ms)

    return key


@dataclass
class Selection:
    """The outcome of :func:`select`.

    Attributes:
        recommended: The best feasible candidate, else the nearest one (None only when
            nothing was measured).
        constraints_satisfied: Whether ``recommended`` meets every constraint.
        assessments: Assessment of every measured candidate, by candidate id.
        front_ids: Ids of the Pareto front, by latency.
        baseline_id: Id of the baseline the accuracy drop is counted from.
        message: One line saying what was recommended and why.
    """

    recommended: Candidate | None
    constraints_satisfied: bool
    assessments: dict[str, Assessment]
    front_ids: list[str]
    baseline_id: str
    message: str


_SCORE_LABELS: dict[str, str] = {
    "top1_accuracy": "accuracy",
    "top1_agreement": "top-1 agreement",
    "mean_cosine_similarity": "cosine similarity",
}


def score_text(accuracy_kind: str, value: float | None) -> str:
    """A score with its name, e.g. ``"accuracy 97.22%"`` or ``"cosine similarity 0.9921"``."""
    label = _SCORE_LABELS.get(accuracy_kind, "accuracy")
    if value is None or math.isnan(value):
        return f"{label} n/a"
    if accuracy_kind == "mean_cosine_similarity":
        return f"{label} {value:.4f}"
    return f"{label} {100 * value:.2f}%"


def summary_line(metrics: Metrics) -> str:
    """Score, latency p50 and size of ``metrics`` as a short phrase."""
    return (
        f"{score_text(metrics.accuracy_kind, metrics.accuracy)}, latency p50 "
        f"{metrics.latency_p50_ms:.3f} ms, size {metrics.size_mb:.3f} MB"
    )


def split_scores_line(recommended: Metrics, baseline: Metrics | None) -> str:
    """The validation and test scores of the recommended model (and of the baseline),
    e.g. ``"accuracy: validation 97.22%, test 96.94% (baseline: validation 97.50%,
    test 97.10%)"``."""

    def both(m: Metrics) -> str:
        validation = score_text(m.accuracy_kind, m.accuracy).rsplit(" ", 1)[1]
        test = score_text(m.accuracy_kind, m.test_accuracy).rsplit(" ", 1)[1]
        return f"validation {validation}, test {test}"

    label = _SCORE_LABELS.get(recommended.accuracy_kind, "accuracy")
    line = f"{label}: {both(recommended)}"
    if baseline is not None and baseline is not recommended:
        line += f" (baseline: {both(baseline)})"
    return line


def selection_message(name: str | None, meets: bool, violations: Sequence[str]) -> str:
    """The one-line verdict used by :class:`Selection` and the reports."""
    if name is None:
        return "no measured candidate to recommend"
    if meets:
        return f"recommended {name}: meets all constraints"
    return f"no candidate meets the constraints; nearest is {name}: {'; '.join(violations)}"


def select(
    candidates: Sequence[Candidate],
    baseline: Candidate,
    constraints: ConstraintsSection,
    selection_cfg: SelectionSection,
) -> Selection:
    """Pick the recommended candidate.

    Among the measured, non-rejected candidates that meet the constraints, the best by
    ``selection_cfg.objective`` wins (ties: higher accuracy, then smaller size; by
    latency, every candidate within ``selection_cfg.latency_tie`` of the fastest ties). When
    none meets them, the one with the lowest violation score is recommended with
    ``constraints_satisfied=False`` (a rejected one only when every candidate is).

    Args:
        candidates: Every candidate of the run (the baseline is added when missing).
        baseline: The candidate the accuracy drop is counted from.
        constraints: The limits to meet.
        selection_cfg: The objective.

    Returns:
        The selection with every measured candidate's assessment.

    Raises:
        ValueError: If the baseline was not measured.
    """
    baseline_accuracy = _metrics(baseline).accuracy
    pool = list(candidates)
    if all(c.id != baseline.id for c in pool):
        pool.insert(0, baseline)
    measured = [c for c in pool if c.metrics is not None]
    assessments = {c.id: assess(c, baseline_accuracy, constraints) for c in measured}
    front_ids = [c.id for c in pareto_front(measured)]
    rank = objective_key(selection_cfg.objective)

    feasible = [c for c in measured if assessments[c.id].meets_constraints]
    meets = bool(feasible)
    recommended = (
        _best_feasible(feasible, selection_cfg) if meets else _nearest(measured, assessments, rank)
    )
    if recommended is None:
        message = selection_message(None, False, [])
    else:
        message = selection_message(recommended.name, meets, assessments[recommended.id].violations)
        if meets:
            message += f"; {summary_line(_metrics(recommended))}"
            message += f" (best {selection_cfg.objective} of {len(feasible)} feasible)"
    return Selection(
        recommended=recommended,
        constraints_satisfied=meets,
        assessments=assessments,
        front_ids=front_ids,
        baseline_id=baseline.id,
        message=message,
    )


def with_test_scores(selection: Selection, scored: Mapping[str, Candidate]) -> Selection:
    """The selection with the test-split scores of the recommended model and baseline.

    Args:
        selection: The result of :func:`select` (made on the validation split).
        scored: Candidates by id whose ``metrics.test_accuracy`` is set (at least the
            recommended one and the baseline; see
            :func:`hamnet.pipeline.measuring.score_on_test`).

    Returns:
        A selection whose ``recommended`` carries its test score and whose message
        ends with both figures (validation, test) of it and of the baseline; the
        choice itself is unchanged.
    """
    rec = selection.recommended
    if rec is None or rec.id not in scored:
        return selection
    rec = scored[rec.id]
    baseline = scored.get(selection.baseline_id)
    line = split_scores_line(_metrics(rec), baseline.metrics if baseline is not None else None)
    return replace(selection, recommended=rec, message=f"{selection.message}. {line}")


def _best_feasible(feasible: Sequence[Candidate], selection_cfg: SelectionSection) -> Candidate:
    """The best of ``feasible`` by the objective; by latency, near-ties go to accuracy, size."""
    rank = objective_key(selection_cfg.objective)
    best = min(feasible, key=lambda c: rank(_metrics(c)))
    if selection_cfg.objective == "latency_p50_ms" and selection_cfg.latency_tie > 0:
        limit = _metrics(best).latency_p50_ms * (1.0 + selection_cfg.latency_tie)
        tied = [c for c in feasible if _metrics(c).latency_p50_ms <= limit]
        best = min(tied, key=lambda c: rank(_metrics(c))[1:])
    return best


def _nearest(
    measured: Sequence[Candidate],
    assessments: dict[str, Assessment],
    rank: Callable[[Metrics], tuple[float, ...]],
) -> Candidate | None:
    """The candidate with the lowest violation score (a rejected one only when all are)."""
    eligible = [c for c in measured if not c.rejected] or list(measured)
    if not eligible:
        return None
    return min(eligible, key=lambda c: (assessments[c.id].violation_score, *rank(_metrics(c))))


_OBJECTIVE_TEXT: dict[str, tuple[str, str, float]] = {
    # objective: (label, unit, display scale)
    "latency_p50_ms": ("latency p50", " ms", 1.0),
    "size_mb": ("size", " MB", 1.0),
    "accuracy": ("accuracy", "%", 100.0),
    "throughput_sps": ("throughput", " samples/s", 1.0),
}


def format_objective(objective: str, value: float) -> str:
    """Format an objective value with its unit, e.g. ``"latency p50 0.41 ms"``."""
    label, unit, scale = _OBJECTIVE_TEXT[objective]
    shown = value * scale
    digits = 0 if abs(shown) >= 1000 else 2 if abs(shown) >= 0.1 else 4
    return f"{label} {shown:.{digits}f}{unit}"


def relative_improvement(objective: str, new: float, old: float) -> float:
    """How much better ``new`` is than ``old`` on ``objective``, relative to ``old``.

    Positive is better, negative worse; ``inf`` when ``old`` is 0 and ``new`` better.
    """
    gain = new - old if objective in MAXIMIZED else old - new
    if old == 0:
        return 0.0 if gain == 0 else math.copysign(math.inf, gain)
    return gain / abs(old)


def beats(
    new_metrics: Metrics,
    new_meets: bool,
    old_metrics: Metrics,
    old_meets: bool,
    objective: str,
    min_improvement: float,
) -> tuple[bool, str]:
    """Decide whether a new model should replace the current champion.

    A model that meets the constraints beats one that does not. Otherwise the new one
    must be better on ``objective`` by more than ``min_improvement`` (relative), so that
    measurement noise does not move the champion back and forth.

    Args:
        new_metrics: The new model's measurements.
        new_meets: Whether the new model meets the current constraints.
        old_metrics: The champion's measurements.
        old_meets: Whether the champion meets the current constraints.
        objective: ``latency_p50_ms``, ``size_mb``, ``accuracy`` or ``throughput_sps``.
        min_improvement: Relative margin, e.g. 0.05 for 5%.

    Returns:
        The decision and a sentence explaining it with numbers.
    """
    objective_key(objective)  # validates the name
    new_value = float(getattr(new_metrics, objective))
    old_value = float(getattr(old_metrics, objective))
    compared = f"{format_objective(objective, new_value)} vs {_value_only(objective, old_value)}"
    if new_meets and not old_meets:
        return True, f"the new model meets the constraints, the old one does not ({compared})"
    if old_meets and not new_meets:
        return False, f"the new model misses the constraints, the old one meets them ({compared})"
    gain = relative_improvement(objective, new_value, old_value)
    if gain > min_improvement:
        return True, f"{compared} ({_percent(gain)} better)"
    if gain > 0:
        return False, (
            f"{compared} ({_percent(gain)} better, needs more than {_percent(min_improvement)})"
        )
    if gain == 0:
        return False, f"{compared} (no better)"
    return False, f"{compared} ({_percent(-gain)} worse)"


def _value_only(objective: str, value: float) -> str:
    label = _OBJECTIVE_TEXT[objective][0]
    return format_objective(objective, value)[len(label) + 1 :]


def _percent(fraction: float) -> str:
    if math.isinf(fraction):
        return "infinitely"
    return f"{100 * fraction:.0f}%" if abs(fraction) >= 0.01 else f"{100 * fraction:.1f}%"


TABLE_COLUMNS: tuple[str, ...] = (
    "name",
    "id",
    "parent",
    "stage",
    "method",
    "runtime",
    "precision",
    "accuracy",
    "accuracy_kind",
    "test_accuracy",
    "accuracy_drop",
    "latency_p50_ms",
    "latency_p90_ms",
    "throughput_sps",
    "size_mb",
    "size_ratio",
    "latency_ratio",
    "params",
    "flops",
    "peak_memory_mb",
    "on_front",
    "meets_constraints",
    "recommended",
    "is_baseline",
    "violations",
    "rejected",
    "method_params",
)
"""Columns of :func:`candidates_table`, in order."""


def candidates_table(candidates: Sequence[Candidate], selection: Selection) -> pd.DataFrame:
    """One row per candidate with its lineage, metrics and verdicts.

    ``accuracy`` (the validation-split figure the selection used) and ``accuracy_drop``
    are fractions (0.01 = one point), like the constraints; ``accuracy_kind`` names the
    metric (top-1 accuracy, top-1 agreement or mean cosine similarity to the original
    model); ``test_accuracy`` is the test-split score, set for the recommended
    candidate and the baseline only. ``size_ratio`` and ``latency_ratio`` are
    baseline / candidate ("times smaller", "times faster"). ``params`` is the parameter
    count; the parameters of the method that made the candidate are in
    ``method_params`` (JSON). Unmeasured candidates get NaN metrics.

    Args:
        candidates: The candidates, in the order wanted in the table.
        selection: The result of :func:`select` on them.

    Returns:
        The table, columns as in :data:`TABLE_COLUMNS`.
    """
    import pandas as pd

    names = {c.id: c.name for c in candidates}
    by_id = {c.id: c for c in candidates}
    baseline = by_id.get(selection.baseline_id)
    base = baseline.metrics if baseline is not None else None
    front = set(selection.front_ids)
    recommended_id = selection.recommended.id if selection.recommended else None
    nan = float("nan")
    rows = []
    for c in candidates:
        m = c.metrics
        verdict = selection.assessments.get(c.id)
        rows.append(
            {
                "name": c.name,
                "id": c.id,
                "parent": names.get(c.parent_id or "", c.parent_id),
                "stage": c.stage,
                "method": c.method,
                "runtime": c.runtime,
                "precision": c.precision,
                "accuracy": m.accuracy if m else nan,
                "accuracy_kind": m.accuracy_kind if m else None,
                "test_accuracy": (
                    m.test_accuracy if m is not None and m.test_accuracy is not None else nan
                ),
                "accuracy_drop": verdict.accuracy_drop if verdict else nan,
                "latency_p50_ms": m.latency_p50_ms if m else nan,
                "latency_p90_ms": m.latency_p90_ms if m else nan,
                "throughput_sps": m.throughput_sps if m else nan,
                "size_mb": m.size_mb if m else nan,
                "size_ratio": _ratio(base.size_mb, m.size_mb) if m and base else nan,
                "latency_ratio": (
                    _ratio(base.latency_p50_ms, m.latency_p50_ms) if m and base else nan
                ),
                "params": m.params if m else None,
                "flops": m.flops if m else None,
                "peak_memory_mb": m.peak_memory_mb if m else nan,
                "on_front": c.id in front,
                "meets_constraints": bool(verdict and verdict.meets_constraints),
                "recommended": c.id == recommended_id,
                "is_baseline": c.id == selection.baseline_id,
                "violations": "; ".join(verdict.violations) if verdict else "not measured",
                "rejected": c.rejected,
                "method_params": json.dumps(
                    {**c.params, **c.lineage_params()}, sort_keys=True, default=str
                ),
            }
        )
    return pd.DataFrame(rows, columns=list(TABLE_COLUMNS))


def _ratio(base: float, value: float) -> float:
    return base / value if value > 0 else math.inf
