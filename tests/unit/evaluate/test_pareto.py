"""Constraints, Pareto front, selection, champion decisions and the candidates table."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from hamnet.core.artifacts import ArtifactRef
from hamnet.core.candidate import Candidate, Metrics
from hamnet.core.config import ConstraintsSection, SelectionSection
from hamnet.evaluate.pareto import (
    TABLE_COLUMNS,
    assess,
    beats,
    candidates_table,
    pareto_front,
    select,
)


def metrics(accuracy: float, latency: float, size: float, **kw: Any) -> Metrics:
    values: dict[str, Any] = {
        "accuracy": accuracy,
        "latency_p50_ms": latency,
        "latency_p90_ms": latency * 1.2,
        "latency_batch_size": 1,
        "throughput_sps": 1000.0 / latency,
        "throughput_batch_size": 32,
        "size_mb": size,
        "params": 1000,
        "flops": 2000,
        "peak_memory_mb": 50.0,
        "runtime": "onnxruntime",
        "threads": 2,
        "eval_samples": 360,
    }
    values.update(kw)
    return Metrics(**values)


def candidate(
    name: str,
    m: Metrics | None,
    *,
    parent: Candidate | None = None,
    rejected: str | None = None,
    precision: str = "fp32",
) -> Candidate:
    ref = ArtifactRef(path=f"/nowhere/{name}.onnx", sha256=name * 4, format="onnx", size_bytes=1)
    return Candidate.create(
        name=name,
        stage="baseline" if parent is None else "quantize",
        method=name.replace("-", "_"),
        artifact=ref,
        runtime="onnxruntime",
        parent=parent,
        metrics=m,
        rejected=rejected,
        precision=precision,
        params={"calibration_samples": 8} if parent else {},
    )


@pytest.fixture
def pool() -> list[Candidate]:
    """baseline (acc .97, 2 ms, 4 MB) and children with known dominance.

    fast: .96, 0.5 ms, 1 MB  -> front (fastest)
    small: .95, 1.0 ms, 0.5 MB -> front (smallest)
    mid: .95, 1.5 ms, 1.5 MB -> dominated by fast
    slow: .97, 3.0 ms, 4 MB  -> dominated by baseline; rejected anyway
    """
    base = candidate("baseline", metrics(0.97, 2.0, 4.0))
    return [
        base,
        candidate("fast", metrics(0.96, 0.5, 1.0), parent=base, precision="int8"),
        candidate("small", metrics(0.95, 1.0, 0.5), parent=base, precision="int8"),
        candidate("mid", metrics(0.95, 1.5, 1.5), parent=base),
        candidate("slow", metrics(0.97, 3.0, 4.0), parent=base, rejected="slower than baseline"),
    ]


def by_name(cands: list[Candidate]) -> dict[str, Candidate]:
    return {c.name: c for c in cands}


def test_assess_lists_every_violation_with_numbers() -> None:
    c = candidate("x", metrics(0.947, 7.1, 3.2))
    limits = ConstraintsSection(max_accuracy_drop=0.01, max_latency_ms=5.0, target_size_mb=1.0)
    a = assess(c, 0.97, limits)
    assert not a.meets_constraints
    assert a.accuracy_drop == pytest.approx(0.023)
    assert a.violations == [
        "accuracy drop 2.3 points exceeds max_accuracy_drop 1.0 points",
        "latency p50 7.10 ms exceeds max_latency_ms 5.00 ms",
        "size 3.20 MB exceeds target_size_mb 1.00 MB",
    ]
    assert a.violation_score == pytest.approx(1.3 + 0.42 + 2.2)


def test_assess_meets_at_the_limit_and_when_unconstrained() -> None:
    c = candidate("x", metrics(0.96, 5.0, 1.0))
    exact = ConstraintsSection(max_accuracy_drop=0.01, max_latency_ms=5.0, target_size_mb=1.0)
    assert assess(c, 0.97, exact).meets_constraints  # 0.97 - 0.96 is not exactly 0.01
    free = ConstraintsSection(max_accuracy_drop=None)
    a = assess(c, 0.99, free)
    assert a.meets_constraints and a.violations == [] and a.violation_score == 0.0


def test_rejected_never_meets_and_unmeasured_raises() -> None:
    base = candidate("b", metrics(0.9, 1.0, 1.0))
    rejected = candidate("r", metrics(0.9, 0.5, 0.5), parent=base, rejected="slower than b")
    a = assess(rejected, 0.9, ConstraintsSection())
    assert not a.meets_constraints and a.violations == ["rejected: slower than b"]
    with pytest.raises(ValueError, match="must be measured"):
        assess(candidate("u", None), 0.9, ConstraintsSection())


def test_front_has_exactly_the_non_dominated_sorted_by_latency(pool: list[Candidate]) -> None:
    front = pareto_front(pool)
    assert [c.name for c in front] == ["fast", "small", "baseline"]


def test_front_skips_rejected_and_unmeasured_and_keeps_ties(pool: list[Candidate]) -> None:
    base = pool[0]
    twin = candidate("twin", metrics(0.96, 0.5, 1.0), parent=base)
    ghost = candidate("ghost", None, parent=base)
    best_but_rejected = candidate("cheat", metrics(0.99, 0.1, 0.1), parent=base, rejected="no")
    names = {c.name for c in pareto_front([*pool, twin, ghost, best_but_rejected])}
    assert names == {"fast", "twin", "small", "baseline"}


@pytest.mark.parametrize(
    ("objective", "expected"),
    [
        ("latency_p50_ms", "fast"),
        ("throughput_sps", "fast"),
        ("size_mb", "small"),
        ("accuracy", "baseline"),
    ],
)
def test_select_picks_the_best_feasible_by_objective(
    pool: list[Candidate], objective: str, expected: str
) -> None:
    limits = ConstraintsSection(max_accuracy_drop=0.03)
    sel = select(pool, pool[0], limits, SelectionSection(objective=objective))  # type: ignore[arg-type]
    assert sel.recommended is not None and sel.recommended.name == expected
    assert sel.constraints_satisfied
    assert sel.message.startswith(f"recommended {expected}: meets all constraints")
    assert sel.baseline_id == pool[0].id
    assert set(sel.assessments) == {c.id for c in pool}
    assert [by_name(pool)[n].id for n in ("fast", "small", "baseline")] == sel.front_ids


def test_select_breaks_ties_by_accuracy_then_size(pool: list[Candidate]) -> None:
    base = pool[0]
    a = candidate("a", metrics(0.95, 0.5, 1.0), parent=base)
    b = candidate("b", metrics(0.96, 0.5, 2.0), parent=base)
    c = candidate("c", metrics(0.96, 0.5, 1.5), parent=base)
    sel = select(
        [base, a, b, c], base, ConstraintsSection(max_accuracy_drop=0.05), SelectionSection()
    )
    assert sel.recommended is not None and sel.recommended.name == "c"


def test_latencies_within_the_tie_margin_go_to_accuracy_then_size(
    pool: list[Candidate],
) -> None:
    base = pool[0]
    fp32 = candidate("fp32", metrics(0.97, 0.050, 0.30), parent=base)
    int8 = candidate("int8", metrics(0.97, 0.051, 0.11), parent=base)  # 2% slower: a tie
    slow = candidate("slow", metrics(0.98, 0.060, 0.05), parent=base)  # 20%: not a tie
    cands = [base, fp32, int8, slow]
    limits = ConstraintsSection(max_accuracy_drop=0.05)
    sel = select(cands, base, limits, SelectionSection())
    assert sel.recommended is not None and sel.recommended.name == "int8"
    strict = select(cands, base, limits, SelectionSection(latency_tie=0.0))
    assert strict.recommended is not None and strict.recommended.name == "fp32"


def test_constraints_filter_before_the_objective(pool: list[Candidate]) -> None:
    # fast drops 1 point: excluded by a 0.5-point limit; only the baseline remains.
    sel = select(pool, pool[0], ConstraintsSection(max_accuracy_drop=0.005), SelectionSection())
    assert sel.recommended is not None and sel.recommended.name == "baseline"
    assert sel.constraints_satisfied


def test_no_feasible_recommends_the_nearest_with_its_violations(pool: list[Candidate]) -> None:
    limits = ConstraintsSection(max_accuracy_drop=0.05, max_latency_ms=0.4, target_size_mb=0.1)
    sel = select(pool, pool[0], limits, SelectionSection())
    # relative excess: fast 0.25 + 9 = 9.25; small 1.5 + 4 = 5.5; mid/baseline larger
    assert sel.recommended is not None and sel.recommended.name == "small"
    assert not sel.constraints_satisfied
    assert sel.message == (
        "no candidate meets the constraints; nearest is small: "
        "latency p50 1.00 ms exceeds max_latency_ms 0.40 ms; "
        "size 0.50 MB exceeds target_size_mb 0.10 MB"
    )


def test_rejected_is_never_recommended_unless_all_are() -> None:
    base = candidate("base", metrics(0.90, 5.0, 5.0))
    rejected = candidate("r", metrics(0.99, 0.1, 0.1), parent=base, rejected="slower than x")
    sel = select([base, rejected], base, ConstraintsSection(max_latency_ms=1.0), SelectionSection())
    assert sel.recommended is not None and sel.recommended.name == "base"
    assert not sel.constraints_satisfied
    # Unconstrained: the rejected one would win on every axis, but is still skipped.
    sel = select([base, rejected], base, ConstraintsSection(), SelectionSection())
    assert sel.recommended is not None and sel.recommended.name == "base"
    assert sel.constraints_satisfied


def test_select_always_recommends_when_something_is_measured() -> None:
    base = candidate("base", metrics(0.90, 5.0, 5.0))
    ghost = candidate("ghost", None, parent=base)
    limits = ConstraintsSection(max_latency_ms=1e-6, target_size_mb=1e-6)
    sel = select([ghost], base, limits, SelectionSection())  # baseline added when missing
    assert sel.recommended is not None and sel.recommended.name == "base"
    assert ghost.id not in sel.assessments


def test_beats_feasible_beats_infeasible() -> None:
    good, bad = metrics(0.9, 2.0, 1.0), metrics(0.9, 1.0, 1.0)
    ok, why = beats(good, True, bad, False, "latency_p50_ms", 0.05)
    assert ok and "meets the constraints" in why and "2.00 ms vs 1.00 ms" in why
    ok, why = beats(bad, False, good, True, "latency_p50_ms", 0.05)
    assert not ok and "misses the constraints" in why


def test_beats_needs_more_than_the_margin() -> None:
    old = metrics(0.9, 0.52, 1.0)
    ok, why = beats(metrics(0.9, 0.41, 1.0), True, old, True, "latency_p50_ms", 0.05)
    assert ok and why == "latency p50 0.41 ms vs 0.52 ms (21% better)"
    ok, why = beats(metrics(0.9, 0.50, 1.0), True, old, True, "latency_p50_ms", 0.05)
    assert not ok and why == "latency p50 0.50 ms vs 0.52 ms (4% better, needs more than 5%)"
    ok, why = beats(metrics(0.9, 0.60, 1.0), False, old, False, "latency_p50_ms", 0.05)
    assert not ok and "15% worse" in why
    ok, why = beats(old, True, old, True, "latency_p50_ms", 0.0)
    assert not ok and "no better" in why


def test_beats_maximized_objectives() -> None:
    ok, why = beats(metrics(0.99, 1, 1), True, metrics(0.90, 1, 1), True, "accuracy", 0.05)
    assert ok and why == "accuracy 99.00% vs 90.00% (10% better)"
    fast, slow = metrics(0.9, 1.0, 1), metrics(0.9, 1.02, 1)
    ok, why = beats(fast, True, slow, True, "throughput_sps", 0.05)
    assert not ok and "needs more than 5%" in why
    with pytest.raises(ValueError, match="objective must be one of"):
        beats(fast, True, slow, True, "speed", 0.05)


def test_table_columns_ratios_and_flags(pool: list[Candidate]) -> None:
    sel = select(pool, pool[0], ConstraintsSection(max_accuracy_drop=0.015), SelectionSection())
    df = candidates_table(pool, sel)
    assert list(df.columns) == list(TABLE_COLUMNS)
    assert len(df) == len(pool)
    row = df.set_index("name").loc["fast"]
    assert row["parent"] == "baseline"
    assert row["size_ratio"] == pytest.approx(4.0)  # 4 MB / 1 MB: 4x smaller
    assert row["latency_ratio"] == pytest.approx(4.0)  # 2 ms / 0.5 ms: 4x faster
    assert row["accuracy_drop"] == pytest.approx(0.01)
    assert bool(row["on_front"]) and bool(row["meets_constraints"]) and bool(row["recommended"])
    assert row["params"] == 1000 and row["flops"] == 2000 and row["peak_memory_mb"] == 50.0
    assert row["method_params"] == '{"calibration_samples": 8}'
    small = df.set_index("name").loc["small"]
    assert "accuracy drop 2.0 points exceeds" in small["violations"]
    assert not bool(small["meets_constraints"]) and not bool(small["recommended"])
    slow = df.set_index("name").loc["slow"]
    assert slow["rejected"] == "slower than baseline" and not bool(slow["on_front"])
    assert df["recommended"].sum() == 1
    assert df.set_index("name").loc["baseline", "is_baseline"]
    assert math.isclose(df.set_index("name").loc["baseline", "size_ratio"], 1.0)


def test_table_reports_unmeasured_rows(pool: list[Candidate]) -> None:
    ghost = candidate("ghost", None, parent=pool[0])
    sel = select([*pool, ghost], pool[0], ConstraintsSection(), SelectionSection())
    df = candidates_table([*pool, ghost], sel)
    row = df.set_index("name").loc["ghost"]
    assert math.isnan(row["accuracy"]) and row["violations"] == "not measured"


def test_reports_write_csv_markdown_and_plot(pool: list[Candidate], tmp_path: Path) -> None:
    from io import StringIO

    from rich.console import Console

    from hamnet.evaluate.report import render_table, to_markdown, write_report

    sel = select(pool, pool[0], ConstraintsSection(max_accuracy_drop=0.015), SelectionSection())
    df = candidates_table(pool, sel)
    files = write_report(df, sel, tmp_path / "report")
    assert set(files) == {"csv", "markdown", "plot"}
    assert all(p.is_file() and p.stat().st_size > 0 for p in files.values())
    assert files["plot"].read_bytes()[:4] == b"\x89PNG"
    md = files["markdown"].read_text()
    assert sel.message in md and "| fast | baseline |" in md

    table = to_markdown(df[["name", "latency_p50_ms", "on_front", "rejected"]])
    lines = table.splitlines()
    assert lines[0] == "| name | latency_p50_ms | on_front | rejected |"
    assert lines[1] == "|---|---:|---|---|"
    assert lines[3] == "| fast | 0.5000 | yes |  |"

    out = StringIO()
    render_table(
        df,
        title="t",
        recommended_name="fast",
        console=Console(file=out, width=200, color_system=None),
    )
    text = out.getvalue()
    assert "▶" in text and "★" in text and "4.00×" in text and "nan" not in text
    assert "recommended fast: meets all constraints" in text
    assert "slow rejected: slower than baseline" in text


def test_plot_uses_log_scale_for_wide_latency_ranges(pool: list[Candidate]) -> None:
    from hamnet.evaluate.report import pareto_plot

    base = pool[0]
    far = candidate("far", metrics(0.5, 200.0, 0.1), parent=base)
    sel = select([*pool, far], base, ConstraintsSection(), SelectionSection())
    fig = pareto_plot(candidates_table([*pool, far], sel))
    assert fig.axes[0].get_xscale() == "log"
    sel = select(pool, base, ConstraintsSection(), SelectionSection())
    assert pareto_plot(candidates_table(pool, sel)).axes[0].get_xscale() == "linear"


def test_plot_points_mark_baseline_rejected_front_and_recommended(pool: list[Candidate]) -> None:
    from hamnet.evaluate.report import plot_points

    ghost = candidate("ghost", None, parent=pool[0])
    sel = select([*pool, ghost], pool[0], ConstraintsSection(), SelectionSection())
    points = plot_points(candidates_table([*pool, ghost], sel))
    assert points is not None
    names = list(points.data["name"])
    assert names == ["baseline", "fast", "small", "mid", "slow"]

    def marked(mask: Any) -> set[str]:
        return {n for n, m in zip(names, mask, strict=True) if m}

    assert marked(points.baseline) == {"baseline"}
    assert marked(points.rejected) == {"slow"}
    assert marked(points.ordinary) == {"fast", "small", "mid"}
    assert marked(points.on_front) == {"baseline", "fast", "small"}
    assert marked(points.recommended) == {sel.recommended.name if sel.recommended else ""}
    assert list(points.accuracy) == pytest.approx([97.0, 96.0, 95.0, 95.0, 97.0])
    assert points.max_size == 4.0
    assert points.areas(points.baseline) == [500.0]


def test_plot_without_measurements_says_so(pool: list[Candidate]) -> None:
    from hamnet.evaluate.report import pareto_plot, plot_points

    unmeasured = [candidate("ghost", None)]
    sel = select(unmeasured, pool[0], ConstraintsSection(), SelectionSection())
    df = candidates_table(unmeasured, sel)
    assert plot_points(df) is None
    ax = pareto_plot(df).axes[0]
    assert [t.get_text() for t in ax.texts] == ["no measured candidate"]
    assert not ax.axison


@pytest.mark.parametrize(
    ("size_mb", "max_size", "area"), [(0.0, 4.0, 30.0), (4.0, 4.0, 500.0), (1.0, 2.0, 265.0)]
)
def test_marker_area_grows_with_size(size_mb: float, max_size: float, area: float) -> None:
    from hamnet.evaluate.report import marker_area

    assert marker_area(size_mb, max_size) == pytest.approx(area)


@pytest.mark.parametrize(
    ("lo", "hi", "log"),
    [(0.5, 3.0, False), (0.5, 5.0, False), (0.5, 200.0, True), (0.0, 9.0, False)],
)
def test_log_scale_only_beyond_ten_times(lo: float, hi: float, log: bool) -> None:
    from hamnet.evaluate.report import use_log_scale

    assert use_log_scale(lo, hi) is log


def test_markdown_columns_follow_the_table_order() -> None:
    from hamnet.evaluate.report import MARKDOWN_COLUMNS

    assert set(MARKDOWN_COLUMNS) <= set(TABLE_COLUMNS)
    assert list(MARKDOWN_COLUMNS) == [c for c in TABLE_COLUMNS if c in MARKDOWN_COLUMNS]
    assert MARKDOWN_COLUMNS[:3] == ("name", "parent", "stage")
    assert "method_params" not in MARKDOWN_COLUMNS and "violations" in MARKDOWN_COLUMNS
