"""Structured pruning of Hugging Face BERT encoders (heads and FFN neurons)."""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("transformers")

from transformers import BertConfig, BertForSequenceClassification, BertModel

from hamnet.compress.pruning.hf import (
    HFPruningPlan,
    apply_hf_plan,
    count_prunable_parameters,
    prune_bert,
)
from hamnet.core.errors import ConfigError, MissingDependencyError

HEADS, FFN, LAYERS = 4, 64, 2


def bert_config(**overrides: Any) -> BertConfig:
    values: dict[str, Any] = {
        "vocab_size": 100,
        "hidden_size": 32,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "intermediate_size": FFN,
        "max_position_embeddings": 32,
        "attn_implementation": "eager",
    }
    values.update(overrides)
    return BertConfig(**values)


def make_classifier(**overrides: Any) -> BertForSequenceClassification:
    torch.manual_seed(0)
    return BertForSequenceClassification(bert_config(**overrides)).eval()


@pytest.fixture(scope="module")
def model() -> BertForSequenceClassification:
    return make_classifier()


@pytest.fixture(scope="module")
def batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    input_ids = torch.randint(0, 100, (3, 10), generator=generator)
    attention_mask = torch.ones(3, 10, dtype=torch.long)
    attention_mask[0, 6:] = 0
    return input_ids, attention_mask, torch.tensor([0, 1, 0])


def logits(model: nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=batch[0], attention_mask=batch[1]).logits


def layers(model: nn.Module) -> list[Any]:
    return list(model.bert.encoder.layer)


