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
    # what MLflow shows, to the digits quoted (3 decimals from 0.1 ms, else 5)
    for quoted, value in zip(logged.groups(), (child, parent), strict=True):
        half_unit = 0.5 * 10.0 ** -len(quoted.split(".")[1])
        assert value.metrics is not None
        assert float(quoted) == pytest.approx(value.metrics.latency_p50_ms, abs=half_unit)
    assert "timed side by side in 2 interleaved rounds" in child.rejected
