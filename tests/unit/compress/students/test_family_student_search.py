"""Student search over width/depth multipliers of a conv net teacher's own architecture:
the space, one trial (measured untrained, distilled with fidelity steps, stored as a
module artifact whose plan replays), and the nas stage turning trials into module
candidates whose parent is the teacher."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest
import torch
from torch import nn

from hamnet.compress.search.students import (
    MultiplierChoices,
    StudentObjective,
    TeacherSource,
    check_multipliers,
    constrained_score,
    module_accuracy,
    multiplier_choices,
    multiplier_warm_start,
    search_split,
)
from hamnet.core.config import HAMNetSection, StudentSearchSection, StudentSpaceSection
from hamnet.core.errors import ConfigError

optuna.logging.set_verbosity(optuna.logging.WARNING)
pytestmark = [
    pytest.mark.filterwarnings("ignore:Heartbeat of storage:UserWarning"),
    pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning"),
]

RECIPE = {
    "train": {"epochs": 2, "patience": 2, "warmup_epochs": 0, "batch_size": 64,
              "learning_rate": 3e-3},
    "report_every": 1,
}  # fmt: skip


def conv_net() -> nn.Sequential:
    """A stem, four equal Conv-BN-ReLU blocks, pooled into a 10-class head.

    Built from torch's own classes only: the Ray workers that run the trials unpickle
    the teacher, and a class defined in this test file is not importable there.
    """
    layers: list[nn.Module] = [nn.Conv2d(1, 16, 3, padding=1), nn.ReLU()]
    for _ in range(4):
        layers += [nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU()]
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))


@pytest.fixture(scope="module")
def images() -> Any:
    """Digits as 1x8x8 images (train 400 rows, validation and test as split)."""
    from hamnet.core.config import DataSection
    from hamnet.training.data import load_dataset

    data = load_dataset(DataSection(source="digits", seed=0))

    def image(x: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(x.reshape(-1, 1, 8, 8), dtype=np.float32)

    return dataclasses.replace(
        data, x_train=image(data.x_train[:400]), y_train=data.y_train[:400],
        x_val=image(data.x_val), x_test=image(data.x_test),
    )  # fmt: skip


@pytest.fixture(scope="module")
def teacher_file(images: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The conv net trained briefly, saved as a module artifact (a pickled root)."""
    from hamnet.models.sources import InputSpec, save_module_artifact

    torch.manual_seed(0)
    model = conv_net()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    x, y = torch.from_numpy(images.x_train), torch.from_numpy(images.y_train)
    for _ in range(3):
        for start in range(0, len(x), 64):
            loss = nn.functional.cross_entropy(model(x[start : start + 64]), y[start : start + 64])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()
    root = tmp_path_factory.mktemp("teacher")
    return save_module_artifact(
        root / "artifact", module=model, inputs=InputSpec.of(images.x_train[:1]),
        output_kind="class_scores",
    )  # fmt: skip


@pytest.fixture(scope="module")
def teacher(teacher_file: Path, tmp_path_factory: pytest.TempPathFactory) -> TeacherSource:
    from hamnet.core.artifacts import ArtifactStore

    ref = ArtifactStore(tmp_path_factory.mktemp("store")).put(teacher_file, "torch-module")
    return TeacherSource(artifact=ref, runtime="torch", profile="x86-avx2", trust_checkpoint=True)


def test_the_multiplier_space_comes_from_the_teachers_blocks(
    teacher: TeacherSource, images: Any
) -> None:
    model = teacher.module()
    example = torch.from_numpy(images.x_val[:1])
    choices = multiplier_choices(StudentSpaceSection(), model, example)
    assert choices.widths == (0.25, 0.5, 0.75, 1.0)
    assert choices.depths == (0.25, 0.5, 0.75, 1.0)  # four Conv-BN-ReLU blocks
    space = choices.to_search_space()
    assert set(space.architecture) == {"width", "depth"}
    assert multiplier_warm_start(choices) == [{"width": 0.5, "depth": 0.5}]
    given = StudentSpaceSection(width_multipliers=[0.5], depth_multipliers=[0.5, 1.0])
    assert multiplier_choices(given, model, example) == MultiplierChoices((0.5,), (0.5, 1.0))
    from hamnet.compress.search.space import InfeasibleParams

    with pytest.raises(InfeasibleParams, match="the teacher itself"):
        check_multipliers({"width": 1.0, "depth": 1.0})
    flat = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    with pytest.raises(ConfigError, match="depth_multipliers below 1 need repeated"):
        multiplier_choices(StudentSpaceSection(depth_multipliers=[0.5]), flat, example)
    with pytest.raises(ConfigError, match=r"only width 1\.0 and depth 1\.0"):
        multiplier_choices(StudentSpaceSection(width_multipliers=[1.0]), flat, example)
    with pytest.raises(ValueError, match=r"width_multipliers must hold multipliers in \(0, 1\]"):
        StudentSpaceSection(width_multipliers=[1.5])


