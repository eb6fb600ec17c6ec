"""What the run indexes protect from ``hamnet gc``: the pure decision, no files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from hamnet.pipeline.gc import TEMP_MAX_AGE_SECONDS, is_active, plan_retention

NOW = 1_000_000.0


def _entry(sha: str, *, front: bool = False, recommended: bool = False) -> dict[str, Any]:
    return {"artifact": {"sha256": sha}, "on_front": front, "recommended": recommended}


def _index(name: str, status: str, *entries: dict[str, Any], **fields: Any) -> Any:
    document = {"run_name": name, "status": status, "candidates": list(entries), **fields}
    return Path(f"/runs/{name}.json"), document


def test_recent_finished_runs_protect_only_front_and_recommended() -> None:
    indexes = [
        _index(
            "new", "finished", _entry("a", front=True), _entry("b"), _entry("c", recommended=True)
        ),
        _index("old", "finished", _entry("d", front=True)),
    ]
    plan = plan_retention(indexes, keep_runs=1, now=NOW)
    assert plan.protected_shas == {"a", "c"}
    assert plan.recent_indexes == {Path("/runs/new.json")}
    assert plan.keeps_index(Path("/runs/new.json"))
    assert not plan.keeps_index(Path("/runs/old.json"))
    assert plan.active_since is None
    assert not plan.may_be_in_use(NOW)


def test_keep_runs_counts_finished_runs_only() -> None:
    indexes = [
        _index("failed", "failed", _entry("x", front=True)),
        _index("one", "finished", _entry("a", front=True)),
        _index("two", "finished", _entry("b", recommended=True)),
        _index("three", "finished", _entry("c", front=True)),
    ]
    plan = plan_retention(indexes, keep_runs=2, now=NOW)
    assert plan.protected_shas == {"a", "b"}
    assert plan.recent_indexes == {Path("/runs/one.json"), Path("/runs/two.json")}


def test_a_run_in_progress_protects_everything_it_lists_and_stores() -> None:
    running = _index(
        "live", "running", _entry("a"), _entry("b"), started=NOW - 100, updated=NOW - 10
    )
    plan = plan_retention([running], keep_runs=1, now=NOW)
    assert plan.protected_shas == {"a", "b"}
    assert plan.keeps_index(Path("/runs/live.json"))
    assert plan.active_since == NOW - 100
    assert plan.may_be_in_use(NOW - 130)
    assert not plan.may_be_in_use(NOW - 200)


def test_a_stale_running_index_is_a_crashed_run() -> None:
    stale = _index("dead", "running", _entry("a"), updated=NOW - TEMP_MAX_AGE_SECONDS - 1)
    plan = plan_retention([stale], keep_runs=1, now=NOW)
    assert plan.protected_shas == frozenset()
    assert not plan.keeps_index(Path("/runs/dead.json"))
    assert plan.active_since is None


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        ({"status": "running", "updated": NOW - 1}, True),
        ({"status": "running", "updated": NOW - TEMP_MAX_AGE_SECONDS}, False),
        ({"status": "running"}, False),
        ({"status": "finished", "updated": NOW}, False),
    ],
)
def test_is_active(document: dict[str, Any], expected: bool) -> None:
    assert is_active(document, NOW) is expected
