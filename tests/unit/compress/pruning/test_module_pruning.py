"""``prune_module`` / ``module_groups``: groups found, kept layers, options and errors."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from torch import nn

from hamnet.compress.pruning.hessian import KFACHessianApproximator, fit_module_analyzer
from hamnet.compress.pruning.modules import module_groups, prune_module
from hamnet.core.errors import ConfigError, DataError
from hamnet.models.replay import apply_module_plan

HAS_TRANSFORMERS = importlib.util.find_spec("transformers") is not None


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 3)
    )


class Convs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(2, 6, 3, padding=1)
        self.b = nn.Conv2d(6, 4, 3, padding=1)
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.b(torch.relu(self.a(x)))).mean(dim=(2, 3)))


class InferenceCache(nn.Module):
    """Runs under no_grad but cannot be traced: inference tensors are not saved for backward."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 8)
        self.b = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            h = self.a(x)
        return self.b(h)


X = torch.randn(4, 6)


def test_module_groups_describe_the_prunable_groups() -> None:
    groups = module_groups(mlp(), X)
    assert [(g.name, g.kind, g.size) for g in groups] == [("2", "linear", 12), ("0", "linear", 16)]
    conv = module_groups(Convs(), torch.randn(2, 2, 5, 5))
    assert {(g.name, g.kind, g.size) for g in conv} == {("a", "conv", 6), ("b", "conv", 4)}


def test_output_layer_and_keep_are_not_pruned() -> None:
    model = mlp()
    result = prune_module(model, X, ratio=0.5, keep=["2"])
    pruned: Any = result.model
    assert pruned[4].out_features == 3  # the output layer
    assert pruned[2].out_features == 12  # kept by name
    assert pruned[0].out_features == 8
    assert result.plan.kept == ["2", "4"]
    assert [g.name for g in result.groups] == ["0"]


def test_unknown_keep_name_suggests_the_closest() -> None:
    with pytest.raises(ConfigError, match=r"keep must name submodules.*'fcc'.*did you mean 'fc'"):
        prune_module(Convs(), torch.randn(2, 2, 5, 5), ratio=0.5, keep=["fcc"])


@pytest.mark.parametrize("ratio", [0.0, 1.0, -0.2, 1.5])
def test_ratio_must_be_inside_the_unit_interval(ratio: float) -> None:
    with pytest.raises(ConfigError, match=rf"ratio must be in \(0, 1\), but got {ratio}"):
        prune_module(mlp(), X, ratio=ratio)


def test_inputs_that_do_not_run_the_model() -> None:
    with pytest.raises(
        ConfigError, match=r"example_inputs must run the Sequential.*\[4, 5\].*failed"
    ):
        prune_module(mlp(), torch.randn(4, 5), ratio=0.5)


def test_untraceable_model_names_the_tracing_error() -> None:
    with pytest.raises(
        ConfigError, match=r"traceable by torch-pruning.*InferenceCache failed with"
    ):
        prune_module(InferenceCache(), torch.randn(2, 4), ratio=0.5)


def test_no_prunable_group() -> None:
    with pytest.raises(ConfigError, match=r"must have a prunable layer group, but Sequential"):
        prune_module(mlp(), X, ratio=0.5, keep=["0", "2"])
    with pytest.raises(ConfigError, match="prunable layer group"):
        prune_module(nn.Linear(4, 3), torch.randn(2, 4), ratio=0.5)


def test_model_too_small_for_the_ratio() -> None:
    tiny = nn.Sequential(nn.Linear(3, 2), nn.ReLU(), nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 1))
    with pytest.raises(ConfigError, match=r"too small to prune at this ratio"):
        prune_module(tiny, torch.randn(2, 3), ratio=0.1)
    with pytest.raises(ConfigError, match=r"none or all"):
        prune_module(tiny, torch.randn(2, 3), ratio=0.9)


def test_movement_is_hamnet_only() -> None:
    with pytest.raises(ConfigError, match=r"must be one of \[.*'hessian'.*\], but got 'movement'"):
        prune_module(mlp(), X, ratio=0.5, criterion="movement")


def test_unknown_criterion_and_allocation() -> None:
    with pytest.raises(ConfigError, match=r"did you mean 'taylor'"):
        prune_module(mlp(), X, ratio=0.5, criterion="tailor")
    with pytest.raises(ConfigError, match=r"did you mean 'global'"):
        prune_module(mlp(), X, ratio=0.5, allocation="globl")


@pytest.mark.parametrize(("criterion", "allocation"), [("taylor", "uniform"), ("l1", "rspar")])
def test_data_methods_need_calibration(criterion: str, allocation: str) -> None:
    with pytest.raises(ConfigError, match=r"needs calibration batches.*but got none"):
        prune_module(mlp(), X, ratio=0.5, criterion=criterion, allocation=allocation)


def test_malformed_calibration_batch() -> None:
    with pytest.raises(DataError, match=r"batch 0 must be a pair \(inputs, targets_or_None\)"):
        prune_module(mlp(), X, ratio=0.5, criterion="taylor", calibration=[X])  # type: ignore[list-item]


