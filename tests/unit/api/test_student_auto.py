"""AUTO's student search: when the plan adds it, what it compiles to, and a real run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from hamnet.api import Constraints, Goal, Optimizer
from hamnet.api.compiler import (
    DEFAULT_STUDENT_MINUTES,
    STUDENT_SEARCH_SHARE,
    ModelFacts,
    compile_config,
    plan_for,
)
from hamnet.core.errors import ConfigError
from hamnet.core.hardware import HardwareProfile, load_profile
from hamnet.families.base import get_family

pytestmark = pytest.mark.filterwarnings("ignore:Heartbeat of storage:UserWarning")


@pytest.fixture(scope="module")
def cpu() -> HardwareProfile:
    return load_profile("x86-avx2", require_present=False)


def test_a_time_budget_adds_a_student_search_and_says_why(cpu: HardwareProfile) -> None:
    plan = plan_for(Constraints(), "hamnet", cpu, model_size_mb=1.0, budget_minutes=5)
    assert plan.student_minutes == pytest.approx(5 * STUDENT_SEARCH_SHARE)
    assert any("time budget 5 min: a student search" in r for r in plan.reasons)
    facts = ModelFacts(path=Path("m.pt"), family=get_family("hamnet"), size_mb=1.0)
    config = compile_config(Goal.AUTO, Constraints(), facts, cpu, plan=plan)
    nas = config.stages.nas
    assert nas is not None and nas.mode == "students" and nas.pruner == "hyperband"
    assert nas.timeout_seconds == pytest.approx(5 * STUDENT_SEARCH_SHARE * 60)
    assert nas.n_trials is None and nas.students.teacher == "baseline"


def test_a_size_bound_beyond_quantization_and_pruning_adds_one(cpu: HardwareProfile) -> None:
    far = plan_for(Constraints(target_size_mb=0.05), "hamnet", cpu, model_size_mb=1.0)
    assert far.student_minutes == DEFAULT_STUDENT_MINUTES
    assert any("more than quantization and pruning reach" in r for r in far.reasons)
    near = plan_for(Constraints(target_size_mb=0.3), "hamnet", cpu, model_size_mb=1.0)
    assert near.student_minutes is None
    onnx = plan_for(Constraints(), "onnx", cpu, model_size_mb=1.0, budget_minutes=5)
    assert onnx.student_minutes is None
    assert any("no student search" in r for r in onnx.reasons)
    facts = ModelFacts(path=Path("m.pt"), family=get_family("hamnet"), size_mb=1.0)
    escalated = compile_config(
        Goal.AUTO, Constraints(max_latency_ms=1.0), facts, cpu, escalate=True
    )
    assert escalated.stages.nas is not None and escalated.stages.nas.mode == "students"


@pytest.mark.parametrize("budget", [0, -1.0, True, "5"])
def test_budget_minutes_is_validated(cpu: HardwareProfile, budget: Any) -> None:
    with pytest.raises(ConfigError, match="budget_minutes must be a positive number"):
        plan_for(Constraints(), "hamnet", cpu, model_size_mb=1.0, budget_minutes=budget)


@pytest.fixture(scope="module")
def teacher_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from hamnet.core.config import DataSection, TrainStageConfig
    from hamnet.models import HAMNet, HAMNetConfig, save_checkpoint
    from hamnet.training.data import load_dataset
    from hamnet.training.trainer import train_model

    torch.manual_seed(0)
    cfg = HAMNetConfig(
        input_size=64, num_classes=10, hidden_size=32, num_layers=2, num_heads=2, token_size=8
    )
    model = HAMNet(cfg)
    data = load_dataset(DataSection())
    train_model(model, data, TrainStageConfig(epochs=2, warmup_epochs=0), progress=False)
    return save_checkpoint(model, tmp_path_factory.mktemp("teacher") / "teacher.pt")


def test_auto_with_a_budget_recommends_a_student_when_the_size_bound_needs_it(
    teacher_ckpt: Path, tmp_path: Path, ray_local: Any
) -> None:
    opt = Optimizer.from_pytorch(teacher_ckpt, work_dir=tmp_path)
    # 6x smaller: beyond quantization (~4x), and pruning is left out here: a student fits.
    limits = Constraints(target_size_mb=opt.model_size_mb() / 6, max_accuracy_drop=1.0)
    result = opt.optimize(
        Goal.AUTO,
        limits,
        preferred_backends=["onnx"],
        max_rounds=1,
        budget_minutes=0.2,
        _overrides={
            "measure": {"warmup": 1, "repeats": 5, "max_eval_samples": 128},
            "stages": {
                "prune": None,  # keeps the test short: the students are what is checked
                "quantize": {"methods": ["ort_dynamic_int8"]},
                "nas": {
                    "ray": {"max_concurrent": 2},
                    "students": {
                        "train": {"epochs": 2, "patience": 2, "warmup_epochs": 0},
                        "report_every": 1,
                        "space": {
                            "hidden_sizes": [8],
                            "num_layers": [1],
                            "num_heads": [1],
                            "ffn_ratios": [1.0],
                            "token_sizes": ["all"],
                        },
                    },
                },
            },
        },
    )
    assert any("time budget 0.2 min: a student search" in r for r in result.report.plan_reasons)
    students = {c.id for c in result.candidates if c.stage == "nas"}
    assert students, "the student search kept no student"
    by_id = {c.id: c for c in result.candidates}
    rec = result.recommended
    assert rec is not None and result.constraints_satisfied
    lineage = []
    current = by_id.get(rec.id)
    while current is not None:
        lineage.append(current.id)
        current = by_id.get(current.parent_id or "")
    assert students & set(lineage), f"{rec.name} does not descend from a student"
    assert any("student search" in line for line in result.rounds)
