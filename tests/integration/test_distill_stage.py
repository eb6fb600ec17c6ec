"""The distill stage inside the pipeline: KD recovery after pruning and a fresh student."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import tiny_config

from hamnet.core.candidate import TeacherRef
from hamnet.core.config import config_from_dict
from hamnet.core.errors import ConfigError
from hamnet.pipeline.run import run_pipeline


def _config(project: Path, **distill: object) -> dict[str, object]:
    return tiny_config(
        seed=41,
        model={"hamnet": {"hidden_size": 32, "num_heads": 4, "num_layers": 2}},
        stages={
            "prune": {"ratios": [0.5], "finetune": {"epochs": 2, "patience": 2}},
            "distill": {
                "methods": [
                    {"method": "soft", "weight": 1.0, "temperature": 4.0},
                    {"method": "feature", "weight": 0.5, "layers": "depth"},
                ],
                "train": {"epochs": 2, "patience": 2, "warmup_epochs": 0},
                "students": [
                    {
                        "name": "small",
                        "hamnet": {"hidden_size": 16, "num_heads": 2, "token_size": 8},
                    },
                ],
                "student_train": {"epochs": 2, "patience": 2},
                **distill,
            },
            "export": {"formats": ["onnx"]},
            "quantize": {"methods": ["ort_dynamic_int8"]},
        },
        tracking={"mlflow_uri": f"sqlite:///{project / 'mlflow.db'}"},
    )


def test_distilled_candidates_are_tracked_with_teacher_lineage(project: Path) -> None:
    from mlflow.tracking import MlflowClient

    cfg = config_from_dict(_config(project))
    result = run_pipeline(cfg, base_dir=project)
    assert [s.name for s in result.stages] == ["train", "prune", "distill", "export", "quantize"]
    by_name = {c.name: c for c in result.candidates}
    baseline, pruned = by_name["baseline"], by_name["pruned-50"]

    recovered = by_name["pruned-50+kd-soft+feature"]
    assert recovered.parent_id == pruned.id and recovered.stage == "distill"
    assert recovered.teachers == [TeacherRef(name="baseline", candidate_id=baseline.id)]
    assert recovered.teacher_names == ["baseline"]
    assert recovered.teacher_ids == [baseline.id]
    assert "teachers" not in recovered.params and "teacher_ids" not in recovered.params
    assert recovered.params["layer_heads"] == pruned.params["layer_heads"]
    assert recovered.metrics is not None and pruned.metrics is not None
    assert recovered.metrics.params == pruned.metrics.params
    # Teacher outputs are computed once and kept as a file for reuse.
    cache_files = recovered.params["teacher_cache_files"]
    assert len(cache_files) == 1 and Path(cache_files[0]).is_file()

    student = by_name["student-small+kd-soft+feature"]
    assert student.parent_id == baseline.id and student.teacher_names == ["baseline"]
    assert student.architecture is not None and student.architecture["hidden_size"] == 16
    assert student.metrics is not None and baseline.metrics is not None
    assert student.metrics.params < baseline.metrics.params
    assert student.params["teacher_cache_hits"] == 1  # the recovery run made the file
    # Distilled candidates flow on to export and quantization like any other.
    assert "student-small+kd-soft+feature+onnxruntime-fp32+ort-dynamic-int8" in by_name

    client = MlflowClient(tracking_uri=cfg.tracking.resolved_uri())
    experiment = client.get_experiment_by_name(cfg.tracking.experiment)
    assert experiment is not None
    runs = {
        r.data.tags.get("hamnet.candidate_name"): r
        for r in client.search_runs([experiment.experiment_id])
    }
    tags = runs["pruned-50+kd-soft+feature"].data.tags
    assert tags["hamnet.teachers"] == "baseline"
    assert tags["hamnet.teacher_ids"] == baseline.id
    assert tags["hamnet.parent_candidate_name"] == "pruned-50"
    assert tags["hamnet.method"] == "kd-soft+feature"


def test_unknown_teacher_is_a_clear_error(project: Path) -> None:
    cfg = config_from_dict(_config(project, teachers=["no-such-teacher"], students=[]))
    with pytest.raises(ConfigError, match=r"no-such-teacher.*neither a candidate"):
        run_pipeline(cfg, base_dir=project)


def test_unknown_method_is_rejected_by_the_config() -> None:
    with pytest.raises(ConfigError, match=r"methods\[0\]\.method must be one of"):
        config_from_dict(tiny_config(stages={"distill": {"methods": [{"method": "magic"}]}}))


def test_a_teacher_file_multi_teacher_kd_and_an_unlabelled_transfer_set(project: Path) -> None:
    import numpy as np
    import torch
    from sklearn.datasets import load_digits

    from hamnet.models import HAMNet, HAMNetConfig, save_checkpoint

    torch.manual_seed(0)
    extra = HAMNet(HAMNetConfig(input_size=64, num_classes=10, hidden_size=16, token_size=8))
    save_checkpoint(extra, project / "teacher.pt")
    # Raw (unstandardized) inputs without labels: the stage preprocesses them like the data.
    np.savez(project / "unlabelled.npz", x=load_digits().data[:300].astype(np.float32))
    cfg = config_from_dict(
        _config(
            project,
            teachers=["baseline", "teacher.pt"],
            methods=[{"method": "multi_teacher", "weighting": "confidence"}],
            students=[],
            unlabelled_data="unlabelled.npz",
        )
    )
    result = run_pipeline(cfg, base_dir=project)
    (recovered,) = [c for c in result.candidates if c.stage == "distill"]
    assert recovered.name == "pruned-50+kd-multi_teacher"
    assert recovered.teacher_names == ["baseline", "teacher-teacher"]
    assert len(recovered.params["teacher_cache_files"]) == 2
    assert recovered.params["unlabelled_samples"] == 300
    notes = [n for s in result.stages for n in s.notes]
    assert any("300 unlabelled inputs" in note for note in notes)
