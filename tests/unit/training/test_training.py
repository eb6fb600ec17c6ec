from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError
from torch import nn

from hamnet.core.config import DataSection, TrainStageConfig
from hamnet.core.errors import ConfigError, DataError
from hamnet.models import HAMNet, HAMNetConfig, load_checkpoint
from hamnet.training.data import Dataset, load_dataset
from hamnet.training.trainer import Batch, evaluate_accuracy, predict_logits, train_model


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
    x_train = torch.from_numpy(small_digits.x_train)
    y_train = torch.from_numpy(small_digits.y_train)
    calls: list[int] = []

    def loss_fn(m: nn.Module, batch: Batch) -> torch.Tensor:
        calls.append(len(batch.y))
        assert batch.index.dtype == torch.int64
        assert torch.equal(batch.x, x_train[batch.index])
        assert torch.equal(batch.y, y_train[batch.index])
        assert (batch.lam, batch.y_mix, batch.index_mix) == (1.0, None, None)
        return F.cross_entropy(m(batch.x), batch.y)

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


def test_mixed_cross_entropy_is_the_weighted_sum() -> None:
    torch.manual_seed(0)
    logits, y, y_mix = torch.randn(6, 4), torch.randint(0, 4, (6,)), torch.randint(0, 4, (6,))
    index = torch.arange(6)
    batch = Batch(x=torch.zeros(6, 2), y=y, index=index, lam=0.3, y_mix=y_mix, index_mix=index)
    expected = 0.3 * F.cross_entropy(logits, y, label_smoothing=0.1) + 0.7 * F.cross_entropy(
        logits, y_mix, label_smoothing=0.1
    )
    torch.testing.assert_close(batch.mixed_cross_entropy(logits, 0.1), expected)
    plain = Batch(x=batch.x, y=y, index=index)
    torch.testing.assert_close(plain.mixed_cross_entropy(logits), F.cross_entropy(logits, y))


def _captured_batches(
    model: nn.Module, dataset: Dataset, cfg: TrainStageConfig, seed: int = 0
) -> list[Batch]:
    batches: list[Batch] = []

    def loss_fn(m: nn.Module, batch: Batch) -> torch.Tensor:
        batches.append(batch)
        return batch.mixed_cross_entropy(m(batch.x))

    train_model(model, dataset, cfg, seed=seed, progress=False, loss_fn=loss_fn)
    return batches


def test_mixup_blends_each_sample_with_a_partner(small_digits: Dataset) -> None:
    cfg = TrainStageConfig(epochs=1, batch_size=64, augment="mixup", mixup_alpha=1.0)
    batches = _captured_batches(_hamnet(), small_digits, cfg)
    x_train = torch.from_numpy(small_digits.x_train)
    y_train = torch.from_numpy(small_digits.y_train)
    assert len(batches) == 4
    for batch in batches:
        assert 0.0 < batch.lam < 1.0
        assert batch.y_mix is not None and batch.index_mix is not None
        assert torch.equal(batch.index_mix.sort().values, batch.index.sort().values)
        assert torch.equal(batch.y, y_train[batch.index])
        assert torch.equal(batch.y_mix, y_train[batch.index_mix])
        expected = batch.lam * x_train[batch.index] + (1 - batch.lam) * x_train[batch.index_mix]
        torch.testing.assert_close(batch.x, expected)
    assert len({b.lam for b in batches}) == 4, "every batch draws its own mixing weight"


def test_cutmix_pastes_whole_tokens_and_lam_is_the_kept_share(small_digits: Dataset) -> None:
    cfg = TrainStageConfig(epochs=2, batch_size=32, augment="cutmix", mixup_alpha=1.0)
    batches = _captured_batches(_hamnet(token_size=8), small_digits, cfg)
    x_train = torch.from_numpy(small_digits.x_train)
    partial = 0
    for batch in batches:
        assert batch.index_mix is not None
        primary, partner = x_train[batch.index], x_train[batch.index_mix]
        cut = round((1 - batch.lam) * 8)
        assert batch.lam == 1 - cut / 8, "lam is the share of the 8 tokens kept"
        spans = []
        for start in range(8 - cut + 1):
            expected = primary.clone()
            expected[:, 8 * start : 8 * (start + cut)] = partner[:, 8 * start : 8 * (start + cut)]
            if torch.equal(batch.x, expected):
                spans.append(start)
        assert spans, f"no token-aligned span of {cut} tokens explains the batch"
        partial += 0 < cut < 8
    assert partial >= len(batches) // 2


@pytest.mark.parametrize("augment", ["mixup", "cutmix"])
def test_augmented_runs_are_deterministic(small_digits: Dataset, augment: str) -> None:
    cfg = TrainStageConfig.model_validate({"epochs": 2, "batch_size": 64, "augment": augment})
    first = train_model(_hamnet(seed=1), small_digits, cfg, seed=3, progress=False)
    second = train_model(_hamnet(seed=1), small_digits, cfg, seed=3, progress=False)
    assert first.history == second.history
    plain = train_model(
        _hamnet(seed=1),
        small_digits,
        cfg.model_copy(update={"augment": "none"}),
        seed=3,
        progress=False,
    )
    assert plain.history != first.history


