"""Weight-only quantization (ONNX Runtime MatMulNBits, NNCF weight compression): smaller
files that load in their runtime and stay close to FP32; honest applicability."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from conftest import export_tiny_onnx

from hamnet.backends.session import load_session, weight_precision
from hamnet.compress.quantize.base import get_quantizer, quantizers_where
from hamnet.core.artifacts import ArtifactRef, ArtifactStore
from hamnet.core.config import QuantizeStageConfig, config_from_dict
from hamnet.core.hardware import HardwareProfile, load_profile

FEATURES, HIDDEN, OUT = 256, 512, 16
METHODS = ["ort_weight_only_int4", "ort_weight_only_int8", "nncf_weight_compression"]


def matmul_mlp_onnx(path: Path) -> Path:
    """``[batch, 256] -> MatMul 256x512 -> Relu -> MatMul 512x16``: weights dominate."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w1 = (rng.normal(size=(FEATURES, HIDDEN)) / np.sqrt(FEATURES)).astype(np.float32)
    w2 = (rng.normal(size=(HIDDEN, OUT)) / np.sqrt(HIDDEN)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w1"], ["h"]),
            helper.make_node("Relu", ["h"], ["r"]),
            helper.make_node("MatMul", ["r", "w2"], ["y"]),
        ],
        "matmul_mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", FEATURES])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", OUT])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def cpu() -> HardwareProfile:
    return load_profile("x86-avx2", require_present=False)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> ArtifactStore:
    return ArtifactStore(tmp_path_factory.mktemp("weight-only") / "store")


@pytest.fixture(scope="module")
def source(store: ArtifactStore) -> ArtifactRef:
    return store.put(matmul_mlp_onnx(store.staging_dir() / "model.onnx"), "onnx")


@pytest.fixture(scope="module")
def x() -> np.ndarray:
    return np.random.default_rng(1).normal(size=(32, FEATURES)).astype(np.float32)


def _skip_without(method_name: str) -> None:
    for package in get_quantizer(method_name).requires:
        if importlib.util.find_spec(package) is None:
            pytest.skip(f"{method_name} needs {package}, which is not installed")


# (method, nncf_weight_mode, largest size ratio to FP32, largest error relative to |FP32|)
CASES = [
    ("ort_weight_only_int4", "int8_asym", 0.20, 0.25),
    ("ort_weight_only_int8", "int8_asym", 0.32, 0.02),
    ("nncf_weight_compression", "int8_asym", 0.32, 0.02),
    ("nncf_weight_compression", "int4_sym", 0.20, 0.25),
]


@pytest.mark.parametrize(("name", "mode", "max_ratio", "max_error"), CASES)
def test_weight_only_model_is_smaller_loads_and_matches_fp32(
    name: str, mode: str, max_ratio: float, max_error: float,
    source: ArtifactRef, store: ArtifactStore, x: np.ndarray, cpu: HardwareProfile,
) -> None:  # fmt: skip
    _skip_without(name)
    method = get_quantizer(name)
    assert method.supported(cpu) is None
    assert method.applicable(Path(source.path)) is None
    cfg = QuantizeStageConfig(nncf_weight_mode=mode)  # type: ignore[arg-type]
    main = method.quantize(Path(source.path), store.staging_dir(), calibration=None, cfg=cfg,
                           profile=cpu)  # fmt: skip
    ref = store.put(main, method.output_format)  # type: ignore[arg-type]
    fp32_runtime = method.runtime
    fp32 = source
    if method.output_format == "openvino":
        from hamnet.backends.runtimes.openvino import convert_openvino

        fp32 = store.put(convert_openvino(source.path, store.staging_dir() / "model.xml"),
                         "openvino")  # fmt: skip
        assert weight_precision(ref.path, "openvino") == "mixed"  # integer weights, no FQ
    ratio = ref.size_bytes / fp32.size_bytes
    assert ratio < max_ratio, f"{name} ({mode}): {ref.size_bytes} vs {fp32.size_bytes} bytes"
    reference = load_session(source, "onnxruntime", cpu).run(x)
    out = load_session(ref, fp32_runtime, cpu).run(x)
    assert out.shape == reference.shape and np.isfinite(out).all()
    error = float(np.abs(out - reference).max() / np.abs(reference).max())
    assert error < max_error, f"{name} ({mode}): error {error:.4f} of the output range"
    agreement = float(np.mean(out.argmax(1) == reference.argmax(1)))
    assert agreement >= (0.9 if max_error < 0.1 else 0.6)


def test_ort_weight_only_makes_matmulnbits_with_the_configured_block(
    source: ArtifactRef, store: ArtifactStore, cpu: HardwareProfile
) -> None:
    import onnx

    _skip_without("ort_weight_only_int4")
    sizes = {}
    for block in (32, 128):
        main = get_quantizer("ort_weight_only_int4").quantize(
            Path(source.path), store.staging_dir(), calibration=None,
            cfg=QuantizeStageConfig(weight_only_block_size=block), profile=cpu,
        )  # fmt: skip
        nodes = [n for n in onnx.load(str(main)).graph.node if n.op_type == "MatMulNBits"]
        assert len(nodes) == 2
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in nodes[0].attribute}
        assert attrs["bits"] == 4 and attrs["block_size"] == block
        sizes[block] = main.stat().st_size
    assert sizes[128] < sizes[32]  # fewer scales


def test_applicability_is_honest(tmp_path: Path, source: ArtifactRef, cpu: HardwareProfile) -> None:
    gemm_mlp = export_tiny_onnx(tmp_path / "gemm.onnx")  # torch Linear -> Gemm nodes
    reason = get_quantizer("ort_weight_only_int4").applicable(gemm_mlp)
    assert reason is not None
    assert "ort_weight_only_int4 quantizes constant weights of MatMul nodes" in reason
    assert "but in gemm.onnx they hold 0%" in reason
    assert get_quantizer("nncf_weight_compression").applicable(gemm_mlp) is None  # Gemm counts
    gpu = load_profile("nvidia-gpu", require_present=False)
    reason = get_quantizer("nncf_weight_compression").supported(gpu)
    assert reason is not None and "needs runtime 'openvino'" in reason


def test_weight_only_methods_are_selectable_but_not_int8_defaults() -> None:
    cfg = config_from_dict({"stages": {"quantize": {"methods": METHODS}}})
    assert cfg.stages.quantize is not None and cfg.stages.quantize.methods == METHODS
    assert quantizers_where(precision="mixed") == sorted(METHODS)
    # OpenVINO FP16 is weight-only too (FP16 weights, FP32 compute), but an FP16 default.
    assert quantizers_where(weight_only=True) == sorted([*METHODS, "openvino_fp16"])
    int8 = quantizers_where(precision="int8")
    assert not set(METHODS) & set(int8)  # AUTO's INT8 defaults do not change by themselves
