"""Student search: the space, one KD trial, resuming from the RDB, test split untouched."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest
from pydantic import ValidationError

from hamnet.compress.search.students import (
    INFEASIBLE_OFFSET_MS,
    StudentObjective,
    TeacherSource,
    check_student,
    constrained_score,
    is_feasible,
    search_split,
    student_choices,
)
from hamnet.core.config import HAMNetSection, StudentSearchSection, StudentSpaceSection
from hamnet.core.errors import ConfigError

optuna.logging.set_verbosity(optuna.logging.WARNING)
pytestmark = pytest.mark.filterwarnings("ignore:Heartbeat of storage:UserWarning")

TINY_RECIPE = {
    "train": {
        "epochs": 2, "patience": 2, "augment": "mixup", "mixup_alpha": 1.0,
        "warmup_epochs": 0, "batch_size": 64,
    },
    "report_every": 1,
    "space": {"hidden_sizes": [8, 16], "num_layers": [1], "num_heads": [1, 2],
              "ffn_ratios": [1.0], "token_sizes": [16, "all"]},
}  # fmt: skip


# ---------------------------------------------------------------- the space


@pytest.mark.parametrize(
    ("space", "message"),
    [
        ({"hidden_sizes": [0, 16]}, "hidden_sizes must hold positive numbers, but got [0]"),
        ({"num_heads": [2, 2]}, "num_heads must not repeat a choice, but got [2, 2]"),
        ({"token_sizes": [-8]}, "token_sizes must hold positive numbers, but got [-8]"),
        ({"token_sizes": ["one"]}, "token_sizes"),
        ({"depth": [1]}, "depth"),
    ],
)
def test_student_space_rejects_bad_values(space: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message.replace("[", r"\[").replace("]", r"\]")):
        StudentSpaceSection.model_validate(space)


def test_student_space_is_checked_against_the_data_and_the_teacher() -> None:
    with pytest.raises(ConfigError, match=r"must divide the input's 64 features .*got \[7\]"):
        student_choices(StudentSpaceSection(token_sizes=[7, 8]), 64)
    with pytest.raises(ConfigError, match=r"hidden_sizes=\[6\] and num_heads=\[4\]"):
        student_choices(StudentSpaceSection(hidden_sizes=[6], num_heads=[4]), 64)
    teacher = HAMNetSection(hidden_size=64, num_layers=2, num_heads=4, token_size=8)
    choices = student_choices(StudentSpaceSection(), 64, teacher)
    assert max(choices.hidden_sizes) == 64 and choices.num_layers == (1, 2)
    assert 64 in choices.token_sizes and all(64 % t == 0 for t in choices.token_sizes)
    assert all(64 // t <= 16 for t in choices.token_sizes)
    assert student_choices(StudentSpaceSection(token_sizes=["all"]), 64).token_sizes == (64,)
    space = choices.to_search_space()
    assert set(space.architecture) == {
        "num_layers", "hidden_size", "num_heads", "ffn_ratio", "token_size"
    }  # fmt: skip


def test_infeasible_students_are_pruned_before_training() -> None:
    from hamnet.compress.search.space import InfeasibleParams

    base = HAMNetSection(dropout_rate=0.0)
    params = {"num_layers": 1, "hidden_size": 8, "num_heads": 3, "ffn_ratio": 1.0}
    with pytest.raises(InfeasibleParams, match="divisible"):
        check_student({**params, "token_size": 16}, base=base, input_size=64, num_classes=10)
    with pytest.raises(InfeasibleParams, match="token_size must divide"):
        check_student(
            {**params, "num_heads": 2, "token_size": 7}, base=base, input_size=64, num_classes=10
        )
    check_student({**params, "num_heads": 2, "token_size": 64}, base=base, input_size=64,
                  num_classes=10)  # fmt: skip


def test_the_recipe_is_validated_and_defaults_to_the_sweeps_winner() -> None:
    recipe = StudentSearchSection()
    assert recipe.train.augment == "mixup" and recipe.train.mixup_alpha == 1.0
    assert recipe.train.epochs == recipe.train.patience == 300 and recipe.ce_weight == 0.0
    assert recipe.methods == [{"method": "soft", "weight": 1.0, "temperature": 1.0}]
    with pytest.raises(ValidationError, match=r"methods\[0\]"):
        StudentSearchSection(methods=[{"method": "nope"}])
    with pytest.raises(ValidationError, match="report_every"):
        StudentSearchSection(report_every=0)


def test_constrained_score_ranks_every_feasible_student_first() -> None:
    fast_bad = constrained_score(0.01, 0.90, 0.97, 0.01)
    slow_good = constrained_score(0.50, 0.965, 0.97, 0.01)
    worse = constrained_score(0.01, 0.80, 0.97, 0.01)
    assert slow_good == 0.50 and is_feasible(slow_good)
    assert not is_feasible(fast_bad) and fast_bad > INFEASIBLE_OFFSET_MS
    assert slow_good < fast_bad < worse


# ---------------------------------------------------------------- one trial


@pytest.fixture(scope="module")
def digits() -> Any:
    from hamnet.core.config import DataSection
    from hamnet.training.data import load_dataset

    data = load_dataset(DataSection(source="digits", seed=0))
    return dataclasses.replace(data, x_train=data.x_train[:400], y_train=data.y_train[:400])


@pytest.fixture(scope="module")
def teacher(digits: Any, tmp_path_factory: pytest.TempPathFactory) -> TeacherSource:
    from hamnet.core.artifacts import ArtifactStore
    from hamnet.core.config import TrainStageConfig
    from hamnet.models import HAMNet, HAMNetConfig, save_checkpoint
    from hamnet.training.trainer import set_seed, train_model

    set_seed(0)
    model = HAMNet(
        HAMNetConfig.from_section(
            HAMNetSection(hidden_size=16, num_layers=1, num_heads=2, token_size=8), 64, 10
        )
    )
    train_model(model, digits, TrainStageConfig(epochs=3, warmup_epochs=0), progress=False)
    root = tmp_path_factory.mktemp("teacher")
    path = save_checkpoint(model, root / "teacher.pt")
    ref = ArtifactStore(root / "store").put(path, "torch")
    return TeacherSource(artifact=ref, runtime="torch", profile="x86-avx2")


def _objective(data: Any, teacher: TeacherSource, out: Path, **recipe: Any) -> StudentObjective:
    return StudentObjective(
        dataset=search_split(data),
        teacher=teacher,
        recipe=StudentSearchSection.model_validate({**TINY_RECIPE, **recipe}),
        base_architecture=HAMNetSection(dropout_rate=0.0),
        reference_accuracy=0.5,
        max_accuracy_drop=0.05,
        objectives=("accuracy", "latency_ms"),
        profile="x86-avx2",
        out_dir=str(out),
        latency_repeats=10,
        latency_threads=1,
    )


def test_a_trial_distills_a_student_and_measures_it(
    digits: Any, teacher: TeacherSource, tmp_path: Path
) -> None:
    from hamnet.compress.search.worker import TrialContext
    from hamnet.models import load_checkpoint

    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'study.db'}")
    study = optuna.create_study(storage=storage, study_name="s", direction="minimize")
    trial = study.ask()
    params = {"num_layers": 1, "hidden_size": 16, "num_heads": 1, "ffn_ratio": 1.0,
              "token_size": 64}  # fmt: skip
    ctx = TrialContext(study, storage, trial.number, params, multi_objective=False)
    outcome = _objective(digits, teacher, tmp_path / "trials")(ctx, params)
    metrics = outcome.user_attrs["metrics"]
    assert 0.0 <= metrics["accuracy"] <= 1.0 and metrics["latency_ms"] > 0
    assert metrics["size_mb"] > 0 and metrics["params"] > 0
    assert outcome.values == [
        constrained_score(metrics["latency_ms"], metrics["accuracy"], 0.5, 0.05)
    ]
    assert outcome.user_attrs["epochs_run"] == 2
    # The fidelity steps: one validation error per epoch chunk, stored in the study.
    stored = storage.get_trial(ctx.trial_id).intermediate_values
    assert sorted(stored) == [1, 2] and all(0.0 <= v <= 1.0 for v in stored.values())
    student = load_checkpoint(outcome.user_attrs["checkpoint"])
    assert student.config.num_tokens == 1 and student.config.hidden_size == 16


def test_an_onnx_teacher_teaches_through_its_logits(
    digits: Any, teacher: TeacherSource, tmp_path: Path
) -> None:
    from hamnet.backends.export import export_onnx
    from hamnet.compress.search.students import validation_accuracy
    from hamnet.core.artifacts import ArtifactStore

    model = teacher.load()
    path = export_onnx(model, 64, tmp_path / "teacher.onnx")
    ref = ArtifactStore(tmp_path / "store").put(path, "onnx")
    onnx_teacher = TeacherSource(artifact=ref, runtime="onnxruntime", profile="x86-avx2")
    assert not onnx_teacher.is_hamnet and onnx_teacher.architecture() is None
    assert validation_accuracy(onnx_teacher.load(), digits) == pytest.approx(
        validation_accuracy(model, digits), abs=0.01
    )


def test_the_search_never_sees_the_test_split(digits: Any) -> None:
    split = search_split(digits)
    assert len(split.x_test) == 0 and len(split.y_test) == 0
    assert np.array_equal(split.x_val, digits.x_val) and len(split.x_train) == len(digits.x_train)


def test_a_student_slower_than_the_best_feasible_one_is_never_trained(
    digits: Any, teacher: TeacherSource, tmp_path: Path
) -> None:
    from hamnet.compress.search.worker import PrunedTrial, TrialContext

    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'study.db'}")
    study = optuna.create_study(storage=storage, study_name="s", direction="minimize")
    study.add_trial(optuna.trial.create_trial(value=1e-6))  # a feasible, impossibly fast one
    trial = study.ask()
    params = {"num_layers": 1, "hidden_size": 16, "num_heads": 1, "ffn_ratio": 1.0,
              "token_size": 64}  # fmt: skip
    ctx = TrialContext(study, storage, trial.number, params, multi_objective=False)
    with pytest.raises(PrunedTrial, match=r"more than 5% above the best student .*not trained"):
        _objective(digits, teacher, tmp_path / "trials")(ctx, params)
    assert not (tmp_path / "trials" / f"trial-{trial.number}.pt").exists()


def test_the_warm_start_is_one_token_one_block_at_middle_widths() -> None:
    from hamnet.compress.search.students import warm_start

    choices = student_choices(StudentSpaceSection(), 64, HAMNetSection(hidden_size=64))
    starts = warm_start(choices, 64)
    assert [s["hidden_size"] for s in starts] == [32, 24]
    assert all(s["token_size"] == 64 and s["num_layers"] == 1 for s in starts)
    assert warm_start(student_choices(StudentSpaceSection(token_sizes=[8]), 64), 64) == []


def test_one_token_students_that_differ_only_in_heads_are_one_student() -> None:
    from hamnet.compress.search.students import student_key

    one_token = {"num_layers": 1, "hidden_size": 32, "ffn_ratio": 2.0, "token_size": "all"}
    keys = {student_key(one_token | {"num_heads": h}, input_size=64) for h in (1, 2, 4)} | {
        student_key(one_token | {"num_heads": 2, "token_size": 64}, input_size=64)
    }
    assert len(keys) == 1
    multi = one_token | {"token_size": 16}
    assert student_key(multi | {"num_heads": 1}, input_size=64) != student_key(
        multi | {"num_heads": 2}, input_size=64
    )


def test_a_repeated_student_is_pruned_in_the_driver_and_kept_once() -> None:
    import functools

    from hamnet.compress.search.space import InfeasibleParams
    from hamnet.compress.search.students import StudentChoices, student_key
    from hamnet.pipeline.stages._search import _best_trials, _SearchJob

    choices = StudentChoices((32,), (1,), (1, 2), (2.0,), (64,))
    job = _SearchJob(
        name="s", space=choices.to_search_space(), objective=None,
        objective_names=["latency_score"], directions=["minimize"], method="students-tpe",
        skip_repeats=True, student_key=functools.partial(student_key, input_size=64),
    )  # fmt: skip
    study = optuna.create_study()
    for heads in (1, 2):
        study.enqueue_trial(
            {"num_layers": 1, "hidden_size": 32, "num_heads": heads, "ffn_ratio": 2.0,
             "token_size": 64}
        )  # fmt: skip
    first = study.ask()
    job.suggest(first)
    study.tell(first, 0.5)
    second = study.ask()
    with pytest.raises(InfeasibleParams, match="the same student as trial 0"):
        job.suggest(second)
    study.tell(second, 0.4)  # even were a repeat scored, the top-k keeps one copy
    assert [t.number for t in _best_trials(study, ["minimize"], 3, job.key_of)] == [1]
