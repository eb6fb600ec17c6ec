"""A real tiny run tracked in MLflow: the runs table, the champion model, a cached rerun."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tracking_helpers
from conftest import tiny_config
from tracking_helpers import load_pyfunc

from hamnet.core.config import OptimizeConfig, config_from_dict

quiet_mlflow = tracking_helpers.quiet_mlflow
empty_db = tracking_helpers.empty_db
db = tracking_helpers.db


def _config(db: Path) -> OptimizeConfig:
    return config_from_dict(
        tiny_config(
            stages={
                "train": {"epochs": 1},
                "export": {"formats": ["onnx"]},
                "quantize": None,
            },
            tracking={"mlflow_uri": f"sqlite:///{db}"},
            execution={"cache": False},
        )
    )


def _run(config: OptimizeConfig, base: Path, cached: dict[str, list[Any]] | None = None) -> Any:
    """Walk the plan in-process; with ``cached``, each stage's candidates come from it, as
    the Prefect flow's cache hits give them."""
    from rich.console import Console

    from hamnet.pipeline.run import PipelineRun, execute_stage

    with PipelineRun(config, base_dir=base, console=Console(file=io.StringIO())) as run:
        for stage in run.plan:
            if cached is not None:
                run.add(stage, cached[stage.name], cached=True)
                continue
            new, notes = execute_stage(
                config, stage.name, run.candidates, base_dir=base, parent_run_id=run.parent_run_id
            )
            run.add(stage, new, notes=notes, seconds=1.0)
        return run, run.finish()


def _children(client: Any, experiment_id: str, parent_id: str) -> list[Any]:
    return [
        r
        for r in client.search_runs([experiment_id])
        if r.data.tags.get("mlflow.parentRunId") == parent_id
    ]


def test_tracked_run_marks_recommended_and_front_and_a_cached_rerun_reuses_runs(
    tmp_path: Path, db: Path
) -> None:
    from mlflow.tracking import MlflowClient

    from hamnet.backends.session import load_session

    config = _config(db)
    run, result = _run(config, tmp_path)
    client = MlflowClient(tracking_uri=f"sqlite:///{db}", registry_uri=f"sqlite:///{db}")
    experiment = client.get_experiment_by_name("tests").experiment_id
    parent = client.get_run(result.mlflow_run_id)
    children = _children(client, experiment, parent.info.run_id)
    recommended = result.selection.recommended
    assert len(children) == len(result.candidates) == 3  # torch, ORT, ORT with fused attention

    marked = [r for r in children if r.data.tags["hamnet.recommended"] == "true"]
    assert len(marked) == 1 and marked[0].data.metrics["recommended"] == 1.0
    assert marked[0].data.tags["hamnet.candidate_id"] == recommended.id
    assert parent.data.tags["hamnet.recommended_run_id"] == marked[0].info.run_id
    front = {r.data.tags["hamnet.candidate_id"] for r in children if r.data.metrics["pareto_front"]}
    assert front == set(result.selection.front_ids)
    assert {r.data.tags["hamnet.pareto"] for r in children} <= {"true", "false"}
    for child in children:  # short names that fit the runs table; every one a real model
        stage, method, short = child.info.run_name.split("/")
        tags = child.data.tags
        assert (stage, method) == (tags["hamnet.stage"], tags["hamnet.method"])
        assert child.data.tags["hamnet.candidate_id"].startswith(short)
        assert child.data.tags["hamnet.model_uri"].startswith("models:/m-")
        assert "params" not in child.data.metrics
    # the parent's figures share the candidates' columns
    assert parent.data.metrics["accuracy"] == pytest.approx(recommended.metrics.accuracy)
    assert parent.data.metrics["latency_p50_ms"] == pytest.approx(
        marked[0].data.metrics["latency_p50_ms"]
    )
    assert parent.data.tags["hamnet.registered_model"] == "hamnet-tiny"
    assert parent.data.tags["hamnet.registered_version"] == result.registration.version
    datasets = parent.inputs.dataset_inputs
    assert [d.dataset.name for d in datasets] == ["digits"]
    assert datasets[0].tags[0].value == "validation"

    # the champion is the recommended candidate's MLflow model, with a signature
    champion = client.get_model_version_by_alias("hamnet-tiny", "champion")
    assert champion.tags["hamnet.candidate_id"] == recommended.id
    model = load_pyfunc("models:/hamnet-tiny@champion", f"sqlite:///{db}")
    assert model.metadata.signature is not None
    x = run.observers[2].model_context(run).example
    expected = load_session(recommended.artifact, recommended.runtime, run.profile).run(x)
    got = model.predict(x)
    got = next(iter(got.values())) if isinstance(got, dict) else got
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)

    # a rerun whose stages all come from the cache logs no candidate run and no model
    runs_before = len(client.search_runs([experiment]))
    models_before = len(client.search_logged_models([experiment]))
    by_stage = {
        s.name: [c for c in result.candidates if c.id in s.candidates] for s in result.stages
    }
    _, again = _run(config, tmp_path, cached=by_stage)
    assert len(client.search_runs([experiment])) == runs_before + 1  # the new parent only
    assert len(client.search_logged_models([experiment])) == models_before
    second = client.get_run(again.mlflow_run_id)
    assert not _children(client, experiment, second.info.run_id)
    reused = {
        k.removeprefix("hamnet.reused_run."): v
        for k, v in second.data.tags.items()
        if k.startswith("hamnet.reused_run.")
    }
    assert reused == {r.data.tags["hamnet.candidate_id"]: r.info.run_id for r in children}
    assert second.data.tags["hamnet.reused_runs"] == "3"
    assert second.data.tags["hamnet.recommended_run_id"] == marked[0].info.run_id
    assert again.registration.version == result.registration.version
