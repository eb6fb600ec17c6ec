"""The contract every ``quantizer`` plugin keeps, checked for each one the registry lists."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, export_tiny_onnx

from hamnet.compress.quantize.base import (
    QuantizationMethod,
    get_quantizer,
    quantizer_class,
    quantizers_where,
)
from hamnet.core import registry
from hamnet.core.artifacts import ArtifactStore
from hamnet.core.config import QuantizeStageConfig, config_from_dict
from hamnet.core.errors import ConfigError
from hamnet.core.hardware import HardwareProfile, load_profile

NAMES = registry.names("quantizer")
FEATURES = 8
HEAVY = ("torch", "onnx", "onnxruntime", "openvino", "nncf", "optuna", "ray", "mlflow")


def attention_onnx(path: Path) -> Path:
    """``softmax(x @ W1) @ W2``: a graph with MatMul and Softmax, ``[batch, 8] -> [batch, 4]``."""
    onnx = pytest.importorskip("onnx")
    helper, tensor = onnx.helper, onnx.TensorProto
    rng = np.random.default_rng(0)
    w1 = rng.normal(size=(FEATURES, 64)).astype(np.float32)
    w2 = rng.normal(size=(64, 4)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w1"], ["h"]),
            helper.make_node("Softmax", ["h"], ["p"], axis=-1),
            helper.make_node("MatMul", ["p", "w2"], ["y"]),
        ],
        "attention",
        [helper.make_tensor_value_info("x", tensor.FLOAT, ["batch", FEATURES])],
        [helper.make_tensor_value_info("y", tensor.FLOAT, ["batch", 4])],
        [onnx.numpy_helper.from_array(w1, "w1"), onnx.numpy_helper.from_array(w2, "w2")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("plugins")
    return {
        "attention": attention_onnx(folder / "attention.onnx"),
        "mlp": export_tiny_onnx(folder / "mlp.onnx"),
    }


@pytest.fixture(scope="module")
def cpu() -> HardwareProfile:
    return load_profile("x86-avx2", require_present=False)


def test_there_are_plugins() -> None:
    assert "ort_dynamic_int8" in NAMES and len(NAMES) >= 6


@pytest.mark.parametrize("name", NAMES)
def test_declares_itself(name: str) -> None:
    cls = registry.load("quantizer", name)
    assert issubclass(cls, QuantizationMethod) and cls is quantizer_class(name)
    assert cls.kind == "quantizer"
    assert cls.name == name == cls.__module__.rsplit(".", 1)[-1].rstrip("_")
    assert cls.source_format == "onnx"
    assert cls.output_format in ("onnx", "openvino") and cls.backend == cls.output_format
    assert cls.runtime == {"onnx": "onnxruntime", "openvino": "openvino"}[cls.output_format]
    assert cls.precision in ("int8", "fp16", "mixed")
    for flag in ("needs_calibration", "reads_ort_contrib_ops", "needs_attention"):
        assert isinstance(getattr(cls, flag), bool), flag
    assert isinstance(cls.settings, tuple)
    assert set(cls.settings) <= set(QuantizeStageConfig.model_fields) - {"methods"}
    assert isinstance(cls.requires, tuple) and cls.requires
    assert all(isinstance(n, str) and n for n in cls.notes)
    assert cls.__doc__
    assert cls.parse_options({}) == cls.Options()
    with pytest.raises(ConfigError, match=rf"options of quantizer '{name}' are invalid"):
        cls.parse_options({"no_such_option": 1})


@pytest.mark.parametrize("name", NAMES)
def test_applicable(name: str, models: dict[str, Path]) -> None:
    method = get_quantizer(name)
    assert method.applicable(models["attention"]) is None
    reason = method.applicable(models["mlp"])
    if method.needs_attention:
        assert reason is not None and "has no attention" in reason and name in reason
    elif name.startswith("ort_weight_only"):  # the MLP's Linear layers export as Gemm
        assert reason is not None and "MatMul" in reason and name in reason
    else:
        assert reason is None


@pytest.mark.parametrize("name", NAMES)
def test_quantize_makes_a_model_its_runtime_loads(
    name: str, models: dict[str, Path], cpu: HardwareProfile, tmp_path: Path
) -> None:
    from hamnet.backends.session import load_session

    method = get_quantizer(name)
    for package in method.requires:
        pytest.importorskip(package)
    x = np.random.default_rng(1).normal(size=(64, FEATURES)).astype(np.float32)
    main = method.quantize(
        models["attention"],
        tmp_path / "out",
        calibration=x if method.needs_calibration else None,
        cfg=QuantizeStageConfig(),
        profile=cpu,
    )
    assert main.name == {"onnx": "model.onnx", "openvino": "model.xml"}[method.output_format]
    ref = ArtifactStore(tmp_path / "store").put(main, method.output_format)  # type: ignore[arg-type]
    assert ref.format == method.output_format
    logits = load_session(ref, method.runtime, cpu).run(x[:5])
    assert logits.shape == (5, 4) and np.isfinite(logits).all()


def test_unknown_name_fails_with_the_accepted_names_and_a_hint() -> None:
    with pytest.raises(ConfigError) as err:
        config_from_dict({"stages": {"quantize": {"methods": ["ort_dynamic_int8", "nncf_int9"]}}})
    message = str(err.value)
    assert "stages.quantize.methods.1" in message and "'nncf_int9'" in message
    assert all(repr(n) in message for n in NAMES)
    assert "did you mean 'nncf_int8'?" in message
    with pytest.raises(ConfigError, match=r"unknown quantization method 'nncf_int9'.*'nncf_int8'"):
        get_quantizer("nncf_int9")


class NoiseFreeFp16(QuantizationMethod):
    """An outside plugin, added with ``registry.register``: a copy of ``onnx_fp16``."""

    name = "noise_free_fp16"
    output_format = "onnx"
    backend = "onnx"
    runtime = "onnxruntime"
    precision = "fp16"
    needs_calibration = False
    requires = ("onnx", "onnxruntime")

    def quantize(
        self,
        source: Path,
        out_dir: Path,
        *,
        calibration: np.ndarray | None,
        cfg: QuantizeStageConfig,
        profile: HardwareProfile,
    ) -> Path:
        """Convert ``source`` as ``onnx_fp16`` does."""
        return get_quantizer("onnx_fp16").quantize(
            source, out_dir, calibration=calibration, cfg=cfg, profile=profile
        )


def test_registered_plugin_is_found_by_config_and_lookup() -> None:
    registry.register("quantizer", "noise_free_fp16", f"{__name__}:NoiseFreeFp16")
    registry.register("quantizer", "not_a_method", "json:JSONDecoder")
    try:
        cfg = QuantizeStageConfig(methods=["noise_free_fp16"])
        assert cfg.methods == ["noise_free_fp16"]
        assert isinstance(get_quantizer("noise_free_fp16"), NoiseFreeFp16)
        with pytest.raises(ConfigError, match=r"must be a QuantizationMethod subclass, but got"):
            get_quantizer("not_a_method")
    finally:
        registry.unregister("quantizer", "noise_free_fp16")
        registry.unregister("quantizer", "not_a_method")
    assert "noise_free_fp16" not in registry.names("quantizer")


def test_listing_loading_and_config_validation_import_no_heavy_library() -> None:
    script = """
