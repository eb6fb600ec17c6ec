"""AUTO with a time budget on a small conv net given as a torch module, with training
data: the run searches students of the net's own architecture (width x depth
multipliers), and they join the Pareto front with their exported children."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from hamnet.api import Constraints, Goal, Optimizer

pytestmark = [
    pytest.mark.filterwarnings("ignore:Heartbeat of storage:UserWarning"),
    pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning"),
]


def conv_net() -> nn.Sequential:
    """[N, 1, 8, 8] -> a stem, four equal Conv-BN-ReLU blocks -> 10 logits (torch's
    own classes only, so the Ray workers can unpickle it)."""
    layers: list[nn.Module] = [nn.Conv2d(1, 16, 3, padding=1), nn.ReLU()]
    for _ in range(4):
        layers += [nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU()]
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))


def test_auto_with_a_budget_searches_students_of_a_conv_net(tmp_path: Path, ray_local: Any) -> None:
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)[:700]
    y = y.astype(np.int64)[:700]
    torch.manual_seed(0)
    model = conv_net()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(2):
        for start in range(0, 500, 64):
            batch = torch.from_numpy(x[start : start + 64])
            loss = nn.functional.cross_entropy(
                model(batch), torch.from_numpy(y[start : start + 64])
            )
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    opt = Optimizer.from_pytorch(model.eval(), [1, 1, 8, 8], work_dir=tmp_path)
    result = opt.optimize(
        Goal.AUTO,
        Constraints(max_accuracy_drop=1.0),
        validation_data=(x[500:], y[500:]),
        train_data=(x[:500], y[:500]),
        preferred_backends=["onnx"],
        max_rounds=1,
        budget_minutes=0.2,
        _overrides={
            "measure": {"warmup": 1, "repeats": 5, "max_eval_samples": 128, "paired_rounds": 0},
            "stages": {
                "prune": None,  # keeps the test short: the students are what is checked
                "distill": None,
                "quantize": {"methods": ["ort_dynamic_int8"]},
                "nas": {
                    "ray": {"max_concurrent": 2},
                    "students": {"train": {"epochs": 2, "patience": 2}, "report_every": 1},
                },
            },
        },
    )
    reasons = result.report.plan_reasons
    assert any("students of the model's own architecture" in r and "conv family" in r
               for r in reasons)  # fmt: skip
    baseline = next(c for c in result.candidates if c.stage == "load")
    students = [c for c in result.candidates if c.stage == "nas"]
    assert students and all(c.artifact.format == "torch-module" for c in students)
    assert all(c.parent_id == baseline.id for c in students)
    assert len({c.id for c in students}) == len(students)
    sizes = {c.params["student"]["params_after"] for c in students}
    assert max(sizes) < students[0].params["student"]["params_before"]
    children = {c.parent_id for c in result.candidates if c.stage == "export"}
    assert {c.id for c in students} <= children
    assert any("student search" in line for line in result.rounds)
