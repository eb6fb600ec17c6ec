"""A candidate's lineage (architecture, pruning plan, teachers) has typed fields."""

from __future__ import annotations

from pathlib import Path

import pytest

from hamnet.core.artifacts import ArtifactRef
from hamnet.core.candidate import LEGACY_PARAM_KEYS, Candidate, TeacherRef
from hamnet.core.errors import ConfigError


def _artifact(tmp_path: Path) -> ArtifactRef:
    path = tmp_path / "model.pt"
    path.write_bytes(b"weights")
    return ArtifactRef(path=str(path), format="torch", sha256="ab" * 32, size_bytes=7)


def test_typed_lineage_round_trips_and_leaves_the_id_alone(tmp_path: Path) -> None:
    artifact = _artifact(tmp_path)
    student = Candidate.create(
        name="student-tiny+kd-soft",
        stage="distill",
        method="kd-soft",
        artifact=artifact,
        runtime="torch",
        architecture={"hidden_size": 16},
        teachers=[TeacherRef(name="baseline", candidate_id="0123456789ab")],
        params={"student": "tiny"},
    )
    assert student.id == Candidate.make_id(None, "distill", "kd-soft", artifact.sha256)
    assert student.teacher_names == ["baseline"]
    assert student.teacher_ids == ["0123456789ab"]
    assert student.architecture == {"hidden_size": 16} and student.plan_file is None
    assert Candidate.model_validate_json(student.model_dump_json()) == student


def test_lineage_stays_out_of_params_and_shows_under_the_former_keys(tmp_path: Path) -> None:
    pruned = Candidate.create(
        name="pruned-50",
        stage="prune",
        method="l1-uniform",
        artifact=_artifact(tmp_path),
        runtime="torch",
        plan_file="plans/ab.json",
        teachers=[TeacherRef(name="baseline", candidate_id="c1")],
        params={"ratio": 0.5},
    )
    assert pruned.params == {"ratio": 0.5}
    assert pruned.lineage_params() == {
        "plan_file": "plans/ab.json",
        "teachers": ["baseline"],
        "teacher_ids": ["c1"],
    }
    assert Candidate.model_validate_json(pruned.model_dump_json()) == pruned


def test_a_candidate_saved_before_the_typed_fields_reads_its_lineage(tmp_path: Path) -> None:
    old = {
        "id": "0123456789ab",
        "name": "pruned-50+kd-soft",
        "stage": "distill",
        "method": "kd-soft",
        "artifact": _artifact(tmp_path).model_dump(mode="json"),
        "runtime": "torch",
        "params": {
            "architecture": {"hidden_size": 8},
            "plan_file": "plans/cd.json",
            "teachers": ["baseline", "teacher-big"],
            "teacher_ids": ["a1", "b2"],
            "ce_weight": 0.5,
        },
    }
    candidate = Candidate.model_validate(old)
    assert candidate.architecture == {"hidden_size": 8}
    assert candidate.plan_file == "plans/cd.json"
    assert candidate.teachers == [
        TeacherRef(name="baseline", candidate_id="a1"),
        TeacherRef(name="teacher-big", candidate_id="b2"),
    ]
    assert candidate.params == {"ce_weight": 0.5}
    assert candidate.id == old["id"]
    assert candidate.lineage_params() == {
        k: v for k, v in old["params"].items() if k in LEGACY_PARAM_KEYS
    }


def test_no_lineage_by_default(tmp_path: Path) -> None:
    baseline = Candidate.create(
        name="baseline", stage="load", method="torch", artifact=_artifact(tmp_path), runtime="torch"
    )
    assert baseline.teachers is None and baseline.teacher_names == [] and baseline.params == {}
    assert baseline.lineage_params() == {}


@pytest.mark.parametrize("runtime", ["torch", "onnxruntime", "openvino"])
def test_runtime_is_a_registered_runtime(tmp_path: Path, runtime: str) -> None:
    candidate = Candidate.create(
        name="baseline", stage="load", method="x", artifact=_artifact(tmp_path), runtime=runtime
    )
    assert candidate.runtime == runtime


def test_an_unknown_runtime_is_refused_with_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises((ConfigError, ValueError), match=r"runtime must be one of .*onnxruntime"):
        Candidate.create(
            name="baseline", stage="load", method="x", artifact=_artifact(tmp_path), runtime="onnx"
        )
