"""Property-based tests: the config and search-space parsers and the Pareto front.

Parsers must turn any input into either a valid object or the project's ConfigError
(never a KeyError, TypeError or pydantic's own error); the front must hold exactly the
non-dominated measured candidates, whatever the input order.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hamnet.compress.search.space import search_space_from_dict
from hamnet.core.artifacts import ArtifactRef
from hamnet.core.candidate import Candidate, Metrics
from hamnet.core.config import OptimizeConfig, config_from_dict
from hamnet.core.errors import ConfigError
from hamnet.evaluate.pareto import dominates, pareto_front

PROPERTY_SETTINGS = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 500),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
    st.lists(st.integers(0, 3), max_size=3),
)

# Real keys (so values get validated deep inside) mixed with random ones (typos).
_TOP = sorted(OptimizeConfig.model_fields)
_SECTION_KEYS = {
    name: sorted(field.annotation.model_fields)  # type: ignore[union-attr]
    for name, field in OptimizeConfig.model_fields.items()
    if hasattr(field.annotation, "model_fields")
}
keys = st.one_of(st.sampled_from(_TOP), st.text(min_size=1, max_size=10))


@st.composite
def config_documents(draw: st.DrawFn) -> dict[str, Any]:
    document: dict[str, Any] = {}
    for key in draw(st.lists(keys, max_size=4, unique=True)):
        if key in _SECTION_KEYS and draw(st.booleans()):
            inner = st.one_of(st.sampled_from(_SECTION_KEYS[key]), st.text(max_size=8))
            document[key] = draw(st.dictionaries(inner, scalars, max_size=3))
        else:
            document[key] = draw(scalars)
    return document


@PROPERTY_SETTINGS
@given(config_documents())
def test_config_parser_accepts_or_raises_config_error(document: dict[str, Any]) -> None:
    try:
        config = config_from_dict(document)
    except ConfigError as err:
        assert str(err).startswith("invalid configuration in <dict>:")
        for key in document:
            if key not in OptimizeConfig.model_fields:
                assert f"  - {key}: unknown key" in str(err)
        return
    assert config_from_dict(config.model_dump(mode="json")) == config  # round trip


@PROPERTY_SETTINGS
@given(st.sampled_from(_TOP), st.integers(0, 10), st.sampled_from("xqz_"))
def test_a_misspelt_key_is_refused_with_a_did_you_mean(key: str, at: int, letter: str) -> None:
    typo = key[: at % len(key)] + letter + key[at % len(key) :]
    if typo in OptimizeConfig.model_fields:
        return
    with pytest.raises(ConfigError, match=f"{typo}: unknown key") as info:
        config_from_dict({typo: {}})
    if len(key) >= 5:  # one inserted letter is within difflib's 0.6 cutoff from 5 letters
        assert f"did you mean {key!r}?" in str(info.value)


bounds = st.one_of(st.integers(-1000, 1000), st.floats(-1e6, 1e6, allow_nan=False))


@PROPERTY_SETTINGS
@given(low=bounds, high=bounds, log=st.booleans(), kind=st.sampled_from(["int", "float"]))
def test_search_space_ranges_are_valid_exactly_when_nonempty(
    low: float, high: float, log: bool, kind: str
) -> None:
    """A range parses iff low < high (and low > 0 on a log scale); else a ConfigError."""
    parameter: dict[str, Any] = {"type": kind, "low": low, "high": high, "log": log}
    if kind == "int":
        parameter.update(low=math.floor(low), high=math.floor(high))
    space = {"training": {"weight_decay" if kind == "float" else "epochs": parameter}}
    valid = parameter["low"] < parameter["high"] and (not log or parameter["low"] > 0)
    try:
        parsed = search_space_from_dict(space)
    except ConfigError as err:
        assert "invalid search space" in str(err)
        assert "but got" in str(err)  # says what must hold and what was got
        if not valid and parameter["low"] >= parameter["high"]:
            assert "empty range" in str(err) or "greater than" in str(err)
        return
    assert valid
    assert [name for _, name, _ in parsed.parameters()] == list(space["training"])


def _candidate(i: int, accuracy: float, latency: float, size: float, rejected: bool) -> Candidate:
    sha = f"{i:064x}"
    metrics = Metrics(
        accuracy=accuracy, latency_p50_ms=latency, latency_p90_ms=latency, latency_batch_size=1,
        throughput_sps=1.0, throughput_batch_size=1, size_mb=size, params=1, flops=1,
        peak_memory_mb=1.0, runtime="onnxruntime", threads=1, eval_samples=1,
    )  # fmt: skip
    artifact = ArtifactRef(path=f"/x/{sha}/model.onnx", sha256=sha, format="onnx", size_bytes=1)
    return Candidate(
        id=f"c{i}", name=f"c{i}", stage="export", method="onnx", artifact=artifact,
        runtime="onnxruntime", metrics=metrics, rejected="slower" if rejected else None,
    )  # fmt: skip


# Few distinct values, so ties and exact duplicates (never dominated) are common.
points = st.lists(
    st.tuples(
        st.sampled_from([0.5, 0.8, 0.9, 0.95, 1.0]),
        st.sampled_from([0.1, 0.5, 1.0, 2.0]),
        st.sampled_from([0.2, 1.0, 4.0]),
        st.booleans(),
    ),
    max_size=14,
)


@PROPERTY_SETTINGS
@given(points, st.randoms(use_true_random=False))
def test_pareto_front_is_exactly_the_nondominated_set_in_any_order(
    raw: list[tuple[float, float, float, bool]], rng: Any
) -> None:
    candidates = [_candidate(i, *p, rejected=r) for i, (*p, r) in enumerate(raw)]
    front = pareto_front(candidates)
    pool = [c for c in candidates if not c.rejected]
    ids = {c.id for c in front}
    assert all(c.metrics is not None for c in front)
    for c in front:  # nothing on the front is dominated
        assert not any(dominates(o.metrics, c.metrics) for o in pool if o is not c)  # type: ignore[arg-type]
    for c in pool:  # everything off the front is dominated by something on it
        if c.id not in ids:
            assert any(dominates(f.metrics, c.metrics) for f in front)  # type: ignore[arg-type]
    assert not ids & {c.id for c in candidates if c.rejected}
    shuffled = list(candidates)
    rng.shuffle(shuffled)
    assert {c.id for c in pareto_front(shuffled)} == ids
    assert {c.id for c in pareto_front(list(reversed(candidates)))} == ids
