"""`hamnet serve` as a real process on loopback, fed by a real MLflow registry.

Every test runs once per installed HTTP server (``--server uvicorn`` and ``--server
granian``). One server per HTTP server for the module (A/B between the aliases
``champion`` and ``challenger`` of a registered model on a SQLite registry under a temp
folder, alias poll every 0.5 s): predictions match ONNX Runtime called directly, bad
inputs get 422 and the server stays up, metrics count requests, the split is within
tolerance and sticky per key, and the champion is reloaded when its alias moves (by the
poller and by ``POST /reload``).
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import export_tiny_onnx

pytestmark = pytest.mark.integration

MODEL = "tiny-served"


@dataclass
class Server:
    url: str
    uri: str
    log: Path
    files: dict[str, Path]  # model version -> ONNX file
    process: subprocess.Popen[str]

    def get(self, path: str) -> Any:
        import httpx

        return httpx.get(self.url + path, timeout=10)

    def post(self, path: str, **kwargs: Any) -> Any:
        import httpx

        return httpx.post(self.url + path, timeout=10, **kwargs)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _register(uri: str, folder: Path, count: int) -> dict[str, Path]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiment = client.create_experiment("serving", artifact_location=(folder / "mlruns").as_uri())
    client.create_registered_model(MODEL)
    files = {}
    for seed in range(count):
        (folder / f"model-{seed}").mkdir()
        path = export_tiny_onnx(folder / f"model-{seed}" / "model.onnx", hidden=8 + seed, seed=seed)
        run = client.create_run(experiment, run_name=f"candidate-{seed}")
        client.log_metric(run.info.run_id, "accuracy", 0.9 + seed / 100)
        client.log_artifact(run.info.run_id, str(path), "model")
        client.set_terminated(run.info.run_id)
        version = client.create_model_version(
            MODEL, source=f"{run.info.artifact_uri}/model", run_id=run.info.run_id,
            tags={"hamnet.runtime": "onnxruntime", "hamnet.format": "onnx"},
        )  # fmt: skip
        files[str(version.version)] = path
    client.set_registered_model_alias(MODEL, "champion", "1")
    client.set_registered_model_alias(MODEL, "challenger", "2")
    return files


HTTP_SERVERS = [s for s in ("uvicorn", "granian") if importlib.util.find_spec(s) is not None]


@pytest.fixture(scope="module", params=HTTP_SERVERS)
def server(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[Server]:
    import httpx

    folder = tmp_path_factory.mktemp(f"serving-{request.param}")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    files = _register(uri, folder, 3)
    port = _free_port()
    log = folder / "ab.jsonl"
    command = [
        sys.executable, "-m", "hamnet", "serve", f"models:/{MODEL}@champion",
        "--port", str(port), "--tracking-uri", uri, "--ab", "champion=0.7,challenger=0.3",
        "--ab-log", str(log), "--poll-seconds", "0.5", "--threads", "1", "--seed", "0",
        "--batch-window-ms", "2", "--server", request.param,
    ]  # fmt: skip
    env = {**os.environ, "COLUMNS": "200", "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        command, cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        if process.poll() is not None:
            raise AssertionError(f"hamnet serve exited early:\n{process.stdout.read()}")  # type: ignore[union-attr]
        try:
            if httpx.get(url + "/ready", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"hamnet serve not ready:\n{process.stdout.read()}")  # type: ignore[union-attr]
        time.sleep(0.2)
    served = Server(url, uri, log, files, process)
    try:
        yield served
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _expected(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, {"x": x})[0])


def test_predictions_match_onnxruntime_and_model_reports_mlflow(server: Server) -> None:
    x = np.random.default_rng(0).normal(size=(4, 16)).astype(np.float32)
    for key in ("alice", "bob", "carol", "dave", "erin"):
        answer = server.post(
            "/predict", json={"inputs": x.tolist()}, headers={"X-Request-Key": key}
        )
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["runtime"] == "onnxruntime" and body["model"] == MODEL
        expected = _expected(server.files[body["version"]], x)
        np.testing.assert_allclose(body["logits"], expected, rtol=1e-5, atol=1e-6)
    info = server.get("/model").json()
    arms = {a["arm"]: a for a in info["arms"]}
    assert arms["challenger"]["alias"] == "challenger" and arms["challenger"]["weight"] == 0.3
    assert arms["champion"]["metrics"]["accuracy"] == pytest.approx(0.9)
    assert arms["champion"]["run_id"]


def test_bad_inputs_get_422_and_the_server_stays_up(server: Server) -> None:
    for body in ({"input": [1.0] * 5}, {"input": ["x"] * 16}, {"inputs": [[1.0] * 16, [2.0]]}):
        response = server.post("/predict", json=body)
        assert response.status_code == 422
        assert "must" in response.json()["detail"] or "should" in response.json()["detail"]
    raw = server.post(
        "/predict", content=b"\x00garbage", headers={"content-type": "application/json"}
    )
    assert raw.status_code == 422
    assert server.get("/health").json() == {"status": "ok"}
    assert server.post("/predict", json={"input": [0.0] * 16}).status_code == 200
    assert server.process.poll() is None


def test_split_is_within_tolerance_and_sticky(server: Server) -> None:
    import httpx

    arms: dict[str, str] = {}
    with httpx.Client(base_url=server.url, timeout=10) as client:
        for i in range(400):
            key = f"user-{i}"
            body = {"input": [i % 5 / 5] * 16, "label": i % 3, "key": key}
            arms[key] = client.post("/predict", json=body).json()["arm"]
        share = sum(a == "challenger" for a in arms.values()) / len(arms)
        assert abs(share - 0.3) < 0.1  # > 4 standard deviations at n=400
        for key in list(arms)[:50]:
            again = client.post("/predict", json={"input": [0.0] * 16},
                                headers={"X-Request-Key": key})  # fmt: skip
            assert again.json()["arm"] == arms[key]
    text = server.get("/metrics").text
    count = sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("hamnet_requests_total{") and 'status="200"' in line
    )
    assert count >= 450
    assert 'hamnet_model_info{arm="champion"' in text


def test_champion_reloads_when_the_alias_moves(server: Server) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=server.uri, registry_uri=server.uri)
    client.set_registered_model_alias(MODEL, "champion", "3")
    deadline = time.monotonic() + 60
    while server.get("/ready").json()["versions"]["champion"] != "3":
        assert time.monotonic() < deadline, "the poller did not pick up the moved alias"
        time.sleep(0.2)
    x = np.ones((1, 16), dtype=np.float32)
    key = next(f"k{i}" for i in range(1000) if _arm(server, f"k{i}") == "champion")
    body = server.post("/predict", json={"inputs": x.tolist(), "key": key}).json()
    assert body["version"] == "3"
    np.testing.assert_allclose(body["logits"], _expected(server.files["3"], x), rtol=1e-5,
                               atol=1e-6)  # fmt: skip

    client.set_registered_model_alias(MODEL, "challenger", "1")
    reload = server.post("/reload")
    assert reload.status_code == 200
    assert server.get("/ready").json()["versions"] == {"champion": "3", "challenger": "1"}
    assert 'hamnet_reloads_total{arm="champion"} 1.0' in server.get("/metrics").text


def _arm(server: Server, key: str) -> str:
    from hamnet.serving.ab import ABRouter

    return ABRouter({"champion": 0.7, "challenger": 0.3}).assign(key)


def test_ab_report_reads_the_servers_log(server: Server) -> None:
    from typer.testing import CliRunner

    from hamnet.ops.cli import app

    result = CliRunner().invoke(app, ["ab-report", str(server.log), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    arms = {a["arm"]: a for a in report["arms"]}
    assert set(arms) == {"champion", "challenger"} and report["baseline"] == "champion"
    assert arms["challenger"]["labelled"] > 0 and arms["champion"]["accuracy"] is not None
    assert {c["metric"] for c in report["comparisons"]} == {"latency_ms", "error_rate", "accuracy"}
