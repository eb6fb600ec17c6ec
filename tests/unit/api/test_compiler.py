"""The pure parts of the API: constraints, the config compiler, AUTO's plan and round choice."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from hamnet.api.compiler import (
    AutoPlan,
    ModelFacts,
    accuracy_aware_methods,
    backend_of,
    choose_backends,
    compile_config,
    default_methods,
    plan_for,
    quantizer_targets,
)
from hamnet.api.constraints import Constraints, Goal, UnsupportedCombinationError, parse_goal
from hamnet.api.rounds import nearness
from hamnet.core.errors import ConfigError
from hamnet.core.hardware import HardwareProfile, load_profile
from hamnet.evaluate.pareto import Assessment, Selection
from hamnet.families.base import get_family


@pytest.fixture(scope="module")
def cpu() -> HardwareProfile:
    return load_profile("x86-avx2", require_present=False)


@pytest.fixture(scope="module")
def gpu() -> HardwareProfile:
    return load_profile("nvidia-gpu", require_present=False)


def _facts(family: str, size_mb: float = 1.0) -> ModelFacts:
    suffix = ".pt" if family == "hamnet" else ".onnx"
    return ModelFacts(Path(f"/models/model{suffix}"), get_family(family), size_mb=size_mb)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_accuracy_drop": 3}, r"max_accuracy_drop must be in \[0, 1\], but got 3"),
        ({"max_accuracy_drop": None}, r"max_accuracy_drop must be in \[0, 1\], but got None"),
        ({"target_size_mb": -1}, "target_size_mb must be a positive number or None, but got -1"),
        ({"max_latency_ms": "5"}, "max_latency_ms must be a positive number or None, but got '5'"),
        ({"target_size_mb": math.nan}, "target_size_mb must be a positive number"),
        ({"target_hardware": ""}, "target_hardware must be a hardware profile name, but got ''"),
        ({"batch_size": True}, "batch_size must be a positive integer, but got True"),
        ({"calibration_samples": 0}, "calibration_samples must be a positive integer, but got 0"),
    ],
)
def test_constraints_are_validated_by_the_config_section(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as err:
        Constraints(**kwargs)
    assert isinstance(err.value, ValueError)


def test_constraints_section_matches_the_config() -> None:
    from hamnet.core.config import ConstraintsSection

    limits = Constraints(target_size_mb=2, max_latency_ms=3.5, max_accuracy_drop=0)
    assert ConstraintsSection(**limits.section()).target_size_mb == 2
    assert limits.has_size_constraint() and limits.has_latency_constraint()


def test_parse_goal() -> None:
    assert parse_goal("prune") is Goal.PRUNE
    with pytest.raises(ConfigError, match=r"goal must be one of .* but got 'fastest'"):
        parse_goal("fastest")


def test_quantizer_table_mirrors_the_quantizers() -> None:
    from hamnet.compress.quantize.base import get_quantizer

    for name, target in quantizer_targets().items():
        method = get_quantizer(name)
        assert (method.runtime, method.precision) == (target.runtime, target.precision)
    assert backend_of("nncf_int8") == "openvino" and backend_of("onnx_fp16") == "onnx"
    with pytest.raises(ConfigError, match="quantization method must be one of"):
        backend_of("int3")


def test_default_methods_and_backends(cpu: HardwareProfile) -> None:
    assert default_methods(["onnx"], ["int8"]) == ["ort_dynamic_int8", "ort_static_int8"]
    assert default_methods(["openvino", "onnx"], ["fp16"]) == ["openvino_fp16", "onnx_fp16"]
    assert choose_backends(None, cpu) == ["onnx", "openvino"]
    assert choose_backends("onnx", cpu) == ["onnx"]
    assert choose_backends(["openvino", "onnx", "openvino"], cpu) == ["openvino", "onnx"]
    for bad in ([], ["tensorrt"]):
        with pytest.raises(ConfigError, match=r"non-empty subset of \['onnx', 'openvino'\]"):
            choose_backends(bad, cpu)


def test_plan_reasons_come_from_the_family(cpu: HardwareProfile) -> None:
    latency = Constraints(max_latency_ms=1.0)
    hamnet = plan_for(latency, "hamnet", cpu, model_size_mb=1.0)
    assert hamnet.family == "hamnet" and hamnet.prune_ratios == [0.3, 0.5, 0.7]
    assert get_family("hamnet").prune_reason in hamnet.reasons
    conv = plan_for(latency, "onnx", cpu, family="conv")
    assert f"no pruning: {get_family('conv').why_not_prunable}" in conv.reasons
    generic = plan_for(latency, "onnx", cpu)
    assert generic.family == "generic" and generic.methods == []
    assert any("onnx2torch converts it" in r for r in generic.reasons)
    module = plan_for(latency, "module", cpu, family="conv", has_train_data=True)
    assert module.prune_ratios and get_family("conv").prune_reason in module.reasons
    assert any("its conv filters can be pruned" in r for r in module.reasons)
    no_data = plan_for(latency, "module", cpu, family="conv")
    assert not no_data.prune_ratios
    assert any("no training data was given" in r for r in no_data.reasons)
    encoder = ModelFacts(Path("/m/module.json"), get_family("transformer"), 1.0,
                         source_kind="module", train_path=Path("/m/train.npz"))  # fmt: skip
    pruned = compile_config(Goal.PRUNE, Constraints(), encoder, cpu)
    assert pruned.stages.prune is not None and pruned.stages.prune.criteria == ["taylor"]
    assert pruned.stages.distill is not None and pruned.stages.distill.train.epochs == 2
    unconverted = plan_for(latency, "onnx", cpu, why_not_prunable="it uses Det")
    assert "no pruning: it uses Det" in unconverted.reasons
    big = plan_for(Constraints(target_size_mb=0.1), "onnx", cpu, model_size_mb=1.0)
    assert any("10.0x reduction is more than quantization gives" in r for r in big.reasons)
    near = plan_for(Constraints(target_size_mb=0.9), "onnx", cpu, model_size_mb=1.0)
    assert near.reasons[0].startswith("size limit 0.9 MB is within reach")
    assert plan_for(Constraints(), "onnx", cpu).reasons[0].startswith("no size or latency")
    with pytest.raises(ConfigError, match="family must be one of"):
        plan_for(Constraints(), "onnx", cpu, family="cnn")


def test_compile_quantize(cpu: HardwareProfile) -> None:
    cfg = compile_config(Goal.QUANTIZE, Constraints(), _facts("generic"), cpu)
    assert cfg.stages.quantize is not None and cfg.stages.export is None
    assert cfg.stages.quantize.methods == default_methods(
        ["onnx", "openvino"], ["int8", "fp16"]
    ) + accuracy_aware_methods(["onnx", "openvino"], ["int8", "fp16"])
    assert cfg.data.source == "digits" and cfg.model.path == "/models/model.onnx"
    bert = compile_config(
        Goal.QUANTIZE, Constraints(), _facts("transformer"), cpu, preferred_backends=["onnx"]
    )
    assert bert.stages.quantize is not None
    assert bert.stages.quantize.methods[0] == "ort_fused_dynamic_int8"
    ov = compile_config(
        Goal.QUANTIZE, Constraints(), _facts("transformer"), cpu, preferred_backends=["openvino"]
    )
    assert ov.stages.quantize is not None
    assert "ort_fused_dynamic_int8" not in ov.stages.quantize.methods


def test_compile_prune_and_distill(cpu: HardwareProfile) -> None:
    facts = _facts("hamnet")
    prune = compile_config(Goal.PRUNE, Constraints(), facts, cpu, preferred_backends=["onnx"])
    assert prune.stages.prune is not None and prune.stages.prune.ratios == [0.3, 0.5, 0.7]
    assert prune.stages.export is not None and prune.stages.quantize is None
    distill = compile_config(Goal.DISTILL, Constraints(), facts, cpu, data_path="/d.npz")
    assert distill.stages.distill is not None and distill.stages.distill.recover_pruned
    assert distill.data.source == "file" and distill.data.standardize is False
    for family in ("conv", "transformer", "generic"):
        with pytest.raises(UnsupportedCombinationError, match="needs a torch model"):
            compile_config(Goal.PRUNE, Constraints(), _facts(family), cpu)


def test_compile_auto_rounds(cpu: HardwareProfile) -> None:
    limits = Constraints(max_latency_ms=1.0)
    conv = compile_config(Goal.AUTO, limits, _facts("conv"), cpu)
    # The family's method goes first; every other INT8 method of the profile runs too.
    assert conv.stages.quantize is not None and conv.stages.quantize.methods[0] == "nncf_int8"
    assert {"ort_static_int8", "ort_dynamic_int8"} <= set(conv.stages.quantize.methods)
    escalated = compile_config(Goal.AUTO, limits, _facts("conv"), cpu, escalate=True)
    assert escalated.stages.quantize is not None
    assert escalated.stages.quantize.methods[0] == "nncf_int8"
    assert len(escalated.stages.quantize.methods) > 1 and escalated.stages.prune is None
    hamnet = compile_config(Goal.AUTO, limits, _facts("hamnet"), cpu, escalate=True)
    assert hamnet.stages.prune is not None and hamnet.stages.prune.ratios == [0.3, 0.5, 0.7, 0.8]
    assert hamnet.stages.distill is not None
    plan = AutoPlan(goal_sequence=[Goal.QUANTIZE], reasons=["given"], precisions=["fp16"])
    given = compile_config(Goal.AUTO, limits, _facts("generic"), cpu, plan=plan)
    assert given.stages.quantize is not None
    assert given.stages.quantize.methods == ["onnx_fp16", "openvino_fp16"]
    merged = compile_config(
        Goal.AUTO, limits, _facts("generic"), cpu, overrides={"measure": {"repeats": 5}}
    )
    assert merged.measure.repeats == 5 and merged.constraints.max_latency_ms == 1.0


def test_gpu_plan_is_fp16(gpu: HardwareProfile) -> None:
    plan = plan_for(Constraints(max_latency_ms=1.0), "hamnet", gpu)
    assert plan.precisions == ["fp16"] and plan.goal_sequence == [Goal.PRUNE, Goal.QUANTIZE]


def _selection(meets: bool, score: float | None, recommended: bool = True) -> Selection:
    from hamnet.core.artifacts import ArtifactRef
    from hamnet.core.candidate import Candidate

    rec = None
    assessments = {}
    if recommended:
        artifact = ArtifactRef(path="/m.onnx", sha256="0" * 64, format="onnx", size_bytes=1)
        rec = Candidate(
            id="c1", name="c1", stage="load", method="load", artifact=artifact,
            runtime="onnxruntime",
        )  # fmt: skip
        if score is not None:
            assessments["c1"] = Assessment("c1", meets, violation_score=score)
    return Selection(rec, meets, assessments, [], "c1", "")


def test_nearness_orders_rounds() -> None:
    feasible = nearness(_selection(True, 0.0))
    near = nearness(_selection(False, 0.2))
    far = nearness(_selection(False, 3.0))
    assert feasible < near < far
    assert nearness(_selection(False, None)) == (True, math.inf)
    assert nearness(_selection(False, None, recommended=False)) == (True, math.inf)
