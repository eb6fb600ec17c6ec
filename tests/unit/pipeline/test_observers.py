"""A run's observers and stage hooks, on a real (tiny, train-only, untracked) run."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
from conftest import tiny_config

from hamnet.core.candidate import Candidate
from hamnet.core.config import OptimizeConfig, config_from_dict
from hamnet.core.errors import StageError
from hamnet.pipeline.hooks import StageHook, add_stage_hook, before_stage, stage_hooks
from hamnet.pipeline.observers import (
    ConsoleObserver,
    RetentionObserver,
    RunIndexObserver,
    RunObserver,
)
from hamnet.pipeline.run import (
    PipelineResult,
    PipelineRun,
    StageRecord,
    execute_stage,
    make_context,
    run_pipeline,
)


def _config(**overrides: Any) -> OptimizeConfig:
    cfg = tiny_config(
        stages={"train": {"epochs": 1}, "export": None, "quantize": None},
        tracking={"enabled": False},
        **overrides,
    )
    return config_from_dict(cfg)


class Recorder(RunObserver):
    """Notes each event with the run index's status at that moment."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []

    def _status(self, run: PipelineRun) -> str | None:
        if not run.index_path.is_file():
            return None
        return str(json.loads(run.index_path.read_text())["status"])

    def on_start(self, run: PipelineRun) -> None:
        self.events.append(("start", self._status(run)))

    def on_stage_done(self, run: PipelineRun, record: StageRecord, new: list[Candidate]) -> None:
        assert [c.id for c in new] == record.candidates
        self.events.append(("stage", record.name))

    def on_finish(self, run: PipelineRun, result: PipelineResult) -> None:
        self.events.append(("finish", self._status(run)))

    def on_done(self, run: PipelineRun, result: PipelineResult) -> None:
        assert result.seconds > 0
        self.events.append(("done", result.selection.recommended is not None))

    def on_error(self, run: PipelineRun, error: str) -> None:
        self.events.append(("error", error))


class Fail(StageHook):
    def __init__(self, stage: str) -> None:
        self.stage = stage
        self.seen: list[str] = []

    def before_stage(self, stage: str, ctx: Any) -> None:
        self.seen.append(stage)
        if stage == self.stage:
            raise StageError(f"{stage} refused by a hook")


def test_observers_are_told_in_order_and_print_what_the_run_did(tmp_path: Path) -> None:
    from rich.console import Console

    out = io.StringIO()
    recorder = Recorder()
    config = _config()
    with PipelineRun(
        config, base_dir=tmp_path, console=Console(file=out, width=200), observers=[recorder]
    ) as run:
        assert [type(o) for o in run.observers[:-1]] == [
            ConsoleObserver,
            RunIndexObserver,
            RetentionObserver,
        ]
        for stage in run.plan:
            new, notes = execute_stage(config, stage.name, run.candidates, base_dir=tmp_path)
            run.add(stage, new, notes=notes, seconds=1.0)
        result = run.finish()

    assert recorder.events == [
        ("start", "running"),
        ("stage", "train"),
        ("finish", "finished"),
        ("done", True),
    ]
    index = json.loads(run.index_path.read_text())
    assert index["mlflow_run_id"] is None and index["stages"] == ["train"]
    assert [c["recommended"] for c in index["candidates"]] == [True]
    text = out.getvalue()
    assert f"hamnet-optimize {run.run_name}: plan train on profile 'x86-avx2'" in text
    assert "train (1.0 s): " in text
    assert "done in " in text and "cached stages: none" in text
    assert result.mlflow_run_id is None and result.registration is None


def test_a_stage_hook_failure_reaches_the_observers_and_marks_the_index_failed(
    tmp_path: Path,
) -> None:
    from rich.console import Console

    hook = Fail("train")
    recorder = Recorder()
    run_name = "failing"
    run = PipelineRun(
        _config(),
        base_dir=tmp_path,
        run_name=run_name,
        console=Console(file=io.StringIO()),
        observers=[recorder],
    )
    with stage_hooks(hook), pytest.raises(StageError, match="train refused by a hook"), run:
        for stage in run.plan:
            execute_stage(run.config, stage.name, run.candidates, base_dir=tmp_path)
    assert hook.seen == ["train"]
    assert recorder.events[-1] == ("error", "StageError: train refused by a hook")
    index = json.loads((tmp_path / ".hamnet" / "runs" / f"{run_name}.json").read_text())
    assert index["status"] == "failed" and index["error"] == "StageError: train refused by a hook"
    assert not (tmp_path / ".hamnet" / "artifacts").exists() or not any(
        p.is_file() for p in (tmp_path / ".hamnet" / "artifacts").rglob("*")
    )  # the hook ran before the stage made anything


def test_stage_hooks_are_called_only_while_added(tmp_path: Path) -> None:
    hook = Fail("never")
    ctx = make_context(_config(), tmp_path)
    with stage_hooks(hook):
        before_stage("train", ctx)
    before_stage("export", ctx)
    assert hook.seen == ["train"]
    with pytest.raises(TypeError, match="must be a StageHook, but got int"):
        add_stage_hook(42)  # type: ignore[arg-type]


def test_run_pipeline_walks_the_same_plan(tmp_path: Path) -> None:
    from rich.console import Console

    result = run_pipeline(_config(), base_dir=tmp_path, console=Console(file=io.StringIO()))
    assert [s.name for s in result.stages] == ["train"]
    assert result.summary()["recommended"] == result.candidates[0].name
