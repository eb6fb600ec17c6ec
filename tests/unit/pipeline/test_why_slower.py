"""A quantized child slower than its parent: the rejection quotes the logged and the
side-by-side figures, each named, and the notes say why from operator profiles."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import layernorm_softmax_onnx, one_thread_profile_file, tiny_config

from hamnet.core.candidate import Candidate
from hamnet.core.config import QuantizeStageConfig, config_from_dict
from hamnet.pipeline.measuring import slower_reason
from hamnet.pipeline.run import make_context, measure_candidate
from hamnet.pipeline.stages.base import StageContext


@pytest.fixture()
def ctx(tmp_path: Path) -> StageContext:
    profile = one_thread_profile_file(tmp_path)
    cfg = config_from_dict(
        tiny_config(
            hardware_profile=str(profile),
            measure={
                "warmup": 5,
                "repeats": 60,
                "max_eval_samples": 64,
                "paired_rounds": 3,
                "slower_margin": 0.1,
            },
        )
    )
    return make_context(cfg, tmp_path)


def test_reason_names_each_figure() -> None:
    paired = slower_reason(
        "export-onnx", logged=(0.2, 0.17), side_by_side=(0.21, 0.18), rounds=5, margin=0.05
    )
    assert paired == (
        "slower than its parent export-onnx: side-by-side p50 0.210 ms vs parent 0.180 ms "
        "(timed side by side in 5 interleaved rounds); logged latency_p50_ms 0.200 ms vs "
        "parent 0.170 ms; more than 5% slower"
    )
    alone = slower_reason("p", logged=(0.3, 0.01), side_by_side=None, rounds=0, margin=0.1)
    assert alone == (
        "slower than its parent p: logged latency_p50_ms 0.300 ms vs parent 0.01000 ms "
        "(measured one after the other); more than 10% slower"
    )


def test_slower_int8_child_is_rejected_with_both_figures_and_a_why_note(
    tmp_path: Path, ctx: StageContext
) -> None:
    from hamnet.compress.quantize.base import get_quantizer

    source = layernorm_softmax_onnx(tmp_path / "fp32.onnx")
    parent = Candidate.create(
        name="export-onnx", stage="export", method="onnx", runtime="onnxruntime",
        artifact=ctx.store.put(source, "onnx"),
    )  # fmt: skip
    parent = measure_candidate(parent, {}, ctx)
    method = get_quantizer("ort_static_int8")
    calibration = np.asarray(ctx.dataset.x_train[:32], dtype=np.float32)
    main = method.quantize(
        source, ctx.store.staging_dir(), calibration=calibration, cfg=QuantizeStageConfig(),
        profile=ctx.profile,
    )  # fmt: skip
    child = Candidate.create(
        name="export-onnx-ort-static-int8", stage="quantize", method="ort_static_int8",
        runtime="onnxruntime", artifact=ctx.store.put(main, "onnx"), parent=parent,
        precision="int8", notes=list(method.notes),
    )  # fmt: skip
    child = measure_candidate(child, {parent.id: parent}, ctx)
    assert child.metrics is not None and parent.metrics is not None
    reason = child.rejected
    assert reason is not None, "static INT8 of this tiny LayerNorm model should be slower"
    assert reason.startswith("slower than its parent export-onnx: side-by-side p50 ")
    assert (
        "timed side by side in 3 interleaved rounds" in reason and "more than 10% slower" in reason
    )

    def ms(value: float) -> str:
        return f"{value:.3f}" if value >= 0.1 else f"{value:.5f}"

    logged = (
        f"logged latency_p50_ms {ms(child.metrics.latency_p50_ms)} ms vs parent "
        f"{ms(parent.metrics.latency_p50_ms)} ms"
    )
    assert logged in reason  # the figures the run logs as metrics
    assert child.notes[: len(method.notes)] == method.notes
    why = [n for n in child.notes if n.startswith("why slower")]
    assert len(why) == 1, child.notes
    assert "INT8 runs " in why[0] and "LayerNormalization" in why[0]
    assert "QuantizeLinear" in why[0] or "DequantizeLinear" in why[0]
    assert "CPU has" in why[0] and "vs parent" in why[0]


def test_a_slower_fp32_child_gets_no_why_note(tmp_path: Path, ctx: StageContext) -> None:
    small = layernorm_softmax_onnx(tmp_path / "s.onnx", hidden=16)
    parent = Candidate.create(
        name="small", stage="export", method="onnx", runtime="onnxruntime",
        artifact=ctx.store.put(small, "onnx"),
    )  # fmt: skip
    parent = measure_candidate(parent, {}, ctx)
    wide = layernorm_softmax_onnx(tmp_path / "w.onnx", hidden=8192)
    child = Candidate.create(
        name="wide", stage="export", method="onnx", runtime="onnxruntime",
        artifact=ctx.store.put(wide, "onnx"), parent=parent,
    )  # fmt: skip
    child = measure_candidate(child, {parent.id: parent}, ctx)
    assert child.rejected is not None and "logged latency_p50_ms" in child.rejected
    assert not any(n.startswith("why slower") for n in child.notes)


@pytest.mark.parametrize("target_size_mb", [None, 10.0])
def test_a_slower_weight_only_child_is_kept_as_the_smaller_point(
    tmp_path: Path, target_size_mb: float | None
) -> None:
    from hamnet.backends.runtimes.openvino import convert_openvino
    from hamnet.compress.quantize.base import get_quantizer

    cfg = config_from_dict(
        tiny_config(
            measure={"warmup": 2, "repeats": 10, "max_eval_samples": 64, "paired_rounds": 0},
            constraints={"target_size_mb": target_size_mb},
        )
    )
    ctx = make_context(cfg, tmp_path)
    source = layernorm_softmax_onnx(tmp_path / "fp32.onnx", hidden=512)
    ir = convert_openvino(source, tmp_path / "ir" / "model.xml")
    parent = Candidate.create(
        name="openvino-fp32", stage="export", method="openvino", runtime="openvino",
        artifact=ctx.store.put(ir, "openvino"),
    )  # fmt: skip
    parent = measure_candidate(parent, {}, ctx)
    assert parent.metrics is not None
    # Decided on the logged figures alone (paired_rounds 0): a parent figure no child beats.
    parent = parent.model_copy(
        update={"metrics": parent.metrics.model_copy(update={"latency_p50_ms": 1e-6})}
    )
    method = get_quantizer("nncf_weight_compression")
    main = method.quantize(
        source, ctx.store.staging_dir(), calibration=None, cfg=QuantizeStageConfig(),
        profile=ctx.profile,
    )  # fmt: skip
    child = Candidate.create(
        name="openvino-fp32+nncf-weight-compression", stage="quantize",
        method="nncf_weight_compression", runtime="openvino",
        artifact=ctx.store.put(main, "openvino"), parent=parent, precision="mixed",
    )  # fmt: skip
    child = measure_candidate(child, {parent.id: parent}, ctx)
    assert child.metrics is not None and child.metrics.size_mb < parent.metrics.size_mb
    kept = [n for n in child.notes if n.startswith("kept although slower than its parent")]
    assert child.rejected is None
    assert len(kept) == 1 and "trades latency for size" in kept[0]
    assert "logged latency_p50_ms" in kept[0] and "(measured one after the other)" in kept[0]
    if target_size_mb is None:
        assert "stays on the front as the smaller model" in kept[0]
    else:
        assert "target_size_mb 10.0" in kept[0]
    assert any(n.startswith("why slower (openvino op profile)") for n in child.notes)
