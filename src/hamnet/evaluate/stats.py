"""Intervals for figures measured more than once (e.g. accuracy over seeds).

A benchmark that trains or compresses with several seeds reports the mean and a
Student-t confidence interval of the mean, not the best seed:

Example:
    >>> mean, low, high = mean_interval([0.962, 0.971, 0.958, 0.966])
    >>> f"{mean:.3f} [{low:.3f}, {high:.3f}]"
    '0.964 [0.955, 0.973]'
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from hamnet.core.errors import ConfigError, DataError


def mean_interval(values: Iterable[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """The mean of ``values`` and a Student-t confidence interval of it.

    The interval is ``mean ± t(confidence, n-1) * s / sqrt(n)`` with ``s`` the sample
    standard deviation: it assumes independent runs (e.g. one per seed) whose figures
    are roughly normal. With 3 seeds it is wide (``t`` is 4.30 at 95%); that is the
    honest width of 3 runs.

    Args:
        values: At least 2 finite figures, one per run (>= 3 recommended).
        confidence: The interval's confidence level, in (0, 1).

    Returns:
        ``(mean, low, high)``; ``low == high == mean`` when every value is equal.

    Raises:
        ConfigError: If ``confidence`` is not in (0, 1).
        DataError: If there are fewer than 2 values or one is not finite.
    """
    import numpy as np
    from scipy import stats

    if not 0.0 < confidence < 1.0:
        raise ConfigError(f"confidence must be in (0, 1), but got {confidence!r}")
    array = np.asarray(list(values), dtype=np.float64).reshape(-1)
    if len(array) < 2:
        raise DataError(f"an interval needs at least 2 values (one per seed), but got {len(array)}")
    if not np.all(np.isfinite(array)):
        raise DataError(f"values must be finite, but got {array.tolist()}")
    mean = float(array.mean())
    sem = float(array.std(ddof=1)) / math.sqrt(len(array))
    if sem == 0.0:
        return mean, mean, mean
    half = float(stats.t.ppf(0.5 + confidence / 2.0, df=len(array) - 1)) * sem
    return mean, mean - half, mean + half


def format_interval(
    values: Iterable[float],
    confidence: float = 0.95,
    *,
    scale: float = 1.0,
    digits: int = 2,
    unit: str = "",
) -> str:
    """``"mean ± half-width"`` of :func:`mean_interval`, e.g. ``"96.43 ± 0.88%"``.

    Args:
        values: As for :func:`mean_interval`.
        confidence: As for :func:`mean_interval`.
        scale: Factor applied before formatting (100 for percent).
        digits: Decimals shown.
        unit: Appended after the half-width.

    Returns:
        The formatted figure with its number of runs, e.g. ``"96.43 ± 0.88% (n=4)"``.
    """
    values = list(values)
    mean, low, high = mean_interval(values, confidence)
    half = (high - low) / 2.0
    return f"{mean * scale:.{digits}f} ± {half * scale:.{digits}f}{unit} (n={len(values)})"
