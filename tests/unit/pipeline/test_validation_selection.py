"""Candidates are measured and selected on the validation split; the test split is
scored once, after selection, for the recommended model and the baseline only."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import tiny_config

from hamnet.backends.session import load_session
from hamnet.core.candidate import Candidate, Metrics
from hamnet.core.config import config_from_dict
from hamnet.evaluate.fidelity import cosine_similarity
from hamnet.evaluate.measure import eval_rows, predict
from hamnet.pipeline.run import PipelineResult, make_context, run_pipeline
from hamnet.pipeline.stages.base import StageContext


def _run(tmp_path: Path, **overrides: Any) -> tuple[PipelineResult, StageContext]:
    from rich.console import Console

    cfg = config_from_dict(tiny_config(tracking={"enabled": False}, **overrides))
    out = io.StringIO()
    result = run_pipeline(cfg, base_dir=tmp_path, console=Console(file=out, width=200))
    assert "test split (scored once, after selection)" in out.getvalue()
    return result, make_context(cfg, tmp_path)


def _outputs(candidate: Candidate, ctx: StageContext, x: np.ndarray) -> np.ndarray:
    rows, _ = eval_rows(x, ctx.config.measure.max_eval_samples)
    session = load_session(candidate.artifact, candidate.runtime, ctx.profile)
    return predict(session, rows, ctx.profile.throughput_batch_size)  # as measured


def _metrics(candidate: Candidate) -> Metrics:
    assert candidate.metrics is not None
    return candidate.metrics


def test_labelled_run_selects_on_validation_and_tests_the_recommended_once(
    tmp_path: Path,
) -> None:
    result, ctx = _run(
        tmp_path,
        stages={"train": {"epochs": 1}, "export": {"formats": ["onnx"]}, "quantize": None},
    )
    data, cap = ctx.dataset, ctx.config.measure.max_eval_samples
    assert cap is not None and len(data.x_val) >= 1 and len(data.x_test) >= 1
    assert [c.stage for c in result.candidates][:2] == ["train", "export"]
    for candidate in result.candidates:  # every figure the selection read: validation
        predicted = _outputs(candidate, ctx, data.x_val).argmax(axis=1)
        assert _metrics(candidate).accuracy == pytest.approx(np.mean(predicted == data.y_val[:cap]))
        assert _metrics(candidate).accuracy_kind == "top1_accuracy"
    rec = result.selection.recommended
    assert rec is not None
    baseline = result.candidates[0]
    tested = {c.id for c in result.candidates if _metrics(c).test_accuracy is not None}
    assert tested == {rec.id, baseline.id}  # only they saw the test split
    for candidate in (rec, baseline):
        predicted = _outputs(candidate, ctx, data.x_test).argmax(axis=1)
        expected = np.mean(predicted == data.y_test[:cap])
        assert _metrics(candidate).test_accuracy == pytest.approx(expected)
    assert next(c for c in result.candidates if c.id == rec.id) == rec
    summary = result.summary()
    assert summary["validation_accuracy"] == _metrics(rec).accuracy
    assert summary["test_accuracy"] == _metrics(rec).test_accuracy
    assert summary["accuracy_kind"] == "top1_accuracy"
    assert "accuracy: validation " in result.selection.message
    assert ", test " in result.selection.message
    row = result.table.set_index("id").loc[rec.id]
    assert row["test_accuracy"] == pytest.approx(_metrics(rec).test_accuracy)
    assert set(result.table["accuracy_kind"]) == {"top1_accuracy"}
    markdown = result.report_files["markdown"].read_text()
    assert "top-1 accuracy on the labels, on the validation split" in markdown
    assert "Test split (scored once, after selection)" in markdown
    assert "| accuracy | test_accuracy |" in markdown


def _encoder_onnx(path: Path) -> Path:
    """A small sentence-encoder-like model: [N, 32] -> L2-normalized [N, 24]."""
    import torch
    from torch import nn

    class Encoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Sequential(nn.Linear(32, 64), nn.Tanh(), nn.Linear(64, 24))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return nn.functional.normalize(self.body(x), dim=-1)

    torch.manual_seed(0)
    torch.onnx.export(
        Encoder().eval(), (torch.randn(2, 32),), str(path), input_names=["x"],
        output_names=["embedding"], dynamic_axes={"x": {0: "batch"}, "embedding": {0: "batch"}},
        opset_version=17, dynamo=False,
    )  # fmt: skip
    return path


def test_unit_norm_embeddings_score_cosine_on_both_splits(tmp_path: Path) -> None:
    import onnxruntime as ort

    model = _encoder_onnx(tmp_path / "encoder.onnx")
    x = np.random.default_rng(0).normal(size=(240, 32)).astype(np.float32)
    reference = ort.InferenceSession(str(model)).run(None, {"x": x})[0]
    assert np.allclose(np.linalg.norm(reference, axis=1), 1.0, atol=1e-5)
    np.savez(tmp_path / "data.npz", x=x, reference=reference)
    result, ctx = _run(
        tmp_path,
        model={"source": "file", "path": "encoder.onnx"},
        data={"source": "file", "path": "data.npz", "standardize": False},
        constraints={"max_accuracy_drop": 0.01},
        stages={"export": None, "quantize": {"methods": ["ort_dynamic_int8"]}},
        measure={"max_eval_samples": 100},
    )
    data = ctx.dataset
    assert {_metrics(c).accuracy_kind for c in result.candidates} == {"mean_cosine_similarity"}
    int8 = next(c for c in result.candidates if c.stage == "quantize")
    cosine = cosine_similarity(_outputs(int8, ctx, data.x_val), data.y_val[:100])
    assert _metrics(int8).accuracy == pytest.approx(cosine) and cosine > 0.99
    verdict = result.selection.assessments[int8.id]
    assert not any("accuracy drop" in v for v in verdict.violations)  # cosine, not argmax
    rec = result.selection.recommended
    assert rec is not None and _metrics(rec).test_accuracy is not None
    test_cosine = cosine_similarity(_outputs(rec, ctx, data.x_test), data.y_test[:100])
    assert _metrics(rec).test_accuracy == pytest.approx(test_cosine)
    assert "cosine similarity: validation " in result.selection.message
    markdown = result.report_files["markdown"].read_text()
    assert "mean cosine similarity to the original model's outputs" in markdown


def test_explicit_agreement_setting_is_used_on_both_splits(tmp_path: Path) -> None:
    import onnxruntime as ort

    model = _encoder_onnx(tmp_path / "encoder.onnx")
    x = np.random.default_rng(1).normal(size=(120, 32)).astype(np.float32)
    reference = ort.InferenceSession(str(model)).run(None, {"x": x})[0]
    np.savez(tmp_path / "data.npz", x=x, reference=reference)
    result, _ = _run(
        tmp_path,
        model={"source": "file", "path": "encoder.onnx"},
        data={"source": "file", "path": "data.npz", "standardize": False, "fidelity": "agreement"},
        stages={"export": None, "quantize": None},
    )
    (baseline,) = result.candidates
    assert _metrics(baseline).accuracy_kind == "top1_agreement"
    assert _metrics(baseline).accuracy == 1.0 and _metrics(baseline).test_accuracy == 1.0