@pytest.mark.parametrize("kind", ["decoupled", "l2", "l1", "elastic"])
def test_weight_decay_types(small_digits: Dataset, kind: Any) -> None:
    """One AdamW step whose only gradient is the weight penalty's."""
    torch.manual_seed(0)
    model = nn.Linear(64, 10)
    weight, bias = model.weight.detach().clone(), model.bias.detach().clone()
    grads: dict[str, list[torch.Tensor]] = {"weight": [], "bias": []}
    for name, param in model.named_parameters():
        param.register_hook(grads[name].append)
    decay, lr, ratio = 0.1, 0.01, 0.25
    cfg = TrainStageConfig(
        epochs=1,
        batch_size=256,
        learning_rate=lr,
        weight_decay=decay,
        weight_decay_type=kind,
        l1_ratio=ratio,
        warmup_epochs=0,
        scheduler="constant",
        max_grad_norm=None,
    )

    def no_data_gradient(m: nn.Module, batch: Batch) -> torch.Tensor:
        return 0.0 * m(batch.x).sum()

    train_model(model, small_digits, cfg, progress=False, loss_fn=no_data_gradient)
    weight_grad = torch.stack(grads["weight"]).sum(dim=0)
    assert not torch.stack(grads["bias"]).any(), "biases are never penalised"
    torch.testing.assert_close(model.bias.detach(), bias)
    expected_grad = {
        "decoupled": torch.zeros_like(weight),
        "l2": decay * weight,
        "l1": decay * weight.sign(),
        "elastic": decay * (ratio * weight.sign() + (1 - ratio) * weight),
    }[kind]
    torch.testing.assert_close(weight_grad, expected_grad)
    if kind == "decoupled":
        torch.testing.assert_close(model.weight.detach(), weight * (1 - lr * decay))
    else:
        adam_step = lr * expected_grad / (expected_grad.abs() + 1e-8)
        torch.testing.assert_close(model.weight.detach(), weight - adam_step)


def test_gradient_checkpointing_is_on_for_the_run_only(small_digits: Dataset) -> None:
    model = _hamnet(num_layers=2)
    seen: list[bool] = []

    def loss_fn(m: nn.Module, batch: Batch) -> torch.Tensor:
        seen.append(bool(m.gradient_checkpointing))
        return batch.mixed_cross_entropy(m(batch.x))

    cfg = TrainStageConfig(epochs=1, batch_size=128, gradient_checkpointing=True)
    train_model(model, small_digits, cfg, progress=False, loss_fn=loss_fn)
    assert seen == [True, True]
    assert model.gradient_checkpointing is False


def test_gradient_checkpointing_needs_support(small_digits: Dataset) -> None:
    cfg = TrainStageConfig(epochs=1, gradient_checkpointing=True)
    with pytest.raises(ConfigError, match=r"gradient_checkpointing needs .* but got Sequential"):
        train_model(nn.Sequential(nn.Linear(64, 10)), small_digits, cfg, progress=False)

    class Switchable(nn.Sequential):
        calls: list[str]

        def gradient_checkpointing_enable(self) -> None:
            self.calls.append("enable")

        def gradient_checkpointing_disable(self) -> None:
            self.calls.append("disable")

    model = Switchable(nn.Linear(64, 10))
    model.calls = []
    train_model(model, small_digits, cfg, progress=False)
    assert model.calls == ["enable", "disable"]


def test_extra_modules_are_trained_but_not_saved(small_digits: Dataset, tmp_path: Path) -> None:
    model = _hamnet()
    torch.manual_seed(1)
    projection = nn.Linear(10, 10)
    before = {k: v.clone() for k, v in projection.state_dict().items()}
    modes: list[bool] = []

    def loss_fn(m: nn.Module, batch: Batch) -> torch.Tensor:
        modes.append(projection.training)
        return batch.mixed_cross_entropy(projection(m(batch.x)))

    cfg = TrainStageConfig(epochs=2, batch_size=128, weight_decay_type="l2")
    path = tmp_path / "model.pt"
    train_model(
        model,
        small_digits,
        cfg,
        progress=False,
        loss_fn=loss_fn,
        extra_modules=[projection],
        checkpoint_path=path,
    )
    assert all(modes) and not projection.training
    for name, value in projection.state_dict().items():
        assert not torch.equal(value, before[name]), name
    saved = torch.load(path, weights_only=True)["state_dict"]
    assert set(saved) == set(model.state_dict())


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"augment": "cutout"}, "augment"),
        ({"mixup_alpha": 0}, "mixup_alpha"),
        ({"weight_decay_type": "l3"}, "weight_decay_type"),
        ({"l1_ratio": 1.5}, "l1_ratio"),
    ],
)
def test_train_config_rejects_bad_options(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        TrainStageConfig.model_validate(overrides)


def test_on_epoch_end_sees_every_epoch_and_can_stop_training(small_digits: Dataset) -> None:
    seen: list[dict[str, float]] = []
    model = HAMNet(HAMNetConfig(input_size=64, num_classes=10, hidden_size=16, token_size=8))
    cfg = TrainStageConfig(epochs=3, patience=3, warmup_epochs=0)
    train_model(model, small_digits, cfg, progress=False, on_epoch_end=seen.append)
    assert [r["epoch"] for r in seen] == [1.0, 2.0, 3.0]
    assert {"val_accuracy", "val_loss", "train_loss", "lr"} <= set(seen[0])

    class Stop(Exception):
        pass

    def stop_after_first(record: dict[str, float]) -> None:
        raise Stop(record["epoch"])

    with pytest.raises(Stop):
        train_model(model, small_digits, cfg, progress=False, on_epoch_end=stop_after_first)
