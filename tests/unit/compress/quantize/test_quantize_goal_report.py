"""goal=QUANTIZE never silently returns the unquantized baseline (api/report.py)."""

from __future__ import annotations

from pathlib import Path

from hamnet.api.report import nearest_quantized, quantization_is_the_goal
from hamnet.core.artifacts import ArtifactStore
from hamnet.core.candidate import Candidate, Metrics
from hamnet.core.config import ConstraintsSection, SelectionSection, config_from_dict
from hamnet.evaluate.pareto import select


def _candidate(
    store: ArtifactStore, tmp: Path, name: str, precision: str, accuracy: float, ms: float,
    parent: Candidate | None = None,
) -> Candidate:  # fmt: skip
    f = tmp / f"{name}.onnx"
    f.write_bytes(name.encode())
    metrics = Metrics(
        accuracy=accuracy, latency_p50_ms=ms, latency_p90_ms=ms, latency_batch_size=1,
        throughput_sps=1000 / ms, throughput_batch_size=1, size_mb=1.0, params=10, flops=10,
        peak_memory_mb=1.0, runtime="onnxruntime", threads=1, eval_samples=100,
    )  # fmt: skip
    return Candidate.create(
        name=name, stage="quantize" if parent else "baseline", method=name,
        artifact=store.put(f, "onnx"), runtime="onnxruntime", parent=parent,
        precision=precision, metrics=metrics,  # type: ignore[arg-type]
    )  # fmt: skip


def test_quantize_goal_gives_the_nearest_quantized_model(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "store")
    base = _candidate(store, tmp_path, "baseline", "fp32", 0.95, 1.0)
    lossy = _candidate(store, tmp_path, "int8", "int8", 0.80, 0.6, base)
    less = _candidate(store, tmp_path, "mixed", "mixed", 0.92, 0.8, base)
    constraints = ConstraintsSection(max_accuracy_drop=0.01)
    selection = select([base, lossy, less], base, constraints, SelectionSection())
    assert selection.recommended is base  # only the baseline meets a one-point budget
    pick, note = nearest_quantized([base, lossy, less], selection)
    assert pick is less  # the smallest violation among the quantized ones
    assert (
        "no quantized model meets the constraints" in note
        and "nearest quantized one is mixed" in note
    )

    relaxed = select([base, lossy, less], base, ConstraintsSection(max_accuracy_drop=0.05),
                     SelectionSection())  # fmt: skip
    pick, note = nearest_quantized([base, lossy, less], relaxed)
    assert (
        pick is less and "mixed is the fastest quantized model that meets the constraints" in note
    )


def test_quantization_is_the_goal_reads_the_stages() -> None:
    only = config_from_dict(
        {
            "model": {"source": "file", "path": "m.onnx"},
            "stages": {"train": None, "export": None, "quantize": {}},
        }
    )
    assert quantization_is_the_goal(only)
    assert not quantization_is_the_goal(config_from_dict({}))  # train + export + quantize


def test_auto_and_quantize_plan_the_accuracy_aware_methods() -> None:
    from hamnet.api.compiler import (
        ModelFacts,
        accuracy_aware_methods,
        compile_config,
        default_methods,
        plan_for,
    )
    from hamnet.api.constraints import Constraints, Goal
    from hamnet.core.hardware import load_profile
    from hamnet.families.base import get_family

    cpu = load_profile("x86-avx2", require_present=False)
    facts = ModelFacts(Path("/models/model.onnx"), get_family("generic"), size_mb=1.0)
    tuned = ["int8_accuracy_aware", "nncf_int8_accuracy_aware"]
    assert accuracy_aware_methods(["onnx", "openvino"], ["int8", "fp16"]) == tuned
    assert accuracy_aware_methods(["onnx"], ["fp16"]) == []
    assert not set(tuned) & set(default_methods(["onnx", "openvino"], ["int8"]))
    plan = plan_for(Constraints(max_accuracy_drop=0.02), "onnx", cpu)
    reason = next(r for r in plan.reasons if r.startswith("accuracy-aware INT8"))
    assert "2.00 points" in reason and "plain INT8 stands" in reason
    for goal in (Goal.AUTO, Goal.QUANTIZE):
        cfg = compile_config(goal, Constraints(), facts, cpu)
        assert cfg.stages.quantize is not None
        assert set(tuned) <= set(cfg.stages.quantize.methods)