import json, sys
from hamnet.core import registry
from hamnet.core.config import config_from_dict
names = registry.names("quantizer")
config_from_dict({"stages": {"quantize": {"methods": list(names)}}})
for name in names:
    registry.load("quantizer", name).parse_options({})
print(json.dumps(sorted(m for m in sys.argv[1:] if m in sys.modules)))
"""
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    done = subprocess.run(
        [sys.executable, "-c", script, *HEAVY], capture_output=True, text=True, check=True, env=env
    )
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []


def test_methods_are_found_by_capability() -> None:
    general = {"needs_attention": False, "tunes_accuracy": False}
    assert quantizers_where(backend="onnx", precision="int8", **general) == [
        "ort_dynamic_int8",
        "ort_static_int8",
    ]
    assert quantizers_where(backend="onnx", precision="fp16", **general) == ["onnx_fp16"]
    assert quantizers_where(backend="openvino", precision="int8", **general) == ["nncf_int8"]
    assert quantizers_where(backend="openvino", precision="fp16", **general) == ["openvino_fp16"]
    assert quantizers_where(needs_attention=True) == ["ort_fused_dynamic_int8"]
    assert quantizers_where(reads_ort_contrib_ops=True) == ["ort_dynamic_int8"]
    assert quantizers_where(tunes_accuracy=True) == [
        "int8_accuracy_aware",
        "nncf_int8_accuracy_aware",
    ]
    with pytest.raises(ConfigError, match=r"capabilities must be .* but got \['colour'\]"):
        quantizers_where(colour="red")
