"""A rejection reason quotes the logged latency figures, named, beside the side-by-side ones."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, tiny_config

from hamnet.core.candidate import Candidate
from hamnet.core.config import config_from_dict
from hamnet.pipeline.run import make_context, measure_candidate
from hamnet.pipeline.stages.base import StageContext


def _mlp_onnx(path: Path, hidden: list[int]) -> Path:
    """A [N, 64] -> [N, 10] chain of MatMuls; wide hidden layers make it slow."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    sizes = [64, *hidden, 10]
    nodes, inits, name = [], [], "x"
    for i, (n_in, n_out) in enumerate(itertools.pairwise(sizes)):
        weight = (rng.standard_normal((n_in, n_out)) / np.sqrt(n_in)).astype(np.float32)
        inits.append(numpy_helper.from_array(weight, f"w{i}"))
        out = "logits" if i == len(sizes) - 2 else f"h{i}"
        nodes.append(helper.make_node("MatMul", [name, f"w{i}"], [out]))
        name = out
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 64])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def _context(tmp_path: Path) -> StageContext:
    base = (REPO / "hardware_profiles" / "x86-avx2.yaml").read_text()
    profile = tmp_path / "one-thread.yaml"
    profile.write_text(base.replace("threads: null", "threads: 1"))
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
    parent = _candidate(ctx, _mlp_onnx(tmp_path / "p.onnx", [16]), "parent", None)
    parent = measure_candidate(parent, {}, ctx)
    child = _candidate(ctx, _mlp_onnx(tmp_path / "c.onnx", [1024, 1024, 1024]), "child", parent)
    child = measure_candidate(child, {parent.id: parent}, ctx)
    assert child.rejected is not None and child.metrics and parent.metrics
    logged = re.search(r"logged latency_p50_ms ([\d.]+) ms vs parent ([\d.]+) ms", child.rejected)
    assert logged is not None, child.rejected
    # what MLflow shows, to the digits quoted
    assert float(logged[1]) == pytest.approx(child.metrics.latency_p50_ms, abs=1e-4)
    assert float(logged[2]) == pytest.approx(parent.metrics.latency_p50_ms, abs=1e-4)
    assert "timed side by side in 2 interleaved rounds" in child.rejected
