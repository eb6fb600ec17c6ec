"""Distilled students by function matching, as the pipeline's distill stage runs them.

``configs/peers.yaml`` (hamnet's side of the peers benchmark) searches its students
(``stages.nas.mode: students``), each trained by function matching (mixup, the teacher
labelling every mixed batch live, soft targets only, a long schedule without early
stopping): the default recipe, chosen by ``benchmarks/students.py``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import digits_subset

from hamnet.compress.distill.train import distill_model
from hamnet.core.config import TrainStageConfig, load_config
from hamnet.models import HAMNet, HAMNetConfig, save_checkpoint
from hamnet.training.data import Dataset
from hamnet.training.trainer import train_model

STUDENTS = Path(__file__).resolve().parents[4] / "configs" / "peers.yaml"


@pytest.fixture(scope="module")
def data() -> Dataset:
    subset: Dataset = digits_subset()
    return subset


@pytest.fixture(scope="module")
def teacher(data: Dataset) -> HAMNet:
    torch.manual_seed(0)
    model = HAMNet(
        HAMNetConfig(
            input_size=data.num_features, num_classes=data.num_classes, hidden_size=32,
            num_layers=2, num_heads=2, token_size=8, dropout_rate=0.0,
        )
    )  # fmt: skip
    train_model(model, data, TrainStageConfig(epochs=6, batch_size=64), progress=False)
    return model


def test_students_config_holds_the_function_matching_recipe() -> None:
    """peers.yaml lists no student: the student search finds them with this recipe."""
    config = load_config(STUDENTS)
    assert config.model.hamnet.num_layers == 2 and config.model.hamnet.hidden_size == 64
    assert config.stages.distill is None and config.constraints.target_size_mb is None
    nas = config.stages.nas
    assert nas is not None and nas.mode == "students"
    recipe = nas.students
    assert [term["method"] for term in recipe.methods] == ["soft"]
    assert recipe.ce_weight == 0.0
    fm = recipe.train
    assert fm.augment == "mixup" and fm.patience >= fm.epochs


def _student(data: Dataset, seed: int = 0) -> HAMNet:
    torch.manual_seed(seed)
    return HAMNet(
        HAMNetConfig(
            input_size=data.num_features, num_classes=data.num_classes, hidden_size=16,
            num_layers=1, num_heads=2, token_size=8, dropout_rate=0.0,
        )
    )  # fmt: skip


def test_function_matching_never_reads_the_labels(data: Dataset, teacher: HAMNet) -> None:
    """With ce_weight 0 the student learns the teacher's function only: training on
    scrambled labels gives exactly the same weights, and the teacher runs live."""
    nas = load_config(STUDENTS).stages.nas
    assert nas is not None
    distill = nas.students  # the student search's recipe
    cfg = distill.train.model_copy(update={"epochs": 3, "patience": 3})
    rng = np.random.default_rng(0)
    scrambled = dataclasses.replace(data, y_train=rng.permutation(data.y_train))
    weights = []
    for dataset in (data, scrambled):
        student = _student(data)
        result = distill_model(
            student, [teacher], dataset, distill.methods, cfg, ce_weight=distill.ce_weight,
            progress=False,
        )  # fmt: skip
        assert result.teacher_cache_files == []  # mixed batches: the teacher labels each one
        assert result.train.epochs_run == 3 and not result.train.stopped_early
        weights.append(student.state_dict())
    for name, tensor in weights[0].items():
        assert torch.equal(tensor, weights[1][name]), name


def test_the_distill_stage_trains_students_by_function_matching(
    tmp_path: Path, data: Dataset, teacher: HAMNet
) -> None:
    from hamnet.pipeline.plan import DistillStage
    from hamnet.pipeline.run import make_context

    teacher_file = save_checkpoint(teacher, tmp_path / "teacher.pt")
    recipe = load_config(STUDENTS).stages.nas
    assert recipe is not None
    overrides: dict[str, Any] = {
        "workdir": "work",
        "stages": {
            "distill": {
                "teachers": [str(teacher_file)],
                "methods": recipe.students.methods,
                "ce_weight": recipe.students.ce_weight,
                "recover_pruned": False,
                "students": [
                    {"name": "shallow", "hamnet": {"hidden_size": 32, "num_layers": 1,
                                                   "num_heads": 2, "token_size": 8}},
                    {"name": "one-token", "hamnet": {"hidden_size": 32, "num_layers": 1,
                                                     "num_heads": 1, "token_size": 64}},
                ],
                "student_train": {
                    **recipe.students.train.model_dump(mode="json"),
                    "epochs": 2, "patience": 2, "warmup_epochs": 1,
                },
            }
        },
    }  # fmt: skip
    config = load_config(STUDENTS, overrides=overrides)
    ctx = make_context(config, base_dir=tmp_path)
    ctx.__dict__["dataset"] = data  # the cached property, preset to the small subset
    out = DistillStage().run([], ctx)
    by_name = {c.name: c for c in out}
    assert sorted(by_name) == ["student-one-token+kd-soft", "student-shallow+kd-soft"]
    shallow = by_name["student-shallow+kd-soft"]
    assert shallow.architecture is not None
    assert shallow.architecture["num_layers"] == 1
    assert shallow.architecture["hidden_size"] == 32
    assert shallow.params["augment"] == "mixup"
    assert shallow.params["ce_weight"] == 0.0
    assert shallow.params["epochs_run"] == 2
    assert shallow.params["teacher_cache_files"] == []
    assert Path(shallow.artifact.path).is_file()


class _ConvNet(torch.nn.Module):
    """A small conv classifier on the 8x8 digit (the reshape is inside, input [N, 64])."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 8, 3, padding=1)
        self.head = torch.nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv(x.reshape(-1, 1, 8, 8)))
        out: torch.Tensor = self.head(h.mean(dim=(2, 3)))
        return out


