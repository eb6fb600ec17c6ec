"""Benchmarker: measure a model file with the pipeline's measurement code."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import export_tiny_onnx

from hamnet.api.benchmarker import Benchmarker, ModelMetrics
from hamnet.core.errors import ConfigError, DataError, HardwareProfileError, ModelLoadError


@pytest.fixture(scope="module")
def onnx_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_tiny_onnx(tmp_path_factory.mktemp("bench") / "tiny.onnx")


@pytest.fixture(scope="module")
def bench() -> Benchmarker:
    return Benchmarker(warmup=2, repeats=10)


def test_onnx_is_measured_in_onnxruntime_and_openvino(bench: Benchmarker, onnx_path: Path) -> None:
    results = bench.benchmark(onnx_path)
    assert sorted(m.runtime for m in results) == ["onnxruntime", "openvino"]
    for m in results:
        assert isinstance(m, ModelMetrics)
        assert 0 < m.latency_p50_ms <= m.latency_p90_ms
        assert m.throughput_sps > 0 and m.size_mb > 0 and m.peak_memory_mb >= 0
        assert m.batch_size == bench.profile.latency_batch_size
        assert m.precision == "fp32"
        assert m.accuracy is None and m.accuracy_kind is None
        assert json.loads(json.dumps(m.to_dict()))["runtime"] == m.runtime


def test_labels_give_accuracy(bench: Benchmarker, onnx_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 16)).astype(np.float32)
    y = rng.integers(0, 3, size=40)
    (m,) = Benchmarker(warmup=1, repeats=5, runtimes=["onnxruntime"]).benchmark(onnx_path, x, y)
    assert m.runtime == "onnxruntime"
    assert m.accuracy is not None and 0.0 <= m.accuracy <= 1.0
    assert m.accuracy_kind == "top1_accuracy"


def test_input_shape_and_compare(onnx_path: Path) -> None:
    bench = Benchmarker(warmup=1, repeats=5, runtimes=["onnxruntime"])
    rows = bench.compare([onnx_path, onnx_path], input_shape=[4, 16])
    assert [path for path, _ in rows] == [str(onnx_path)] * 2
    with pytest.raises(DataError, match="input_shape"):
        bench.benchmark(onnx_path, input_shape=[0])
    with pytest.raises(DataError, match="same length"):
        bench.benchmark(onnx_path, np.zeros((4, 16), np.float32), np.zeros(3, np.int64))


def test_missing_file_names_it(bench: Benchmarker, tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"absent\.onnx") as info:
        bench.benchmark(tmp_path / "absent.onnx")
    assert isinstance(info.value, FileNotFoundError)
    with pytest.raises(ModelLoadError, match="expected a model file"):
        bench.benchmark(tmp_path / "model.bin")


def test_unknown_or_unfit_runtime(onnx_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown runtime 'tensorrt'.*onnxruntime"):
        Benchmarker(runtimes=["tensorrt"])
    with pytest.raises(ConfigError, match="loads formats"):
        Benchmarker(warmup=1, repeats=5, runtimes=["torch"]).benchmark(onnx_path)


def test_bad_settings_and_absent_hardware() -> None:
    with pytest.raises(ConfigError, match="repeats"):
        Benchmarker(repeats=1)
    with pytest.raises(HardwareProfileError, match="arm64-edge"):
        Benchmarker("arm64-edge")


@pytest.fixture(scope="module")
def two_input_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch
    from torch import nn

    from hamnet.backends.export import export_module

    class Two(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(10, 4)
            self.head = nn.Linear(4, 3)

        def forward(self, ids: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
            return self.head((self.embed(ids) * weight.unsqueeze(-1)).mean(dim=1))

    torch.manual_seed(0)
    examples = {"ids": torch.randint(0, 10, (2, 6)), "weight": torch.rand(2, 6)}
    return export_module(Two().eval(), examples, tmp_path_factory.mktemp("two") / "two.onnx")


def test_named_inputs_without_labels(two_input_onnx: Path) -> None:
    rng = np.random.default_rng(0)
    x = {"ids": rng.integers(0, 10, size=(16, 6)), "weight": rng.random((16, 6))}
    bench = Benchmarker(warmup=1, repeats=5)
    results = bench.benchmark(two_input_onnx, x)
    assert sorted(m.runtime for m in results) == ["onnxruntime", "openvino"]
    assert all(m.accuracy is None and m.accuracy_kind is None for m in results)
    (labelled,) = Benchmarker(warmup=1, repeats=5, runtimes=["onnxruntime"]).benchmark(
        two_input_onnx, x, np.arange(16) % 3
    )
    assert labelled.accuracy is not None and labelled.accuracy_kind == "top1_accuracy"
    with pytest.raises(DataError, match="named"):
        bench.benchmark(two_input_onnx, x["ids"])
