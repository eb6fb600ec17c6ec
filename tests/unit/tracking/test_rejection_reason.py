"""A rejection reason quotes the logged latency figures, named, beside the side-by-side ones."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import matmul_chain_onnx, one_thread_profile_file, tiny_config

from hamnet.core.candidate import Candidate
from hamnet.core.config import config_from_dict
from hamnet.pipeline.run import make_context, measure_candidate
from hamnet.pipeline.stages.base import StageContext


def _context(tmp_path: Path) -> StageContext:
    profile = one_thread_profile_file(tmp_path)
    measure = {"warmup": 3, "repeats": 20, "max_eval_samples": 64, "paired_rounds": 2}
    return make_context(
        config_from_dict(tiny_config(hardware_profile=str(profile), measure=measure)), tmp_path
    )


def _candidate(ctx: StageContext, path: Path, name: str, parent: Candidate | None) -> Candidate:
    return Candidate.create(
        name=name,
        stage="export",
        method="onnx",
        artifact=ctx.store.put(path, "onnx"),
        runtime="onnxruntime",
        parent=parent,
    )


def test_rejection_quotes_the_logged_figures_and_the_side_by_side_ones(tmp_path: Path) -> None:
    ctx = _context(tmp_path)
    parent = _candidate(ctx, matmul_chain_onnx(tmp_path / "p.onnx", [16]), "parent", None)
    parent = measure_candidate(parent, {}, ctx)
    child = _candidate(
        ctx, matmul_chain_onnx(tmp_path / "c.onnx", [1024, 1024, 1024]), "child", parent
    )
    child = measure_candidate(child, {parent.id: parent}, ctx)
    assert child.rejected is not None and child.metrics and parent.metrics
    logged = re.search(r"logged latency_p50_ms ([\d.]+) ms vs parent ([\d.]+) ms", child.rejected)
    assert logged is not None, child.rejected
    # what MLflow shows, to the digits quoted
    assert float(logged[1]) == pytest.approx(child.metrics.latency_p50_ms, abs=1e-4)
    assert float(logged[2]) == pytest.approx(parent.metrics.latency_p50_ms, abs=1e-4)
    assert "timed side by side in 2 interleaved rounds" in child.rejected
