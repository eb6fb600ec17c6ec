"""``hamnet benchmark --profile-ops``: the op profile table per runtime, and in JSON."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from hamnet.core.config import QuantizeStageConfig
from hamnet.core.hardware import load_profile
from hamnet.ops.cli import app

runner = CliRunner()
FEATURES = 32


@pytest.fixture(scope="module")
def int8_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A static INT8 ``MatMul -> LayerNorm -> Softmax -> MatMul`` model (ONNX Runtime)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from hamnet.compress.quantize.base import get_quantizer

    folder = tmp_path_factory.mktemp("profile-ops")
    rng = np.random.default_rng(0)
    hidden = 64
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w1"], ["h"]),
            helper.make_node("LayerNormalization", ["h", "g", "b"], ["n"], axis=-1),
            helper.make_node("Softmax", ["n"], ["p"], axis=-1),
            helper.make_node("MatMul", ["p", "w2"], ["y"]),
        ],
        "ln_softmax",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", FEATURES])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        [
            numpy_helper.from_array(rng.normal(size=(FEATURES, hidden)).astype(np.float32), "w1"),
            numpy_helper.from_array(rng.normal(size=(hidden, 4)).astype(np.float32), "w2"),
            numpy_helper.from_array(np.ones(hidden, np.float32), "g"),
            numpy_helper.from_array(np.zeros(hidden, np.float32), "b"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    source = folder / "fp32.onnx"
    onnx.save(model, str(source))
    calibration = rng.normal(size=(16, FEATURES)).astype(np.float32)
    return get_quantizer("ort_static_int8").quantize(
        source, folder / "int8", calibration=calibration, cfg=QuantizeStageConfig(),
        profile=load_profile("x86-avx2"),
    )  # fmt: skip


def _invoke(model: Path, *extra: str) -> tuple[int, str]:
    args = ["benchmark", str(model), "--runtime", "onnxruntime", "--repeats", "5",
            "--warmup", "2", "--profile-ops", *extra]  # fmt: skip
    result = runner.invoke(app, args, terminal_width=200)
    return result.exit_code, result.output


def test_profile_ops_prints_the_op_table_shares_and_cpu(int8_onnx: Path) -> None:
    code, out = _invoke(int8_onnx)
    assert code == 0, out
    assert "model.onnx in onnxruntime: top ops by time" in out
    assert "QLinearMatMul" in out and "LayerNormalization" in out
    assert "quantize/dequantize" in out and "time shares: INT8 " in out
    assert "INT8 runs " in out and "CPU has" in out and ("VNNI" in out)


def test_profile_ops_in_json(int8_onnx: Path) -> None:
    code, out = _invoke(int8_onnx, "--json")
    assert code == 0, out
    payload = json.loads(out)
    (profile,) = payload["op_profiles"]
    assert profile["runtime"] == "onnxruntime" and profile["runs"] == 50
    assert {op["category"] for op in profile["ops"]} >= {"int8", "qdq", "fp32"}
    assert abs(sum(profile["shares"].values()) - 1.0) < 1e-6
    assert set(profile["cpu"]) == {"vnni", "amx", "flags"}


def test_without_the_flag_there_is_no_op_profile(int8_onnx: Path) -> None:
    result = runner.invoke(
        app, ["benchmark", str(int8_onnx), "--runtime", "onnxruntime", "--repeats", "5",
              "--warmup", "1", "--json"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "op_profiles" not in json.loads(result.output)
