"""The API names the fidelity it used and reports validation and test figures.

The user's case: a sentence encoder (one L2-normalized embedding per sentence, no
labels) quantized with ``max_accuracy_drop=0.01`` must be judged by cosine similarity
to the original outputs, not by agreement of the embedding's argmax dimension.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from hamnet.api.data import reference_kind
from hamnet.api.optimizer import Constraints, Goal, Optimizer
from hamnet.api.report import CompressionReport, measured_kind
from hamnet.core.errors import ConfigError

FAST: dict[str, Any] = {"measure": {"warmup": 1, "repeats": 5, "max_eval_samples": 64}}


class Encoder(nn.Module):
    """[N, 48] -> L2-normalized [N, 64], like a sentence encoder's pooled output."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(48, 96), nn.GELU(), nn.Linear(96, 64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(self.body(x), dim=-1)


def test_reference_kind_says_which_fidelity_and_why() -> None:
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(20, 8))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    assert reference_kind(emb).startswith("mean_cosine_similarity_to_original_model")
    assert "unit-norm embeddings" in reference_kind(emb)
    logits = rng.normal(size=(20, 3))
    assert reference_kind(logits).startswith("top1_agreement_with_original_model")
    assert "read as class scores" in reference_kind(logits)
    declared = reference_kind(logits, declared="embedding")
    assert declared.startswith("mean_cosine_similarity") and "declares" in declared
    forced = reference_kind(emb, fidelity="agreement", declared="embedding")
    assert forced.startswith("top1_agreement") and "data.fidelity is 'agreement'" in forced
    assert "rank 3" in reference_kind(rng.normal(size=(4, 5, 6)))
    with pytest.raises(ConfigError, match="fidelity must be one of"):
        reference_kind(emb, fidelity="l2")


def test_measured_kind_wins_when_the_data_said_otherwise() -> None:
    prepared = "top1_agreement_with_original_model (labels are the original predictions)"
    assert measured_kind(prepared, "top1_accuracy") == prepared
    assert measured_kind("top1_accuracy", "top1_accuracy") == "top1_accuracy"
    assert measured_kind(prepared, "mean_cosine_similarity") == (
        "mean_cosine_similarity_to_original_model (mean cosine similarity to the original "
        "model's outputs)"
    )


def test_markdown_shows_validation_and_test_figures() -> None:
    report = CompressionReport(
        size_reduction_ratio=3.0, latency_improvement_ratio=1.5, accuracy_drop=0.002,
        accuracy_kind="mean_cosine_similarity_to_original_model (...)",
        constraints_satisfied=True, constraint_violations=[], execution_time=1.0,
        backend_used="onnxruntime int8", candidates_table=[], validation_accuracy=0.998,
        test_accuracy=0.997, baseline_validation_accuracy=1.0, baseline_test_accuracy=1.0,
        test_accuracy_drop=0.003,
    )  # fmt: skip
    text = report.to_markdown()
    assert "- accuracy: mean_cosine_similarity_to_original_model" in text
    assert "- recommended: validation 0.9980, test 0.9970 (test split scored once" in text
    assert "- baseline: validation 1.0000, test 1.0000" in text
    assert "- accuracy drop: validation 0.20 points, test 0.30 points" in text
    assert report.to_dict()["test_accuracy"] == 0.997


def test_normalized_encoder_is_judged_by_cosine_end_to_end(tmp_path: Path) -> None:
    torch.manual_seed(0)
    opt = Optimizer.from_pytorch(
        Encoder().eval(), example_inputs=torch.randn(1, 48), work_dir=tmp_path
    )
    x = np.random.default_rng(0).normal(size=(200, 48)).astype(np.float32)
    result = opt.optimize(
        Goal.QUANTIZE,
        Constraints(max_accuracy_drop=0.01),
        validation_data=(x, None),
        preferred_backends=["onnx"],
        _overrides={**FAST, "stages": {"quantize": {"methods": ["ort_dynamic_int8"]}}},
    )
    report = result.report
    assert report.accuracy_kind.startswith("mean_cosine_similarity_to_original_model")
    kinds = {c.metrics.accuracy_kind for c in result.candidates if c.metrics}
    assert kinds == {"mean_cosine_similarity"}
    int8 = next(c for c in result.candidates if c.precision == "int8")
    assert int8.metrics is not None and int8.metrics.accuracy > 0.99
    violations = result.pipeline.selection.assessments[int8.id].violations
    assert not any("accuracy drop" in v for v in violations)
    assert report.validation_accuracy is not None and report.test_accuracy is not None
    assert report.baseline_test_accuracy == pytest.approx(1.0, abs=1e-5)
    assert "test split scored once" in report.to_markdown()
