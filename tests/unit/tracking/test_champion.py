"""The champion policy on its own: no MLflow, just the facts of two model versions."""

from __future__ import annotations

import pytest

from hamnet.core.candidate import Metrics
from hamnet.core.config import ConstraintsSection
from hamnet.tracking.champion import VersionFacts, decide_champion

LIMITS = ConstraintsSection(max_accuracy_drop=0.02)


def metrics(accuracy: float, latency: float) -> Metrics:
    return Metrics(
        accuracy=accuracy,
        latency_p50_ms=latency,
        latency_p90_ms=latency * 1.2,
        latency_batch_size=1,
        throughput_sps=1000.0 / latency,
        throughput_batch_size=32,
        size_mb=1.0,
        params=1234,
        flops=5678,
        peak_memory_mb=42.0,
        runtime="onnxruntime",
        threads=2,
        eval_samples=100,
    )


def facts(
    version: str,
    latency: float,
    *,
    accuracy: float = 0.96,
    sha: str | None = None,
    meets: bool | None = None,
    stored: bool = True,
) -> VersionFacts:
    return VersionFacts(
        version=version,
        sha256=sha or f"sha-{version}" * 4,
        candidate_id=f"cand-{version}",
        metrics=metrics(accuracy, latency) if stored else None,
        baseline_accuracy=0.97 if stored else None,
        meets_constraints=meets,
    )


def decide(new: VersionFacts, current: VersionFacts | None, **kw: object):  # type: ignore[no-untyped-def]
    options: dict[str, object] = {
        "model": "hamnet-test",
        "alias": "champion",
        "objective": "latency_p50_ms",
        "min_improvement": 0.05,
        "constraints": LIMITS,
    }
    options.update(kw)
    return decide_champion(new, current, **options)  # type: ignore[arg-type]


def test_the_first_version_becomes_champion() -> None:
    decision = decide(facts("1", 0.52, meets=True), None)
    assert decision.move
    assert decision.message == "v1 is the first champion of hamnet-test: latency p50 0.52 ms"


def test_a_small_improvement_does_not_move_the_champion() -> None:
    decision = decide(facts("2", 0.50, meets=True), facts("1", 0.52))
    assert not decision.move
    assert decision.message == (
        "champion stays v1 over v2: latency p50 0.50 ms vs 0.52 ms (4% better, needs more than 5%)"
    )


def test_a_clear_improvement_moves_the_champion() -> None:
    decision = decide(facts("3", 0.41, meets=True), facts("1", 0.52))
    assert decision.move
    assert decision.message == (
        "champion moved from v1 to v3: latency p50 0.41 ms vs 0.52 ms (21% better)"
    )


def test_the_same_model_file_never_replaces_itself() -> None:
    decision = decide(facts("4", 0.30, sha="a" * 64, meets=True), facts("3", 0.41, sha="a" * 64))
    assert not decision.move
    assert (
        decision.message == "champion stays v3: it is the recommended model (sha256 aaaaaaaaaaaa)"
    )


def test_a_champion_without_hamnet_metrics_stays() -> None:
    decision = decide(facts("2", 0.1, meets=True), facts("1", 0.5, stored=False))
    assert not decision.move
    assert "it has no hamnet metrics to compare with; move the alias to v2 by hand" in (
        decision.message
    )


def test_the_champion_is_reassessed_under_the_current_constraints() -> None:
    strict = ConstraintsSection(max_accuracy_drop=0.005)
    # The champion (drop 1 point) fails the stricter constraints; the slower, exact one wins.
    new = facts("5", 0.9, accuracy=0.97, meets=True)
    decision = decide(new, facts("3", 0.41), constraints=strict)
    assert decision.move and decision.message.startswith("champion moved from v3 to v5")
    assert "meets the constraints, the old one does not" in decision.message
    assert not decide(new, facts("3", 0.41), constraints=LIMITS).move


def test_a_stored_verdict_of_the_champion_is_used_as_is() -> None:
    new = facts("2", 0.9, meets=True)
    assert decide(new, facts("1", 0.41, meets=False)).move
    assert not decide(new, facts("1", 0.41, meets=True)).move


def test_the_new_version_must_carry_metrics_and_a_verdict() -> None:
    with pytest.raises(ValueError, match="must carry metrics and a constraints verdict"):
        decide(facts("2", 0.5), facts("1", 0.5))
