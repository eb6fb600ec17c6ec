"""The registered champion is a real MLflow model: ``mlflow models serve`` serves it."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, export_tiny_onnx

pytestmark = pytest.mark.integration


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 150.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"mlflow models serve exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/ping", timeout=2) as answer:
                if answer.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    raise AssertionError(f"mlflow models serve did not answer {url}/ping in {timeout:.0f} s")


def _champion(tmp_path: Path, uri: str) -> tuple[object, np.ndarray]:
    """Log an OpenVINO IR candidate with its model, register it: the first champion."""
    import openvino as ov

    from hamnet.core.artifacts import ArtifactStore
    from hamnet.core.candidate import Candidate, Metrics
    from hamnet.core.config import ConstraintsSection, TrackingSection
    from hamnet.core.hardware import load_profile
    from hamnet.evaluate.pareto import assess
    from hamnet.tracking.mlflow_models import ModelContext
    from hamnet.tracking.tracker import Tracker

    onnx_path = export_tiny_onnx(tmp_path / "tiny.onnx")
    xml = tmp_path / "ir" / "model.xml"
    xml.parent.mkdir()
    ov.save_model(ov.convert_model(str(onnx_path)), str(xml), compress_to_fp16=False)
    ref = ArtifactStore(tmp_path / "store").put(xml, "openvino")
    measured = Metrics(
        accuracy=0.9, latency_p50_ms=0.1, latency_p90_ms=0.12, latency_batch_size=1,
        throughput_sps=1e4, throughput_batch_size=32, size_mb=ref.size_mb, params=100,
        flops=1000, peak_memory_mb=10.0, runtime="openvino", threads=1, eval_samples=10,
    )  # fmt: skip
    candidate = Candidate.create(
        name="ov-fp32", stage="export", method="export_openvino", artifact=ref,
        runtime="openvino", metrics=measured,
    )  # fmt: skip
    profile = load_profile("x86-avx2", require_present=False).model_copy(update={"threads": 1})
    x = np.random.default_rng(0).standard_normal((3, 16)).astype(np.float32)
    tracker = Tracker(
        TrackingSection(mlflow_uri=uri, experiment="serve", registered_model="hamnet-serve")
    )
    parent = tracker.start_parent("serve", tags={})
    verdict = assess(candidate, 0.9, ConstraintsSection())
    context = ModelContext.from_inputs(x, profile)
    run_id = tracker.log_candidate(parent, candidate, verdict, model=context)
    result = tracker.register(
        candidate, run_id, verdict, objective="latency_p50_ms", min_improvement=0.05,
        constraints=ConstraintsSection(),
    )  # fmt: skip
    assert result.champion_moved
    tracker.end(parent)
    from hamnet.backends.session import load_session

    return candidate, load_session(ref, "openvino", profile).run(x)


def test_mlflow_models_serve_serves_the_champion(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    _, expected = _champion(tmp_path, uri)
    x = np.random.default_rng(0).standard_normal((3, 16)).astype(np.float32)
    port = _free_port()
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": uri,
        # the server runs `uvicorn` from PATH: this environment's, as an activated one would
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
        "PYTHONPATH": os.pathsep.join(
            [str(REPO / "src"), str(REPO), os.environ.get("PYTHONPATH", "")]
        ),
    }
    mlflow_cli = Path(sys.executable).parent / "mlflow"
    proc = subprocess.Popen(
        [
            str(mlflow_cli), "models", "serve", "-m", "models:/hamnet-serve@champion",
            "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port), "-w", "1",
        ],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(url, proc)
        request = urllib.request.Request(
            f"{url}/invocations",
            data=json.dumps({"inputs": x.tolist()}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=60) as answer:
            predictions = np.asarray(json.loads(answer.read())["predictions"], dtype=np.float32)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    np.testing.assert_allclose(predictions, expected, rtol=1e-5, atol=1e-6)
