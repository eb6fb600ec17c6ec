"""OptimizationResult.save_model: the suffix names the format, never a mislabelled file."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from hamnet.api.optimizer import Constraints, Goal, Optimizer
from hamnet.api.report import OptimizationResult
from hamnet.backends.export import convert_openvino
from hamnet.core.artifacts import ArtifactStore
from hamnet.core.candidate import Candidate
from hamnet.core.errors import HamnetError

FAST: dict[str, Any] = {
    "measure": {"warmup": 1, "repeats": 5, "max_eval_samples": 64},
    "stages": {"quantize": {"methods": ["ort_dynamic_int8"]}},
}


@pytest.fixture(scope="module")
def result(tmp_path_factory: pytest.TempPathFactory) -> OptimizationResult:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))
    work = tmp_path_factory.mktemp("save")
    opt = Optimizer.from_pytorch(model, [1, 64], work_dir=work)
    x = np.random.default_rng(0).standard_normal((64, 64)).astype(np.float32)
    y = np.arange(64, dtype=np.int64) % 10
    out = opt.optimize(
        Goal.QUANTIZE,
        Constraints(max_accuracy_drop=1.0),
        validation_data=(x, y),
        preferred_backends=["onnx"],
        _overrides=FAST,
    )
    return _with_recommended(out, "onnx", tmp_path_factory.mktemp("store"))


def _with_recommended(out: OptimizationResult, fmt: str, store_dir: Path) -> OptimizationResult:
    onnx = next(c for c in out.candidates if c.artifact.format == "onnx")
    if fmt == "onnx":
        return dataclasses.replace(out, recommended=onnx)
    xml = convert_openvino(onnx.artifact.path, store_dir / "staging" / "model.xml")
    ref = ArtifactStore(store_dir).put(xml, "openvino")
    ir = Candidate.create(
        name="ir", stage="export", method="openvino", artifact=ref, runtime="openvino",
        parent=onnx,
    )  # fmt: skip
    return dataclasses.replace(out, recommended=ir)


@pytest.fixture(scope="module")
def ir_result(result: OptimizationResult, tmp_path_factory: pytest.TempPathFactory) -> Any:
    return _with_recommended(result, "openvino", tmp_path_factory.mktemp("irstore"))


def _x() -> np.ndarray:
    return np.random.default_rng(1).standard_normal((2, 64)).astype(np.float32)


def test_matching_suffix_copies_the_onnx(result: OptimizationResult, tmp_path: Path) -> None:
    import onnxruntime as ort

    out = result.save_model(tmp_path / "sub" / "model.onnx")
    assert out == tmp_path / "sub" / "model.onnx"
    assert out.read_bytes() == Path(result.recommended.artifact.path).read_bytes()  # type: ignore[union-attr]
    session = ort.InferenceSession(str(out))
    assert session.run(None, {session.get_inputs()[0].name: _x()})[0].shape == (2, 10)


def test_no_suffix_takes_the_format_suffix(ir_result: OptimizationResult, tmp_path: Path) -> None:
    out = ir_result.save_model(tmp_path / "model")
    assert out == tmp_path / "model.xml"
    assert out.is_file() and (tmp_path / "model.bin").is_file()


def test_directory_keeps_file_names(ir_result: OptimizationResult, tmp_path: Path) -> None:
    out = ir_result.save_model(tmp_path)
    assert out.suffix == ".xml" and out.with_suffix(".bin").is_file()


def test_onnx_saved_as_xml_is_converted(result: OptimizationResult, tmp_path: Path) -> None:
    import openvino as ov

    out = result.save_model(tmp_path / "model.xml")
    assert out == tmp_path / "model.xml" and (tmp_path / "model.bin").is_file()
    compiled = ov.Core().compile_model(str(out), "CPU")
    assert compiled([_x()])[compiled.output(0)].shape == (2, 10)


def test_ir_saved_as_onnx_is_refused(ir_result: OptimizationResult, tmp_path: Path) -> None:
    with pytest.raises(HamnetError) as err:
        ir_result.save_model(tmp_path / "out" / "model.onnx")
    message = str(err.value)
    assert "'openvino' format" in message and "['.xml']" in message
    assert "model.onnx" in message and "cannot be converted to 'onnx'" in message
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", ["model.txt", "model.bin"])
def test_unknown_suffix_is_refused(result: OptimizationResult, tmp_path: Path, name: str) -> None:
    with pytest.raises(HamnetError, match=r"must end with one of \['\.onnx', '\.xml'\]"):
        result.save_model(tmp_path / name)
    assert list(tmp_path.iterdir()) == []


def test_tensorflow_extra_is_declared() -> None:
    import tomllib

    pyproject = Path(__file__).parents[3] / "pyproject.toml"
    extras = tomllib.loads(pyproject.read_text())["project"]["optional-dependencies"]
    names = [req.split(">")[0].split("=")[0].strip() for req in extras["tensorflow"]]
    assert names == ["tensorflow", "tf2onnx"]
