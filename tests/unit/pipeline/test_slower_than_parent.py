"""The "slower than its parent" gate: real slowdowns are rejected, timing noise is not."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import matmul_chain_onnx, one_thread_profile_file, tiny_config

from hamnet.backends.session import load_session
from hamnet.core.candidate import Candidate
from hamnet.core.config import config_from_dict
from hamnet.evaluate.measure import paired_latency_ms
from hamnet.pipeline.run import make_context, measure_candidate
from hamnet.pipeline.stages.base import StageContext


@pytest.fixture()
def ctx(tmp_path: Path) -> StageContext:
    # One intra-op thread: two sessions timed in alternation then share no spinning
    # worker threads, which on a 2-core machine made identical models differ by > 25%.
    profile = one_thread_profile_file(tmp_path)
    cfg = config_from_dict(
        tiny_config(
            hardware_profile=str(profile),
            measure={
                "warmup": 5,
                "repeats": 50,
                "max_eval_samples": 64,
                "paired_rounds": 4,
                # Wide enough that two identical models never differ by this much when
                # timed side by side, even on a busy CI machine.
                "slower_margin": 0.25,
            },
        )
    )
    return make_context(cfg, tmp_path)


def _candidate(ctx: StageContext, path: Path, name: str, parent: Candidate | None) -> Candidate:
    ref = ctx.store.put(path, "onnx")
    return Candidate.create(
        name=name, stage="export", method="onnx", artifact=ref, runtime="onnxruntime",
        parent=parent,
    )  # fmt: skip


def test_paired_latency_ranks_a_wide_model_slower(tmp_path: Path, ctx: StageContext) -> None:
    small = _candidate(ctx, matmul_chain_onnx(tmp_path / "s.onnx", [16]), "small", None)
    wide = _candidate(ctx, matmul_chain_onnx(tmp_path / "w.onnx", [1024, 1024, 1024]), "wide", None)
    sessions = [load_session(c.artifact, c.runtime, ctx.profile) for c in (small, wide)]
    fast_ms, slow_ms = paired_latency_ms(
        sessions, ctx.dataset.x_test[:1], warmup=2, repeats=10, rounds=2
    )
    assert 0 < fast_ms < slow_ms
    with pytest.raises(ValueError, match="rounds must be positive"):
        paired_latency_ms(sessions, ctx.dataset.x_test[:1], warmup=0, repeats=5, rounds=0)


def test_a_deliberately_slower_child_is_rejected_after_side_by_side_timing(
    tmp_path: Path, ctx: StageContext
) -> None:
    parent = _candidate(ctx, matmul_chain_onnx(tmp_path / "p.onnx", [16]), "parent", None)
    parent = measure_candidate(parent, {}, ctx)
    child = _candidate(
        ctx, matmul_chain_onnx(tmp_path / "c.onnx", [1024, 1024, 1024]), "child", parent
    )
    child = measure_candidate(child, {parent.id: parent}, ctx)
    assert child.rejected is not None
    assert child.rejected.startswith("slower than its parent parent")
    assert "timed side by side in 4 interleaved rounds" in child.rejected


def test_a_child_that_only_looked_slower_is_kept(tmp_path: Path, ctx: StageContext) -> None:
    parent = _candidate(ctx, matmul_chain_onnx(tmp_path / "p.onnx", [256, 256]), "parent", None)
    parent = measure_candidate(parent, {}, ctx)
    assert parent.metrics is not None
    # A stale, far too optimistic parent figure (e.g. measured while the machine was idle):
    # the one-after-the-other comparison would reject the identical child.
    lucky = parent.model_copy(
        update={"metrics": parent.metrics.model_copy(update={"latency_p50_ms": 1e-6})}
    )
    twin = _candidate(ctx, matmul_chain_onnx(tmp_path / "t.onnx", [256, 256]), "twin", lucky)
    assert measure_candidate(twin, {lucky.id: lucky}, ctx).rejected is None


def test_a_slower_child_is_caught_even_when_the_parent_figure_is_inflated(
    tmp_path: Path, ctx: StageContext
) -> None:
    """A parent timed on a busy machine looks as slow as its slower child; timing them
    side by side (the child is not clearly faster) still rejects the child."""
    parent = _candidate(ctx, matmul_chain_onnx(tmp_path / "p.onnx", [16]), "parent", None)
    child = _candidate(
        ctx, matmul_chain_onnx(tmp_path / "c.onnx", [1024, 1024, 1024]), "child", parent
    )
    child_alone = measure_candidate(child, {}, ctx)
    assert child_alone.metrics is not None
    parent = measure_candidate(parent, {}, ctx)
    assert parent.metrics is not None
    busy = parent.model_copy(
        update={"metrics": parent.metrics.model_copy(
            update={"latency_p50_ms": child_alone.metrics.latency_p50_ms * 1.02}
        )}
    )  # fmt: skip
    judged = measure_candidate(child, {busy.id: busy}, ctx)
    assert judged.rejected is not None and "timed side by side" in judged.rejected
    # A child clearly faster than its parent's figure is not timed again.
    fast = _candidate(ctx, matmul_chain_onnx(tmp_path / "f.onnx", [8]), "fast", child_alone)
    assert measure_candidate(fast, {child_alone.id: child_alone}, ctx).rejected is None
