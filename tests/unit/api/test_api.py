"""The Hamerspace-style Python API (hamnet.api.optimizer) on the real pipeline, with tiny models."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from hamnet.api.optimizer import (
    CompressionReport,
    Constraints,
    Goal,
    Optimizer,
    UnsupportedCombinationError,
    plan_for,
)
from hamnet.core.config import DataSection, TrainStageConfig, load_config
from hamnet.core.errors import ConfigError, MissingDependencyError, ModelLoadError
from hamnet.core.hardware import load_profile
from hamnet.models import HAMNet, HAMNetConfig, save_checkpoint
from hamnet.training.data import load_dataset
from hamnet.training.trainer import train_model

FAST: dict[str, Any] = {
    "measure": {"warmup": 1, "repeats": 5, "max_eval_samples": 128},
    "stages": {"quantize": {"methods": ["ort_dynamic_int8"]}},
}


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    ds = load_dataset(DataSection())
    x = np.concatenate([ds.x_train, ds.x_val, ds.x_test])
    y = np.concatenate([ds.y_train, ds.y_val, ds.y_test])
    return x, y


@pytest.fixture(scope="module")
def hamnet_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    cfg = HAMNetConfig(
        input_size=64, num_classes=10, hidden_size=16, num_layers=1, num_heads=2, token_size=8
    )
    model = HAMNet(cfg)
    train_model(model, load_dataset(DataSection()), TrainStageConfig(epochs=3), progress=False)
    return save_checkpoint(model, tmp_path_factory.mktemp("ckpt") / "tiny.pt")


@pytest.fixture(scope="module")
def generic_result(tmp_path_factory: pytest.TempPathFactory, digits: Any) -> Any:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    work = tmp_path_factory.mktemp("generic")
    opt = Optimizer.from_pytorch(model, [1, 64], work_dir=work)
    calls: list[float] = []

    def metric(predict: Any) -> float:
        out = predict(digits[0][:50])
        calls.append(float(out.shape[0]))
        return float((out.argmax(axis=1) == digits[1][:50]).mean())

    result = opt.optimize(
        Goal.QUANTIZE,
        Constraints(max_accuracy_drop=1.0),
        validation_data=digits,
        validation_fn=metric,
        preferred_backends=["onnx"],
        _overrides=FAST,
    )
    return opt, result, calls, work


def test_constraints_validate_values() -> None:
    with pytest.raises(ConfigError, match=r"max_accuracy_drop must be in \[0, 1\], but got 3"):
        Constraints(max_accuracy_drop=3)
    with pytest.raises(ValueError, match="but got"):
        Constraints(target_size_mb=-1)
    with pytest.raises(ValueError, match="but got"):
        Constraints(calibration_samples=0)


def test_missing_files_raise_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        Optimizer.from_pytorch(tmp_path / "absent.pt", work_dir=tmp_path)
    with pytest.raises(ModelLoadError):
        Optimizer.from_onnx(tmp_path / "absent.onnx", work_dir=tmp_path)


@pytest.mark.skipif(
    importlib.util.find_spec("tensorflow") is not None
    and importlib.util.find_spec("tf2onnx") is not None,
    reason="tensorflow and tf2onnx are installed",
)
def test_from_tensorflow_names_the_extra(tmp_path: Path) -> None:
    with pytest.raises(MissingDependencyError, match=r"hamnet\[tensorflow\]"):
        Optimizer.from_tensorflow(tmp_path / "model.keras")


def test_generic_module_needs_a_shape(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Linear(64, 10))
    with pytest.raises(ConfigError, match="but got None"):
        Optimizer.from_pytorch(model, work_dir=tmp_path)
    with pytest.raises(ConfigError, match=r"input_shape must have a batch axis"):
        Optimizer.from_pytorch(model, [64], work_dir=tmp_path)
    hamnet = HAMNet(HAMNetConfig(input_size=64, num_classes=10, hidden_size=8, num_heads=2))
    with pytest.raises(UnsupportedCombinationError, match=r"2-D \[batch, features\]") as err:
        Optimizer.from_pytorch(hamnet, [1, 1, 8, 8], work_dir=tmp_path)
    assert isinstance(err.value, NotImplementedError)


def test_bad_arguments_are_value_errors(generic_result: Any) -> None:
    opt = generic_result[0]
    with pytest.raises(ValueError, match="but got 'fastest'"):
        opt.build_config("fastest")
    with pytest.raises(ConfigError, match=r"preferred_backends must be .* but got"):
        opt.build_config(Goal.QUANTIZE, preferred_backends=["tensorrt"])
    with pytest.raises(ConfigError, match="validation_data must be given"):
        opt.optimize(Goal.QUANTIZE)


def test_prune_and_distill_of_an_unconvertible_onnx_are_unsupported(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Det", ["x"], ["y"])], "det",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N"])],
    )  # fmt: skip
    path = tmp_path / "det.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    opt = Optimizer.from_onnx(path, work_dir=tmp_path)
    assert opt.module_path is None and "onnx2torch" in (opt.why_not_prunable or "")
    for goal in (Goal.PRUNE, Goal.DISTILL):
        with pytest.raises(UnsupportedCombinationError, match="needs a torch model") as err:
            opt.build_config(goal)
        assert isinstance(err.value, NotImplementedError)
        assert "Det" in str(err.value)


def test_a_user_module_is_prunable(generic_result: Any) -> None:
    opt = generic_result[0]
    assert opt.kind == "module"
    cfg = opt.build_config(Goal.PRUNE)
    assert cfg.stages.prune is not None and cfg.stages.distill is not None


def test_quantize_generic_module(generic_result: Any, tmp_path: Path) -> None:
    import onnxruntime as ort

    _, result, calls, _ = generic_result
    assert any(c.precision == "int8" for c in result.candidates)
    assert result.recommended is not None
    assert result.report.accuracy_kind == "top1_accuracy"
    assert result.report.gates["loads_in_runtime"] is True
    assert calls == [50.0] and result.report.custom_metric is not None
    assert len(result.rounds) == 1

    out = result.save_model(tmp_path / "deploy" / "model.onnx")
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert session.run(None, {session.get_inputs()[0].name: np.zeros((2, 64), np.float32)})

    cfg_path = result.save_config(tmp_path / "config.yaml")
    assert load_config(cfg_path) == result.config

    json_path, md_path = result.save_report(tmp_path / "report")
    data = json.loads(json_path.read_text())
    fields = CompressionReport.__dataclass_fields__
    assert set(fields) <= set(data)
    md = md_path.read_text()
    assert "compression report" in md and "Candidates" in md


def test_impossible_constraints_give_nearest_candidate(generic_result: Any, digits: Any) -> None:
    opt, _, _, work = generic_result
    result = opt.optimize(
        "quantize",
        Constraints(target_size_mb=1e-6),
        validation_data=digits,
        preferred_backends=["onnx"],
        work_dir=work / "impossible",
        _overrides=FAST,
    )
    assert result.recommended is not None and result.candidates
    assert result.constraints_satisfied is False
    assert result.report.constraint_violations


def test_auto_keeps_the_round_nearest_to_the_constraints(generic_result: Any, digits: Any) -> None:
    opt, _, _, work = generic_result
    result = opt.optimize(
        "auto",
        Constraints(target_size_mb=1e-6),
        validation_data=digits,
        preferred_backends=["onnx"],
        work_dir=work / "auto-rounds",
        max_rounds=2,
        _overrides=FAST,
    )
    assert result.constraints_satisfied is False and result.recommended is not None
    assert [r.split(":")[0] for r in result.rounds] == ["round 1", "round 2", "result"]
    kept = int(result.rounds[-1].split()[2].rstrip("'s"))
    assert result.recommended.name in result.rounds[kept - 1]


def test_prune_hamnet_checkpoint(hamnet_ckpt: Path, tmp_path: Path) -> None:
    opt = Optimizer.from_pytorch(hamnet_ckpt, work_dir=tmp_path)
    assert opt.kind == "hamnet"
    cfg = opt.build_config(Goal.PRUNE)
    assert cfg.stages.prune is not None and cfg.stages.prune.ratios == [0.3, 0.5, 0.7]
    assert cfg.stages.quantize is None and cfg.stages.distill is None
    distill = opt.build_config(Goal.DISTILL)
    assert distill.stages.distill is not None and distill.stages.distill.recover_pruned
    result = opt.optimize(
        Goal.PRUNE,
        Constraints(max_accuracy_drop=1.0),
        preferred_backends=["onnx"],
        _overrides={
            **FAST,
            "stages": {"prune": {"ratios": [0.5], "finetune": {"epochs": 1, "warmup_epochs": 0}}},
        },
    )
    assert any(c.stage == "prune" for c in result.candidates)
    assert result.report.candidates_table


def test_auto_on_hamnet_instance_with_unlabelled_data(
    hamnet_ckpt: Path, digits: Any, tmp_path: Path
) -> None:
    from hamnet.models import load_checkpoint

    model = load_checkpoint(hamnet_ckpt)
    opt = Optimizer.from_pytorch(model, work_dir=tmp_path)
    result = opt.optimize(
        Goal.AUTO,
        validation_data=(digits[0], None),
        preferred_backends=["onnx"],
        max_rounds=1,
        _overrides=FAST,
    )
    assert "agreement" in result.report.accuracy_kind
    assert result.report.plan_reasons and "quantization" in result.report.plan_reasons[0]
    assert result.recommended is not None
    assert result.report.backend_used


def test_plan_for_rules() -> None:
    cpu = load_profile("x86-avx2", require_present=False)
    gpu = load_profile("nvidia-gpu", require_present=False)
    plan = plan_for(Constraints(), "onnx", cpu, model_size_mb=1.0)
    assert plan.goal_sequence == [Goal.QUANTIZE] and plan.precisions == ["int8", "fp16"]
    size = plan_for(Constraints(target_size_mb=0.1), "hamnet", cpu, model_size_mb=1.0)
    assert size.goal_sequence == [Goal.PRUNE, Goal.QUANTIZE] and size.prune_ratios
    assert any("size-bound" in r for r in size.reasons)
    onnx = plan_for(Constraints(target_size_mb=0.1), "onnx", cpu, model_size_mb=1.0)
    assert onnx.goal_sequence == [Goal.QUANTIZE] and not onnx.prune_ratios
    latency = plan_for(Constraints(max_latency_ms=1.0), "hamnet", gpu, model_size_mb=1.0)
    assert latency.precisions == ["fp16"] and Goal.PRUNE in latency.goal_sequence


def test_lazy_export_from_package() -> None:
    import hamnet

    assert hamnet.Optimizer is Optimizer
