"""A user's own torch module through every goal: AUTO, PRUNE and DISTILL on a conv net, an
MLP and a tiny random BERT encoder, on the real pipeline (prune with torch-pruning, KD from
the original, export, quantize, measure, select)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from hamnet import Constraints, Goal, Optimizer
from hamnet.core.candidate import Candidate
from hamnet.core.config import deep_merge
from hamnet.core.errors import DataError

SEQ = 12
FAST: dict[str, Any] = {
    # Mechanics, not speed: a child up to 2x slower than its parent is kept.
    "measure": {
        "warmup": 1,
        "repeats": 5,
        "max_eval_samples": 64,
        "paired_rounds": 0,
        "slower_margin": 0.99,
    },
    "stages": {
        "prune": {"finetune": None},
        "distill": {"train": {"epochs": 2, "batch_size": 32}},
        "quantize": {"methods": ["ort_dynamic_int8"], "calibration_samples": 32},
        "export": {"formats": ["onnx"]},
    },
}


class ConvNet(nn.Module):
    """[N, 1, 8, 8] -> two convolutions with BatchNorm -> 10 logits (~30k parameters)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
            nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        )  # fmt: skip
        self.head = nn.Linear(32 * 8 * 8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


class Encoder(nn.Module):
    """A tiny random BERT, mean-pooled over the attention mask (a sentence embedding)."""

    def __init__(self) -> None:
        super().__init__()
        transformers = pytest.importorskip("transformers")
        torch.manual_seed(0)
        cfg = transformers.BertConfig(
            hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256,
            vocab_size=60, max_position_embeddings=32,
        )  # fmt: skip
        self.model = transformers.BertModel(cfg, add_pooling_layer=False).eval()
        self.config = cfg

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask)[0]
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)


def _digits(n: int = 400) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    return (x / 16.0).astype(np.float32)[:n], y[:n].astype(np.int64)


def _trained(model: nn.Module, x: np.ndarray, y: np.ndarray, epochs: int = 30) -> nn.Module:
    torch.manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    model.train()
    for _ in range(epochs):
        for i in range(0, len(xt), 64):
            opt.zero_grad()
            nn.functional.cross_entropy(model(xt[i : i + 64]), yt[i : i + 64]).backward()
            opt.step()
    return model.eval()


