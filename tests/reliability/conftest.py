"""Fixtures of the reliability tier: the fault table every scenario adds a row to.

Set ``HAMNET_RELIABILITY_REPORT=<path>.md`` to write the table (Markdown, and JSON
beside it) at the end of the session; ``docs/reliability.md`` quotes it.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pytest

REPORT_ENV = "HAMNET_RELIABILITY_REPORT"


@dataclass
class FaultRow:
    """One fault or bad input tried, and what came of it."""

    fault: str
    outcome: str
    lost: str
    recovery_s: float | None
    test: str


class FaultTable:
    """Rows collected over the session (one per scenario)."""

    def __init__(self) -> None:
        self.rows: list[FaultRow] = []

    def add(
        self, request: pytest.FixtureRequest, fault: str, outcome: str, lost: str,
        recovery_s: float | None = None,
    ) -> None:  # fmt: skip
        """Record a scenario; ``recovery_s`` is the time until the flow was whole again."""
        self.rows.append(FaultRow(fault, outcome, lost, recovery_s, request.node.name))

    def markdown(self) -> str:
        lines = [
            "| fault or bad input | what happened | lost | recovery (s) | test |",
            "| --- | --- | --- | --- | --- |",
        ]
        for r in self.rows:
            seconds = "-" if r.recovery_s is None else f"{r.recovery_s:.1f}"
            cells = [r.fault, r.outcome, r.lost, seconds, f"`{r.test}`"]
            lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
        return "\n".join(lines) + "\n"


@pytest.fixture(scope="session")
def fault_table() -> Iterator[FaultTable]:
    """The session's fault table, written to ``$HAMNET_RELIABILITY_REPORT`` at the end."""
    table = FaultTable()
    yield table
    target = os.environ.get(REPORT_ENV)
    if target and table.rows:
        path = Path(target)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(table.markdown())
        path.with_suffix(".json").write_text(json.dumps([asdict(r) for r in table.rows], indent=1))


class Stopwatch:
    """``with Stopwatch() as sw: ...``; then ``sw.seconds``."""

    def __enter__(self) -> Stopwatch:
        self._start = time.perf_counter()
        self.seconds = 0.0
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self._start


def flow_config(project: Path, seed: int, **overrides: Any) -> dict[str, Any]:
    """Train + ONNX export only, tracked in the project's SQLite MLflow (unless overridden)."""
    from conftest import tiny_config

    from hamnet.core.config import deep_merge

    base = {
        "seed": seed,
        "name": f"tiny-{seed}",
        "tracking": {"mlflow_uri": f"sqlite:///{project / 'mlflow.db'}"},
        "stages": {"train": {"epochs": 2}, "export": {"formats": ["onnx"]}, "quantize": None},
    }
    return tiny_config(**deep_merge(base, overrides))


def run_flow(project: Path, cfg: dict[str, Any], name: str = "run.yaml") -> dict[str, Any]:
    """Run the hamnet-optimize flow in this process; return its summary."""
    from conftest import write_config

    from flows.hamnet_optimize import hamnet_optimize

    path = write_config(project, cfg, name)
    return hamnet_optimize(config_path=str(path), base_dir=str(project))


def files_under(folder: Path) -> list[Path]:
    """Every file below ``folder`` (none when it does not exist)."""
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []
