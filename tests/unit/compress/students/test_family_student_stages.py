"""Students of the user's own architecture in the pipeline: ``stages.distill.student``
builds one from the original module and distills it (a candidate whose parent is the
original, flowing on to export), and the section is validated."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from hamnet.core.config import config_from_dict
from hamnet.core.errors import ConfigError
from hamnet.models.sources import load_module_artifact
from hamnet.pipeline.run import run_pipeline

FAST: dict[str, Any] = {
    "measure": {
        "warmup": 1, "repeats": 5, "max_eval_samples": 64, "paired_rounds": 0,
        "slower_margin": 0.99,
    },
}  # fmt: skip


class DeepMLP(nn.Module):
    """An MLP with four equal hidden blocks (saved whole with ``torch.save``)."""

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Linear(64, 32), nn.ReLU()]
        for _ in range(3):
            layers += [nn.Linear(32, 32), nn.ReLU()]
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def _config(data: Path, student: dict[str, Any] | None) -> Any:
    return config_from_dict(
        {
            "name": "family-student",
            "model": {"source": "file", "path": "deep.pt", "trust_checkpoint": True},
            "data": {"source": "file", "path": str(data), "standardize": False},
            "constraints": {"max_accuracy_drop": 1.0},
            "stages": {
                "train": None,
                "distill": {
                    "recover_pruned": False,
                    "train": {"epochs": 2, "batch_size": 32, "learning_rate": 3e-3},
                    "student": student,
                },
                "export": {"formats": ["onnx"]},
                "quantize": None,
            },
            **FAST,
        }
    )


@pytest.fixture
def digits(tmp_path: Path) -> Path:
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    data = tmp_path / "digits.npz"
    np.savez(data, x=(x / 16.0).astype(np.float32)[:300], y=y[:300])
    torch.manual_seed(0)
    torch.save(DeepMLP(), tmp_path / "deep.pt")
    return data


def test_the_distill_stage_builds_and_distills_a_named_student(
    digits: Path, tmp_path: Path
) -> None:
    config = _config(digits, {"width": 0.5, "depth": 0.5})
    result = run_pipeline(config, base_dir=tmp_path)
    by_stage: dict[str, list[Any]] = {}
    for c in result.candidates:
        by_stage.setdefault(c.stage, []).append(c)
    (original,) = by_stage["load"]
    (student,) = by_stage["distill"]
    assert student.parent_id == original.id
    assert [t.candidate_id for t in student.teachers] == [original.id]
    assert student.params["width"] == 0.5 and student.params["depth"] == 0.5
    assert student.params["params_after"] < student.params["params_before"]
    assert student.params["kept_blocks"] == {"body": [0, 3]}
    assert student.params["objective"] == "logits" and student.params["mapped_layers"]
    assert student.params["distill_loss_after"] < student.params["distill_loss_before"]
    model = load_module_artifact(student.artifact.path, trust_checkpoint=True)
    assert sum(p.numel() for p in model.parameters()) == student.params["params_after"]
    assert len(model.body) == 4  # entry block + one of three equal blocks, Linear+ReLU each
    exported = [c for c in result.candidates if c.stage == "export" and c.parent_id == student.id]
    assert exported and exported[0].artifact.format == "onnx"


def test_the_student_section_is_validated(digits: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="width or depth must be below 1"):
        _config(digits, {"width": 1.0, "depth": 1.0})
    with pytest.raises(ConfigError, match="depth"):
        _config(digits, {"depth": 0.0})
    with pytest.raises(ConfigError, match="widht"):
        _config(digits, {"widht": 0.5})
    from hamnet.pipeline.run import make_context
    from hamnet.pipeline.stages._user_modules import check_module_student

    check_module_student(make_context(_config(digits, {"depth": 0.5}), tmp_path))  # it builds
    flat = _config(digits, {"depth": 0.5})
    torch.save(nn.Sequential(nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10)), tmp_path / "deep.pt")
    with pytest.raises(ConfigError, match="no repeated shape-preserving blocks in Sequential"):
        check_module_student(make_context(flat, tmp_path))  # what a preflight would call
    with pytest.raises(ConfigError, match="no repeated shape-preserving blocks in Sequential"):
        run_pipeline(flat, base_dir=tmp_path)


def test_preflight_refuses_a_student_that_cannot_be_built(digits: Path, tmp_path: Path) -> None:
    from hamnet.pipeline.run import preflight

    torch.save(nn.Sequential(nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10)), tmp_path / "deep.pt")
    config = _config(digits, {"width": 1.0, "depth": 0.5})
    with pytest.raises(ConfigError, match="repeated shape-preserving blocks"):
        preflight(config, tmp_path)