def test_a_trial_measures_and_distills_a_student_of_the_conv_net(
    teacher: TeacherSource, images: Any, tmp_path: Path
) -> None:
    from hamnet.compress.search.worker import TrialContext
    from hamnet.models.replay import ModulePlan, apply_module_plan
    from hamnet.models.sources import load_module_artifact, read_module_artifact

    reference = module_accuracy(teacher.module(), images.x_val, images.y_val)
    objective = StudentObjective(
        dataset=search_split(images),
        teacher=teacher,
        recipe=StudentSearchSection.model_validate(RECIPE),
        base_architecture=HAMNetSection(dropout_rate=0.0),
        reference_accuracy=reference,
        max_accuracy_drop=0.05,
        objectives=("accuracy", "latency_ms"),
        profile="x86-avx2",
        out_dir=str(tmp_path / "trials"),
        latency_repeats=10,
        latency_threads=1,
        student_kind="multipliers",
    )
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'study.db'}")
    study = optuna.create_study(storage=storage, study_name="s", direction="minimize")
    trial = study.ask()
    params = {"width": 0.5, "depth": 0.5}
    ctx = TrialContext(study, storage, trial.number, params, multi_objective=False)
    outcome = objective(ctx, params)

    metrics = outcome.user_attrs["metrics"]
    assert 0.0 <= metrics["accuracy"] <= 1.0 and metrics["latency_ms"] > 0
    assert metrics["size_mb"] > 0
    assert outcome.values == [
        constrained_score(metrics["latency_ms"], metrics["accuracy"], reference, 0.05)
    ]
    student = outcome.user_attrs["student"]
    assert student["params_after"] < student["params_before"]
    assert student["kept_blocks"] == {"<root>": [0, 3]}
    assert outcome.user_attrs["epochs_run"] == 2 and outcome.user_attrs["mapped_layers"]
    stored = storage.get_trial(ctx.trial_id).intermediate_values
    assert sorted(stored) == [1, 2] and all(0.0 <= v <= 1.0 for v in stored.values())

    main = Path(outcome.user_attrs["checkpoint"])
    assert outcome.user_attrs["format"] == "torch-module"
    model = load_module_artifact(main, trust_checkpoint=True)
    assert sum(p.numel() for p in model.parameters()) == student["params_after"]
    assert len(model) == 2 + 2 * 3 + 3  # stem, two of the four blocks, head
    assert module_accuracy(model, images.x_val, images.y_val) == pytest.approx(metrics["accuracy"])
    plan = ModulePlan.load(main.parent / str(read_module_artifact(main).plan))
    assert plan.width == 0.5 and plan.depth == 0.5 and plan.blocks
    replayed = apply_module_plan(teacher.module(), plan, torch.from_numpy(images.x_val[:1]))
    assert sum(p.numel() for p in replayed.parameters()) == student["params_after"]


def test_the_nas_stage_turns_module_students_into_candidates(
    teacher_file: Path, images: Any, tmp_path: Path, ray_local: Any
) -> None:
    from conftest import tiny_config

    from hamnet.core.artifacts import ArtifactStore
    from hamnet.core.candidate import Candidate
    from hamnet.core.config import config_from_dict
    from hamnet.core.hardware import load_profile
    from hamnet.pipeline.stages.base import StageContext
    from hamnet.pipeline.stages.nas import NASStage

    nas = {
        "mode": "students", "strategy": "random", "pruner": "none", "n_trials": 2,
        "top_k": 1, "ray": {"max_concurrent": 1},
        "students": {**RECIPE, "space": {"width_multipliers": [0.5], "depth_multipliers": [0.5]}},
    }  # fmt: skip
    config = config_from_dict(
        tiny_config(
            model={"source": "file", "path": str(teacher_file), "trust_checkpoint": True},
            stages={"train": None, "nas": nas, "export": None, "quantize": None},
            constraints={"max_accuracy_drop": 1.0},
            tracking={"enabled": False},
        )
    )
    store = ArtifactStore(tmp_path / ".hamnet" / "artifacts")
    ctx = StageContext(config, load_profile(config.hardware_profile), store, tmp_path)
    ctx.dataset = images  # type: ignore[misc]  # the cached data set, given
    baseline = Candidate.create(
        name="baseline", stage="load", method="torch-module",
        artifact=store.put(teacher_file, "torch-module"), runtime="torch",
    )  # fmt: skip
    (candidate,) = NASStage().run([baseline], ctx)
    assert candidate.parent_id == baseline.id and candidate.artifact.format == "torch-module"
    assert candidate.params["student"]["width"] == 0.5 and candidate.plan_file
    assert any("students of the teacher's own Sequential" in note for note in ctx.notes)


