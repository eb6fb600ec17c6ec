"""`hamnet serve` on Ray Serve: a real local Ray, two replicas of the app, real HTTP.

One local Ray instance and one deployment (two replicas, @serve.batch with a 20 ms
window so concurrent requests share batches) for the module, torn down with
``serve.shutdown()`` and ``ray.shutdown()``. Predictions match ONNX Runtime called
directly, the API answers as the single-process app does (422s, /ready, /model), and
concurrent requests are batched and spread over both replicas.
"""

from __future__ import annotations

import concurrent.futures
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import export_tiny_onnx

pytestmark = pytest.mark.integration

pytest.importorskip("ray.serve", reason="needs the serve extra (ray[serve])")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    import ray
    from ray import serve

    from hamnet.serving.ray_serve import RayServer
    from hamnet.serving.state import ServeSettings

    folder = tmp_path_factory.mktemp("ray-serving")
    model = export_tiny_onnx(folder / "tiny.onnx")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    settings = ServeSettings(
        arms={"main": str(model)}, runtime="onnxruntime", threads=1, poll_seconds=0,
        batch_window_ms=20.0, max_batch_size=8,
    )  # fmt: skip
    server = RayServer(settings, address="local", replicas=2, port=_free_port(), replica_cpus=0.5)
    try:
        server.start()
        yield server.url, model
    finally:
        server.stop()
        serve.shutdown()  # no-ops once the server has torn down its own Ray
        ray.shutdown()


def _post(url: str, body: Any) -> Any:
    import httpx

    return httpx.post(url + "/predict", json=body, timeout=30)


def _direct(model: Path, x: np.ndarray) -> np.ndarray:
    from hamnet.backends.session import load_session
    from hamnet.core.artifacts import ArtifactRef
    from hamnet.core.hardware import load_profile

    ref = ArtifactRef(path=str(model), sha256="", format="onnx", size_bytes=1)
    return load_session(ref, "onnxruntime", load_profile("x86-avx2")).run(x)


def test_predictions_match_the_runtime_called_directly(served: tuple[str, Path]) -> None:
    url, model = served
    x = np.random.default_rng(0).normal(size=(4, 16)).astype(np.float32)
    expected = _direct(model, x)
    answer = _post(url, {"inputs": x.tolist()})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["runtime"] == "onnxruntime" and body["arm"] == "main"
    np.testing.assert_allclose(body["logits"], expected, rtol=1e-5, atol=1e-6)
    assert body["predictions"] == expected.argmax(axis=1).tolist()


def test_the_api_answers_as_the_single_process_app(served: tuple[str, Path]) -> None:
    import httpx

    url, _ = served
    bad = _post(url, {"input": [0.5] * 15})
    assert bad.status_code == 422
    assert "must have 16 features, but got 15" in bad.json()["detail"]
    assert httpx.get(url + "/ready", timeout=10).json()["ready"] is True
    assert httpx.get(url + "/model", timeout=10).json()["features"] == 16


def test_concurrent_requests_are_batched_and_spread_over_replicas(
    served: tuple[str, Path],
) -> None:
    import httpx

    url, model = served
    rows = np.random.default_rng(1).normal(size=(64, 16)).astype(np.float32)
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda r: _post(url, {"input": r.tolist()}), rows))
    assert all(a.status_code == 200 for a in answers)
    batch_rows = [a.json()["batch_rows"] for a in answers]
    assert max(batch_rows) > 1  # @serve.batch coalesced some
    assert max(batch_rows) <= 8  # rows per call capped by batch_size_fn, not calls
    logits = np.concatenate([a.json()["logits"] for a in answers])
    np.testing.assert_allclose(logits, _direct(model, rows), rtol=1e-5, atol=1e-6)  # own rows
    # Each replica keeps its own metrics (created when it started): /metrics reports
    # the replica that answered it, so two creation times mean two replicas answered.
    seen = set()
    for _ in range(40):
        text = httpx.get(url + "/metrics", timeout=10).text
        created = [line for line in text.splitlines() if line.startswith("hamnet_samples_created")]
        seen.add(created[0])
        if len(seen) > 1:
            break
    assert len(seen) > 1, "every /metrics came from one replica"
