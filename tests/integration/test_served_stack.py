"""End to end on a served stack: Prefect server + process worker + MLflow server.

Starts every process on free loopback ports from a copy of the project, deploys
prefect.yaml, runs the deployment through the Prefect CLI and checks MLflow.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import tiny_config

pytestmark = pytest.mark.integration


def test_deployment_runs_through_the_cli_and_lands_in_mlflow(project: Path) -> None:
    from hamnet.ops import stack

    (project / "configs" / "default.yaml").write_text(yaml.safe_dump(tiny_config(seed=21)))
    deployments = yaml.safe_load((project / "prefect.yaml").read_text())["deployments"]
    assert deployments[0]["schedules"][0]["cron"] == "0 2 * * *"
    assert deployments[0]["schedules"][0]["timezone"] == "UTC"

    served = stack.up(project, mlflow=True, echo=False)
    try:
        env = served.env
        prefect = str(Path(sys.executable).parent / "prefect")
        proc = subprocess.run(
            [prefect, "deployment", "run", "hamnet-optimize/default", "--watch",
             "--watch-timeout", "600"],
            cwd=project, env=env, capture_output=True, text=True, timeout=700,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        assert "COMPLETED" in (proc.stdout + proc.stderr).upper()

        schedules = subprocess.run(
            [prefect, "deployment", "inspect", "hamnet-optimize/default"],
            cwd=project, env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert "0 2 * * *" in schedules.stdout

        from mlflow.tracking import MlflowClient

        assert served.mlflow_uri is not None
        client = MlflowClient(tracking_uri=served.mlflow_uri, registry_uri=served.mlflow_uri)
        exp = client.get_experiment_by_name("tests")
        runs = client.search_runs([exp.experiment_id])
        parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
        assert len(parents) == 1 and parents[0].info.status == "FINISHED"
        assert parents[0].data.tags["prefect.deployment"] == "default"
        children = [r for r in runs if r.data.tags.get("mlflow.parentRunId")]
        assert len(children) == 7  # as in test_flow: fused-attention ONNX and its INT8 too
        pareto = {a.path for a in client.list_artifacts(parents[0].info.run_id, "pareto")}
        assert "pareto/front.csv" in pareto and "pareto/pareto.png" in pareto
        alias = client.get_model_version_by_alias("hamnet-tiny", "champion")
        assert alias.version == "1"
    finally:
        stack.down(project, echo=False)
