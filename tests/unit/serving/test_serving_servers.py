"""`hamnet serve --server uvicorn|granian`: the same answers, byte for byte, on either.

Each installed server runs `hamnet serve` as a real process on a free loopback port with
a tiny ONNX model; the same requests (valid, invalid in every way the app checks, other
routes) must get the same status codes and bodies, and SIGTERM must run the shutdown
(the downloaded-model folder is removed) on both.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import export_tiny_onnx

from hamnet.core.errors import ConfigError
from hamnet.serving.servers import SERVERS, describe, installed, resolve_server

pytestmark = pytest.mark.slow

RUNNABLE = [s for s in ("uvicorn", "granian") if installed(s)]


def test_auto_prefers_granian_and_names_are_checked() -> None:
    assert resolve_server("auto") == ("granian" if installed("granian") else "uvicorn")
    assert resolve_server("uvicorn") == "uvicorn"
    with pytest.raises(ConfigError, match=r"one of auto, uvicorn, granian, but got 'gunicorn'"):
        resolve_server("gunicorn")
    assert set(SERVERS) == {"auto", "uvicorn", "granian"}
    assert "RSGI" in describe("granian") and "uvicorn" in describe("uvicorn")


def test_an_unknown_server_or_a_taken_port_exits_2(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from hamnet.ops.cli import app

    bad = CliRunner().invoke(
        app, ["serve", str(tmp_path / "m.onnx"), "--server", "nginx"], env={"COLUMNS": "200"}
    )
    assert bad.exit_code == 2 and "but got 'nginx'" in bad.output
    model = export_tiny_onnx(tmp_path / "m.onnx")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        for server in RUNNABLE:
            busy = CliRunner().invoke(
                app, ["serve", str(model), "--port", port, "--server", server],
                env={"COLUMNS": "200"},
            )  # fmt: skip
            assert busy.exit_code == 2, busy.output
            assert f"listen on 127.0.0.1:{port}, but binding failed" in busy.output


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Served:
    """`hamnet serve` in a subprocess."""

    def __init__(self, server: str, model: Path, folder: Path) -> None:
        self.server = server
        port = _free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.output = folder / f"{server}.log"
        command = [
            sys.executable, "-m", "hamnet", "serve", str(model), "--port", str(port),
            "--runtime", "onnxruntime", "--poll-seconds", "0", "--server", server,
            "--max-batch-size", "8",
        ]  # fmt: skip
        env = {**os.environ, "COLUMNS": "200", "TMPDIR": str(folder)}
        with self.output.open("w") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)

    def wait_ready(self, timeout: float = 90.0) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.output.read_text()
            try:
                if httpx.get(self.url + "/ready", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"{self.server} not ready:\n{self.output.read_text()}")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            log = self.output.read_text()
            raise AssertionError(f"{self.server} ignored SIGTERM:\n{log}") from None


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Served]]:
    folder = tmp_path_factory.mktemp("servers")
    model = export_tiny_onnx(folder / "tiny.onnx")
    servers = {}
    for name in RUNNABLE:
        (folder / name).mkdir()
        servers[name] = Served(name, model, folder / name)
    try:
        for server in servers.values():
            server.wait_ready()
        yield servers
    finally:
        for server in servers.values():
            server.stop()


def _exchanges(url: str) -> list[tuple[str, int, Any]]:
    """The same requests to one server: (what, status, body as JSON or text)."""
    import httpx

    x = np.random.default_rng(0).normal(size=(3, 16)).round(4).tolist()
    posts: dict[str, dict[str, Any]] = {
        "one": {"json": {"input": x[0], "label": 1}},
        "batch": {"json": {"inputs": x, "labels": [0, 1, 2]}},
        "keyed": {"json": {"input": x[1]}, "headers": {"X-Request-Key": "user-7"}},
        "features": {"json": {"input": [0.5] * 15}},
        "strings": {"json": {"input": ["a"] * 16}},
        "nan": {"content": b'{"input": [NaN]}', "headers": {"content-type": "application/json"}},
        "broken": {"content": b"{", "headers": {"content-type": "application/json"}},
        "both": {"json": {"input": x[0], "inputs": x}},
        "extra": {"json": {"input": x[0], "colour": "red"}},
        "labels": {"json": {"inputs": x, "labels": [1]}},
        "too many": {"json": {"inputs": [[0.0] * 16] * 1025}},
    }
    answers = []
    with httpx.Client(base_url=url, timeout=30) as client:
        for what, kwargs in posts.items():
            response = client.post("/predict", **kwargs)
            answers.append((what, response.status_code, response.json()))
        for path in ("/health", "/ready", "/model", "/predict", "/nothing?x=1"):
            response = client.get(path)
            assert response.headers["content-type"] == "application/json", path
            answers.append((f"GET {path}", response.status_code, response.json()))
        metrics = client.get("/metrics")
        counted = sorted(
            line for line in metrics.text.splitlines() if line.startswith("hamnet_requests_total{")
        )
        answers.append(("GET /metrics", metrics.status_code, counted))
    return answers


@pytest.mark.skipif(len(RUNNABLE) < 2, reason="needs both uvicorn and granian installed")
def test_both_servers_answer_the_same(served: dict[str, Served]) -> None:
    uvicorn, granian = (_exchanges(served[name].url) for name in ("uvicorn", "granian"))
    for (what, status, body), (_, other_status, other_body) in zip(uvicorn, granian, strict=True):
        assert (status, body) == (other_status, other_body), what
    codes = {what: status for what, status, _ in uvicorn}
    assert codes["one"] == codes["batch"] == codes["keyed"] == 200
    bad = ("features", "strings", "nan", "broken", "both", "extra", "labels", "too many")
    assert {codes[w] for w in bad} == {422}
    assert codes["GET /predict"] == 405 and codes["GET /nothing?x=1"] == 404
    details = {what: body.get("detail") for what, _, body in uvicorn if isinstance(body, dict)}
    assert details["features"] == "each sample must have 16 features, but got 15"
    assert details["too many"] == "a request must hold at most 1024 samples, but got 1025"


@pytest.mark.parametrize("server", RUNNABLE)
def test_each_server_serves_and_names_itself(served: dict[str, Served], server: str) -> None:
    import httpx

    answer = httpx.post(served[server].url + "/predict", json={"input": [0.1] * 16}, timeout=30)
    assert answer.status_code == 200 and answer.json()["runtime"] == "onnxruntime"
    assert describe(server) in served[server].output.read_text().replace("\n", "")


@pytest.mark.parametrize("server", RUNNABLE)
def test_sigterm_runs_the_shutdown(tmp_path: Path, server: str) -> None:
    model = export_tiny_onnx(tmp_path / "tiny.onnx")
    one = Served(server, model, tmp_path)
    try:
        one.wait_ready()
        assert list(tmp_path.glob("hamnet-serve-*")), "the model cache folder exists"
    finally:
        code = one.stop()
    # uvicorn re-raises the signal once its shutdown is done (exit -15); granian's run ends
    assert code in (0, -signal.SIGTERM), one.output.read_text()
    assert not list(tmp_path.glob("hamnet-serve-*")), "the lifespan's shutdown removes it"
