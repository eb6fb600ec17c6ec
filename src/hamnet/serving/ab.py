"""A/B testing: split traffic between arms, log every request, compare the arms.

:class:`ABRouter` assigns a request to an arm: by a stable hash of its key (the same
key always gets the same arm, in every process) or at random when it has none.
:class:`ABLog` appends one JSON line per request (arm, model version, latency, error,
prediction and, when the client sent labels, how many were right). :func:`ab_report`
reads such a log and compares each arm with a baseline arm: Welch's t-test for the
latency difference and two-proportion z-tests for error rate and accuracy, each with
a confidence interval for the difference.
"""

from __future__ import annotations

import json
import math
import random
import threading
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hamnet.core.errors import ConfigError, DataError
from hamnet.core.hashing import sha256


def parse_split(text: str) -> dict[str, float]:
    """Parse ``"champion=0.9,challenger=0.1"`` into arm weights that sum to 1.

    Raises:
        ConfigError: If an item is not ``name=weight``, a weight is not positive, a name
            repeats, or the weights do not sum to 1 (within 1e-6).
    """
    split: dict[str, float] = {}
    for item in (part.strip() for part in text.split(",")):
        name, sep, raw = item.partition("=")
        name = name.strip()
        try:
            weight = float(raw)
        except ValueError:
            weight = math.nan
        if not sep or not name or not math.isfinite(weight) or weight <= 0:
            raise ConfigError(
                f"each A/B arm must be name=weight with a positive weight, but got {item!r}"
            )
        if name in split:
            raise ConfigError(f"A/B arm names must be unique, but got {name!r} twice")
        split[name] = weight
    total = sum(split.values())
    if abs(total - 1.0) > 1e-6:
        raise ConfigError(f"A/B weights must sum to 1, but got {total:g} from {text!r}")
    return split


def stable_unit(key: str) -> float:
    """Map a key to [0, 1) with SHA-256 (unlike ``hash``, the same in every process)."""
    digest = sha256(key).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


class ABRouter:
    """Assigns requests to arms with the configured split.

    Args:
        split: Arm name to weight (weights sum to 1), in a fixed order.
        seed: Seed of the generator used for requests without a key.
    """

    def __init__(self, split: Mapping[str, float], *, seed: int | None = None) -> None:
        if not split:
            raise ConfigError("an A/B split must have at least one arm, but got none")
        self.split = dict(split)
        self.arms = list(self.split)
        self._bounds = np.cumsum([self.split[a] for a in self.arms])
        self._random = random.Random(seed)
        self._lock = threading.Lock()

    def assign(self, key: str | None) -> str:
        """The arm for a request: sticky for a key, random without one."""
        if len(self.arms) == 1:
            return self.arms[0]  # no draw, no hash: the single-model server's every request
        if key is None or key == "":
            with self._lock:
                u = self._random.random()
        else:
            u = stable_unit(key)
        index = int(np.searchsorted(self._bounds, u, side="right"))
        return self.arms[min(index, len(self.arms) - 1)]


@dataclass(frozen=True)
class ABRecord:
    """One served (or failed) request.

    Attributes:
        time: Unix time when it finished.
        arm: The arm that served it.
        version: The model version that served it ("" when it failed before running).
        key: The request key, if any.
        latency_ms: Time from arrival to response.
        rows: Samples in the request.
        error: The error kind, or None when it succeeded.
        labelled: Samples the client sent a label for.
        correct: Labelled samples predicted right.
    """

    time: float
    arm: str
    version: str
    key: str | None
    latency_ms: float
    rows: int
    error: str | None = None
    labelled: int = 0
    correct: int = 0


class ABLog:
    """Appends :class:`ABRecord` lines to a JSON-lines file (thread-safe).

    Args:
        path: The log file; its folder is created.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def write(self, record: ABRecord) -> None:
        """Append one record."""
        line = json.dumps(asdict(record), separators=(",", ":")) + "\n"
        with self._lock, self.path.open("a", encoding="utf-8") as fh:
            fh.write(line)


def read_log(path: str | Path) -> list[ABRecord]:
    """Read the records of an A/B log.

    Raises:
        DataError: If the file is missing or a line is not a record.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"A/B log must be an existing file, but got {str(path)!r}")
    records = []
    names = set(ABRecord.__dataclass_fields__)
    with path.open(encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                data = json.loads(line)
                records.append(ABRecord(**{k: v for k, v in data.items() if k in names}))
            except (json.JSONDecodeError, TypeError) as err:
                raise DataError(
                    f"line {number} of {str(path)!r} must be an A/B record, but got "
                    f"{line.strip()[:80]!r} ({err})"
                ) from None
    return records


@dataclass(frozen=True)
class ArmStats:
    """Per-arm summary of an A/B log."""

    arm: str
    versions: list[str]
    requests: int
    errors: int
    error_rate: float
    latency_mean_ms: float
    latency_p50_ms: float
    latency_p95_ms: float
    labelled: int
    correct: int
    accuracy: float | None


@dataclass(frozen=True)
class Comparison:
    """An arm minus the baseline arm for one quantity, with a CI and a p-value.

    Attributes:
        metric: ``latency_ms``, ``error_rate`` or ``accuracy``.
        arm: The compared arm.
        baseline: The baseline arm.
        difference: ``arm - baseline``.
        ci_low: Lower end of the confidence interval of the difference.
        ci_high: Upper end.
        p_value: Two-sided p-value of "no difference".
        test: The test used.
    """

    metric: str
    arm: str
    baseline: str
    difference: float
    ci_low: float
    ci_high: float
    p_value: float
    test: str

    @property
    def significant(self) -> bool:
        """Whether the interval excludes zero."""
        return self.ci_low > 0 or self.ci_high < 0


@dataclass(frozen=True)
class ABReport:
    """What :func:`ab_report` computes."""

    confidence: float
    baseline: str
    arms: list[ArmStats]
    comparisons: list[Comparison] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "confidence": self.confidence,
            "baseline": self.baseline,
            "arms": [asdict(a) for a in self.arms],
            "comparisons": [asdict(c) | {"significant": c.significant} for c in self.comparisons],
        }


