"""Test-session set-up: every library writes under a temp folder, telemetry is off.

Runs before any test module imports prefect or mlflow, so their homes never touch
the user's ~/.prefect or ./mlruns.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
_SESSION_HOME = Path(tempfile.mkdtemp(prefix="hamnet-tests-"))

os.environ["PREFECT_HOME"] = str(_SESSION_HOME / "prefect-home")
os.environ["PREFECT_LOCAL_STORAGE_PATH"] = str(_SESSION_HOME / "prefect-storage")
os.environ.pop("PREFECT_API_URL", None)
os.environ.pop("MLFLOW_TRACKING_URI", None)
for key, value in {
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    "PREFECT_LOGGING_LEVEL": "WARNING",
    "MLFLOW_ENABLE_TELEMETRY": "false",
    "RAY_USAGE_STATS_ENABLED": "0",
}.items():
    os.environ[key] = value


UNIT_TIMEOUT_S = 180
"""Per-test limit of the unit tier (the integration tier keeps pyproject's 900 s)."""


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tiers by folder: tests/integration and tests/reliability start real Prefect, MLflow
    and Ray processes and are marked ``integration``; unit tests get a shorter timeout."""
    for item in items:
        parts = Path(str(item.fspath)).relative_to(REPO / "tests").parts
        if parts[0] in ("integration", "reliability"):
            if item.get_closest_marker("integration") is None:
                item.add_marker(pytest.mark.integration)
        elif item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(UNIT_TIMEOUT_S))


def tiny_bert(layers: int = 1, **overrides: Any) -> Any:
    """A random BERT (hidden 32, 4 heads, FFN 64, 50 tokens, 32 positions), seeded, in
    eval mode; ``overrides`` go to its ``BertConfig``, ``add_pooling_layer`` to the model.
    Skips the test when transformers is not installed."""
    import torch

    transformers = pytest.importorskip("transformers")
    pooling = bool(overrides.pop("add_pooling_layer", True))
    settings: dict[str, Any] = {
        "hidden_size": 32, "num_hidden_layers": layers, "num_attention_heads": 4,
        "intermediate_size": 64, "vocab_size": 50, "max_position_embeddings": 32,
    }  # fmt: skip
    torch.manual_seed(0)
    config = transformers.BertConfig(**{**settings, **overrides})
    return transformers.BertModel(config, add_pooling_layer=pooling).eval()


def tiny_config(**overrides: object) -> dict[str, object]:
    """A config small enough for a flow run in well under a minute on 2 cores."""
    from hamnet.core.config import deep_merge

    base: dict[str, object] = {
        "name": "tiny",
        "seed": 0,
        "hardware_profile": "x86-avx2",
        "model": {
            "source": "train",
            "hamnet": {"hidden_size": 16, "num_layers": 1, "num_heads": 2, "token_size": 8},
        },
        "constraints": {"max_accuracy_drop": 0.05, "max_latency_ms": None, "target_size_mb": None},
        "stages": {
            "train": {"epochs": 4, "patience": 2, "batch_size": 128},
            "export": {"formats": ["onnx", "openvino"]},
            "quantize": {
                "methods": ["ort_dynamic_int8", "ort_static_int8"],
                "calibration_samples": 64,
            },
        },
        "measure": {"warmup": 2, "repeats": 10, "max_eval_samples": 200},
        "tracking": {"experiment": "tests", "registered_model": "hamnet-tiny"},
        "execution": {"retries": 1, "retry_delay_seconds": 0},
    }
    return deep_merge(base, overrides)  # type: ignore[arg-type]


def tiny_hamnet(seed: int = 0, **overrides: Any) -> Any:
    """A randomly initialised HAMNet (16 features, 3 classes, hidden 8, 2 layers, no dropout)."""
    import torch

    from hamnet.models.hamnet import HAMNet, HAMNetConfig

    values: dict[str, Any] = {
        "input_size": 16,
        "num_classes": 3,
        "hidden_size": 8,
        "num_layers": 2,
        "num_heads": 2,
        "token_size": 4,
        "dropout_rate": 0.0,
    }
    values.update(overrides)
    torch.manual_seed(seed)
    return HAMNet(HAMNetConfig(**values))


def export_tiny_onnx(path: Path, *, hidden: int = 8, seed: int = 0) -> Path:
    """A tiny MLP ``[batch, 16] -> [batch, 3]`` exported to ONNX with a dynamic batch axis."""
    import warnings

    import torch
    from torch import nn

    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(16, hidden), nn.ReLU(), nn.Linear(hidden, 3)).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter
        torch.onnx.export(
            model, (torch.zeros(1, 16),), str(path), dynamo=False, input_names=["x"],
            dynamic_axes={"x": {0: "batch"}},
        )  # fmt: skip
    return path


def layernorm_softmax_onnx(path: Path, features: int = 64, hidden: int = 128) -> Path:
    """``MatMul -> LayerNormalization -> Softmax -> MatMul``: a tiny model where ONNX
    Runtime's static INT8 wraps the FP32 LayerNorm in QDQ pairs and costs more than it
    saves at batch 1 (64 features: the digits data of :func:`tiny_config`)."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w1 = (rng.normal(size=(features, hidden)) / np.sqrt(features)).astype(np.float32)
    w2 = (rng.normal(size=(hidden, 10)) / np.sqrt(hidden)).astype(np.float32)
    gamma, beta = np.ones(hidden, np.float32), np.zeros(hidden, np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w1"], ["h"]),
            helper.make_node("LayerNormalization", ["h", "gamma", "beta"], ["n"], axis=-1),
            helper.make_node("Softmax", ["n"], ["p"], axis=-1),
            helper.make_node("MatMul", ["p", "w2"], ["logits"]),
        ],
        "ln_softmax",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", features])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        [
            numpy_helper.from_array(w1, "w1"),
            numpy_helper.from_array(w2, "w2"),
            numpy_helper.from_array(gamma, "gamma"),
            numpy_helper.from_array(beta, "beta"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def matmul_chain_onnx(path: Path, hidden: list[int]) -> Path:
    """A ``[N, 64] -> [N, 10]`` chain of MatMuls; wide hidden layers make it slow."""
    import itertools

    import numpy as np
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


def one_thread_profile_file(folder: Path) -> Path:
    """x86-avx2 with one intra-op thread, written to ``folder`` (steadier timings on a
    shared 2-core machine)."""
    base = (REPO / "hardware_profiles" / "x86-avx2.yaml").read_text()
    path = folder / "one-thread.yaml"
    path.write_text(base.replace("threads: null", "threads: 1"))
    return path


def digits_subset(n_train: int = 256, n_eval: int = 128) -> Any:
    """The digits split cut to ``n_train`` training and ``n_eval`` val/test samples."""
    from hamnet.core.config import DataSection
    from hamnet.training.data import Dataset, load_dataset

    full = load_dataset(DataSection(seed=0))
    return Dataset(
        x_train=full.x_train[:n_train], y_train=full.y_train[:n_train],
        x_val=full.x_val[:n_eval], y_val=full.y_val[:n_eval],
        x_test=full.x_test[:n_eval], y_test=full.y_test[:n_eval],
        num_features=full.num_features, num_classes=full.num_classes,
        class_names=full.class_names, source="digits subset",
    )  # fmt: skip


def small_hamnet(dataset: Any, *, epochs: int = 2) -> Any:
    """A small HAMNet (hidden 32, 2 layers, 4 heads, 8-feature tokens) trained briefly."""
    import torch

    from hamnet.core.config import TrainStageConfig
    from hamnet.models import HAMNet, HAMNetConfig
    from hamnet.training.trainer import train_model

    config = HAMNetConfig(
        input_size=dataset.num_features,
        num_classes=dataset.num_classes,
        hidden_size=32,
        num_layers=2,
        num_heads=4,
        token_size=8,
    )
    torch.manual_seed(0)
    model = HAMNet(config)
    train_model(model, dataset, TrainStageConfig(epochs=epochs, warmup_epochs=0), progress=False)
    return model


def module_onnx_outputs(model: Any, inputs: Any, path: Path) -> Any:
    """Export ``model`` (TorchScript exporter) and run it once in ONNX Runtime (1 thread).

    ``inputs`` is one tensor (input ``x``) or a ``name -> tensor`` mapping. With gradients
    on, ``nn.TransformerEncoderLayer`` takes its traceable path (without, it runs the fused
    ``aten::_transformer_encoder_layer_fwd``, which ONNX lacks).
    """
    import numpy as np
    import onnxruntime as ort
    import torch

    if isinstance(inputs, dict):
        names, args = list(inputs), tuple(inputs.values())
    else:
        names, args = ["x"], (inputs,)
    torch.onnx.export(model, args, str(path), input_names=names, dynamo=False)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = {n: a.numpy() for n, a in zip(names, args, strict=True)}
    return np.asarray(session.run(None, feed)[0])


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A throw-away project folder with the repo's configs, profiles and flow code."""
    for name in ("configs", "hardware_profiles", "flows", "tasks"):
        shutil.copytree(REPO / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "prefect.yaml", tmp_path / "prefect.yaml")
    return tmp_path


def write_config(project: Path, data: dict[str, object], name: str = "run.yaml") -> Path:
    path = project / "configs" / name
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    """One ephemeral Prefect API for the whole test session (~16 s to start)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield


@pytest.fixture(scope="session")
def ray_local() -> Iterator[Any]:
    """One local Ray (2 CPUs, no dashboard) for the whole session (~7 s to start).

    Yields the :class:`hamnet.compress.search.executor.RayHandle` that reuses it. Ray's socket
    paths must stay under 107 characters, hence a short temp dir directly in /tmp.
    """
    from hamnet.core.env import apply_defaults

    apply_defaults()
    import ray

    from hamnet.compress.search.executor import RaySettings, connect_ray

    temp_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        _temp_dir=temp_dir,
    )
    try:
        yield connect_ray(RaySettings())
    finally:
        ray.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)