def _tokens(n: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, 60, size=(n, SEQ), dtype=np.int64)
    mask = np.ones((n, SEQ), dtype=np.int64)
    for i, length in enumerate(rng.integers(SEQ // 2, SEQ + 1, size=n)):
        mask[i, length:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def _lineage(result: Any, candidate: Candidate) -> list[Candidate]:
    by_id = {c.id: c for c in result.candidates}
    chain = [candidate]
    while chain[-1].parent_id in by_id:
        chain.append(by_id[chain[-1].parent_id])
    return chain


def _assert_pruned_distilled_quantized(result: Any, *, recommended_int8: bool = True) -> None:
    """The recommended model was pruned, distilled and quantized (or, ``recommended_int8``
    False, at least pruned), and pruned + distilled + quantized candidates exist."""
    rec = result.recommended
    assert rec is not None
    stages = {c.stage for c in _lineage(result, rec)}
    expected = {"prune", "distill", "quantize"} if recommended_int8 else {"prune"}
    assert expected <= stages, (stages, result.rounds)
    assert rec.precision == "int8" or not recommended_int8
    full = [c for c in result.candidates if {"prune", "distill", "quantize"} <= {
        a.stage for a in _lineage(result, c)
    }]  # fmt: skip
    assert full and all(c.precision == "int8" for c in full)
    pruned = next(c for c in _lineage(result, rec) if c.stage == "prune")
    assert pruned.params["params_after"] < pruned.params["params_before"]
    kd = next(c for c in _lineage(result, full[0]) if c.stage == "distill")
    # Distillation keeps its best validation epoch: never worse than it started.
    assert kd.params["distill_loss_after"] <= kd.params["distill_loss_before"]


def test_conv_net_module_is_kept_as_torch_and_planned_by_training_data(tmp_path: Path) -> None:
    opt = Optimizer.from_pytorch(ConvNet(), [1, 1, 8, 8], work_dir=tmp_path)
    assert opt.kind == "module" and opt.family == "conv"
    no_data = opt.plan(Constraints(max_latency_ms=0.01))
    assert not no_data.prune_ratios
    assert any("only post-training methods run" in r for r in no_data.reasons)
    with_data = opt.plan(Constraints(max_latency_ms=0.01), has_train_data=True)
    assert with_data.prune_ratios
    assert any("convolution filters" in r or "conv filters" in r for r in with_data.reasons)
    cfg = opt.build_config(Goal.PRUNE, data_path=tmp_path / "d.npz")
    assert cfg.stages.prune is not None and cfg.stages.distill is not None
    assert cfg.stages.export is not None


def test_auto_prunes_distills_and_quantizes_a_conv_net(tmp_path: Path) -> None:
    x, y = _digits(600)
    model = _trained(ConvNet(), x.reshape(-1, 1, 8, 8), y, epochs=8)
    xi = x.reshape(-1, 1, 8, 8)
    opt = Optimizer.from_pytorch(model, [1, 1, 8, 8], work_dir=tmp_path)
    result = opt.optimize(
        "auto",
        Constraints(max_accuracy_drop=1.0, target_size_mb=opt.model_size_mb() / 8),
        validation_data=(xi[400:], y[400:]),
        train_data=(xi[:400], y[:400]),
        _overrides=deep_merge(FAST, {"stages": {"quantize": {"methods": ["ort_static_int8"]}}}),
    )
    _assert_pruned_distilled_quantized(result)


def test_auto_on_an_mlp_with_unlabelled_training_data(tmp_path: Path) -> None:
    x, y = _digits(600)
    mlp = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(),
                        nn.Linear(256, 10))  # fmt: skip
    model = _trained(mlp, x, y, epochs=10)
    opt = Optimizer.from_pytorch(model, [1, 64], work_dir=tmp_path)
    assert opt.kind == "module" and opt.family == "generic"
    result = opt.optimize(
        "auto",
        Constraints(max_accuracy_drop=1.0, target_size_mb=opt.model_size_mb() / 8),
        validation_data=(x[400:], y[400:]),
        train_data=x[:400],
        _overrides=FAST,
    )
    _assert_pruned_distilled_quantized(result)


def test_auto_on_a_bert_encoder_scores_cosine(tmp_path: Path) -> None:
    example = {k: torch.from_numpy(v) for k, v in _tokens(2, 9).items()}
    opt = Optimizer.from_pytorch(Encoder(), example_inputs=example, work_dir=tmp_path)
    assert opt.kind == "module" and opt.family == "transformer"
    result = opt.optimize(
        "auto",
        Constraints(max_accuracy_drop=1.0, target_size_mb=opt.model_size_mb() / 8),
        validation_data=(_tokens(120, 1), None),
        train_data=_tokens(200, 2),
        fidelity="cosine",  # an embedding, not class scores (it is not L2-normalized)
        _overrides=FAST,
    )
    assert "cosine" in result.report.accuracy_kind
    # Mean pooling ignores padded tokens, so every export skips them inside the graph.
    exports = [c for c in result.candidates if c.stage == "export"]
    assert exports and all(c.params["trim_padding"] == "attention_mask" for c in exports)
    # The embeddings stay FP32 under dynamic INT8, so on this tiny encoder the INT8
    # export is not smaller than the pruned module itself; a random encoder barely
    # changes when pruned, so KD may keep its starting weights (then pruned == pruned+KD).
    _assert_pruned_distilled_quantized(result, recommended_int8=False)


def test_training_data_must_fit_the_model(tmp_path: Path) -> None:
    x, y = _digits()
    opt = Optimizer.from_pytorch(nn.Sequential(nn.Linear(64, 10)), [1, 64], work_dir=tmp_path)
    with pytest.raises(Exception, match=r"shape \['N', 64\], but got \[50, 32\]"):
        opt.optimize(
            "auto", validation_data=(x, y), train_data=(x[:50, :32], y[:50]), _overrides=FAST
        )
    with pytest.raises(DataError, match=r"must run the Sequential"):
        Optimizer.from_pytorch(nn.Sequential(nn.Linear(64, 10)), [1, 32], work_dir=tmp_path)
