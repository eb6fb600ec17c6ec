"""Helpers of the tracking tests: a real MLflow on SQLite, real tiny models."""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from hamnet.core.artifacts import ArtifactStore
from hamnet.core.candidate import Candidate, Metrics
from hamnet.core.config import TrackingSection
from hamnet.core.hardware import HardwareProfile, load_profile

FEATURES = 4
CLASSES = 3


def tracking(db: Path, **kw: Any) -> TrackingSection:
    values: dict[str, Any] = {
        "mlflow_uri": f"sqlite:///{db}",
        "experiment": "tests",
        "registered_model": "hamnet-test",
    }
    values.update(kw)
    return TrackingSection(**values)


def metrics(accuracy: float, latency: float, size: float) -> Metrics:
    return Metrics(
        accuracy=accuracy,
        latency_p50_ms=latency,
        latency_p90_ms=latency * 1.2,
        latency_batch_size=1,
        throughput_sps=1000.0 / latency,
        throughput_batch_size=32,
        size_mb=size,
        params=1234,
        flops=5678,
        peak_memory_mb=42.0,
        runtime="onnxruntime",
        threads=2,
        eval_samples=100,
    )


def profile() -> HardwareProfile:
    """The CI profile (ONNX Runtime, OpenVINO and torch on the CPU), one thread."""
    base = load_profile("x86-avx2", require_present=False)
    return base.model_copy(update={"threads": 1})


def example_rows(n: int = 2) -> np.ndarray:
    return np.linspace(-1.0, 1.0, n * FEATURES, dtype=np.float32).reshape(n, FEATURES)


def write_onnx(path: Path, seed: str) -> None:
    """A real ONNX classifier ``logits = x @ W + b`` whose weights follow from ``seed``."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(int(hashlib.sha256(seed.encode()).hexdigest()[:8], 16))
    weight = rng.standard_normal((FEATURES, CLASSES)).astype(np.float32)
    bias = rng.standard_normal(CLASSES).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "W"], ["xw"]),
            helper.make_node("Add", ["xw", "b"], ["logits"]),
        ],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", FEATURES])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", CLASSES])],
        [numpy_helper.from_array(weight, "W"), numpy_helper.from_array(bias, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


class Factory:
    """Makes candidates whose model files really exist (and run) in an ArtifactStore."""

    def __init__(self, root: Path) -> None:
        self.store = ArtifactStore(root / "store")
        self.root = root

    def make(
        self,
        name: str,
        m: Metrics,
        parent: Candidate | None = None,
        *,
        rejected: str | None = None,
        content: str | None = None,
        runtime: str = "onnxruntime",
    ) -> Candidate:
        staging = self.store.staging_dir()
        main = staging / "model.onnx"
        write_onnx(main, content if content is not None else name)
        fmt = "onnx"
        if runtime == "openvino":
            import openvino as ov

            xml = staging / "model.xml"
            ov.save_model(ov.convert_model(str(main)), str(xml), compress_to_fp16=False)
            main.unlink()
            main, fmt = xml, "openvino"
        ref = self.store.put(main, fmt)
        return Candidate.create(
            name=name,
            stage="train" if parent is None else "quantize",
            method="train" if parent is None else name.replace("-", "_"),
            artifact=ref,
            runtime=runtime,
            parent=parent,
            precision="fp32" if parent is None else "int8",
            params={} if parent is None else {"per_channel": True, "calibration_samples": 16},
            metrics=m,
            parity_max_abs_diff=None if parent is None else 1e-3,
            rejected=rejected,
            notes=["a note"],
        )


def load_pyfunc(model_uri: str, tracking_uri: str) -> Any:
    """``mlflow.pyfunc.load_model(model_uri)`` against ``tracking_uri`` (also the registry)."""
    import mlflow.pyfunc
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri

    with _use_tracking_uri(tracking_uri):
        return mlflow.pyfunc.load_model(model_uri)


# Fixtures: a test module imports the ones it uses (``quiet_mlflow`` is autouse there).


@pytest.fixture(autouse=True)
def quiet_mlflow(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_ENABLE_TELEMETRY", "false")
    monkeypatch.setenv("DO_NOT_TRACK", "1")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


@pytest.fixture(scope="session")
def empty_db(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """An MLflow SQLite database with its tables created (creating them takes ~6 s)."""
    from mlflow.tracking import MlflowClient

    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    uri = f"sqlite:///{path}"
    MlflowClient(tracking_uri=uri, registry_uri=uri).search_experiments()
    yield path


@pytest.fixture
def db(tmp_path: Path, empty_db: Path) -> Path:
    """A fresh copy of the empty database in this test's folder."""
    path = tmp_path / "mlflow.db"
    shutil.copy(empty_db, path)
    return path


@pytest.fixture
def factory(tmp_path: Path) -> Factory:
    return Factory(tmp_path)
