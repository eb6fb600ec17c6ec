"""Candidates logged as real MLflow models: flavors, signatures, pyfunc predictions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tracking_helpers
import yaml
from tracking_helpers import Factory, example_rows, load_pyfunc, metrics, profile, tracking

from hamnet.core.config import ConstraintsSection

quiet_mlflow = tracking_helpers.quiet_mlflow
empty_db = tracking_helpers.empty_db
db = tracking_helpers.db
factory = tracking_helpers.factory


@pytest.mark.parametrize(
    ("runtime", "flavor"), [("onnxruntime", "onnx"), ("openvino", "python_function")]
)
def test_logged_model_predicts_what_hamnet_runtime_predicts(
    db: Path, factory: Factory, runtime: str, flavor: str
) -> None:
    from hamnet.backends.session import load_session
    from hamnet.evaluate.pareto import assess
    from hamnet.tracking.mlflow_models import ModelContext, model_flavor
    from hamnet.tracking.tracker import Tracker

    tracker = Tracker(tracking(db))
    parent = tracker.start_parent("models", tags={})
    candidate = factory.make(f"m-{runtime}", metrics(0.9, 1.0, 1.0), runtime=runtime)
    assert model_flavor(candidate) == flavor
    verdict = assess(candidate, 0.9, ConstraintsSection())
    context = ModelContext(example=example_rows(), profile=profile())
    run_id = tracker.log_candidate(parent, candidate, verdict, model=context)

    tags = tracker.client.get_run(run_id).data.tags
    logged = tracker.client.get_logged_model(tags["hamnet.model_id"])
    assert logged.source_run_id == run_id and str(logged.status).endswith("READY")
    assert logged.model_type == f"hamnet-{candidate.artifact.format}"
    model = load_pyfunc(tags["hamnet.model_uri"], tracker.uri)
    assert flavor in model.metadata.flavors
    signature = model.metadata.signature
    assert signature is not None
    assert signature.inputs.to_dict()[0]["tensor-spec"] == {"dtype": "float32", "shape": (-1, 4)}
    assert signature.outputs.to_dict()[0]["tensor-spec"] == {"dtype": "float32", "shape": (-1, 3)}

    x = example_rows(5)
    expected = load_session(candidate.artifact, runtime, profile()).run(x)
    got = model.predict(x)
    got = got["logits"] if isinstance(got, dict) else got
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    if flavor == "python_function":  # hamnet's wrapper takes a DataFrame too
        np.testing.assert_allclose(model.predict(pd.DataFrame(x)), expected, rtol=1e-6)


def test_pyfunc_model_is_logged_from_code_with_its_files_and_descriptor(
    db: Path, factory: Factory, tmp_path: Path
) -> None:
    import mlflow.artifacts

    from hamnet.evaluate.pareto import assess
    from hamnet.tracking.mlflow_models import ModelContext
    from hamnet.tracking.tracker import Tracker

    tracker = Tracker(tracking(db))
    parent = tracker.start_parent("files", tags={})
    candidate = factory.make("ov", metrics(0.9, 1.0, 1.0), runtime="openvino")
    context = ModelContext(example=example_rows(), profile=profile())
    run_id = tracker.log_candidate(
        parent, candidate, assess(candidate, 0.9, ConstraintsSection()), model=context
    )
    logged = tracker.client.get_logged_model(
        tracker.client.get_run(run_id).data.tags["hamnet.model_id"]
    )
    mlflow.artifacts.download_artifacts(
        artifact_uri=logged.artifact_location, dst_path=str(tmp_path / "dl")
    )
    local = next((tmp_path / "dl").rglob("MLmodel")).parent
    mlmodel = (local / "MLmodel").read_text()
    assert "loader_module: mlflow.pyfunc.loaders.code_model" in mlmodel  # models from code
    assert (local / "pyfunc_model.py").is_file()
    assert not list(local.rglob("*.pkl"))  # nothing pickled
    files = local / "artifacts" / "files"
    assert {p.name for p in files.iterdir()} == {"model.xml", "model.bin", "hamnet_model.yaml"}
    descriptor = yaml.safe_load((files / "hamnet_model.yaml").read_text())
    assert descriptor["runtime"] == "openvino" and descriptor["format"] == "openvino"
    assert descriptor["sha256"] == candidate.artifact.sha256
    assert (local / "input_example.json").is_file()
    # the run's metrics are the logged model's metrics too
    assert {m.key for m in logged.metrics or []} >= {"accuracy", "latency_p50_ms", "size_mb"}


def test_module_artifact_is_logged_with_its_files_and_predicts_like_torch(
    db: Path, tmp_path: Path
) -> None:
    import torch
    from torch import nn

    from hamnet.backends.session import load_session
    from hamnet.core.artifacts import ArtifactStore
    from hamnet.core.candidate import Candidate
    from hamnet.evaluate.pareto import assess
    from hamnet.models.sources import InputSpec, TensorSpec, save_module_artifact
    from hamnet.tracking.mlflow_models import ModelContext, model_flavor
    from hamnet.tracking.tracker import Tracker

    torch.manual_seed(0)
    module = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    main = save_module_artifact(
        tmp_path / "staging" / "art",
        inputs=InputSpec(TensorSpec(shape=[1, 4])),
        module=module,
        output_kind="class_scores",
    )
    ref = ArtifactStore(tmp_path / "store").put(main, "torch-module")
    candidate = Candidate.create(
        name="user-module", stage="load", method="module", artifact=ref, runtime="torch",
        metrics=metrics(0.9, 1.0, 1.0),
    )  # fmt: skip
    assert model_flavor(candidate) == "python_function"
    tracker = Tracker(tracking(db))
    parent = tracker.start_parent("module", tags={})
    context = ModelContext(example=example_rows(), profile=profile(), trust_checkpoint=True)
    run_id = tracker.log_candidate(
        parent, candidate, assess(candidate, 0.9, ConstraintsSection()), model=context
    )
    model = load_pyfunc(tracker.client.get_run(run_id).data.tags["hamnet.model_uri"], tracker.uri)
    x = example_rows(4)
    expected = load_session(ref, "torch", profile(), trust_checkpoint=True).run(x)
    np.testing.assert_allclose(model.predict(x), expected, rtol=1e-6)
