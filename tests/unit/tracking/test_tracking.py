"""Tracker against a real MLflow on SQLite: runs, lineage, artifacts, registry, champion."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tracking_helpers
from tracking_helpers import Factory, example_rows, load_pyfunc, metrics, profile, tracking

from hamnet.core.config import ConstraintsSection, OptimizeConfig, SelectionSection, TrackingSection
from hamnet.evaluate.pareto import assess, candidates_table, select
from hamnet.tracking.mlflow_models import ModelContext

quiet_mlflow = tracking_helpers.quiet_mlflow
empty_db = tracking_helpers.empty_db
db = tracking_helpers.db
factory = tracking_helpers.factory


def context() -> ModelContext:
    return ModelContext(example=example_rows(), profile=profile())


def artifact_paths(client: Any, run_id: str, path: str | None = None) -> set[str]:
    return {a.path for a in client.list_artifacts(run_id, path)}


def test_parent_and_nested_runs_carry_params_metrics_lineage_and_models(
    db: Path, factory: Factory
) -> None:
    from hamnet.tracking.tracker import Tracker

    tracker = Tracker(tracking(db))
    client = tracker.client
    limits = ConstraintsSection(max_accuracy_drop=0.01)
    parent = tracker.start_parent(
        "run-1", config=OptimizeConfig(), tags={"prefect.flow_run_id": "abc"}
    )
    base = factory.make("baseline", metrics(0.97, 2.0, 4.0))
    child = factory.make("ort-static-int8", metrics(0.95, 1.0, 1.0), base)
    base_run = tracker.log_candidate(parent, base, assess(base, 0.97, limits), model=context())
    child_run = tracker.log_candidate(parent, child, assess(child, 0.97, limits), model=context())

    run = client.get_run(parent)
    assert run.info.status == "RUNNING"
    assert run.data.params["stages.train.epochs"] == "60"
    assert run.data.params["constraints.max_accuracy_drop"] == "0.01"
    assert run.data.tags["prefect.flow_run_id"] == "abc"
    assert "config.yaml" in artifact_paths(client, parent)

    nested = client.get_run(child_run)
    tags, params, values = nested.data.tags, nested.data.params, nested.data.metrics
    assert nested.info.status == "FINISHED" and nested.info.run_name == (
        f"quantize/ort_static_int8/{child.id[:6]}"
    )
    assert tags["mlflow.parentRunId"] == parent
    assert tags["hamnet.candidate_id"] == child.id
    assert tags["hamnet.parent_candidate"] == base.id
    assert tags["hamnet.parent_candidate_name"] == "baseline"
    assert tags["hamnet.stage"] == "quantize"
    assert tags["hamnet.rejected"] == "false"
    assert tags["hamnet.meets_constraints"] == "false"
    assert "accuracy drop 2.0 points" in tags["hamnet.violations"]
    assert params["params.calibration_samples"] == "16"
    assert params["artifact.sha256"] == child.artifact.sha256
    assert params["precision"] == "int8"
    assert values["latency_p50_ms"] == 1.0
    assert values["accuracy_drop"] == pytest.approx(0.02)
    assert values["parity_max_abs_diff"] == pytest.approx(1e-3)
    assert values["param_count"] == 1234 and "params" not in values
    model_uri = tags["hamnet.model_uri"]
    logged = client.get_logged_model(tags["hamnet.model_id"])
    assert logged.source_run_id == child_run and model_uri == f"models:/{logged.model_id}"
    # the model's files live in its logged model, not (again) in the run's artifacts
    assert artifact_paths(client, child_run) == {"candidate.json"}

    base_tags = client.get_run(base_run).data.tags
    assert base_tags["hamnet.parent_candidate"] == "none"
    assert "hamnet.parent_candidate_name" not in base_tags

    tracker.end(parent, "FAILED", error="StageError: boom")
    failed = client.get_run(parent)
    assert failed.info.status == "FAILED" and failed.data.tags["hamnet.error"].endswith("boom")
    assert client.get_run(child_run).info.status == "FINISHED"  # candidates survive


def test_relative_sqlite_uri_resolves_against_base_dir(tmp_path: Path, empty_db: Path) -> None:
    from hamnet.tracking.tracker import Tracker

    (tmp_path / "project").mkdir()
    shutil.copy(empty_db, tmp_path / "project" / "mlflow.db")
    tracker = Tracker(
        TrackingSection(mlflow_uri="sqlite:///mlflow.db", experiment="rel"),
        base_dir=tmp_path / "project",
    )
    assert tracker.uri == f"sqlite:///{tmp_path / 'project' / 'mlflow.db'}"
    experiment = tracker.client.get_experiment(tracker.experiment_id)
    assert experiment.artifact_location == (tmp_path / "project" / "mlruns").as_uri()
    assert Tracker(tracker.cfg, base_dir=tmp_path / "project").experiment_id == (
        tracker.experiment_id
    )


def test_log_selection_writes_pareto_artifacts_and_recommended_metrics(
    db: Path, factory: Factory, tmp_path: Path
) -> None:
    from hamnet.evaluate.report import write_report
    from hamnet.tracking.tracker import Tracker

    tracker = Tracker(tracking(db))
    parent = tracker.start_parent("run-2", params={"note": "hand-made"}, tags={})
    base = factory.make("baseline", metrics(0.97, 2.0, 4.0))
    fast = factory.make("fast", metrics(0.965, 0.5, 1.0), base)
    slow = factory.make("slow", metrics(0.97, 3.0, 4.0), base, rejected="slower than baseline")
    cands = [base, fast, slow]
    runs: dict[str, str] = {}
    sel = select(cands, base, ConstraintsSection(max_accuracy_drop=0.01), SelectionSection())
    for c in cands:
        runs[c.id] = tracker.log_candidate(parent, c, sel.assessments[c.id])
    df = candidates_table(cands, sel)
    write_report(df, sel, tmp_path / "report")
    tracker.log_selection(parent, df, sel, tmp_path / "report", candidate_runs=runs)
    tracker.end(parent, "FINISHED")

    client = tracker.client
    assert {"pareto/candidates.csv", "pareto/front.csv", "pareto/pareto.png"} <= artifact_paths(
        client, parent, "pareto"
    )
    run = client.get_run(parent)
    assert run.info.status == "FINISHED"
    assert run.data.params["note"] == "hand-made"
    assert run.data.tags["hamnet.recommended_name"] == "fast"
    assert run.data.tags["hamnet.recommended_run_id"] == runs[fast.id]
    assert run.data.tags["hamnet.constraints_satisfied"] == "true"
    # the parent's figures of the recommended candidate share the candidates' columns
    assert run.data.metrics["latency_p50_ms"] == 0.5
    assert run.data.metrics["accuracy"] == 0.965
    assert run.data.metrics["accuracy_drop"] == pytest.approx(0.005)
    assert run.data.metrics["n_candidates"] == 3
    assert not [k for k in run.data.metrics if k.startswith("recommended.")]
    children = {r.info.run_id: r for r in client.search_runs([tracker.experiment_id])}
    marked = [i for i in runs.values() if children[i].data.tags["hamnet.recommended"] == "true"]
    assert marked == [runs[fast.id]]
    assert children[runs[fast.id]].data.metrics["recommended"] == 1.0
    assert children[runs[base.id]].data.metrics["recommended"] == 0.0
    front = {c.id for c in cands if children[runs[c.id]].data.tags["hamnet.pareto"] == "true"}
    assert front == set(sel.front_ids)
    assert {children[runs[c.id]].data.metrics["pareto_front"] for c in cands} == {0.0, 1.0}
    local = client.download_artifacts(parent, "pareto/front.csv", str(tmp_path / "dl"))
    assert Path(local).read_text().count("\n") == 1 + 2  # header + baseline + fast
    rejected = [children[runs[slow.id]]]
    assert rejected[0].data.tags["hamnet.rejected"] == "true"
    assert rejected[0].data.tags["hamnet.rejected_reason"] == "slower than baseline"


def test_registry_moves_the_champion_only_when_the_new_model_is_better(
    db: Path, factory: Factory
) -> None:
    from hamnet.tracking.tracker import Tracker

    tracker = Tracker(tracking(db))
    client = tracker.client
    limits = ConstraintsSection(max_accuracy_drop=0.02)
    parent = tracker.start_parent("registry", tags={})

    def register(
        name: str, latency: float, *, constraints: ConstraintsSection = limits, **kw: Any
    ) -> Any:
        cand = factory.make(name, metrics(0.96, latency, 1.0), **kw)
        verdict = assess(cand, 0.97, constraints)
        run_id = tracker.log_candidate(parent, cand, verdict)
        return tracker.register(
            cand,
            run_id,
            verdict,
            objective="latency_p50_ms",
            min_improvement=0.05,
            constraints=constraints,
            baseline_accuracy=0.97,
            model=context(),
        )

    first = register("v1", 0.52)
    assert (first.version, first.champion_moved, first.previous_champion) == ("1", True, None)
    assert first.message == "v1 is the first champion of hamnet-test: latency p50 0.52 ms"

    close = register("v2", 0.50)
    assert not close.champion_moved
    assert close.message == (
        "champion stays v1 over v2: latency p50 0.50 ms vs 0.52 ms (4% better, needs more than 5%)"
    )

    better = register("v3", 0.41)
    assert better.champion_moved and better.previous_champion == "1"
    assert (
        better.message
        == "champion moved from v1 to v3: latency p50 0.41 ms vs 0.52 ms (21% better)"
    )

    same = register("v4", 0.30, content="v3")  # same file as v3
    assert not same.champion_moved and "it is the recommended model" in same.message
    assert same.version == "3"  # the identical file reuses its version, none is added

    # Tighter constraints: the champion (drop 1 point) now fails them, a slower but
    # accurate model meets them and takes over despite its latency.
    strict = ConstraintsSection(max_accuracy_drop=0.005)
    exact = factory.make("v5", metrics(0.97, 0.9, 1.0))
    verdict = assess(exact, 0.97, strict)
    run_id = tracker.log_candidate(parent, exact, verdict, model=context())
    moved = tracker.register(
        exact, run_id, verdict, objective="latency_p50_ms", min_improvement=0.05, constraints=strict
    )
    assert moved.champion_moved and moved.message.startswith("champion moved from v3 to v4")
    assert "meets the constraints, the old one does not" in moved.message

    champion = client.get_model_version_by_alias("hamnet-test", "champion")
    assert str(champion.version) == "4"  # an int from the SQLite store, a str over REST
    tags = champion.tags
    assert tags["hamnet.candidate_id"] == exact.id
    assert tags["hamnet.runtime"] == "onnxruntime" and tags["hamnet.precision"] == "fp32"
    assert tags["hamnet.meets_constraints"] == "true"
    assert float(tags["hamnet.metric.latency_p50_ms"]) == 0.9
    assert '"max_accuracy_drop":0.005' in tags["hamnet.constraints"]
    assert tags["hamnet.champion_decision"] == moved.message
    assert len(client.search_model_versions("name='hamnet-test'")) == 4

    # The registered version is an MLflow model (logged at registration when the
    # candidate run had none) with a signature, and it predicts what ONNX Runtime does.
    from hamnet.backends.session import load_session

    assert tags["hamnet.model_uri"] == client.get_run(run_id).data.tags["hamnet.model_uri"]
    loaded = load_pyfunc("models:/hamnet-test@champion", tracker.uri)
    assert loaded.metadata.signature is not None
    x = example_rows(3)
    expected = load_session(exact.artifact, "onnxruntime", profile()).run(x)
    np.testing.assert_allclose(loaded.predict(x)["logits"], expected, rtol=1e-6)
