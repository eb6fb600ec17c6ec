"""Measurement: the timing, accuracy and memory helpers, and measure_artifact end to end."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from hamnet.backends.export import convert_openvino, export_onnx
from hamnet.backends.session import InferenceSession, TorchSession
from hamnet.core.artifacts import ArtifactRef, ArtifactStore
from hamnet.core.candidate import Metrics
from hamnet.core.config import MeasureSection
from hamnet.core.errors import ConfigError, DataError, HardwareProfileError
from hamnet.core.hardware import HardwareProfile, load_profile
from hamnet.evaluate.measure import (
    accuracy,
    agreement,
    eval_rows,
    latency_ms,
    measure_artifact,
    measure_session,
    peak_memory_mb,
    score_artifact,
    throughput_sps,
)

INPUT_SIZE, CLASSES = 8, 3
FAST = MeasureSection(warmup=2, repeats=10)


class Sleeper(InferenceSession):
    """Sleeps ``seconds`` per call and returns one-hot logits of ``x[:, 0] > 0``."""

    runtime = "sleeper"

    def __init__(self, seconds: float = 0.0) -> None:
        self.seconds = seconds
        self.calls = 0

    def run(self, x: np.ndarray) -> np.ndarray:
        self.calls += 1
        if self.seconds:
            time.sleep(self.seconds)
        return np.eye(2, dtype=np.float32)[(x[:, 0] > 0).astype(int)]


def test_latency_runs_warmup_then_repeats() -> None:
    session = Sleeper(0.002)
    p50, p90 = latency_ms(session, np.ones((1, 4), np.float32), warmup=3, repeats=7)
    assert session.calls == 10
    assert 2.0 <= p50 <= p90 < 1000
    with pytest.raises(DataError, match="repeats must be positive, but got 0"):
        latency_ms(session, np.ones((1, 4), np.float32), warmup=0, repeats=0)


def test_throughput_counts_samples_per_second() -> None:
    session = Sleeper(0.005)
    sps = throughput_sps(session, np.ones((10, 4), np.float32), warmup=1, max_iters=4)
    assert session.calls == 5  # one warm-up, then stops at max_iters before min_seconds
    assert 0 < sps <= 10 / 0.005
    quick = Sleeper()
    throughput_sps(quick, np.ones((10, 4), np.float32), warmup=0, min_seconds=0.05, max_iters=10**9)
    assert quick.calls > 1  # ran until min_seconds, not until max_iters


def test_accuracy_and_agreement() -> None:
    x = np.array([[1.0], [-1.0], [2.0], [-3.0]], dtype=np.float32)
    y = np.array([1, 0, 0, 0])
    assert accuracy(Sleeper(), x, y, batch_size=3) == 0.75
    reference = np.array([[0, 1], [1, 0], [0, 1], [0, 1]], dtype=np.float32)
    assert agreement(Sleeper(), reference, x, batch_size=1) == 0.75
    with pytest.raises(DataError, match="same length, but got 4 and 3"):
        accuracy(Sleeper(), x, y[:3], batch_size=2)
    with pytest.raises(DataError, match="same length, but got 3 and 4"):
        agreement(Sleeper(), reference[:3], x, batch_size=2)
    with pytest.raises(DataError, match="batch_size must be positive"):
        accuracy(Sleeper(), x, y, batch_size=0)


def test_peak_memory_sees_a_transient_allocation() -> None:
    def allocate() -> str:
        block = np.ones(80_000_000 // 8)  # 80 MB, written so the pages are resident
        time.sleep(0.05)
        del block
        return "done"

    result, mb = peak_memory_mb(allocate)
    assert result == "done"
    assert 60 < mb < 400
    _, idle = peak_memory_mb(lambda: None)
    assert 0 <= idle < 20


@pytest.fixture(scope="module")
def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(INPUT_SIZE, 16), nn.ReLU(), nn.Linear(16, CLASSES)).eval()


@pytest.fixture(scope="module")
def data(model: nn.Module) -> tuple[np.ndarray, np.ndarray]:
    x = np.random.default_rng(0).normal(size=(90, INPUT_SIZE)).astype(np.float32)
    with torch.no_grad():
        y = model(torch.from_numpy(x)).argmax(1).numpy()
    y[:9] = (y[:9] + 1) % CLASSES  # 10% wrong labels: accuracy 0.9 exactly
    return x, y


@pytest.fixture(scope="module")
def refs(tmp_path_factory: pytest.TempPathFactory, model: nn.Module) -> dict[str, ArtifactRef]:
    tmp = tmp_path_factory.mktemp("measure")
    store = ArtifactStore(tmp / "store")
    onnx_path = export_onnx(model, INPUT_SIZE, tmp / "model.onnx")
    return {
        "onnxruntime": store.put(onnx_path, "onnx"),
        "openvino": store.put(convert_openvino(onnx_path, tmp / "model.xml"), "openvino"),
    }


@pytest.fixture(scope="module")
def cpu() -> HardwareProfile:
    return load_profile("x86-avx2")


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_measure_artifact_returns_sane_metrics(
    runtime: str,
    refs: dict[str, ArtifactRef],
    cpu: HardwareProfile,
    data: tuple[np.ndarray, np.ndarray],
) -> None:
    x, y = data
    ref = refs[runtime]
    metrics = measure_artifact(ref, runtime, cpu, x, y, FAST, params=227, flops=454)
    assert isinstance(metrics, Metrics)
    assert metrics.runtime == runtime
    assert metrics.accuracy == pytest.approx(0.9)
    assert metrics.accuracy_kind == "top1_accuracy"
    assert metrics.eval_samples == 90
    assert 0 < metrics.latency_p50_ms <= metrics.latency_p90_ms
    assert metrics.latency_batch_size == cpu.latency_batch_size
    assert metrics.throughput_sps > 0
    assert metrics.throughput_batch_size == cpu.throughput_batch_size
    assert metrics.size_mb == pytest.approx(sum(p.stat().st_size for p in ref.files) / 1e6)
    assert metrics.peak_memory_mb >= 0
    assert metrics.threads == (cpu.threads or os.cpu_count())
    assert (metrics.params, metrics.flops) == (227, 454)


def test_measure_caps_samples_and_scores_agreement_without_labels(
    refs: dict[str, ArtifactRef],
    cpu: HardwareProfile,
    data: tuple[np.ndarray, np.ndarray],
    model: nn.Module,
) -> None:
    x, _ = data
    reference = TorchSession(model).run(x)
    one_thread = cpu.model_copy(update={"threads": 1})
    settings = MeasureSection(warmup=1, repeats=5, max_eval_samples=40)
    metrics = measure_artifact(
        refs["onnxruntime"], "onnxruntime", one_thread, x, None, settings,
        params=0, flops=0, reference_logits=reference,
    )  # fmt: skip
    assert metrics.accuracy == 1.0 and metrics.accuracy_kind == "top1_agreement"
    assert metrics.eval_samples == 40 and metrics.threads == 1
    with pytest.raises(DataError, match=r"labels .* or reference logits"):
        measure_artifact(refs["onnxruntime"], "onnxruntime", cpu, x, None, FAST, params=0, flops=0)


def test_score_artifact_scores_without_timing_and_follows_the_fidelity(
    refs: dict[str, ArtifactRef],
    cpu: HardwareProfile,
    data: tuple[np.ndarray, np.ndarray],
    model: nn.Module,
) -> None:
    x, y = data
    ref = refs["onnxruntime"]
    assert score_artifact(ref, "onnxruntime", cpu, x, y, FAST) == (
        pytest.approx(0.9),
        "top1_accuracy",
    )
    logits = TorchSession(model).run(x)  # float reference outputs: fidelity
    assert score_artifact(ref, "onnxruntime", cpu, x, logits, FAST)[1] == "top1_agreement"
    score, kind = score_artifact(ref, "onnxruntime", cpu, x, logits, FAST, fidelity="cosine")
    assert kind == "mean_cosine_similarity" and score == pytest.approx(1.0, abs=1e-5)
    declared = score_artifact(ref, "onnxruntime", cpu, x, logits, FAST, output_kind="embedding")
    assert declared[1] == "mean_cosine_similarity"
    capped = MeasureSection(warmup=0, repeats=5, max_eval_samples=30)
    assert score_artifact(ref, "onnxruntime", cpu, x[:30], y[:30], FAST) == score_artifact(
        ref, "onnxruntime", cpu, x, y, capped
    )
    with pytest.raises(DataError, match=r"labels .* or reference logits"):
        score_artifact(ref, "onnxruntime", cpu, x, None, FAST)


def test_measure_session_pads_small_test_sets(model: nn.Module) -> None:
    x = np.random.default_rng(1).normal(size=(3, INPUT_SIZE)).astype(np.float32)
    session = TorchSession(model)
    found = measure_session(
        session, x, session.run(x).argmax(1), FAST, latency_batch_size=1, throughput_batch_size=8
    )
    assert found.accuracy == 1.0 and found.eval_samples == 3 and found.throughput_sps > 0


def test_measure_refuses_runtimes_the_profile_lacks(
    refs: dict[str, ArtifactRef], data: tuple[np.ndarray, np.ndarray]
) -> None:
    x, y = data
    gpu = load_profile("nvidia-gpu", require_present=False)
    with pytest.raises(HardwareProfileError, match="not listed by hardware profile"):
        measure_artifact(refs["openvino"], "openvino", gpu, x, y, FAST, params=0, flops=0)
    with pytest.raises(ConfigError, match="unknown runtime"):
        measure_artifact(refs["openvino"], "tvm", gpu, x, y, FAST, params=0, flops=0)
    with pytest.raises(DataError, match="empty"):
        measure_artifact(
            refs["onnxruntime"], "onnxruntime", load_profile("x86-avx2"), x[:0], y[:0], FAST,
            params=0, flops=0,
        )  # fmt: skip


def test_measure_hamnet_checkpoint_in_torch(tmp_path: Path, cpu: HardwareProfile) -> None:
    models = pytest.importorskip("hamnet.models")
    if not hasattr(models, "load_checkpoint"):
        pytest.skip("hamnet.models.load_checkpoint is not written yet")
    torch.manual_seed(0)
    config = models.HAMNetConfig(
        input_size=INPUT_SIZE, num_classes=CLASSES, hidden_size=8, num_heads=2, token_size=4
    )
    model = models.HAMNet(config).eval()
    ref = ArtifactStore(tmp_path / "store").put(
        models.save_checkpoint(model, tmp_path / "model.pt"), "torch"
    )
    x = np.random.default_rng(2).normal(size=(40, INPUT_SIZE)).astype(np.float32)
    with torch.no_grad():
        y = model(torch.from_numpy(x)).argmax(1).numpy()
    metrics = measure_artifact(
        ref, "torch", cpu, x, y, FAST,
        params=models.count_parameters(model), flops=models.count_flops(model, INPUT_SIZE),
    )  # fmt: skip
    assert metrics.runtime == "torch" and metrics.accuracy == 1.0
    assert 0 < metrics.latency_p50_ms <= metrics.latency_p90_ms
    assert metrics.size_mb == pytest.approx(ref.size_bytes / 1e6)


class NamedSum(InferenceSession):
    """Takes named inputs ``a`` [B, 2, 3] (float) and ``ids`` [B, 4] (int64);
    returns [B, 2, 3] outputs and records the dtypes it was given."""

    runtime = "named"

    def __init__(self) -> None:
        self.dtypes: set[str] = set()

    def run(self, x: object) -> np.ndarray:
        assert isinstance(x, dict)
        self.dtypes |= {f"{k}:{v.dtype}" for k, v in x.items()}
        return (x["a"] + x["ids"].sum(axis=1)[:, None, None]).astype(np.float32)


def test_measure_session_on_named_nd_inputs_scores_cosine() -> None:
    from hamnet.evaluate.measure import cosine_similarity, fidelity, predict

    rng = np.random.default_rng(0)
    x = {"a": rng.normal(size=(10, 2, 3)), "ids": rng.integers(0, 5, size=(10, 4))}
    session = NamedSum()
    outputs = predict(session, x, 3)
    assert outputs.shape == (10, 2, 3)
    assert session.dtypes == {"a:float32", "ids:int64"}
    found = measure_session(
        session, x, outputs, FAST, latency_batch_size=1, throughput_batch_size=4
    )
    assert found.accuracy == pytest.approx(1.0) and found.accuracy_kind == "mean_cosine_similarity"
    none = measure_session(
        session, x, None, FAST, latency_batch_size=2, throughput_batch_size=4, require_score=False
    )
    assert none.accuracy is None and none.accuracy_kind == "none" and none.eval_samples == 10
    assert cosine_similarity(-outputs, outputs) == pytest.approx(-1.0)
    assert fidelity(np.eye(3)[[0, 1, 2, 1]], np.eye(3)[[0, 1, 2, 0]]) == (0.75, "top1_agreement")
    with pytest.raises(DataError, match="same shape"):
        cosine_similarity(outputs[:, :1], outputs)


def test_measure_artifact_without_labels_reports_no_accuracy(
    refs: dict[str, ArtifactRef], cpu: HardwareProfile, data: tuple[np.ndarray, np.ndarray]
) -> None:
    import math

    x, _ = data
    metrics = measure_artifact(
        refs["onnxruntime"], "onnxruntime", cpu, x, None, FAST,
        params=0, flops=0, require_score=False,
    )  # fmt: skip
    assert math.isnan(metrics.accuracy) and metrics.accuracy_kind == "none"
    assert metrics.latency_p50_ms > 0


@pytest.mark.parametrize(("cap", "rows"), [(None, 5), (3, 3), (9, 5)])
def test_eval_rows_caps_and_packs(cap: int | None, rows: int) -> None:
    x = np.arange(20, dtype=np.float32).reshape(5, 4)[:, ::2]
    x_eval, n = eval_rows(x, cap)
    assert len(x_eval) == rows and n == (5 if cap is None else cap)
    assert x_eval.flags["C_CONTIGUOUS"]
    np.testing.assert_array_equal(x_eval, x[:rows])


def test_eval_rows_caps_named_inputs_alike() -> None:
    named = {"ids": np.arange(6).reshape(3, 2), "mask": np.ones((3, 2), dtype=np.int64)}
    x_eval, n = eval_rows(named, 2)
    assert n == 2 and len(x_eval) == 2 and set(x_eval.dtype.names or ()) == {"ids", "mask"}


def test_scores_refuse_misaligned_lengths() -> None:
    x = np.ones((4, INPUT_SIZE), dtype=np.float32)
    with pytest.raises(DataError, match="x and y must have the same length, but got 4 and 3"):
        accuracy(Sleeper(), x, np.zeros(3, dtype=int), batch_size=2)
    with pytest.raises(DataError, match="reference_logits and x must have the same length"):
        agreement(Sleeper(), np.zeros((5, 2)), x, batch_size=2)
    with pytest.raises(DataError, match="x_test and y_test must have the same length"):
        measure_session(
            Sleeper(),
            x,
            np.zeros(3, dtype=int),
            FAST,
            latency_batch_size=1,
            throughput_batch_size=2,
            eval_logits=np.zeros((4, 2)),
        )
