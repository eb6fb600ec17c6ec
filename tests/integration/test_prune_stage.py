"""The prune stage inside the pipeline: pruned candidates are smaller, export, quantize."""

from __future__ import annotations

from pathlib import Path

from conftest import tiny_config

from hamnet.core.config import config_from_dict
from hamnet.pipeline.run import run_pipeline


def test_pruned_candidates_flow_through_export_and_quantize(project: Path) -> None:
    cfg = config_from_dict(
        tiny_config(
            seed=31,
            model={"hamnet": {"hidden_size": 32, "num_heads": 4, "num_layers": 2}},
            stages={
                "prune": {
                    "ratios": [0.5],
                    "finetune": {"epochs": 2, "patience": 2},
                    "unstructured_sparsity": 0.5,
                },
                "quantize": {"methods": ["ort_dynamic_int8"]},
            },
            tracking={"enabled": False},
        )
    )
    result = run_pipeline(cfg, base_dir=project)
    by_name = {c.name: c for c in result.candidates}
    assert [s.name for s in result.stages] == ["train", "prune", "export", "quantize"]
    pruned = by_name["pruned-50"]
    baseline = by_name["baseline"]
    assert pruned.parent_id == baseline.id and pruned.stage == "prune"
    assert pruned.metrics is not None and baseline.metrics is not None
    assert pruned.metrics.params < baseline.metrics.params
    assert pruned.metrics.size_mb < baseline.metrics.size_mb
    assert pruned.plan_file is not None and Path(pruned.plan_file).is_file()
    assert "plan_file" not in pruned.params
    assert pruned.lineage_params()["plan_file"] == pruned.plan_file  # for former readers
    onnx = by_name["pruned-50+onnxruntime-fp32"]
    assert onnx.parent_id == pruned.id
    assert (
        onnx.metrics is not None
        and onnx.metrics.size_mb < by_name["onnxruntime-fp32"].metrics.size_mb
    )  # type: ignore[union-attr]
    assert "pruned-50+onnxruntime-fp32+ort-dynamic-int8" in by_name
    sparse = by_name["sparse-50"]
    assert sparse.params["zipped_onnx_bytes"] < sparse.params["dense_onnx_bytes"]
    assert any("latency does not improve" in note for note in sparse.notes)
