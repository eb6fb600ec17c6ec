"""A stage's cache key covers the files it reads (search space, teacher checkpoints)."""

from __future__ import annotations

from pathlib import Path

import yaml
from conftest import tiny_config

from hamnet.core.config import config_from_dict
from hamnet.pipeline.run import PipelineRun
from hamnet.pipeline.stages.distill import DistillStage
from hamnet.pipeline.stages.nas import NASStage


def test_editing_a_search_space_or_a_teacher_file_changes_the_stage_scope(
    tmp_path: Path,
) -> None:
    space = tmp_path / "space.yaml"
    space.write_text(
        yaml.safe_dump({"architecture": {"num_layers": {"type": "int", "low": 1, "high": 2}}})
    )
    teacher = tmp_path / "teacher.pt"
    teacher.write_bytes(b"one")
    cfg = config_from_dict(
        tiny_config(
            stages={
                "nas": {"space": "space.yaml", "n_trials": 1},
                "distill": {"teachers": ["baseline", "teacher.pt"]},
            },
            tracking={"enabled": False},
        )
    )
    run = PipelineRun(cfg, base_dir=tmp_path)
    nas, distill = run.scope(NASStage()), run.scope(DistillStage())
    assert nas["file_sha256:space.yaml"] and distill["file_sha256:teacher.pt"]
    assert "file_sha256:baseline" not in distill  # a candidate name, not a file

    space.write_text(
        yaml.safe_dump({"architecture": {"num_layers": {"type": "int", "low": 1, "high": 3}}})
    )
    teacher.write_bytes(b"two")
    assert run.scope(NASStage()) != nas
    assert run.scope(DistillStage()) != distill