@pytest.mark.parametrize("allocation", ["uniform", "global"])
@pytest.mark.parametrize("criterion", ["l1", "l2", "taylor", "random"])
def test_prune_bert_removes_heads_and_ffn(
    model: BertForSequenceClassification,
    batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    criterion: str,
    allocation: str,
) -> None:
    pruned, plan = prune_bert(
        model, 0.5, criterion=criterion, allocation=allocation, calibration=batch
    )

    assert logits(pruned, batch).shape == logits(model, batch).shape
    heads = [len(layer.heads_kept) for layer in plan.layers]
    ffn = [len(layer.ffn_kept) for layer in plan.layers]
    if allocation == "uniform":
        assert heads == [HEADS // 2] * LAYERS
        assert ffn == [FFN // 2] * LAYERS
    else:
        assert sum(heads) == HEADS * LAYERS // 2 and min(heads) >= 1
        assert sum(ffn) == FFN * LAYERS // 2 and min(ffn) >= 1
    for layer, n_heads, n_ffn in zip(layers(pruned), heads, ffn, strict=True):
        attention = layer.attention.self
        assert attention.num_attention_heads == n_heads
        assert attention.all_head_size == n_heads * attention.attention_head_size
        assert attention.query.out_features == n_heads * attention.attention_head_size
        assert layer.intermediate.dense.out_features == n_ffn
        assert layer.output.dense.in_features == n_ffn
    prunable = count_prunable_parameters(model)
    removed = sum(p.numel() for p in model.parameters()) - sum(
        p.numel() for p in pruned.parameters()
    )
    assert removed == prunable - count_prunable_parameters(pruned)
    assert removed / prunable == pytest.approx(0.5, abs=0.02)
    assert plan.criterion == criterion and plan.allocation == allocation and plan.ratio == 0.5
    assert plan.model_class == "BertForSequenceClassification"
    assert all(p.grad is None for p in pruned.parameters())


def test_caller_model_is_unchanged(
    model: BertForSequenceClassification, batch: tuple[torch.Tensor, ...]
) -> None:
    before = {k: v.clone() for k, v in model.state_dict().items()}
    prune_bert(model, 0.5, criterion="taylor", calibration=batch)

    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(layer.attention.self.num_attention_heads == HEADS for layer in layers(model))
    assert all(p.grad is None for p in model.parameters())


def test_inplace_prunes_the_given_model(batch: tuple[torch.Tensor, ...]) -> None:
    own = make_classifier()
    pruned, _ = prune_bert(own, 0.5, inplace=True)
    assert pruned is own
    assert own.bert.encoder.layer[0].attention.self.query.out_features == 16


def test_random_criterion_is_seeded_and_leaves_global_rng(
    model: BertForSequenceClassification,
) -> None:
    torch.manual_seed(123)
    state = torch.get_rng_state()
    _, first = prune_bert(model, 0.5, criterion="random", seed=7)
    assert torch.equal(torch.get_rng_state(), state)
    _, second = prune_bert(model, 0.5, criterion="random", seed=7)
    assert first.layers == second.layers


def test_plain_encoder_with_sdpa_attention(batch: tuple[torch.Tensor, ...]) -> None:
    torch.manual_seed(0)
    encoder = BertModel(bert_config(attn_implementation="sdpa")).eval()
    pruned, plan = prune_bert(encoder, 0.25)
    with torch.no_grad():
        out = pruned(input_ids=batch[0], attention_mask=batch[1]).last_hidden_state
    assert out.shape == (3, 10, 32)
    assert [len(layer.heads_kept) for layer in plan.layers] == [3, 3]
    assert plan.model_class == "BertModel"


class _Logits(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits


def test_pruned_model_exports_to_onnx_and_quantizes(
    model: BertForSequenceClassification, batch: tuple[torch.Tensor, ...], tmp_path: Path
) -> None:
    import onnxruntime as ort
    from onnxruntime.quantization import QuantType, quantize_dynamic

    pruned, _ = prune_bert(model, 0.5)
    path = tmp_path / "pruned.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _Logits(pruned).eval(),
            (batch[0], batch[1]),
            str(path),
            dynamo=False,
            opset_version=17,
            input_names=["input_ids", "attention_mask"],
            output_names=["logits"],
            dynamic_axes={
                "input_ids": {0: "batch", 1: "sequence"},
                "attention_mask": {0: "batch", 1: "sequence"},
                "logits": {0: "batch"},
            },
        )
    feeds = {"input_ids": batch[0].numpy(), "attention_mask": batch[1].numpy()}
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (onnx_logits,) = session.run(None, feeds)
    np.testing.assert_allclose(onnx_logits, logits(pruned, batch).numpy(), atol=1e-4)

    int8 = tmp_path / "pruned.int8.onnx"
    quantize_dynamic(str(path), str(int8), weight_type=QuantType.QInt8, reduce_range=True)
    quantized = ort.InferenceSession(str(int8), providers=["CPUExecutionProvider"])
    (int8_logits,) = quantized.run(None, feeds)
    assert int8_logits.shape == onnx_logits.shape
    assert np.isfinite(int8_logits).all()


def test_plan_round_trips_and_rebuilds_the_pruned_model(
    model: BertForSequenceClassification, batch: tuple[torch.Tensor, ...], tmp_path: Path
) -> None:
    pruned, plan = prune_bert(model, 0.5, criterion="l2", allocation="global")
    loaded = HFPruningPlan.load(plan.save(tmp_path / "plans" / "plan.json"))
    assert loaded == plan

    rebuilt = apply_hf_plan(model, loaded)
    assert rebuilt is not model
    torch.testing.assert_close(logits(rebuilt, batch), logits(pruned, batch), atol=1e-5, rtol=0)
    assert model.bert.encoder.layer[0].attention.self.num_attention_heads == HEADS


def test_plan_from_two_layers_does_not_fit_three(model: BertForSequenceClassification) -> None:
    _, plan = prune_bert(model, 0.5)
    with pytest.raises(ConfigError, match=r"plan has 2 layers, but the model has 3"):
        apply_hf_plan(make_classifier(num_hidden_layers=3), plan)


def test_plan_with_head_out_of_range(model: BertForSequenceClassification) -> None:
    _, plan = prune_bert(model, 0.5)
    data = plan.model_dump()
    data["layers"][1]["heads_kept"] = [0, HEADS]
    bad = HFPruningPlan.model_validate(data)
    with pytest.raises(ConfigError, match=r"layer 1 heads_kept .* in \[0, 4\), but got \[0, 4\]"):
        apply_hf_plan(model, bad)


def test_plan_for_other_width(model: BertForSequenceClassification) -> None:
    _, plan = prune_bert(model, 0.5)
    other = make_classifier(intermediate_size=48)
    with pytest.raises(ConfigError, match=r"intermediate_size=64, but got .*intermediate_size=48"):
        apply_hf_plan(other, plan)


def test_plan_on_an_already_pruned_model(model: BertForSequenceClassification) -> None:
    pruned, plan = prune_bert(model, 0.5)
    with pytest.raises(ConfigError, match=r"expected an unpruned model with 4 heads.*got 2"):
        apply_hf_plan(pruned, plan)


def test_bad_plan_file(tmp_path: Path) -> None:
    path = tmp_path / "plan.json"
    path.write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(ConfigError, match="hamnet-hf-pruning-plan/1"):
        HFPruningPlan.load(path)
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="expected JSON"):
        HFPruningPlan.load(path)


@pytest.mark.parametrize("ratio", [0.0, 1.0, -0.1, 1.5])
def test_bad_ratio(model: BertForSequenceClassification, ratio: float) -> None:
    with pytest.raises(ConfigError, match=rf"in \(0, 1\), but got {ratio}"):
        prune_bert(model, ratio)


@pytest.mark.parametrize("criterion", ["nope", "hessian"])
def test_unknown_criterion(model: BertForSequenceClassification, criterion: str) -> None:
    with pytest.raises(ConfigError, match=r"one of \['l1', 'l2', 'random', 'taylor'\]"):
        prune_bert(model, 0.5, criterion=criterion)


def test_unknown_allocation(model: BertForSequenceClassification) -> None:
    with pytest.raises(ConfigError, match=r"\['global', 'uniform'\], but got 'rspar'"):
        prune_bert(model, 0.5, allocation="rspar")


def test_taylor_needs_calibration(model: BertForSequenceClassification) -> None:
    with pytest.raises(ConfigError, match="calibration"):
        prune_bert(model, 0.5, criterion="taylor")


def test_taylor_with_a_loss_callable(
    model: BertForSequenceClassification, batch: tuple[torch.Tensor, ...]
) -> None:
    def loss(m: nn.Module) -> torch.Tensor:
        return m(input_ids=batch[0], attention_mask=batch[1]).logits.square().mean()

    pruned, plan = prune_bert(model, 0.5, criterion="taylor", calibration=loss)
    assert [len(layer.heads_kept) for layer in plan.layers] == [2, 2]
    assert logits(pruned, batch).shape == (3, 2)


def test_not_a_bert_model() -> None:
    with pytest.raises(ConfigError, match=r"expected a BERT-style encoder.*but got a Sequential"):
        prune_bert(nn.Sequential(nn.Linear(4, 4)), 0.5)


def test_missing_transformers(
    model: BertForSequenceClassification, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'hamnet\[transformers\]'"):
        prune_bert(model, 0.5)
