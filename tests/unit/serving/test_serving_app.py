"""The serving app in-process (FastAPI TestClient): predictions, validation, metrics, A/B."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import export_tiny_onnx

from hamnet.core.errors import ConfigError, ModelLoadError


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("serving-models")
    return {
        "a": export_tiny_onnx(folder / "a.onnx", seed=0),
        "b": export_tiny_onnx(folder / "b.onnx", seed=1),
    }


def _client(tmp_path: Path, arms: dict[str, str], **settings: Any) -> Iterator[Any]:
    from fastapi.testclient import TestClient

    from hamnet.serving.app import ServeSettings, ServingState, create_app

    state = ServingState.build(
        ServeSettings(arms=arms, threads=1, ab_log=tmp_path / "ab.jsonl", **settings)
    )
    with TestClient(create_app(state)) as client:
        yield client


@pytest.fixture
def client(tmp_path: Path, models: dict[str, Path]) -> Iterator[Any]:
    yield from _client(tmp_path, {"main": str(models["a"])}, runtime="onnxruntime")


def test_predictions_match_the_runtime_called_directly(client: Any, models: dict[str, Path]):
    from hamnet.backends.session import load_session
    from hamnet.core.artifacts import ArtifactRef
    from hamnet.core.hardware import load_profile

    x = np.random.default_rng(0).normal(size=(5, 16)).astype(np.float32)
    ref = ArtifactRef(path=str(models["a"]), sha256="", format="onnx", size_bytes=1)
    expected = load_session(ref, "onnxruntime", load_profile("x86-avx2")).run(x)

    batch = client.post("/predict", json={"inputs": x.tolist()})
    assert batch.status_code == 200, batch.text
    body = batch.json()
    assert body["runtime"] == "onnxruntime" and body["arm"] == "main"
    np.testing.assert_allclose(body["logits"], expected, rtol=1e-5, atol=1e-6)
    assert body["predictions"] == expected.argmax(axis=1).tolist()
    np.testing.assert_allclose(np.sum(body["probabilities"], axis=1), 1.0, rtol=1e-6)

    single = client.post("/predict", json={"input": x[2].tolist()}).json()
    np.testing.assert_allclose(single["logits"], expected[2:3], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"input": [0.5] * 15}, "must have 16 features, but got 15"),
        ({"inputs": [[0.5] * 16, [0.5] * 17]}, "must have 16 features, but got 17"),
        ({"input": ["a"] * 16}, "valid number, but got 'a'"),
        ({"input": [True] * 16}, "valid number, but got True"),
        ({"inputs": []}, "at least one sample"),
        ({"input": [1.0] * 16, "inputs": [[1.0] * 16]}, "exactly one of"),
        ({}, "exactly one of"),
        ({"inputs": [[1.0] * 16], "labels": [0, 1]}, "one entry per sample"),
        ({"input": [1.0] * 16, "extra": 1}, "Extra inputs"),
        ({"inputs": [1.0] * 16}, "valid array"),
    ],
)
def test_bad_inputs_get_422_and_the_server_stays_up(client: Any, body: Any, message: str):
    response = client.post("/predict", json=body)
    assert response.status_code == 422
    assert message in response.json()["detail"]
    assert client.get("/health").json() == {"status": "ok"}
    assert client.post("/predict", json={"input": [0.0] * 16}).status_code == 200


def test_non_json_and_nan_bodies_get_422(client: Any) -> None:
    headers = {"content-type": "application/json"}
    nan = client.post("/predict", content=b'{"input": [NaN]}', headers=headers)
    assert nan.status_code == 422 and "finite number" in nan.json()["detail"]
    broken = client.post("/predict", content=b'{"input": [', headers=headers)
    assert broken.status_code == 422 and "valid JSON" in broken.json()["detail"]


def test_metrics_count_requests_batches_and_errors(client: Any) -> None:
    for _ in range(3):
        assert client.post("/predict", json={"inputs": [[0.1] * 16] * 2}).status_code == 200
    client.post("/predict", json={"input": [0.1] * 3})
    text = client.get("/metrics").text
    assert 'hamnet_requests_total{arm="main",status="200"} 3.0' in text
    assert 'hamnet_requests_total{arm="main",status="422"} 1.0' in text
    assert 'hamnet_errors_total{arm="main",kind="validation"} 1.0' in text
    assert 'hamnet_batch_size_sum{arm="main"} 6.0' in text
    assert 'hamnet_request_latency_seconds_count{arm="main"} 3.0' in text
    assert 'hamnet_samples_total{arm="main"} 6.0' in text
    assert "hamnet_model_info{" in text


def test_model_ready_and_reload_of_a_file(client: Any, models: dict[str, Path]) -> None:
    info = client.get("/model").json()
    assert info["name"] == "a.onnx" and info["features"] == 16 and info["classes"] == 3
    assert info["alias"] is None and info["metrics"] == {}
    assert client.get("/ready").json()["ready"] is True
    assert client.post("/reload").json()["arms"]["main"]["reloaded"] is False


def test_ab_arms_are_sticky_per_key_and_logged(tmp_path: Path, models: dict[str, Path]):
    from hamnet.serving.ab import ab_report, read_log

    arms = {"champion": str(models["a"]), "challenger": str(models["b"])}
    split = {"champion": 0.5, "challenger": 0.5}
    for client in _client(tmp_path, arms, split=split, seed=0):
        seen: dict[str, set[str]] = {}
        for i in range(60):
            key = f"user-{i % 10}"
            body = {"input": [0.1 * (i % 7)] * 16, "label": 0}
            answer = client.post("/predict", json=body, headers={"X-Request-Key": key}).json()
            seen.setdefault(key, set()).add(answer["arm"] + answer["version"])
        assert all(len(v) == 1 for v in seen.values())  # sticky
        assert {next(iter(v))[:5] for v in seen.values()} == {"champ", "chall"}
        models_doc = client.get("/model").json()
        assert [a["arm"] for a in models_doc["arms"]] == ["champion", "challenger"]
        text = client.get("/metrics").text
        assert 'hamnet_requests_total{arm="challenger",status="200"}' in text
    report = ab_report(read_log(tmp_path / "ab.jsonl"))
    assert sum(s.requests for s in report.arms) == 60
    assert all(s.labelled == s.requests for s in report.arms)


def test_dynamic_batching_serves_concurrent_requests(tmp_path: Path, models: dict[str, Path]):
    import asyncio

    import httpx

    from hamnet.serving.app import ServeSettings, ServingState, create_app

    state = ServingState.build(
        ServeSettings(arms={"main": str(models["a"])}, threads=1, batch_window_ms=20,
                      max_batch_size=8)
    )  # fmt: skip
    app = create_app(state)

    async def scenario() -> list[Any]:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                calls = [client.post("/predict", json={"input": [i / 10] * 16}) for i in range(16)]
                return [r.json() for r in await asyncio.gather(*calls)]

    answers = asyncio.run(scenario())
    assert all("predictions" in a for a in answers)
    assert max(a["batch_rows"] for a in answers) > 1


def test_bad_settings_are_refused(tmp_path: Path, models: dict[str, Path]) -> None:
    from hamnet.serving.app import ServeSettings, ServingState

    with pytest.raises(ConfigError, match="every A/B arm must have a model"):
        ServingState.build(ServeSettings(arms={"a": str(models["a"])}, split={"b": 1.0}))
    with pytest.raises(ModelLoadError, match="must exist"):
        ServingState.build(ServeSettings(arms={"a": str(tmp_path / "none.onnx")}))
    with pytest.raises(ConfigError, match="models:/<name>@<alias>"):
        ServingState.build(ServeSettings(arms={"a": "models:/x@y/z"}))
    with pytest.raises(ConfigError, match="runtime must be listed"):
        ServingState.build(ServeSettings(arms={"a": str(models["a"])}, runtime="torch"))


def test_profile_runtime_and_torch_checkpoints_are_served(tmp_path: Path, models: dict[str, Path]):
    from conftest import tiny_hamnet

    from hamnet.models import save_checkpoint

    x = np.random.default_rng(1).normal(size=(3, 16)).astype(np.float32)
    checkpoint = save_checkpoint(tiny_hamnet(), tmp_path / "tiny.pt")
    import torch

    with torch.inference_mode():
        expected_torch = tiny_hamnet()(torch.from_numpy(x)).numpy()
    cases = [(str(models["a"]), None, "openvino"), (str(checkpoint), "torch", "torch")]
    for path, runtime, served_by in cases:
        for client in _client(tmp_path, {"main": path}, runtime=runtime):
            body = client.post("/predict", json={"inputs": x.tolist()}).json()
            assert body["runtime"] == served_by
            assert client.get("/model").json()["features"] == 16
            if served_by == "torch":
                np.testing.assert_allclose(body["logits"], expected_torch, rtol=1e-4, atol=1e-5)


def test_serve_command_refuses_bad_input_with_exit_2(tmp_path: Path, models: dict[str, Path]):
    from typer.testing import CliRunner

    from hamnet.ops.cli import app
    from hamnet.serving.cli import parse_arms

    cases = [
        ["serve", str(tmp_path / "missing.onnx")],
        ["serve", "models:/m@champion", "--ab", "champion=0.5"],
        ["serve", str(models["a"]), "--ab", "a=0.5,b=0.5"],
        ["serve", str(models["a"]), "--ab", "a=0.5,b=0.5", "--arm", "a"],
    ]
    for args in cases:
        result = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
        assert result.exit_code == 2, (args, result.output)
    arms, split = parse_arms("models:/m@champion", "champion=0.9,challenger=0.1", [])
    assert arms == {"champion": "models:/m@champion", "challenger": "models:/m@challenger"}
    assert split == {"champion": 0.9, "challenger": 0.1}
    arms, _ = parse_arms(str(models["a"]), "a=0.5,b=0.5", [f"b={models['b']}", f"a={models['a']}"])
    assert arms == {"a": str(models["a"]), "b": str(models["b"])}
    assert parse_arms("models:/m@champion", None, []) == ({"champion": "models:/m@champion"}, None)


def test_not_ready_until_the_lifespan_starts_and_files_removed_after(models: dict[str, Path]):
    from fastapi.testclient import TestClient

    from hamnet.serving.app import ServeSettings, ServingState, create_app

    state = ServingState.build(ServeSettings(arms={"main": str(models["a"])}, threads=1))
    app = create_app(state)
    outside = TestClient(app)  # no lifespan: batchers stopped, not ready
    assert outside.get("/ready").status_code == 503
    answer = outside.post("/predict", json={"input": [0.0] * 16})
    assert answer.status_code == 503 and "not ready" in answer.json()["detail"]
    assert state.cache_dir is not None and state.cache_dir.is_dir()
    with TestClient(app) as client:
        ready = client.get("/ready").json()
        assert ready["ready"] is True and list(ready["versions"]) == ["main"]
    assert not state.ready and not state.cache_dir.exists()