def test_label_free_data_is_scored_by_fidelity_to_the_teacher(
    teacher: TeacherSource, images: Any, tmp_path: Path
) -> None:
    from hamnet.compress.search.students import module_fidelity, teacher_labelled
    from hamnet.compress.search.worker import TrialContext

    model = teacher.module()

    def outputs(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(torch.from_numpy(x)).numpy()

    free = dataclasses.replace(
        images, y_train=outputs(images.x_train), y_val=outputs(images.x_val),
        y_test=outputs(images.x_test), num_classes=0, targets="reference",
    )  # fmt: skip
    agreement, kind = teacher_labelled(free, "class_scores")
    assert kind == "agreement" and agreement.num_classes == 10
    assert np.array_equal(agreement.y_val, free.y_val.argmax(axis=1))
    assert module_fidelity(model, agreement.x_val, agreement.y_val, kind) == 1.0
    embeddings, kind = teacher_labelled(free, "embedding")
    assert kind == "cosine" and embeddings is free
    assert module_fidelity(model, free.x_val, free.y_val, "cosine") == pytest.approx(1.0)
    assert teacher_labelled(images, None) == (images, "accuracy")

    objective = StudentObjective(
        dataset=search_split(free), teacher=teacher,
        recipe=StudentSearchSection.model_validate(RECIPE),
        base_architecture=HAMNetSection(dropout_rate=0.0), reference_accuracy=1.0,
        max_accuracy_drop=0.05, objectives=("accuracy", "latency_ms"), profile="x86-avx2",
        out_dir=str(tmp_path / "trials"), latency_repeats=5, latency_threads=1,
        student_kind="multipliers", fidelity="cosine",
    )  # fmt: skip
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'study.db'}")
    study = optuna.create_study(storage=storage, study_name="s", direction="minimize")
    trial = study.ask()
    params = {"width": 0.75, "depth": 0.5}
    ctx = TrialContext(study, storage, trial.number, params, multi_objective=False)
    outcome = objective(ctx, params)
    cosine = outcome.user_attrs["metrics"]["accuracy"]
    assert 0.0 < cosine <= 1.0 + 1e-6
    assert outcome.user_attrs["metrics"]["accuracy_drop"] == pytest.approx(1.0 - cosine)


def test_an_onnx_teacher_gets_width_students_through_onnx2torch(tmp_path: Path) -> None:
    import importlib.util

    if importlib.util.find_spec("onnx2torch") is None:  # hamnet imports it without torchvision
        pytest.skip("onnx2torch is not installed")
    from hamnet.compress.students.shrink import shrink_module
    from hamnet.core.artifacts import ArtifactStore
    from hamnet.models.sources import load_module_artifact, save_module_artifact

    x = torch.randn(1, 1, 8, 8)
    torch.onnx.export(
        conv_net().eval(), (x,), str(tmp_path / "teacher.onnx"), input_names=["input"],
        dynamic_axes={"input": {0: "batch"}}, dynamo=False,
    )  # fmt: skip
    ref = ArtifactStore(tmp_path / "store").put(tmp_path / "teacher.onnx", "onnx")
    source = TeacherSource(artifact=ref, runtime="onnxruntime", profile="x86-avx2")
    teacher = source.module()  # a flat fx graph: no repeated block containers
    assert multiplier_choices(StudentSpaceSection(), teacher, x).depths == (1.0,)
    result = shrink_module(teacher, x, width=0.5)
    assert result.params_after < result.params_before
    data = dataclasses.make_dataclass("Rows", [("x_val", Any)])(x.numpy())
    main = save_module_artifact(
        tmp_path / "student", module=result.model, plan=result.plan,
        **source.student_source(data),
    )  # fmt: skip
    with torch.no_grad():
        assert torch.equal(load_module_artifact(main)(x), result.model(x))
