"""Optimizer, schedule and early stopping, the parts of a training run around its loop."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hamnet.core.config import TrainStageConfig
from hamnet.training.optim import EarlyStopping, build_optimizer, build_scheduler, lr_factor


def test_optimizer_decays_matrices_only_when_decoupled() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4))
    coupled = build_optimizer([model], TrainStageConfig(weight_decay_type="l2"))
    decoupled = build_optimizer([model], TrainStageConfig(weight_decay_type="decoupled"))
    assert [p.ndim for p in decoupled.param_groups[0]["params"]] == [2]
    assert len(decoupled.param_groups[1]["params"]) == 3
    assert decoupled.param_groups[0]["weight_decay"] == TrainStageConfig().weight_decay
    assert coupled.param_groups[0]["weight_decay"] == 0.0


def test_optimizer_counts_a_shared_parameter_once() -> None:
    shared = nn.Linear(2, 2)
    optimizer = build_optimizer([shared, nn.Sequential(shared)], TrainStageConfig())
    assert sum(len(g["params"]) for g in optimizer.param_groups) == 2


@pytest.mark.parametrize(
    ("schedule", "last"), [("constant", 1.0), ("linear", 0.0), ("cosine", 0.0)]
)
def test_schedule_warms_up_then_follows_its_shape(schedule: str, last: float) -> None:
    factor = lr_factor(schedule, warmup_steps=2, total_steps=10)
    assert factor(0) == pytest.approx(0.5) and factor(1) == pytest.approx(1.0)
    assert factor(10) == pytest.approx(last, abs=1e-9)


def test_scheduler_steps_per_optimizer_step() -> None:
    cfg = TrainStageConfig(epochs=2, warmup_epochs=1, scheduler="linear", learning_rate=1.0)
    optimizer = build_optimizer([nn.Linear(2, 2)], cfg)
    scheduler = build_scheduler(optimizer, cfg, steps_per_epoch=2)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.5)
    scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1.0)


def test_early_stopping_keeps_the_best_weights_and_stops_after_patience() -> None:
    model = nn.Linear(1, 1, bias=False)
    stopper = EarlyStopping([model], patience=2, max_epochs=10)
    with torch.no_grad():
        model.weight.fill_(1.0)
    assert stopper.update(1, val_loss=1.0, val_accuracy=0.5)
    with torch.no_grad():
        model.weight.fill_(2.0)
    assert stopper.update(2, val_loss=0.5, val_accuracy=0.5)  # tie on accuracy, lower loss
    with torch.no_grad():
        model.weight.fill_(3.0)
    assert not stopper.update(3, val_loss=0.1, val_accuracy=0.4)
    assert not stopper.should_stop(3)
    assert not stopper.update(4, val_loss=0.1, val_accuracy=0.4)
    assert stopper.should_stop(4)
    model.train()
    stopper.restore()
    assert stopper.best_epoch == 2 and float(model.weight.detach()) == 2.0 and not model.training


def test_early_stopping_never_stops_at_the_last_epoch() -> None:
    stopper = EarlyStopping([nn.Linear(1, 1)], patience=1, max_epochs=3)
    stopper.update(1, val_loss=1.0, val_accuracy=0.9)
    stopper.update(3, val_loss=1.0, val_accuracy=0.1)
    assert not stopper.should_stop(3)
