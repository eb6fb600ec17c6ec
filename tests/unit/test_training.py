from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hamnet.config import DataSection, TrainStageConfig
from hamnet.data import Dataset, load_dataset
from hamnet.errors import ConfigError, DataError
from hamnet.models import HAMNet, HAMNetConfig, load_checkpoint
from hamnet.training import evaluate_accuracy, predict_logits, train_model


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return load_dataset(DataSection())


@pytest.fixture(scope="module")
def small_digits(digits: Dataset) -> Dataset:
    return Dataset(
        x_train=digits.x_train[:256],
        y_train=digits.y_train[:256],
        x_val=digits.x_val[:128],
        y_val=digits.y_val[:128],
        x_test=digits.x_test,
        y_test=digits.y_test,
        num_features=digits.num_features,
        num_classes=digits.num_classes,
        class_names=digits.class_names,
        source="digits subset",
    )


def _hamnet(seed: int = 0, **overrides: object) -> HAMNet:
    torch.manual_seed(seed)
    values: dict[str, object] = {
        "input_size": 64,
        "num_classes": 10,
        "token_size": 8,
        "hidden_size": 32,
        "num_layers": 1,
        "num_heads": 2,
    }
    values.update(overrides)
    return HAMNet(HAMNetConfig.model_validate(values))


def test_small_hamnet_learns_digits(
    digits: Dataset, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    model = _hamnet()
    cfg = TrainStageConfig(epochs=12, batch_size=64, learning_rate=3e-3, warmup_epochs=1)
    checkpoint = tmp_path / "best.pt"
    with caplog.at_level(logging.INFO, logger="hamnet.training"):
        result = train_model(model, digits, cfg, checkpoint_path=checkpoint, progress=False)
    assert result.best_val_accuracy > 0.85
    assert result.epochs_run == len(result.history) == 12
    assert set(result.history[0]) == {"epoch", "train_loss", "val_loss", "val_accuracy", "lr"}
    assert result.history[-1]["lr"] < result.history[2]["lr"], "cosine decays the rate"
    assert sum("val_accuracy=" in r.getMessage() for r in caplog.records) == 12
    assert not model.training
    best = result.history[result.best_epoch - 1]["val_accuracy"]
    assert evaluate_accuracy(model, digits.x_val, digits.y_val) == pytest.approx(best)
    assert evaluate_accuracy(model, digits.x_test, digits.y_test) > 0.85
    restored = load_checkpoint(checkpoint)
    np.testing.assert_allclose(
        predict_logits(restored, digits.x_test), predict_logits(model, digits.x_test), atol=0
    )


def test_early_stopping_restores_best_weights(small_digits: Dataset) -> None:
    model = _hamnet()
    cfg = TrainStageConfig(epochs=50, patience=2, learning_rate=0.5, max_grad_norm=None)
    result = train_model(model, small_digits, cfg, progress=False)
    assert result.stopped_early
    assert result.epochs_run == result.best_epoch + 2 < 50
    accuracy = evaluate_accuracy(model, small_digits.x_val, small_digits.y_val)
    assert accuracy == pytest.approx(result.best_val_accuracy)


def test_same_seed_same_history(small_digits: Dataset) -> None:
    cfg = TrainStageConfig(epochs=3, batch_size=32, scheduler="linear")
    first = train_model(_hamnet(seed=1), small_digits, cfg, seed=7, progress=False)
    second = train_model(_hamnet(seed=1), small_digits, cfg, seed=7, progress=False)
    assert first.history == second.history
    other = train_model(_hamnet(seed=1), small_digits, cfg, seed=8, progress=False)
    assert other.history != first.history


def test_gradient_accumulation_steps_the_schedule_less_often(small_digits: Dataset) -> None:
    base = TrainStageConfig(epochs=2, batch_size=32, warmup_epochs=4, scheduler="constant")
    plain = train_model(_hamnet(), small_digits, base, progress=False)
    accum = base.model_copy(update={"grad_accum_steps": 4})
    accumulated = train_model(_hamnet(), small_digits, accum, progress=False)
    # 256 samples / 32 = 8 micro-batches per epoch: 8 steps plain, 2 with accumulation.
    assert plain.history[0]["lr"] == pytest.approx(base.learning_rate * 9 / 32)
    assert accumulated.history[0]["lr"] == pytest.approx(base.learning_rate * 3 / 8)
    assert np.isfinite(accumulated.history[-1]["train_loss"])


def test_custom_loss_and_plain_module(small_digits: Dataset, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    calls: list[int] = []

    def loss_fn(m: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        calls.append(len(y))
        return F.cross_entropy(m(x), y)

    cfg = TrainStageConfig(epochs=2, batch_size=64)
    path = tmp_path / "state.pt"
    result = train_model(model, small_digits, cfg, checkpoint_path=path, loss_fn=loss_fn)
    assert sum(calls) == 2 * 256
    assert result.epochs_run == 2
    state = torch.load(path, weights_only=True)
    assert set(state) == set(model.state_dict())


def test_amp_on_requires_cuda(small_digits: Dataset) -> None:
    with pytest.raises(ConfigError, match="amp: on needs a CUDA device, but device is cpu"):
        train_model(_hamnet(), small_digits, TrainStageConfig(amp="on"), progress=False)


def test_rejects_data_that_does_not_fit(small_digits: Dataset) -> None:
    model = _hamnet(input_size=32)
    with pytest.raises(DataError, match="data has 64 feature columns, but the model expects 32"):
        train_model(model, small_digits, TrainStageConfig(epochs=1), progress=False)


def test_evaluate_accuracy_validates_lengths() -> None:
    with pytest.raises(DataError, match="3 samples and 2 labels"):
        evaluate_accuracy(_hamnet(), np.zeros((3, 64), np.float32), np.zeros(2, np.int64))
