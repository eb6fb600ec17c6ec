"""The seed's Python API as written (issue 17): names, hardware kinds, benchmark, optimize."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import export_tiny_onnx, tiny_hamnet
from torch import nn

import hamnet
from hamnet import Constraints, OptimizationGoal, Optimizer
from hamnet.api.benchmarker import ModelMetrics
from hamnet.core.errors import ConfigError, HardwareProfileError
from hamnet.core.hardware import (
    HardwareProfile,
    best_profile,
    cpu_flags,
    implied_cpu_flags,
    load_profile,
    pick_profile,
    resolve_hardware,
)
from hamnet.models import save_checkpoint

FAST: dict[str, Any] = {
    "measure": {"warmup": 1, "repeats": 5, "max_eval_samples": 64},
    "stages": {"quantize": {"methods": ["ort_dynamic_int8"]}},
}


def _profile(name: str, device: str = "cpu", flags: list[str] | None = None) -> HardwareProfile:
    return HardwareProfile(
        name=name,
        device=device,  # type: ignore[arg-type]
        arch="x86_64",
        required_cpu_flags=flags or [],
        runtimes=[{"name": "onnxruntime"}],  # type: ignore[list-item]
        precisions=["fp32"],
        int8_reduce_range=False,
    )


AVX2 = _profile("x86-avx2", flags=["avx2", "fma"])
VNNI = _profile("x86-vnni-server", flags=["avx512f", "avx512_vnni"])
GPU = _profile("nvidia-gpu", device="cuda")


def test_optimization_goal_is_goal() -> None:
    assert OptimizationGoal is hamnet.Goal
    assert "OptimizationGoal" in hamnet.__all__
    assert OptimizationGoal.AUTO.value == "auto"
    assert {g.value for g in OptimizationGoal} == {"quantize", "prune", "distill", "auto"}


def test_implied_flags_rank_vnni_above_avx2() -> None:
    assert len(implied_cpu_flags(VNNI.required_cpu_flags)) > len(
        implied_cpu_flags(AVX2.required_cpu_flags)
    )
    assert implied_cpu_flags(["asimd"]) == {"asimd"}


@pytest.mark.parametrize(
    ("kind", "present", "expected"),
    [
        ("cpu", {"x86-avx2", "x86-vnni-server"}, "x86-vnni-server"),
        ("cpu", {"x86-avx2"}, "x86-avx2"),
        ("gpu", {"x86-avx2", "nvidia-gpu"}, "nvidia-gpu"),
    ],
)
def test_pick_profile_takes_the_most_specific_present(
    kind: str, present: set[str], expected: str
) -> None:
    chosen = pick_profile(kind, [AVX2, GPU, VNNI], lambda p: p.name in present)
    assert chosen.name == expected


def test_pick_profile_without_a_present_profile_says_what_it_looked_for() -> None:
    with pytest.raises(HardwareProfileError, match=r"no 'gpu' hardware profile.*'nvidia-gpu'"):
        pick_profile("gpu", [AVX2, GPU], lambda p: p.device == "cpu")
    with pytest.raises(HardwareProfileError, match=r"kind must be one of .* but got 'tpu'"):
        pick_profile("tpu", [AVX2], lambda p: True)


def test_cpu_resolves_to_a_present_profile_on_this_machine() -> None:
    profile = best_profile("cpu")
    assert profile.device == "cpu"
    assert profile.missing_hardware() == []
    if {"avx512f", "avx512_vnni"} <= cpu_flags():
        assert profile.name == "x86-vnni-server"
    assert Constraints(target_hardware="cpu").target_hardware == profile.name
    assert resolve_hardware("x86-avx2") == "x86-avx2"
    assert Constraints(target_hardware="arm64-edge").target_hardware == "arm64-edge"


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_gpu_without_cuda_fails_clearly() -> None:
    with pytest.raises(HardwareProfileError, match=r"no 'gpu' hardware profile matches"):
        Constraints(target_hardware="gpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_resolves_to_the_gpu_profile() -> None:
    assert Constraints(target_hardware="gpu").target_hardware == load_profile("nvidia-gpu").name


@pytest.fixture(scope="module")
def hamnet_opt(tmp_path_factory: pytest.TempPathFactory) -> Optimizer:
    folder = tmp_path_factory.mktemp("seed")
    ckpt = save_checkpoint(tiny_hamnet(), folder / "tiny.pt")
    return Optimizer.from_pytorch(str(ckpt), [1, 16], work_dir=folder / "runs")


def test_benchmark_measures_the_original_model(hamnet_opt: Optimizer) -> None:
    metrics = hamnet_opt.benchmark(hardware="cpu", num_runs=10, batch_size=4)
    assert isinstance(metrics, ModelMetrics)
    assert metrics.batch_size == 4
    assert 0 < metrics.latency_p50_ms <= metrics.latency_p90_ms
    assert metrics.throughput_sps > 0
    assert metrics.size_mb > 0
    assert metrics.accuracy is None


def test_benchmark_on_onnx_with_a_profile_name(tmp_path: Path) -> None:
    path = export_tiny_onnx(tmp_path / "mlp.onnx")
    opt = Optimizer.from_onnx(str(path), work_dir=tmp_path / "runs")
    metrics = opt.benchmark(hardware="x86-avx2", num_runs=5)
    assert metrics.runtime == load_profile("x86-avx2").runtime_names[0]
    assert metrics.batch_size == 1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_runs": 2}, r"num_runs must be an integer of at least 5, but got 2"),
        ({"num_runs": 10.0}, r"num_runs must be an integer of at least 5, but got 10.0"),
        ({"batch_size": 0}, r"batch_size must be an integer of at least 1, but got 0"),
        ({"batch_size": True}, r"batch_size must be an integer of at least 1, but got True"),
    ],
)
def test_benchmark_validates_its_arguments(
    hamnet_opt: Optimizer, kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        hamnet_opt.benchmark(**kwargs)


def test_benchmark_on_absent_hardware_fails_clearly(hamnet_opt: Optimizer) -> None:
    with pytest.raises(HardwareProfileError, match=r"arm64-edge"):
        hamnet_opt.benchmark(hardware="arm64-edge")


def test_optimize_as_the_seed_calls_it(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    x = np.random.default_rng(0).standard_normal((64, 16)).astype(np.float32)
    y = np.arange(64) % 3
    calls: list[float] = []

    def accuracy(model: Any) -> float:
        value = float((np.asarray(model(x)).argmax(axis=1) == y).mean())
        calls.append(value)
        return value

    optimizer = Optimizer.from_pytorch(model, input_shape=[1, 16], work_dir=tmp_path)
    result = optimizer.optimize(
        goal=OptimizationGoal.QUANTIZE,
        constraints=Constraints(max_accuracy_drop=1.0, target_hardware="cpu"),
        validation_data=(x, y),
        validation_fn=accuracy,
        preferred_backends=["onnx_runtime"],
        _overrides=FAST,
    )
    assert len(calls) == 1 and 0.0 <= calls[0] <= 1.0
    assert result.report.custom_metric == calls[0]
    assert str(result.report.backend_used).startswith("onnxruntime")