def test_an_onnx_model_teaches_hamnet_students_through_its_logits(
    tmp_path: Path, data: Dataset
) -> None:
    """A non-HAMNet teacher (a conv net's ONNX file, as the API's from_pytorch makes it)
    teaches through its logits: as a candidate of the run or as a file; layer-reading
    methods are refused with the reason."""
    from hamnet.backends.export import export_module
    from hamnet.backends.session import load_session
    from hamnet.compress.distill.session_teacher import SessionTeacher
    from hamnet.core.candidate import Candidate
    from hamnet.core.errors import ConfigError
    from hamnet.pipeline.plan import DistillStage
    from hamnet.pipeline.run import make_context

    torch.manual_seed(0)
    conv = _ConvNet().eval()
    onnx_file = export_module(conv, torch.zeros(2, 64), tmp_path / "conv.onnx")
    one_token = {"hidden_size": 16, "num_layers": 1, "num_heads": 1, "token_size": 64}
    overrides: dict[str, Any] = {
        "workdir": "work",
        "stages": {
            "distill": {
                "teachers": ["baseline"],
                "students": [{"name": "one", "hamnet": one_token}],
                "student_train": {"epochs": 2, "patience": 2, "warmup_epochs": 1},
            }
        },
    }
    ctx = make_context(load_config(STUDENTS, overrides=overrides), base_dir=tmp_path)
    ctx.__dict__["dataset"] = data
    baseline = Candidate.create(
        name="baseline", stage="load", method="onnx", artifact=ctx.store.put(onnx_file, "onnx"),
        runtime="onnxruntime",
    )  # fmt: skip
    teacher = SessionTeacher(load_session(baseline.artifact, "onnxruntime", ctx.profile), "ab12")
    x = torch.from_numpy(data.x_val[:5])
    torch.testing.assert_close(teacher(x), conv(x), atol=1e-5, rtol=1e-5)
    assert teacher.source_sha256.tolist() == [0xAB, 0x12]
    (student,) = DistillStage().run([baseline], ctx)
    assert student.name == "student-one+kd-soft" and student.parent_id == baseline.id
    assert student.teacher_names == ["baseline"] and student.artifact.format == "torch"
    # The same teacher given as a file.
    overrides["stages"]["distill"]["teachers"] = [str(onnx_file)]
    ctx = make_context(load_config(STUDENTS, overrides=overrides), base_dir=tmp_path)
    ctx.__dict__["dataset"] = data
    (from_file,) = DistillStage().run([], ctx)
    assert from_file.teacher_names == ["teacher-conv"]
    overrides["stages"]["distill"]["methods"] = [{"method": "feature"}]
    ctx = make_context(load_config(STUDENTS, overrides=overrides), base_dir=tmp_path)
    with pytest.raises(ConfigError, match=r"\['feature'\] read the teacher's hidden layers"):
        DistillStage().run([], ctx)
