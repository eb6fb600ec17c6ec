"""Intervals over seeds: the Student-t interval of a mean."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from hamnet.core.errors import ConfigError, DataError
from hamnet.evaluate.stats import format_interval, mean_interval


def test_mean_interval_matches_the_t_interval_by_hand() -> None:
    values = [0.962, 0.971, 0.958, 0.966]
    mean, low, high = mean_interval(values)
    n = len(values)
    half = stats.t.ppf(0.975, n - 1) * np.std(values, ddof=1) / math.sqrt(n)
    assert mean == pytest.approx(np.mean(values))
    assert (low, high) == (pytest.approx(mean - half), pytest.approx(mean + half))
    # scipy's own one-sample interval agrees
    ci = stats.ttest_1samp(values, 0.0).confidence_interval(0.95)
    assert (low, high) == (pytest.approx(ci.low), pytest.approx(ci.high))


def test_three_seeds_give_an_honestly_wide_interval_that_narrows_with_confidence() -> None:
    values = (0.90, 0.92, 0.94)
    _, low95, high95 = mean_interval(values)
    _, low80, high80 = mean_interval(values, confidence=0.80)
    assert high95 - low95 == pytest.approx(2 * 4.3027 * 0.02 / math.sqrt(3), rel=1e-4)
    assert low95 < low80 < 0.92 < high80 < high95
    assert mean_interval(iter([1.0, 1.0, 1.0])) == (1.0, 1.0, 1.0)  # no spread: no width


def test_format_interval() -> None:
    text = format_interval([0.962, 0.971, 0.958, 0.966], scale=100, unit="%")
    assert text == "96.43 ± 0.88% (n=4)"


@pytest.mark.parametrize(
    ("values", "confidence", "error", "match"),
    [
        ([0.9], 0.95, DataError, r"at least 2 values \(one per seed\), but got 1"),
        ([], 0.95, DataError, "but got 0"),
        ([0.9, float("nan")], 0.95, DataError, r"values must be finite, but got \[0.9, nan\]"),
        ([0.9, 0.8], 1.0, ConfigError, r"confidence must be in \(0, 1\), but got 1.0"),
        ([0.9, 0.8], 0.0, ConfigError, "but got 0.0"),
    ],
)
def test_bad_input_says_what_was_expected(
    values: list[float], confidence: float, error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        mean_interval(values, confidence)
