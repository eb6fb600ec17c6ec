"""Structured pruning of HAMNet: criteria × allocations, plans, schedules, guard rails."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch

from hamnet.backends.export import export_onnx
from hamnet.compress.pruning import (
    PruneResult,
    PruningPlan,
    apply_plan,
    get_importance,
    needs_gradients,
    prune_hamnet,
)
from hamnet.core import registry
from hamnet.core.config import DataSection, TrainStageConfig
from hamnet.core.errors import ConfigError
from hamnet.models.hamnet import HAMNet, HAMNetConfig, load_checkpoint, save_checkpoint
from hamnet.training.data import Dataset, load_dataset
from hamnet.training.trainer import train_model

torch.set_num_threads(1)

CASES = list(itertools.product(registry.names("criterion"), registry.names("allocation")))
FAST_OPTIONS = {"rspar": {"episodes": 2, "recovery": None, "target": "flops"}}


@pytest.fixture(scope="module")
def dataset() -> Dataset:
    return load_dataset(DataSection())


@pytest.fixture(scope="module")
def trained(dataset: Dataset) -> HAMNet:
    torch.manual_seed(0)
    config = HAMNetConfig(
        input_size=64, num_classes=10, hidden_size=32, num_layers=2, num_heads=4, token_size=8
    )
    model = HAMNet(config)
    train_model(model, dataset, TrainStageConfig(epochs=3, warmup_epochs=0), progress=False)
    return model


@pytest.fixture(scope="module")
def results(trained: HAMNet, dataset: Dataset) -> dict[tuple[str, str], PruneResult]:
    return {
        (criterion, allocation): prune_hamnet(
            trained,
            dataset,
            ratio=0.5,
            criterion=criterion,
            allocation=allocation,
            allocation_options=FAST_OPTIONS.get(allocation),
        )
        for criterion, allocation in CASES
    }


def _x(dataset: Dataset, n: int = 32) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(dataset.x_val[:n], dtype=np.float32))


@pytest.mark.parametrize(("criterion", "allocation"), CASES)
def test_pruned_model_is_smaller_and_runs(
    criterion: str,
    allocation: str,
    results: dict[tuple[str, str], PruneResult],
    trained: HAMNet,
    dataset: Dataset,
) -> None:
    result = results[criterion, allocation]
    model = result.model
    assert result.params_after < result.params_before
    assert result.params_before == sum(p.numel() for p in trained.parameters())
    assert model.config.hidden_size == trained.config.hidden_size
    heads = model.config.layer_heads
    ffn = model.config.layer_ffn
    assert heads is not None and ffn is not None
    if allocation == "uniform":
        assert heads == [2, 2]
        assert ffn == [32, 32]
    elif allocation == "global":
        assert sum(heads) == 4 and min(heads) >= 1
        assert sum(ffn) == 64 and min(ffn) >= 1
    else:  # per-layer ratios spend the same budget, rounded per layer
        assert result.layer_ratios is not None and len(result.layer_ratios) == 2
        assert 3 <= sum(heads) <= 5 and min(heads) >= 1
        assert 56 <= sum(ffn) <= 72 and min(ffn) >= 1
    for i, block in enumerate(model.blocks):
        assert block.attn.num_heads == heads[i]
        assert block.attn.q_proj.out_features == heads[i] * model.config.head_dim
        assert block.ffn.fc2.in_features == ffn[i]
    assert model(_x(dataset)).shape == (32, 10)
    assert trained.config.layer_heads is None  # the input model is untouched
    assert [len(layer.heads_kept) for layer in result.plan.layers] == heads
    assert [len(layer.ffn_kept) for layer in result.plan.layers] == ffn


@pytest.mark.parametrize(("criterion", "allocation"), CASES)
def test_plan_replays_pruned_model(
    criterion: str,
    allocation: str,
    results: dict[tuple[str, str], PruneResult],
    trained: HAMNet,
    dataset: Dataset,
    tmp_path: Path,
) -> None:
    result = results[criterion, allocation]
    plan = PruningPlan.load(result.plan.save(tmp_path / "plan.json"))
    assert plan == result.plan
    replayed = apply_plan(trained, plan).eval()
    assert replayed.config == result.model.config
    x = _x(dataset)
    with torch.no_grad():
        torch.testing.assert_close(replayed(x), result.model.eval()(x), atol=1e-5, rtol=0)


@pytest.mark.parametrize(("criterion", "allocation"), CASES)
def test_onnx_export_is_smaller(
    criterion: str,
    allocation: str,
    results: dict[tuple[str, str], PruneResult],
    trained: HAMNet,
    dataset: Dataset,
    tmp_path: Path,
) -> None:
    import onnxruntime as ort

    original = export_onnx(trained, 64, tmp_path / "original.onnx")
    model = results[criterion, allocation].model.eval()
    pruned = export_onnx(model, 64, tmp_path / "pruned.onnx")
    assert pruned.stat().st_size < original.stat().st_size
    x = _x(dataset)
    (onnx_out,) = ort.InferenceSession(str(pruned)).run(None, {"input": x.numpy()})
    with torch.no_grad():
        np.testing.assert_allclose(onnx_out, model(x).numpy(), atol=1e-4)


@pytest.mark.parametrize(("criterion", "allocation"), CASES)
def test_checkpoint_round_trip(
    criterion: str,
    allocation: str,
    results: dict[tuple[str, str], PruneResult],
    dataset: Dataset,
    tmp_path: Path,
) -> None:
    model = results[criterion, allocation].model.eval()
    loaded = load_checkpoint(save_checkpoint(model, tmp_path / "pruned.pt")).eval()
    assert loaded.config == model.config
    x = _x(dataset)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), atol=0, rtol=0)


def test_linear_schedule_with_finetuning(trained: HAMNet, dataset: Dataset) -> None:
    result = prune_hamnet(
        trained,
        dataset,
        ratio=0.5,
        schedule="linear",
        steps=2,
        finetune=TrainStageConfig(epochs=1, warmup_epochs=0),
    )
    assert [s["ratio"] for s in result.steps] == [0.25, 0.5]
    assert [s["layer_heads"] for s in result.steps] == [[3, 3], [2, 2]]
    assert [s["layer_ffn"] for s in result.steps] == [[48, 48], [32, 32]]
    assert all(0.0 <= s["val_accuracy"] <= 1.0 for s in result.steps)
    assert result.steps[-1]["params"] == result.params_after


def test_cubic_schedule_keeps_one_head_and_channel(trained: HAMNet, dataset: Dataset) -> None:
    result = prune_hamnet(trained, dataset, ratio=0.99, schedule="cubic", steps=3)
    assert result.model.config.layer_heads == [1, 1]
    assert result.model.config.layer_ffn == [1, 1]
    ratios = [s["ratio"] for s in result.steps]
    assert ratios == sorted(ratios) and ratios[-1] == pytest.approx(0.99)


def test_zero_ratio_keeps_everything(trained: HAMNet, dataset: Dataset) -> None:
    result = prune_hamnet(trained, dataset, ratio=0.0)
    assert result.params_after == result.params_before


@pytest.mark.parametrize("ratio", [-0.1, 1.0, 1.5])
def test_bad_ratio(ratio: float, trained: HAMNet, dataset: Dataset) -> None:
    with pytest.raises(ConfigError, match=str(ratio)):
        prune_hamnet(trained, dataset, ratio=ratio)


@pytest.mark.parametrize(
    ("key", "value"),
    [("criterion", "obd"), ("allocation", "layerwise"), ("schedule", "exp")],
)
def test_unknown_names(key: str, value: str, trained: HAMNet, dataset: Dataset) -> None:
    with pytest.raises(ConfigError, match=value):
        prune_hamnet(trained, dataset, ratio=0.5, **{key: value})  # type: ignore[arg-type]


def test_importance_registry() -> None:
    assert needs_gradients("taylor") and not needs_gradients("l1")
    assert type(get_importance("l2")).__name__ == "MagnitudeImportance"
    with pytest.raises(ConfigError, match="'nope'"):
        get_importance("nope")


def test_apply_plan_rejects_other_model(
    results: dict[tuple[str, str], PruneResult],
) -> None:
    other = HAMNet(HAMNetConfig(input_size=64, num_classes=10, hidden_size=16, token_size=8))
    with pytest.raises(ConfigError, match="plan was made for"):
        apply_plan(other, results["l1", "uniform"].plan)


@pytest.mark.parametrize("criterion", ["l1", "taylor"])
def test_one_token_model_prunes_whole_heads(dataset: Dataset, criterion: str) -> None:
    """One token skips q/k in the forward pass; pruning traces the full path on its copy,
    removes whole heads, and hands back a model on the fast path with a replayable plan."""
    torch.manual_seed(0)
    config = HAMNetConfig(
        input_size=64, num_classes=10, hidden_size=16, num_layers=2, num_heads=4, token_size=64
    )
    model = HAMNet(config).eval()
    result = prune_hamnet(model, dataset, ratio=0.5, criterion=criterion)
    pruned = result.model
    assert pruned.config.layer_heads == [2, 2] and pruned.one_token_fast_path
    assert model.one_token_fast_path, "the input model is not touched"
    x = torch.from_numpy(dataset.x_test[:4])
    torch.testing.assert_close(apply_plan(model, result.plan)(x), pruned(x))


def test_step_layer_sparsity_scales_the_allocation_to_the_step() -> None:
    from hamnet.compress.pruning.structured import step_layer_sparsity

    assert step_layer_sparsity(None, 0.25, 0.5) is None
    assert step_layer_sparsity([0.2, 0.8], 0.25, 0.5) == pytest.approx([0.1, 0.4])
    assert step_layer_sparsity([0.2, 0.8], 0.5, 0.5) == pytest.approx([0.2, 0.8])
