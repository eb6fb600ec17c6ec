"""AUTO's student search for a user's own module: with a time budget and training data it
searches width x depth multipliers of the module's own architecture and says so; without
training data it does not, and says why."""

from __future__ import annotations

from pathlib import Path

import pytest
from torch import nn

from hamnet.api import Constraints, Goal, Optimizer
from hamnet.api.compiler import (
    DEFAULT_STUDENT_MINUTES,
    STUDENT_SEARCH_SHARE,
    ModelFacts,
    compile_config,
    plan_for,
)
from hamnet.core.hardware import HardwareProfile, load_profile
from hamnet.families.base import get_family


def conv_net() -> nn.Sequential:
    """[N, 1, 8, 8] -> a stem, four equal Conv-BN-ReLU blocks -> 10 logits."""
    layers: list[nn.Module] = [nn.Conv2d(1, 16, 3, padding=1), nn.ReLU()]
    for _ in range(4):
        layers += [nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU()]
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))


@pytest.fixture(scope="module")
def cpu() -> HardwareProfile:
    return load_profile("x86-avx2", require_present=False)


def test_a_budget_with_training_data_searches_students_of_the_conv_net(tmp_path: Path) -> None:
    opt = Optimizer.from_pytorch(conv_net(), [1, 1, 8, 8], work_dir=tmp_path)
    assert opt.kind == "module" and opt.family == "conv"
    plan = opt.plan(Constraints(), has_train_data=True, budget_minutes=5)
    assert plan.student_minutes == pytest.approx(5 * STUDENT_SEARCH_SHARE)
    assert plan.student_space == "multipliers"
    (reason,) = [r for r in plan.reasons if "student search" in r]
    assert reason.startswith("time budget 5 min: a student search (students of the model's own")
    assert "a convolutional net (a 4-D input) (conv family)" in reason
    assert "width multipliers [0.25, 0.5, 0.75, 1.0] x depth multipliers" in reason

    train = tmp_path / "train.npz"
    config = opt.build_config(
        Goal.AUTO, Constraints(), data_path=tmp_path / "val.npz", train_path=train,
        budget_minutes=5,
    )  # fmt: skip
    nas = config.stages.nas
    assert nas is not None and nas.mode == "students" and nas.pruner == "hyperband"
    assert nas.timeout_seconds == pytest.approx(5 * STUDENT_SEARCH_SHARE * 60)
    assert nas.students.space.kind == "multipliers" and nas.students.teacher == "baseline"
    assert nas.students.train.epochs == 30 and nas.students.report_every == 5
    assert config.model.path is not None and config.model.path.endswith(".json")


def test_without_training_data_there_is_no_student_search_and_the_plan_says_why(
    tmp_path: Path,
) -> None:
    opt = Optimizer.from_pytorch(conv_net(), [1, 1, 8, 8], work_dir=tmp_path)
    plan = opt.plan(Constraints(), budget_minutes=5)
    assert plan.student_minutes is None and plan.student_space is None
    (reason,) = [r for r in plan.reasons if "student search" in r]
    assert reason.startswith("no student search: a convolutional net")
    assert "no training data was given (train_data)" in reason


def test_the_hamnet_path_and_the_escalation_round(cpu: HardwareProfile) -> None:
    hamnet = plan_for(Constraints(), "hamnet", cpu, model_size_mb=1.0, budget_minutes=5)
    assert hamnet.student_space == "hamnet"
    assert any("fresh HAMNet students of a HAMNet checkpoint (hamnet family)" in r
               for r in hamnet.reasons)  # fmt: skip
    far = plan_for(
        Constraints(target_size_mb=0.05), "module", cpu, model_size_mb=1.0, family="conv",
        has_train_data=True,
    )  # fmt: skip
    assert far.student_minutes == DEFAULT_STUDENT_MINUTES and far.student_space == "multipliers"
    facts = ModelFacts(
        path=Path("m/module.json"), family=get_family("conv"), size_mb=1.0,
        source_kind="module", train_path=Path("train.npz"),
    )  # fmt: skip
    escalated = compile_config(
        Goal.AUTO, Constraints(max_latency_ms=1.0), facts, cpu, data_path="val.npz",
        escalate=True,
    )  # fmt: skip
    nas = escalated.stages.nas
    assert nas is not None and nas.students.space.kind == "multipliers"
