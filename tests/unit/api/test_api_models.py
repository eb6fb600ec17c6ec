"""Arbitrary user models through the Optimizer API: a conv net, a two-input module and a
tiny random BERT encoder, each on the real pipeline (export, quantize, measure, select)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from hamnet.api.optimizer import Constraints, Goal, Optimizer, plan_for
from hamnet.core.errors import ConfigError, DataError, ExportError, ModelLoadError
from hamnet.core.hardware import load_profile

FAST: dict[str, Any] = {"measure": {"warmup": 1, "repeats": 5, "max_eval_samples": 64}}
SEQ = 16


class SmallConv(nn.Module):
    """[N, 1, 8, 8] -> two convolutions -> 10 logits."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU()
        )
        self.head = nn.Linear(8 * 8 * 8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


class TwoInputs(nn.Module):
    """Float features plus a float side input -> 3 logits (two named inputs)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(12, 16)
        self.b = nn.Linear(4, 16)
        self.head = nn.Linear(16, 3)

    def forward(self, features: torch.Tensor, side: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.a(features) + self.b(side)))


def _bert(classifier: bool = False) -> nn.Module:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.BertConfig(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        vocab_size=100,
        max_position_embeddings=64,
        num_labels=3,
    )
    cls = transformers.BertForSequenceClassification if classifier else transformers.BertModel
    return cls(cfg).eval()


def _tokens(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, 100, size=(n, SEQ), dtype=np.int64)
    mask = np.ones((n, SEQ), dtype=np.int64)
    lengths = rng.integers(SEQ // 2, SEQ + 1, size=n)
    for i, length in enumerate(lengths):
        mask[i, length:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def _examples() -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(v) for k, v in _tokens(2, seed=9).items()}


@pytest.fixture(scope="module")
def conv_data() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)[:300]
    return x, y[:300].astype(np.int64)


def test_conv_net_quantize_and_auto(tmp_path: Path, conv_data: Any) -> None:
    torch.manual_seed(0)
    opt = Optimizer.from_pytorch(SmallConv(), [1, 1, 8, 8], work_dir=tmp_path)
    assert opt.kind == "module" and opt.family == "conv" and opt.input_names == ["input"]
    result = opt.optimize(
        Goal.QUANTIZE,
        Constraints(max_accuracy_drop=1.0),
        validation_data=conv_data,
        preferred_backends=["onnx"],
        _overrides={**FAST, "stages": {"quantize": {"methods": ["ort_static_int8"]}}},
    )
    assert result.report.accuracy_kind == "top1_accuracy"
    assert any(c.precision == "int8" for c in result.candidates)
    assert result.recommended is not None and result.report.gates["loads_in_runtime"]

    plan = opt.plan(Constraints(max_latency_ms=1.0))
    assert plan.family == "conv" and not plan.prune_ratios
    assert plan.methods == ["nncf_int8"]
    assert any("only post-training methods run" in r for r in plan.reasons)
    auto = opt.build_config(Goal.AUTO, Constraints(max_latency_ms=1.0))
    assert auto.stages.quantize is not None and auto.stages.quantize.methods[0] == "nncf_int8"
    assert "ort_static_int8" in auto.stages.quantize.methods
    assert auto.stages.prune is None


def test_two_input_module_without_labels_scores_agreement(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = TwoInputs().eval()
    opt = Optimizer.from_pytorch(
        model, example_inputs=(torch.randn(1, 12), torch.randn(1, 4)),
        input_names=["features", "side"], work_dir=tmp_path,
    )  # fmt: skip
    assert opt.input_names == ["features", "side"] and opt.family == "generic"
    rng = np.random.default_rng(0)
    x = {"features": rng.normal(size=(120, 12)), "side": rng.normal(size=(120, 4))}
    seen: list[tuple[int, ...]] = []

    def metric(predict: Any) -> float:
        out = predict({k: v[:10] for k, v in x.items()})
        seen.append(out.shape)
        return 1.0

    result = opt.optimize(
        Goal.QUANTIZE,
        Constraints(max_accuracy_drop=1.0),
        validation_data=(x, None),
        validation_fn=metric,
        preferred_backends=["onnx"],
        _overrides={**FAST, "stages": {"quantize": {"methods": ["ort_dynamic_int8"]}}},
    )
    assert result.report.accuracy_kind.startswith("top1_agreement_with_original_model")
    baseline = next(c for c in result.candidates if c.stage == "load")
    assert baseline.metrics is not None and baseline.metrics.accuracy == 1.0
    assert baseline.metrics.accuracy_kind == "top1_agreement"
    assert seen == [(10, 3)]
    with pytest.raises(ConfigError, match=r"keyed by the model's inputs \['features', 'side'\]"):
        opt.optimize(Goal.QUANTIZE, validation_data=({"features": x["features"]}, None))
    with pytest.raises(ConfigError, match="dict of the model's 2 inputs"):
        opt.optimize(Goal.QUANTIZE, validation_data=(x["features"], None))


def test_bert_encoder_fidelity_and_transformer_plan(tmp_path: Path) -> None:
    model = _bert()
    opt = Optimizer.from_pytorch(model, example_inputs=_examples(), work_dir=tmp_path)
    assert opt.family == "transformer"
    assert opt.input_names == ["input_ids", "attention_mask"]
    plan = opt.plan(Constraints(target_size_mb=0.01))
    assert plan.methods[0] == "ort_fused_dynamic_int8" and not plan.prune_ratios
    assert any("transformer" in r for r in plan.reasons)
    assert any("size-bound" in r for r in plan.reasons)
    x = _tokens(90)
    result = opt.optimize(
        Goal.AUTO,
        Constraints(max_accuracy_drop=0.2, max_latency_ms=1000.0),
        validation_data=(x, None),
        preferred_backends=["onnx"],
        max_rounds=1,
        _overrides=FAST,
    )
    assert "mean_cosine_similarity" in result.report.accuracy_kind
    kinds = {c.metrics.accuracy_kind for c in result.candidates if c.metrics}
    assert kinds == {"mean_cosine_similarity"}
    baseline = next(c for c in result.candidates if c.stage == "load")
    assert baseline.metrics is not None and baseline.metrics.accuracy == pytest.approx(1.0)
    quantized = [c for c in result.candidates if c.precision == "int8"]
    assert quantized and all(c.metrics and c.metrics.accuracy > 0.8 for c in quantized)
    assert result.recommended is not None
    # The exported graph takes other sequence lengths and batch sizes (dynamic axes).
    from hamnet.backends.session import load_session

    session = load_session(result.recommended.artifact, result.recommended.runtime,
                           load_profile("x86-avx2"))  # fmt: skip
    out = session.run({k: v[:3, :8] for k, v in x.items()})
    assert out.shape == (3, 8, 64)


def test_bert_classifier_from_onnx_quantize_with_labels(tmp_path: Path) -> None:
    from hamnet.backends.export import export_module

    model = _bert(classifier=True)
    path = export_module(model, _examples(), tmp_path / "bert.onnx")
    opt = Optimizer.from_onnx(path, work_dir=tmp_path / "work")
    assert opt.family == "transformer" and opt.input_names == ["input_ids", "attention_mask"]
    cfg = opt.build_config(Goal.QUANTIZE, preferred_backends=["onnx"])
    assert cfg.stages.quantize is not None
    assert "ort_dynamic_int8" in cfg.stages.quantize.methods
    x = _tokens(90, seed=1)
    y = np.arange(90) % 3
    result = opt.optimize(
        "quantize",
        Constraints(max_accuracy_drop=1.0),
        validation_data=(x, y),
        preferred_backends=["onnx"],
        _overrides={**FAST, "stages": {"quantize": {"methods": ["ort_dynamic_int8"]}}},
    )
    assert result.report.accuracy_kind == "top1_accuracy"
    assert any(c.precision == "int8" for c in result.candidates)


def test_plan_for_families() -> None:
    cpu = load_profile("x86-avx2", require_present=False)
    gpu = load_profile("nvidia-gpu", require_present=False)
    bert = plan_for(Constraints(max_latency_ms=1.0), "onnx", cpu, family="transformer")
    assert bert.methods == ["ort_fused_dynamic_int8", "ort_dynamic_int8"]
    assert bert.goal_sequence == [Goal.QUANTIZE]
    conv = plan_for(Constraints(target_size_mb=0.1), "onnx", cpu, model_size_mb=1.0, family="conv")
    assert conv.methods == ["nncf_int8"] and conv.reasons[0].startswith("size-bound")
    no_ov = cpu.model_copy(update={"runtimes": [r for r in cpu.runtimes if r.name != "openvino"]})
    assert plan_for(Constraints(), "onnx", no_ov, family="conv").methods == ["ort_static_int8"]
    assert plan_for(Constraints(), "onnx", gpu, family="transformer").methods == []


def test_argument_errors(tmp_path: Path) -> None:
    model = SmallConv()
    with pytest.raises(ConfigError, match=r"input_shape .* or example_inputs must be given"):
        Optimizer.from_pytorch(model, work_dir=tmp_path)
    with pytest.raises(ConfigError, match=r"input_shape must have a batch axis .* but got \[64\]"):
        Optimizer.from_pytorch(model, [64], work_dir=tmp_path)
    with pytest.raises(DataError, match=r"must run the SmallConv, but calling it with \[1, 64\]"):
        Optimizer.from_pytorch(model, [1, 64], work_dir=tmp_path)
    with pytest.raises(ConfigError, match=r"example_inputs must be a tensor or a dict"):
        Optimizer.from_pytorch(model, example_inputs=[1, 2], work_dir=tmp_path)
    with pytest.raises(ConfigError, match="example_inputs must be a tensor or a dict"):
        Optimizer.from_pytorch(model, example_inputs="x", work_dir=tmp_path)
    # A tuple of positional inputs is exported to ONNX (quantized only), checked there.
    with pytest.raises(ExportError, match=r"example_inputs must hold .* only tensors, but got"):
        Optimizer.from_pytorch(model, example_inputs=(1, 2), work_dir=tmp_path)
    with pytest.raises(FileNotFoundError):
        Optimizer.from_onnx(tmp_path / "absent.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not onnx")
    with pytest.raises(ModelLoadError, match="not a readable ONNX model"):
        Optimizer.from_onnx(bad)
    with pytest.raises(ConfigError, match="family must be"):
        Optimizer.from_onnx(bad, family="hamnet")


def test_validation_data_errors(tmp_path: Path) -> None:
    torch.manual_seed(0)
    opt = Optimizer.from_pytorch(SmallConv(), [1, 1, 8, 8], work_dir=tmp_path)
    x = np.zeros((20, 1, 8, 8), np.float32)
    with pytest.raises(ConfigError, match=r"must have shape \['N', 1, 8, 8\], but got \[20, 64\]"):
        opt.optimize(Goal.QUANTIZE, validation_data=(x.reshape(20, 64), None))
    with pytest.raises(ConfigError, match=r"y must have shape \(20,\), but got \[19\]"):
        opt.optimize(Goal.QUANTIZE, validation_data=(x, np.zeros(19, np.int64)))
    with pytest.raises(DataError, match="class indices"):
        opt.optimize(Goal.QUANTIZE, validation_data=(x, np.full(20, 5)))
    with pytest.raises(ConfigError, match="use_prefect must be True or False"):
        opt.optimize(Goal.QUANTIZE, validation_data=(x, None), use_prefect="yes")  # type: ignore[arg-type]
