"""Operator profiles: the parsers on real ONNX Runtime and OpenVINO runs, the categories,
and the one-line "why slower" explanation."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import layernorm_softmax_onnx, one_thread_profile_file

from hamnet.core.artifacts import ArtifactRef, ArtifactStore
from hamnet.core.config import QuantizeStageConfig
from hamnet.core.errors import ConfigError, DataError
from hamnet.core.hardware import HardwareProfile, load_profile
from hamnet.evaluate.op_profile import (
    OpProfile,
    OpTiming,
    classify_openvino_op,
    classify_ort_op,
    cpu_int8_support,
    parse_openvino_profiling,
    parse_ort_trace,
    profile_ops,
    why_slower,
)

FEATURES = 64


def one_thread_profile(tmp_path: Path) -> HardwareProfile:
    """x86-avx2 with one intra-op thread (steadier timings on a shared 2-core machine)."""
    return load_profile(str(one_thread_profile_file(tmp_path)))


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, ArtifactRef]:
    from hamnet.backends.runtimes.openvino import convert_openvino
    from hamnet.compress.quantize.base import get_quantizer

    folder = tmp_path_factory.mktemp("op-profile")
    store = ArtifactStore(folder / "store")
    profile = load_profile("x86-avx2")
    source = layernorm_softmax_onnx(folder / "fp32.onnx")
    calibration = np.random.default_rng(1).normal(size=(32, FEATURES)).astype(np.float32)
    out = {"fp32": store.put(source, "onnx")}
    out["ir"] = store.put(convert_openvino(source, folder / "ir" / "model.xml"), "openvino")
    for name in ("ort_static_int8", "nncf_int8"):
        method = get_quantizer(name)
        main = method.quantize(
            source, store.staging_dir(), calibration=calibration, cfg=QuantizeStageConfig(),
            profile=profile,
        )  # fmt: skip
        out[name] = store.put(main, method.output_format)  # type: ignore[arg-type]
    return out


@pytest.fixture(scope="module")
def x_one() -> np.ndarray:
    return np.random.default_rng(2).normal(size=(1, FEATURES)).astype(np.float32)


def test_ort_operators_are_classified() -> None:
    assert classify_ort_op("QLinearMatMul", ["uint8"]) == "int8"
    assert classify_ort_op("MatMulInteger", ["uint8", "int8"]) == "int8"
    assert classify_ort_op("MatMulNBits", ["float"]) == "int8"
    assert classify_ort_op("DequantizeLinear", ["uint8"]) == "qdq"
    assert classify_ort_op("DynamicQuantizeLinear", ["float"]) == "qdq"
    assert classify_ort_op("Transpose", ["float"]) == "layout"
    assert classify_ort_op("MaxPool", ["uint8"]) == "int8"  # on quantized activations
    assert classify_ort_op("LayerNormalization", ["float", "float"]) == "fp32"
    assert classify_ort_op("Shape", ["int64"]) == "other"


def test_openvino_operators_are_classified() -> None:
    assert classify_openvino_op("FullyConnected", "brgemm_avx512_I8") == "int8"
    assert classify_openvino_op("Convolution", "jit_avx2_u8") == "int8"
    assert classify_openvino_op("FakeQuantize", "jit_avx512_f32") == "qdq"
    assert classify_openvino_op("Reorder", "ref_any_f32") == "layout"
    assert classify_openvino_op("MVN", "jit_avx2_FP32") == "fp32"
    assert classify_openvino_op("Softmax", "undef") == "other"


def test_cpu_support_is_read_from_flags() -> None:
    none = cpu_int8_support(["avx2", "fma"])
    assert (none.vnni, none.amx) == (False, False)
    assert none.describe() == "CPU has neither VNNI nor AMX"
    vnni = cpu_int8_support(["avx512f", "avx512_vnni"])
    assert vnni.vnni and not vnni.amx
    assert vnni.describe() == "CPU has VNNI (avx512_vnni), no AMX"
    both = cpu_int8_support(["avx512_vnni", "amx_tile", "amx_int8"])
    assert both.describe() == "CPU has VNNI (avx512_vnni) and AMX"
    here = cpu_int8_support()  # this machine's flags, whatever they are
    assert isinstance(here.vnni, bool) and here.describe().startswith("CPU has")


def test_ort_trace_of_a_static_int8_model(
    models: dict[str, ArtifactRef], x_one: np.ndarray, tmp_path: Path
) -> None:
    profile = one_thread_profile(tmp_path)
    fp32 = profile_ops(models["fp32"], "onnxruntime", profile, x_one, warmup=3, runs=20)
    int8 = profile_ops(models["ort_static_int8"], "onnxruntime", profile, x_one, warmup=3, runs=20)
    assert fp32.runs == 20 and fp32.runtime == "onnxruntime"
    assert {op.op_type for op in fp32.ops} >= {"MatMul", "LayerNormalization", "Softmax"}
    assert fp32.ops_in("int8") == [] and fp32.share("fp32") > 0.5
    assert all(op.kernel == "CPUExecutionProvider" and op.time_us >= 0 for op in int8.ops)
    assert "QLinearMatMul" in int8.op_types("int8")
    assert {"QuantizeLinear", "DequantizeLinear"} & set(int8.op_types("qdq"))
    assert "LayerNormalization" in int8.op_types("fp32")  # ORT has no INT8 LayerNorm
    assert len(int8.ops) > len(fp32.ops)  # the QDQ boundaries are extra operators
    assert sum(int8.shares().values()) == pytest.approx(1.0)
    assert [op.time_us for op in int8.ops] == sorted((op.time_us for op in int8.ops), reverse=True)
    text = why_slower(int8, fp32)
    assert text.startswith("why slower (onnxruntime op profile): INT8 runs ")
    assert f"of {len(int8.ops)} ops" in text and "LayerNormalization" in text
    assert "FP32 (" in text and "CPU has" in text and "vs parent" in text
    data = int8.to_dict()
    assert data["total_us"] == pytest.approx(int8.total_us) and set(data["shares"]) >= {"qdq"}


def test_openvino_profile_of_an_nncf_int8_model(
    models: dict[str, ArtifactRef], x_one: np.ndarray, tmp_path: Path
) -> None:
    profile = one_thread_profile(tmp_path)
    fp32 = profile_ops(models["ir"], "openvino", profile, x_one, warmup=3, runs=10)
    int8 = profile_ops(models["nncf_int8"], "openvino", profile, x_one, warmup=3, runs=10)
    assert fp32.ops and fp32.ops_in("int8") == []
    assert {op.op_type for op in fp32.ops} & {"FullyConnected", "MatMul"}
    int8_ops = int8.ops_in("int8")
    assert int8_ops and all(op.kernel.lower().endswith(("_i8", "_u8")) for op in int8_ops)
    assert not any(op.op_type in ("Parameter", "Result") for op in int8.ops)


def test_parsers_refuse_empty_profiles(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="must hold node events"):
        parse_ort_trace([{"cat": "Session", "name": "model_run", "dur": 5}])
    bad = tmp_path / "trace.json"
    bad.write_text("{not json")
    with pytest.raises(DataError, match="must be a readable JSON trace"):
        parse_ort_trace(bad)
    skipped = SimpleNamespace(
        node_name="x", node_type="Parameter", exec_type="unknown_f32", status="Status.NOT_RUN",
        real_time=None,
    )  # fmt: skip
    with pytest.raises(DataError, match="must hold executed nodes"):
        parse_openvino_profiling([skipped], calls=1)
    with pytest.raises(DataError, match="before_calls < calls"):
        parse_openvino_profiling([skipped], calls=3, before_calls=3)


def test_openvino_running_means_give_the_time_after_the_warmup() -> None:
    from datetime import timedelta

    def info(us: float) -> SimpleNamespace:
        return SimpleNamespace(
            node_name="fc", node_type="FullyConnected", exec_type="brgemm_avx512_I8",
            status="Status.EXECUTED", real_time=timedelta(microseconds=us),
        )  # fmt: skip

    # A first call of 1000 us then 4 us per call: a mean of 202 us after 5 calls,
    # 26 us after 45 calls; the 40 calls after the warm-up took 4 us each.
    (op,) = parse_openvino_profiling([info(26)], calls=45, before=[info(202)], before_calls=5)
    assert (op.category, op.time_us) == ("int8", pytest.approx(4.0))


def test_trace_events_average_after_the_warmup() -> None:
    def event(name: str, op: str, dur: float, kind: str = "float") -> dict[str, object]:
        args = {"op_name": op, "provider": "CPUExecutionProvider",
                "input_type_shape": [{kind: [1, 4]}]}  # fmt: skip
        return {"cat": "Node", "name": f"{name}_kernel_time", "dur": dur, "args": args}

    events = [event("mm", "QLinearMatMul", d, "uint8") for d in (100, 4, 6)]
    events += [event("dq", "DequantizeLinear", d, "uint8") for d in (50, 10, 10)]
    ops = parse_ort_trace(events, skip=1)
    assert [(op.name, op.category, op.time_us) for op in ops] == [
        ("dq", "qdq", 10.0), ("mm", "int8", 5.0),
    ]  # fmt: skip
    cpu = cpu_int8_support(["avx2"])
    summary = OpProfile("onnxruntime", "m.onnx", 2, tuple(ops), cpu).summary()
    assert summary == (
        "INT8 runs 1 of 2 ops (33% of time); 67% of time is DequantizeLinear; "
        "CPU has neither VNNI nor AMX"
    )


def test_profile_ops_refuses_runtimes_without_a_profiler(models: dict[str, ArtifactRef]) -> None:
    profile = load_profile("x86-avx2")
    with pytest.raises(ConfigError, match=r"profiles exist for runtimes .* but got 'torch'"):
        profile_ops(models["fp32"], "torch", profile, np.zeros((1, FEATURES), np.float32))
    with pytest.raises(ConfigError, match="runs must be positive"):
        profile_ops(models["fp32"], "onnxruntime", profile, np.zeros((1, FEATURES)), runs=0)
    assert OpTiming("a", "Relu", "fp32", "cpu", 1.0).category == "fp32"
