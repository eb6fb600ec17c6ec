"""Movement pruning importance and unstructured sparsity (compress.pruning)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch_pruning as tp
from conftest import small_hamnet
from torch import nn

from hamnet.compress.pruning.movement import (
    MovementScores,
    make_movement_importance,
    movement_importance_class,
)
from hamnet.compress.pruning.structured import prune_hamnet
from hamnet.compress.pruning.unstructured import unstructured_sparsity
from hamnet.core.config import DataSection
from hamnet.core.errors import ConfigError
from hamnet.models.hamnet import HAMNet
from hamnet.training.data import Dataset, load_dataset

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def dataset() -> Dataset:
    return load_dataset(DataSection())


@pytest.fixture(scope="module")
def trained(dataset: Dataset) -> HAMNet:
    return small_hamnet(dataset)


def _mlp(dataset: Dataset) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(dataset.num_features, 16), nn.ReLU(), nn.Linear(16, dataset.num_classes)
    )


def test_movement_importance_prunes_lowest_channels(dataset: Dataset) -> None:
    model = _mlp(dataset)
    before = copy.deepcopy(model.state_dict())
    imp = make_movement_importance(model, dataset, steps=10, seed=0)
    assert isinstance(imp, tp.importance.Importance)
    assert isinstance(imp, movement_importance_class())
    assert not torch.equal(before["0.weight"], model[0].weight)  # fine-tuned in place

    example = torch.from_numpy(dataset.x_train[:2])
    pruner = tp.pruner.BasePruner(
        model, example, imp, pruning_ratio=0.25, ignored_layers=[model[2]]
    )
    groups = list(
        pruner.DG.get_all_groups(ignored_layers=[model[2]], root_module_types=[nn.Linear])
    )
    assert len(groups) == 1
    scores = imp(groups[0])
    assert scores is not None and scores.shape == (len(groups[0][0].idxs),) == (16,)
    expected = (imp.movement.row_scores("0") + imp.movement.column_scores("2")).float()
    torch.testing.assert_close(scores, expected)

    lowest = set(torch.argsort(scores)[:4].tolist())
    kept_rows = [i for i in range(16) if i not in lowest]
    weight_before = model[0].weight.detach().clone()
    pruner.step()
    assert model[0].out_features == 12 and model[2].in_features == 12
    torch.testing.assert_close(model[0].weight, weight_before[kept_rows])


def test_movement_differs_from_magnitude() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[5.0] * 4, [0.1] * 4, [1.0] * 4, [2.0] * 4]))
        model[2].weight.fill_(0.0)
    movement = MovementScores(model)
    # Row 0: large but shrinking (grad has the sign of w); row 1: small but growing.
    grad = torch.tensor([[1.0] * 4, [-1.0] * 4, [0.0] * 4, [0.0] * 4])
    model[0].weight.grad = grad
    model[2].weight.grad = torch.zeros_like(model[2].weight)
    movement.accumulate()
    torch.testing.assert_close(
        movement.row_scores("0"), torch.tensor([-20.0, 0.4, 0.0, 0.0]).double()
    )

    example = torch.randn(2, 4)
    dg = tp.DependencyGraph().build_dependency(model, example_inputs=example)
    group = dg.get_pruning_group(model[0], tp.prune_linear_out_channels, idxs=list(range(4)))
    mov = movement_importance_class()(movement)(group)
    mag = tp.importance.MagnitudeImportance(p=1, group_reduction="sum", normalizer=None)(group)
    assert int(torch.argmax(mag)) == 0 and int(torch.argmin(mov)) == 0
    assert torch.argsort(mov).tolist() != torch.argsort(mag).tolist()


def test_movement_with_prune_hamnet(trained: HAMNet, dataset: Dataset) -> None:
    result = prune_hamnet(
        trained, dataset, ratio=0.5, criterion="movement", criterion_options={"steps": 5}
    )
    assert result.model.config.layer_heads == [2, 2]
    assert result.params_after < result.params_before


def test_movement_rejects_bad_settings(dataset: Dataset) -> None:
    with pytest.raises(ConfigError):
        make_movement_importance(_mlp(dataset), dataset, steps=0)
    with pytest.raises(ConfigError):
        make_movement_importance(_mlp(dataset), [(0, 1)])  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        movement_importance_class()(MovementScores(_mlp(dataset)))


def test_unstructured_sparsity(trained: HAMNet, dataset: Dataset) -> None:
    before = {k: v.clone() for k, v in trained.state_dict().items()}
    report = unstructured_sparsity(trained, 0.5)
    assert report.sparsity_achieved == pytest.approx(0.5, abs=0.02)
    for key, value in trained.state_dict().items():
        assert torch.equal(value, before[key])
    assert report.model is not trained
    x = torch.from_numpy(np.ascontiguousarray(dataset.x_val[:8]))
    with torch.no_grad():
        assert torch.isfinite(report.model.eval()(x)).all()
    assert report.zipped_onnx_bytes < report.dense_onnx_bytes
    dense = unstructured_sparsity(trained, 0.0)
    assert dense.sparsity_achieved < 0.01
    assert report.zipped_onnx_bytes < dense.zipped_onnx_bytes  # the zeros are what shrink
    assert any("latency does not improve" in note for note in report.notes)


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5])
def test_unstructured_rejects_bad_sparsity(trained: HAMNet, bad: float) -> None:
    with pytest.raises(ConfigError):
        unstructured_sparsity(trained, bad)