def test_rspar_latency_is_hamnet_only() -> None:
    calibration = [(X, torch.tensor([0, 1, 2, 0]))]
    with pytest.raises(ConfigError, match=r"must target 'flops', but got 'latency'"):
        prune_module(
            mlp(), X, ratio=0.5, allocation="rspar", calibration=calibration,
            allocation_options={"target": "latency", "profile": None},
        )  # fmt: skip


def test_custom_loss_and_seeded_random_are_reproducible() -> None:
    calls: list[int] = []

    def loss_fn(outputs: torch.Tensor, targets: Any) -> torch.Tensor:
        calls.append(1)
        return (outputs - targets).abs().mean()

    calibration = [(X, torch.zeros(4, 3))]
    a = prune_module(
        mlp(), X, ratio=0.5, criterion="taylor", calibration=calibration, loss_fn=loss_fn
    )
    assert calls
    assert all(p.grad is None for p in a.model.parameters())
    r1 = prune_module(mlp(), X, ratio=0.5, criterion="random", seed=3)
    r2 = prune_module(mlp(), X, ratio=0.5, criterion="random", seed=3)
    assert r1.plan.history == r2.plan.history


def test_global_ranking_spends_the_budget_across_groups() -> None:
    model = mlp()
    with torch.no_grad():
        model[0].weight[:8] *= 100.0  # the first layer's neurons 0-7 stand out
    result = prune_module(model, X, ratio=0.5, allocation="global")
    removed = {g.name: g.removed for g in result.plan.groups}
    # l1 scores are normalised by each group's mean (torch-pruning), so the eight
    # small neurons of the scaled layer rank lowest of all and go first
    assert removed == {"2": 6, "0": 8}
    pruned: Any = result.model
    assert torch.equal(pruned[0].weight, model[0].weight[:8])


def test_sensitivity_spares_the_group_whose_loss_grows_most() -> None:
    model = mlp()
    calibration = [(X, torch.tensor([0, 1, 2, 0]))]
    result = prune_module(model, X, ratio=0.4, allocation="sensitivity", calibration=calibration)
    assert len(result.layer_ratios) == 2
    assert result.params_after < result.params_before


def test_hessian_saliency_per_conv_filter() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(2, 3, 3, padding=1)
    x = torch.randn(4, 2, 5, 5)

    def loss(model: nn.Module) -> torch.Tensor:
        out = model(x)
        return 0.5 * (out - (out.detach() + torch.randn_like(out))).square().sum() / 4

    analyzer = fit_module_analyzer(conv, [loss, loss])
    assert analyzer.row_saliency[""].shape == (3,)
    assert analyzer.column_saliency[""].shape == (2,)
    a, g = analyzer.kfac.factors("")
    assert a.shape == (2 * 9 + 1, 2 * 9 + 1) and g.shape == (3, 3)
    assert torch.all(analyzer.row_saliency[""] > 0)
    with pytest.raises(ConfigError, match=r"nn.Linear or nn.Conv2d"):
        KFACHessianApproximator(nn.Sequential(conv), layers=["1"])


@pytest.mark.skipif(not HAS_TRANSFORMERS, reason="transformers is not importable")
def test_bert_heads_under_a_wrapper_keep_the_hidden_width() -> None:
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(
        vocab_size=40, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=48, max_position_embeddings=16, num_labels=3,
        attn_implementation="eager",
    )  # fmt: skip
    torch.manual_seed(0)
    model = BertForSequenceClassification(config).eval()
    inputs = {
        "input_ids": torch.randint(0, 40, (2, 6)),
        "attention_mask": torch.ones(2, 6, dtype=torch.long),
    }
    result = prune_module(model, inputs, ratio=0.5, keep=["bert.encoder.layer.1.intermediate"])
    kinds = {g.name: g.kind for g in result.groups}
    assert kinds == {
        "bert.encoder.layer.0.attention.self.value": "heads",
        "bert.encoder.layer.0.intermediate.dense": "linear",
        "bert.encoder.layer.1.attention.self.value": "heads",
        "bert.pooler.dense": "linear",
    }
    assert "bert.encoder.layer.1.output.dense" in result.plan.kept  # the hidden width
    pruned: Any = result.model
    attention = pruned.bert.encoder.layer[0].attention.self
    assert attention.num_attention_heads == 2 and attention.all_head_size == 16
    assert pruned.bert.encoder.layer[1].intermediate.dense.out_features == 48
    assert pruned.bert.embeddings.word_embeddings.embedding_dim == 32
    assert result.plan.attributes["bert.encoder.layer.1.attention.self.num_attention_heads"] == 2
    replayed = apply_module_plan(model, result.plan, inputs)
    replayed.load_state_dict(result.model.state_dict(), strict=True)
    with torch.no_grad():
        assert torch.equal(replayed(**inputs).logits, result.model(**inputs).logits)


def test_rspar_runs_agent_updates_and_keeps_the_budget() -> None:
    calibration = [(X, torch.tensor([0, 1, 2, 0]))]
    result = prune_module(
        mlp(), X, ratio=0.5, allocation="rspar", calibration=calibration,
        allocation_options={"episodes": 5},  # the agent updates after 4 episodes
    )  # fmt: skip
    sizes = [g.params for g in result.groups]
    spent = sum(r * s for r, s in zip(result.layer_ratios, sizes, strict=True)) / sum(sizes)
    assert spent == pytest.approx(0.5, abs=0.1)  # rounded to whole neurons
