"""The nas and hpo stages inside the pipeline, on a real local Ray with SQLite storage."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import tiny_config

from hamnet.core.config import config_from_dict
from hamnet.core.errors import ConfigError
from hamnet.pipeline.run import run_pipeline

SPACE = {
    "architecture": {
        "num_layers": {"type": "int", "low": 1, "high": 2},
        "hidden_size": {"type": "categorical", "choices": [8, 16]},
        "num_heads": {"type": "categorical", "choices": [2, 3]},  # 3 never divides: PRUNED
        "dropout_rate": {"type": "float", "low": 0.0, "high": 0.3},
    },
    "training": {
        "learning_rate": {"type": "float", "low": 1.0e-3, "high": 1.0e-2, "log": True},
        "epochs": {"type": "int", "low": 1, "high": 3},
    },
}


def _search(project: Path, **overrides: Any) -> dict[str, Any]:
    space = project / "space.yaml"
    space.write_text(yaml.safe_dump(SPACE))
    search = {
        "space": str(space),
        "strategy": "random",
        "objectives": ["accuracy", "latency_ms"],
        "top_k": 2,
        "n_trials": 4,
        "ray": {"max_concurrent": 2},
    }
    return {**search, **overrides}


def _config(project: Path, **stages: Any) -> dict[str, object]:
    return tiny_config(
        seed=51,
        stages={
            "train": {"epochs": 2, "patience": 2},
            "nas": _search(project),
            "export": {"formats": ["onnx"]},
            "quantize": None,
            **stages,
        },
        tracking={"mlflow_uri": f"sqlite:///{project / 'mlflow.db'}"},
    )


def _finished(storage: str, name: str) -> list[Any]:
    import optuna

    study = optuna.load_study(study_name=name, storage=storage)
    return [t for t in study.get_trials() if t.state.is_finished()]


def test_nas_trials_become_candidates_and_a_rerun_resumes_the_study(
    project: Path, ray_local: Any
) -> None:
    from mlflow.tracking import MlflowClient

    from hamnet.pipeline.plan import NASStage

    cfg = config_from_dict(_config(project))
    result = run_pipeline(cfg, base_dir=project)
    assert [s.name for s in result.stages] == ["train", "nas", "export"]
    found = [c for c in result.candidates if c.stage == "nas"]
    assert 1 <= len(found) <= 2
    for candidate in found:
        assert candidate.parent_id is None and candidate.metrics is not None
        assert candidate.architecture is not None
        assert candidate.architecture["hidden_size"] in (8, 16)
        assert f"{candidate.name}+onnxruntime-fp32" in {c.name for c in result.candidates}

    storage = f"sqlite:///{(project / cfg.workdir / 'optuna.db').resolve()}"
    name = NASStage().study_name(cfg)
    first = _finished(storage, name)
    assert len(first) == 4
    states = {t.state.name for t in first}
    assert "COMPLETE" in states
    pruned = [t for t in first if t.state.name == "PRUNED"]
    assert all("divisible" in t.user_attrs["prune_reason"] for t in pruned)

    client = MlflowClient(tracking_uri=cfg.tracking.resolved_uri())
    experiment = client.get_experiment_by_name(cfg.tracking.experiment)
    assert experiment is not None
    trials = client.search_runs(
        [experiment.experiment_id], filter_string="tags.`hamnet.kind` = 'trial'"
    )
    assert len(trials) == 4
    assert {r.data.tags["hamnet.trial_state"] for r in trials} == states

    # A bigger budget on the same config continues the same study: nothing is rerun.
    more = config_from_dict(_config(project, nas=_search(project, n_trials=6)))
    assert NASStage().study_name(more) == name
    run_pipeline(more, base_dir=project)
    second = _finished(storage, name)
    assert len(second) == 6
    assert [t.number for t in second[:4]] == [t.number for t in first]
    # The resumed sampler proposes new architectures, not the first ones again.
    sampled = [repr(sorted(t.params.items())) for t in second]
    assert len(set(sampled)) == len(sampled)


def test_hpo_samples_training_only(project: Path, ray_local: Any) -> None:
    cfg = config_from_dict(
        _config(
            project,
            nas=None,
            hpo=_search(project, strategy="tpe", objectives=["accuracy"], n_trials=2, top_k=1),
        )
    )
    result = run_pipeline(cfg, base_dir=project)
    (best,) = [c for c in result.candidates if c.stage == "hpo"]
    assert set(best.params["sampled"]) == {"learning_rate", "epochs"}
    assert best.architecture is not None
    assert best.architecture["hidden_size"] == 16  # model.hamnet of tiny_config


def test_a_space_without_the_stage_group_is_a_clear_error(project: Path, ray_local: Any) -> None:
    space = project / "arch_only.yaml"
    space.write_text(yaml.safe_dump({"architecture": SPACE["architecture"]}))
    cfg = config_from_dict(_config(project, nas=None, hpo=_search(project, space=str(space))))
    with pytest.raises(ConfigError, match="no 'training' parameters"):
        run_pipeline(cfg, base_dir=project)


def test_a_search_needs_a_budget() -> None:
    with pytest.raises(ConfigError, match="needs a budget"):
        config_from_dict(tiny_config(stages={"nas": {"n_trials": None}}))


def test_nas_hands_its_best_architecture_to_distillation(project: Path, ray_local: Any) -> None:
    cfg = config_from_dict(
        _config(
            project,
            nas=_search(project, n_trials=3, top_k=1),
            distill={
                "recover_pruned": False,
                "nas_students": 1,
                "student_train": {"epochs": 1, "patience": 1},
            },
        )
    )
    result = run_pipeline(cfg, base_dir=project)
    (found,) = [c for c in result.candidates if c.stage == "nas"]
    (student,) = [c for c in result.candidates if c.stage == "distill"]
    assert student.name == f"student-{found.name}+kd-soft"
    assert student.architecture is not None and student.architecture == found.architecture
    assert student.teacher_names == ["baseline"]
