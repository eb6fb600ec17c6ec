"""K-FAC factors, OBS saliencies and the Hessian importance (hamnet.compress.pruning.hessian)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hamnet.compress.pruning.hessian import (
    HOBSSensitivityAnalyzer,
    KFACHessianApproximator,
    make_hessian_importance,
    sensitivity_layer_ratios,
)
from hamnet.core.config import DataSection
from hamnet.core.errors import ConfigError
from hamnet.models.hamnet import HAMNet, HAMNetConfig
from hamnet.training.data import load_dataset

torch.set_num_threads(1)


def _tiny(seed: int = 0) -> tuple[nn.Linear, torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    layer = nn.Linear(4, 3).double()
    x = torch.randn(16, 4, dtype=torch.float64)
    y = torch.randint(0, 3, (16,))
    return layer, x, y


def _per_sample(layer: nn.Linear, x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
    """Per-sample gradient of CE w.r.t. [W, b] (row-major flattened), by brute force."""
    grads = []
    for xi, yi in zip(x, y, strict=True):
        loss = F.cross_entropy(layer(xi[None]), yi[None])
        gw, gb = torch.autograd.grad(loss, [layer.weight, layer.bias])
        grads.append(torch.cat([gw, gb[:, None]], dim=1).flatten())
    return grads


def _fit(layer: nn.Linear, x: torch.Tensor, y: torch.Tensor, batch: int) -> KFACHessianApproximator:
    kfac = KFACHessianApproximator(layer, fisher="empirical")
    kfac.register_hooks()
    for start in range(0, len(x), batch):
        kfac.accumulate(x[start : start + batch], y[start : start + batch])
    kfac.remove_hooks()
    return kfac


def test_factors_match_brute_force() -> None:
    layer, x, y = _tiny()
    kfac = _fit(layer, x, y, batch=5)
    a_aug = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], dim=1)
    expected_a = a_aug.T @ a_aug / len(x)
    probs = torch.softmax(layer(x), dim=1).detach()
    g = probs - F.one_hot(y, 3).double()  # per-sample dCE/dlogits
    expected_g = g.T @ g / len(x)
    a, gg = kfac.factors("")
    torch.testing.assert_close(a, expected_a)
    torch.testing.assert_close(gg, expected_g)


def test_kronecker_equals_exact_fisher_for_one_sample() -> None:
    layer, x, y = _tiny(1)
    kfac = _fit(layer, x[:1], y[:1], batch=1)
    (grad,) = _per_sample(layer, x[:1], y[:1])
    exact = torch.outer(grad, grad)
    a, g = kfac.factors("")
    torch.testing.assert_close(torch.kron(g, a), exact)
    torch.testing.assert_close(
        kfac.compute_fisher_diagonal(""), torch.diagonal(exact).reshape(3, 5)[:, :4]
    )


def test_exact_fisher_diagonal_with_batch_one_steps() -> None:
    layer, x, y = _tiny(2)
    kfac = _fit(layer, x, y, batch=1)
    grads = torch.stack(_per_sample(layer, x, y))
    expected = grads.square().mean(0).reshape(3, 5)[:, :4]
    torch.testing.assert_close(kfac.compute_fisher_diagonal("", exact=True), expected)
    kfac_diag = kfac.compute_fisher_diagonal("")
    assert kfac_diag.shape == layer.weight.shape
    assert torch.all(kfac_diag >= 0)


def test_exact_diagonal_is_batch_size_invariant() -> None:
    layer, x, y = _tiny(3)
    one = _fit(layer, x, y, batch=1).compute_fisher_diagonal("", exact=True)
    many = _fit(layer, x, y, batch=8).compute_fisher_diagonal("", exact=True)
    torch.testing.assert_close(one, many)


def test_token_dims_are_flattened() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.Flatten(), nn.Linear(6, 2))
    kfac = KFACHessianApproximator(model, layers=["0"], fisher="empirical")
    x = torch.randn(5, 2, 4)
    kfac.accumulate(x, torch.randint(0, 2, (5,)))
    a, g = kfac.factors("0")
    rows = torch.cat([x.reshape(10, 4), torch.ones(10, 1)], dim=1).double()
    torch.testing.assert_close(a, rows.T @ rows / 10)
    assert g.shape == (3, 3)


def test_unknown_layer_names_valid_ones() -> None:
    with pytest.raises(ConfigError, match=r"nn\.Linear") as err:
        KFACHessianApproximator(nn.Sequential(nn.Linear(2, 2)), layers=["nope"])
    assert "'0'" in str(err.value)


def test_saliency_matches_explicit_kronecker_obs() -> None:
    layer, x, y = _tiny(4)
    analyzer = HOBSSensitivityAnalyzer(layer, damping=1e-2, fisher="empirical")
    scores = analyzer.compute_sensitivity([(x[:8], y[:8]), (x[8:], y[8:])])[""]
    a, g = analyzer.kfac.damped_factors("")
    h_inv = torch.linalg.inv(torch.kron(g, a))
    w = torch.cat([layer.weight, layer.bias[:, None]], dim=1).detach().flatten()
    for row in range(3):
        s = list(range(row * 5, row * 5 + 5))
        block = h_inv[np.ix_(s, s)]
        expected = 0.5 * w[s] @ torch.linalg.solve(block, w[s])
        torch.testing.assert_close(scores[row], expected)
    cols = analyzer.column_saliency[""]
    for col in range(4):
        s = [r * 5 + col for r in range(3)]
        block = h_inv[np.ix_(s, s)]
        expected = 0.5 * w[s] @ torch.linalg.solve(block, w[s])
        torch.testing.assert_close(cols[col], expected)


def test_diagonal_saliency_and_plan() -> None:
    layer, x, y = _tiny(5)
    analyzer = HOBSSensitivityAnalyzer(nn.Sequential(layer), use_kfac=False)
    scores = analyzer.compute_sensitivity([(x, y)], num_batches=3)["0"]
    diag = analyzer.kfac._fisher_diagonal_aug("0", exact=True)
    w = torch.cat([layer.weight, layer.bias[:, None]], dim=1).detach().double()
    torch.testing.assert_close(scores, 0.5 * (w.square() * diag).sum(1))
    plan = analyzer.get_pruning_plan(0.5)
    assert len(plan["0"]) == 1
    assert plan["0"] == [int(torch.argmin(scores))]
    for bad in (0.0, 1.0, -0.1, 1.5):
        with pytest.raises(ConfigError, match="pruning_ratio"):
            analyzer.get_pruning_plan(bad)


def test_plan_before_fit_is_an_error() -> None:
    with pytest.raises(ConfigError, match="compute_sensitivity"):
        HOBSSensitivityAnalyzer(nn.Linear(2, 2)).get_pruning_plan(0.5)


def test_importance_in_base_pruner_on_mlp() -> None:
    import torch_pruning as tp

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    data = [(torch.randn(32, 8), torch.randint(0, 4, (32,))) for _ in range(3)]
    importance = make_hessian_importance(model, data, num_batches=3)
    assert isinstance(importance, tp.importance.Importance)
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=torch.randn(2, 8))
    group = graph.get_pruning_group(model[0], tp.prune_linear_out_channels, idxs=list(range(16)))
    scores = importance(group)
    analyzer = importance.analyzer
    expected = analyzer.row_saliency["0"] + analyzer.column_saliency["2"]
    assert scores.shape == (16,)
    torch.testing.assert_close(scores, expected.float())
    pruner = tp.pruner.BasePruner(
        model, torch.randn(2, 8), importance, pruning_ratio=0.5, ignored_layers=[model[2]]
    )
    pruner.step()
    assert model[0].out_features == 8
    assert model(torch.randn(3, 8)).shape == (3, 4)


@pytest.fixture(scope="module")
def trained() -> tuple[HAMNet, object]:
    dataset = load_dataset(DataSection())
    torch.manual_seed(0)
    config = HAMNetConfig(
        input_size=dataset.num_features,
        num_classes=dataset.num_classes,
        hidden_size=32,
        num_layers=2,
        num_heads=4,
        token_size=8,
    )
    model = HAMNet(config)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    x = torch.from_numpy(dataset.x_train.astype(np.float32))
    y = torch.from_numpy(dataset.y_train.astype(np.int64))
    model.train()
    for _ in range(2):
        for idx in torch.randperm(len(x)).split(64):
            optimizer.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            optimizer.step()
    model.zero_grad(set_to_none=True)
    model.eval()
    return model, dataset


def test_hamnet_head_and_ffn_scores(trained: tuple[HAMNet, object]) -> None:
    model, dataset = trained
    analyzer = HOBSSensitivityAnalyzer(model)
    scores = analyzer.compute_sensitivity(dataset, num_batches=3)
    assert scores["blocks.0.attn.q_proj"].shape == (32,)
    heads = analyzer.head_scores(model)
    ffn = analyzer.ffn_scores(model)
    assert [h.shape for h in heads] == [(4,), (4,)]
    assert [f.shape for f in ffn] == [(64,), (64,)]
    assert all(torch.all(t >= 0) and torch.isfinite(t).all() for t in heads + ffn)
    assert all(p.grad is None for p in model.parameters())
    assert not model.training


def test_sensitivity_layer_ratios_budget(trained: tuple[HAMNet, object]) -> None:
    model, dataset = trained
    ratios = sensitivity_layer_ratios(model, dataset, 0.4, num_batches=3)
    assert len(ratios) == 2
    assert all(0.0 <= r <= 0.9 for r in ratios)
    sizes = []
    for b in model.blocks:
        linears = (
            b.attn.q_proj,
            b.attn.k_proj,
            b.attn.v_proj,
            b.attn.out_proj,
            b.ffn.fc1,
            b.ffn.fc2,
        )
        sizes.append(sum(p.numel() for m in linears for p in m.parameters()))
    assert np.average(ratios, weights=sizes) == pytest.approx(0.4, abs=1e-6)
    assert sensitivity_layer_ratios(model, dataset, 0.0) == [0.0, 0.0]
    with pytest.raises(ConfigError, match="ratio"):
        sensitivity_layer_ratios(model, dataset, 1.2)


def test_allocation_clips_and_spends_budget() -> None:
    from hamnet.compress.pruning.hessian import _allocate

    ratios = _allocate(np.array([10.0, 1.0, 1.0]), np.array([1.0, 2.0, 3.0]), 0.5, 0.8)
    assert ratios[0] == pytest.approx(0.8)
    assert np.average(ratios, weights=[1, 2, 3]) == pytest.approx(0.5, abs=1e-9)
    assert _allocate(np.array([1.0, 2.0]), np.array([1.0, 1.0]), 0.95, 0.9) == [0.9, 0.9]


def test_prune_hamnet_with_hessian_criterion(trained: tuple[HAMNet, object]) -> None:
    from hamnet.compress.pruning import prune_hamnet

    model, dataset = trained
    result = prune_hamnet(model, dataset, ratio=0.5, criterion="hessian")  # type: ignore[arg-type]
    assert [len(layer.heads_kept) for layer in result.plan.layers] == [2, 2]
    assert [len(layer.ffn_kept) for layer in result.plan.layers] == [32, 32]