Estimate = tuple[float, float, float, float]
"""(difference, CI low, CI high, p-value)."""


def welch_difference(a: np.ndarray, b: np.ndarray, confidence: float) -> Estimate:
    """``mean(a) - mean(b)`` with Welch's CI and two-sided p-value: (diff, low, high, p)."""
    from scipy import stats

    diff = float(np.mean(a) - np.mean(b))
    if len(a) < 2 or len(b) < 2:
        return diff, math.nan, math.nan, math.nan
    if np.var(a, ddof=1) == 0 and np.var(b, ddof=1) == 0:
        return diff, diff, diff, 1.0 if diff == 0 else 0.0
    result = stats.ttest_ind(a, b, equal_var=False)
    interval = result.confidence_interval(confidence_level=confidence)
    return diff, float(interval.low), float(interval.high), float(result.pvalue)


def proportion_difference(
    successes_a: int, n_a: int, successes_b: int, n_b: int, confidence: float
) -> Estimate:
    """``p_a - p_b`` with a Wald CI and the pooled two-proportion z-test: (diff, low, high, p)."""
    from scipy import stats

    if n_a == 0 or n_b == 0:
        return math.nan, math.nan, math.nan, math.nan
    pa, pb = successes_a / n_a, successes_b / n_b
    diff = pa - pb
    z_crit = float(stats.norm.ppf(0.5 + confidence / 2))
    se = math.sqrt(pa * (1 - pa) / n_a + pb * (1 - pb) / n_b)
    pooled = (successes_a + successes_b) / (n_a + n_b)
    se0 = math.sqrt(pooled * (1 - pooled) * (1 / n_a + 1 / n_b))
    p = 1.0 if se0 == 0 else float(2 * stats.norm.sf(abs(diff) / se0))
    return diff, diff - z_crit * se, diff + z_crit * se, p


def _arm_stats(arm: str, records: list[ABRecord]) -> ArmStats:
    ok = np.array([r.latency_ms for r in records if r.error is None], dtype=np.float64)
    errors = sum(r.error is not None for r in records)
    labelled = sum(r.labelled for r in records)
    correct = sum(r.correct for r in records)
    return ArmStats(
        arm=arm,
        versions=sorted({r.version for r in records if r.version}),
        requests=len(records),
        errors=errors,
        error_rate=errors / len(records),
        latency_mean_ms=float(ok.mean()) if len(ok) else math.nan,
        latency_p50_ms=float(np.percentile(ok, 50)) if len(ok) else math.nan,
        latency_p95_ms=float(np.percentile(ok, 95)) if len(ok) else math.nan,
        labelled=labelled,
        correct=correct,
        accuracy=correct / labelled if labelled else None,
    )


def ab_report(
    records: Iterable[ABRecord], *, baseline: str | None = None, confidence: float = 0.95
) -> ABReport:
    """Summarise each arm and compare every other arm with the baseline arm.

    Args:
        records: The log's records.
        baseline: The arm others are compared with (default: the arm with most requests).
        confidence: Confidence level of the intervals, in (0, 1).

    Returns:
        Per-arm statistics and, per other arm, the latency (Welch), error-rate and
        accuracy (two-proportion) differences.

    Raises:
        ConfigError: If the confidence is outside (0, 1) or the baseline arm is absent.
        DataError: If there are no records.
    """
    if not 0 < confidence < 1:
        raise ConfigError(f"confidence must be in (0, 1), but got {confidence}")
    by_arm: dict[str, list[ABRecord]] = {}
    for record in records:
        by_arm.setdefault(record.arm, []).append(record)
    if not by_arm:
        raise DataError("an A/B report needs at least one record, but the log is empty")
    if baseline is None:
        baseline = max(by_arm, key=lambda a: len(by_arm[a]))
    if baseline not in by_arm:
        raise ConfigError(f"baseline arm must be one of {sorted(by_arm)}, but got {baseline!r}")
    stats = {arm: _arm_stats(arm, recs) for arm, recs in sorted(by_arm.items())}
    base = stats[baseline]
    base_lat = np.array([r.latency_ms for r in by_arm[baseline] if r.error is None])
    comparisons = []
    for arm, s in stats.items():
        if arm == baseline:
            continue
        lat = np.array([r.latency_ms for r in by_arm[arm] if r.error is None])
        if len(lat) and len(base_lat):
            values = welch_difference(lat, base_lat, confidence)
            comparisons.append(Comparison("latency_ms", arm, baseline, *values, "welch-t"))
        values = proportion_difference(s.errors, s.requests, base.errors, base.requests, confidence)
        comparisons.append(Comparison("error_rate", arm, baseline, *values, "two-proportion-z"))
        if s.labelled and base.labelled:
            values = proportion_difference(
                s.correct, s.labelled, base.correct, base.labelled, confidence
            )
            comparisons.append(Comparison("accuracy", arm, baseline, *values, "two-proportion-z"))
    return ABReport(confidence, baseline, list(stats.values()), comparisons)
