"""The hamnet-optimize flow in-process on a real (ephemeral) Prefect API and real MLflow."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import tiny_config, write_config
from reliability.faults import FailFirstAttempts

from hamnet.pipeline.hooks import stage_hooks

pytestmark = pytest.mark.usefixtures("prefect_harness")


def _run(project: Path, cfg: dict[str, object]) -> dict[str, object]:
    from flows.hamnet_optimize import hamnet_optimize

    path = write_config(project, cfg)
    return hamnet_optimize(config_path=str(path), base_dir=str(project))


def _client(uri: str):  # type: ignore[no-untyped-def]
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def test_flow_tracks_candidates_and_reruns_from_cache(project: Path) -> None:
    uri = f"sqlite:///{project / 'mlflow.db'}"
    cfg = tiny_config(tracking={"mlflow_uri": uri})
    first = _run(project, cfg)

    assert first["cached_stages"] == []
    assert [s["name"] for s in first["stages"]] == ["train", "export", "quantize"]
    assert first["recommended"] is not None
    # baseline; ORT, ORT fused-attention and OV FP32; ORT dynamic + static INT8 of the plain
    # ONNX; ORT dynamic INT8 of the fused one (static INT8 skips contrib operators)
    assert first["candidates"] == 7

    client = _client(uri)
    exp = client.get_experiment_by_name("tests")
    runs = client.search_runs([exp.experiment_id])
    parent = client.get_run(first["mlflow_run_id"])
    assert parent.info.status == "FINISHED"
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 7
    fused = [r for r in children if r.data.tags["hamnet.method"] == "export_onnx_ort_fused"]
    assert len(fused) == 1
    by_stage = {r.data.tags["hamnet.stage"] for r in children}
    assert by_stage == {"train", "export", "quantize"}
    for child in children:
        assert "latency_p50_ms" in child.data.metrics
        assert "hamnet.parent_candidate" in child.data.tags
        assert child.data.tags["hamnet.model_uri"].startswith("models:/"), "model not logged"
    assert [r.data.tags["hamnet.recommended"] for r in children].count("true") == 1
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "pareto")}
    assert {"pareto/candidates.csv", "pareto/front.csv", "pareto/pareto.png"} <= artifacts
    versions = client.search_model_versions("name='hamnet-tiny'")
    assert len(versions) >= 1
    assert client.get_model_version_by_alias("hamnet-tiny", "champion") is not None

    runs_before = len(client.search_runs([exp.experiment_id]))
    models_before = len(client.search_logged_models([exp.experiment_id]))
    second = _run(project, cfg)
    assert second["cached_stages"] == ["train", "export", "quantize"]
    # the cached rerun adds its parent only: it points to the candidate runs of the first
    assert len(client.search_runs([exp.experiment_id])) == runs_before + 1
    assert len(client.search_logged_models([exp.experiment_id])) == models_before
    rerun = client.get_run(str(second["mlflow_run_id"]))
    assert rerun.data.tags["hamnet.reused_runs"] == "7"
    assert rerun.data.tags["hamnet.recommended_run_id"] in {r.info.run_id for r in children}
    assert second["recommended_id"] == first["recommended_id"]
    assert second["mlflow_run_id"] != first["mlflow_run_id"]
    stage_seconds = sum(s["seconds"] for s in second["stages"])
    assert stage_seconds < sum(s["seconds"] for s in first["stages"])


def test_stage_is_retried_after_one_injected_failure(project: Path) -> None:
    uri = f"sqlite:///{project / 'mlflow.db'}"
    cfg = tiny_config(
        seed=11,
        tracking={"mlflow_uri": uri},
        stages={"quantize": None},
        execution={"retries": 1, "cache": False},
    )
    with stage_hooks(FailFirstAttempts("export", times=1)):
        summary = _run(project, cfg)
    assert summary["recommended"] is not None
    counter = project / ".hamnet" / "fault-export.count"
    assert counter.read_text() == "1"  # failed once, then the retry passed


def test_failed_stage_fails_the_flow_and_rerun_resumes_from_cache(project: Path) -> None:
    from hamnet.core.errors import StageError

    uri = f"sqlite:///{project / 'mlflow.db'}"
    cfg = tiny_config(seed=12, tracking={"mlflow_uri": uri}, execution={"retries": 1})
    with (
        pytest.raises(StageError, match="injected fault in stage 'quantize'"),
        stage_hooks(FailFirstAttempts("quantize", times=5)),
    ):
        _run(project, cfg)
    assert (project / ".hamnet" / "fault-quantize.count").read_text() == "2"  # 1 try + 1 retry

    client = _client(uri)
    exp = client.get_experiment_by_name("tests")
    failed = [r for r in client.search_runs([exp.experiment_id]) if r.info.status == "FAILED"]
    assert len(failed) == 1
    kept = [
        r
        for r in client.search_runs([exp.experiment_id])
        if r.data.tags.get("mlflow.parentRunId") == failed[0].info.run_id
    ]
    assert {r.data.tags["hamnet.stage"] for r in kept} == {"train", "export"}

    summary = _run(project, cfg)
    assert summary["cached_stages"] == ["train", "export"]
    assert summary["recommended"] is not None


def test_impossible_constraints_report_the_nearest_candidate(project: Path) -> None:
    uri = f"sqlite:///{project / 'mlflow.db'}"
    cfg = tiny_config(
        seed=13,
        tracking={"mlflow_uri": uri},
        constraints={"max_latency_ms": 1e-6, "target_size_mb": 1e-6},
        stages={"quantize": {"methods": ["ort_dynamic_int8"]}},
    )
    summary = _run(project, cfg)
    assert summary["constraints_satisfied"] is False
    assert summary["recommended"] is not None
    assert "no candidate meets the constraints" in str(summary["message"])
