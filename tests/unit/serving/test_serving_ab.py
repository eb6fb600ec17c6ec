"""A/B assignment (split, stickiness) and the statistics of `hamnet ab-report`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from hamnet.core.errors import ConfigError, DataError
from hamnet.serving.ab import (
    ABLog,
    ABRecord,
    ABRouter,
    ab_report,
    parse_split,
    proportion_difference,
    read_log,
    stable_unit,
    welch_difference,
)


def test_parse_split() -> None:
    assert parse_split("champion=0.9, challenger=0.1") == {"champion": 0.9, "challenger": 0.1}
    for bad in ("champion=0.9", "a=0.5,a=0.5", "a=x,b=1", "a=-0.5,b=1.5", "a0.5,b=0.5"):
        with pytest.raises(ConfigError, match="must"):
            parse_split(bad)


def test_keyed_split_is_within_tolerance_and_sticky() -> None:
    router = ABRouter({"champion": 0.8, "challenger": 0.2})
    keys = [f"user-{i}" for i in range(20_000)]
    arms = [router.assign(k) for k in keys]
    share = arms.count("challenger") / len(arms)
    assert abs(share - 0.2) < 0.015  # 5 standard deviations at n=20000
    again = ABRouter({"champion": 0.8, "challenger": 0.2})
    assert [again.assign(k) for k in keys[:500]] == arms[:500]


def test_stable_hash_is_the_same_in_another_process() -> None:
    code = "from hamnet.serving.ab import stable_unit; print(repr(stable_unit('user-42')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert float(out.stdout) == stable_unit("user-42")
    assert 0.0 <= stable_unit("") < 1.0


def test_unkeyed_requests_are_split_at_random() -> None:
    router = ABRouter({"a": 0.5, "b": 0.3, "c": 0.2}, seed=1)
    arms = [router.assign(None) for _ in range(10_000)]
    for arm, weight in router.split.items():
        assert abs(arms.count(arm) / len(arms) - weight) < 0.03


def test_welch_difference_matches_scipy() -> None:
    from scipy import stats

    rng = np.random.default_rng(0)
    a, b = rng.normal(5.0, 1.0, 200), rng.normal(4.0, 2.0, 300)
    diff, low, high, p = welch_difference(a, b, 0.95)
    assert diff == pytest.approx(a.mean() - b.mean())
    assert p == pytest.approx(stats.ttest_ind(a, b, equal_var=False).pvalue)
    assert low < diff < high and low > 0  # a real difference of 1.0
    ci = stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    assert (low, high) == pytest.approx((ci.low, ci.high))


def _hand_written_welch(a: np.ndarray, b: np.ndarray, confidence: float) -> tuple[float, float]:
    """The interval the hand-written Welch code gave before scipy computed it."""
    from scipy import stats

    va, vb = float(np.var(a, ddof=1)) / len(a), float(np.var(b, ddof=1)) / len(b)
    dof = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    half = float(stats.t.ppf(0.5 + confidence / 2, dof)) * (va + vb) ** 0.5
    diff = float(np.mean(a) - np.mean(b))
    return diff - half, diff + half


@pytest.mark.parametrize("confidence", [0.8, 0.95, 0.99])
@pytest.mark.parametrize(("n_a", "n_b"), [(2, 3), (30, 7), (200, 300)])
def test_welch_interval_is_the_hand_written_one(n_a: int, n_b: int, confidence: float) -> None:
    rng = np.random.default_rng(n_a * n_b)
    a, b = rng.normal(5.0, 1.0, n_a), rng.normal(4.0, 3.0, n_b)
    _, low, high, _ = welch_difference(a, b, confidence)
    old_low, old_high = _hand_written_welch(a, b, confidence)
    assert abs(low - old_low) <= 1e-9 and abs(high - old_high) <= 1e-9


def test_welch_edge_cases() -> None:
    assert np.isnan(welch_difference(np.array([1.0]), np.array([1.0, 2.0]), 0.95)[1])
    assert welch_difference(np.full(4, 2.0), np.full(5, 2.0), 0.95) == (0.0, 0.0, 0.0, 1.0)
    assert welch_difference(np.full(4, 3.0), np.full(5, 2.0), 0.95) == (1.0, 1.0, 1.0, 0.0)


def test_proportion_difference() -> None:
    diff, low, high, p = proportion_difference(60, 100, 40, 100, 0.95)
    assert diff == pytest.approx(0.2)
    assert p == pytest.approx(0.00468, abs=1e-4)  # pooled z = 2.828
    assert low == pytest.approx(0.2 - 1.959964 * np.sqrt(0.48 / 100), rel=1e-5)
    assert high > 0.2
    _, _, _, same = proportion_difference(5, 100, 5, 100, 0.95)
    assert same == pytest.approx(1.0)


def _records(tmp_path: Path) -> Path:
    rng = np.random.default_rng(1)
    log = ABLog(tmp_path / "ab" / "log.jsonl")
    for i in range(400):
        arm = "champion" if i % 4 else "challenger"
        slow = 3.0 if arm == "challenger" else 0.0
        log.write(
            ABRecord(time=float(i), arm=arm, version="2" if arm == "challenger" else "1",
                     key=f"k{i}", latency_ms=float(rng.normal(5.0 + slow, 0.5)), rows=1,
                     error="RuntimeError" if i % 50 == 0 else None, labelled=1,
                     correct=int(rng.random() < 0.9))
        )  # fmt: skip
    return log.path


def test_report_compares_arms(tmp_path: Path) -> None:
    report = ab_report(read_log(_records(tmp_path)))
    assert report.baseline == "champion"
    stats = {s.arm: s for s in report.arms}
    assert stats["champion"].requests == 300 and stats["challenger"].requests == 100
    assert stats["challenger"].versions == ["2"]
    assert stats["challenger"].errors == 4
    latency = next(c for c in report.comparisons if c.metric == "latency_ms")
    assert latency.arm == "challenger" and latency.significant
    assert latency.ci_low < 3.0 < latency.ci_high
    assert {c.metric for c in report.comparisons} == {"latency_ms", "error_rate", "accuracy"}
    assert json.loads(json.dumps(report.to_dict()))["baseline"] == "champion"


def test_report_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="must be an existing file"):
        read_log(tmp_path / "missing.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text("not json\n")
    with pytest.raises(DataError, match="line 1"):
        read_log(bad)
    with pytest.raises(DataError, match="empty"):
        ab_report([])
    with pytest.raises(ConfigError, match="baseline arm must be one of"):
        ab_report(read_log(_records(tmp_path)), baseline="nobody")


def test_ab_report_command(tmp_path: Path) -> None:
    from hamnet.ops.cli import app

    log = _records(tmp_path)
    result = CliRunner().invoke(app, ["ab-report", str(log)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "challenger" in result.output and "welch-t" in result.output
    result = CliRunner().invoke(app, ["ab-report", str(log), "--json", "--baseline", "challenger"])
    assert result.exit_code == 0
    assert json.loads(result.output)["baseline"] == "challenger"
    result = CliRunner().invoke(app, ["ab-report", str(tmp_path / "nope.jsonl")])
    assert result.exit_code == 2
