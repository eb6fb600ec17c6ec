"""Load test over loopback: a plain FastAPI + ONNX Runtime app, `hamnet serve`, and
`hamnet serve` on Ray Serve with 1 and 2 replicas, side by side in one run.

Usage::

    .venv/bin/python benchmarks/serving.py [--out benchmarks/results/serving]
        [--seconds 5] [--levels 1,10,50] [--epochs 3] [--servers plain,hamnet,ray1,ray2]

Model: the digits HAMNet (hidden 64, 2 layers, 4 heads, 8-feature tokens, as in
``benchmarks/optimizer.py``), trained for ``--epochs`` and exported to ONNX FP32; its
direct (in-process) latency at batch 1 is printed first.

Servers, one at a time, each a real process on a free loopback port:

- ``plain``: the 30-line app a user writes (:data:`PLAIN_APP`): FastAPI, a pydantic body,
  ``onnxruntime.InferenceSession(path)`` with its defaults, ``async def predict``, run
  by ``uvicorn app:app``.
- ``hamnet``: ``python -m hamnet serve model.onnx --runtime onnxruntime`` with its
  defaults (dynamic batching on).
- ``ray1`` / ``ray2``: the same with ``--ray-address local --replicas N``: Ray Serve's
  HTTP proxy in front of N replicas that batch with ``@serve.batch``.

The load generator (``--generator``) is a closed loop: ``clients`` connections each
send one-sample ``/predict`` requests back to back over keep-alive for ``--seconds``
after a 1 s untimed warm-up. ``wrk`` (C, epoll; ``apt-get install wrk``) is used when
it is on PATH (``auto``), else an aiohttp loop in this process. Recorded per level:
requests/s, p50 and p99 latency seen by the client, and errors (non-200 answers and
transport errors). Client and server share the machine: on 2 cores the client's CPU
use caps the rate (the aiohttp client spends ~0.7 ms of CPU per request, wrk a few
µs), and other load moves figures by up to 2x between runs; compare servers within one
run only. Writes ``serving.md`` / ``serving.json`` to ``--out``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

LEVELS = (1, 10, 50)
SERVERS = ("plain", "hamnet", "ray1", "ray2")

PLAIN_APP = """
import os

import numpy as np
import onnxruntime as ort
from fastapi import FastAPI
from pydantic import BaseModel

session = ort.InferenceSession(os.environ["MODEL_PATH"], providers=["CPUExecutionProvider"])
input_name = session.get_inputs()[0].name
app = FastAPI()


class Request(BaseModel):
    input: list[float]


@app.post("/predict")
async def predict(request: Request) -> dict:
    x = np.asarray([request.input], dtype=np.float32)
    logits = session.run(None, {input_name: x})[0]
    return {"prediction": int(logits.argmax()), "logits": logits[0].tolist()}


@app.get("/ready")
async def ready() -> dict:
    return {"ready": True}
"""
"""The app a user would write in 30 lines (run by ``uvicorn plain_app:app``)."""


def _model(work: Path, epochs: int) -> tuple[Path, dict[str, Any]]:
    """Train and export the digits HAMNet; return its file and direct measurements."""
    import torch

    from hamnet.backends.export import export_onnx
    from hamnet.backends.session import load_session
    from hamnet.core.artifacts import ArtifactRef
    from hamnet.core.config import DataSection, TrainStageConfig
    from hamnet.core.hardware import load_profile
    from hamnet.models import HAMNet, HAMNetConfig
    from hamnet.training.data import load_dataset
    from hamnet.training.trainer import set_seed, train_model

    torch.set_num_threads(2)
    data = load_dataset(DataSection())
    set_seed(0)
    model = HAMNet(
        HAMNetConfig(input_size=64, num_classes=10, hidden_size=64, num_layers=2, num_heads=4,
                     token_size=8)
    )  # fmt: skip
    train_model(model, data, TrainStageConfig(epochs=epochs), progress=False)
    path = export_onnx(model, 64, work / "fp32" / "model.onnx")
    ref = ArtifactRef(path=str(path), sha256="", format="onnx", size_bytes=1)
    session = load_session(ref, "onnxruntime", load_profile("x86-avx2"))
    accuracy = float((session.run(data.x_test).argmax(1) == data.y_test).mean())
    one = data.x_test[:1]
    for _ in range(100):
        session.run(one)
    times = []
    for _ in range(500):
        started = time.perf_counter()
        session.run(one)
        times.append(time.perf_counter() - started)
    return path, {
        "accuracy": accuracy,
        "size_mb": path.stat().st_size / 1e6,
        "direct_p50_ms": 1000 * float(np.median(times)),
    }


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    """One server in a subprocess on a free loopback port."""

    def __init__(self, kind: str, model: Path, work: Path) -> None:
        self.kind = kind
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "MODEL_PATH": str(model), "RAY_USAGE_STATS_ENABLED": "0"}
        if kind == "plain":
            (work / "plain_app.py").write_text(PLAIN_APP)
            command = [
                sys.executable, "-m", "uvicorn", "plain_app:app", "--port", str(self.port),
                "--log-level", "warning", "--app-dir", str(work),
            ]  # fmt: skip
        else:
            command = [
                sys.executable, "-m", "hamnet", "serve", str(model), "--port", str(self.port),
                "--runtime", "onnxruntime", "--poll-seconds", "0",
            ]  # fmt: skip
            if kind.startswith("ray"):
                command += ["--ray-address", "local", "--replicas", kind[3:]]
        self.log = work / f"{kind}.log"
        self._log_file = self.log.open("w")
        self.process = subprocess.Popen(
            command, stdout=self._log_file, stderr=subprocess.STDOUT, env=env,
            start_new_session=True,
        )  # fmt: skip

    def wait_ready(self, timeout: float = 240.0) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.kind} server exited: {self.log.read_text()[-3000:]}")
            try:
                if httpx.get(self.url + "/ready", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"{self.kind} server did not become ready: {self.log.read_text()}")

    def stop(self) -> None:
        import signal

        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._log_file.close()


async def _load(url: str, rows: np.ndarray, clients: int, seconds: float) -> dict[str, Any]:
    """Closed loop: ``clients`` tasks, one connection each, requests back to back."""
    import aiohttp

    bodies = [json.dumps({"input": r.tolist()}).encode() for r in rows[:256]]
    headers = {"Content-Type": "application/json"}
    latencies: list[float] = []
    errors = 0
    connector = aiohttp.TCPConnector(limit=clients, force_close=False)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(url, connector=connector, timeout=timeout) as session:

        async def worker(offset: int, until: float, record: bool) -> None:
            nonlocal errors
            i = offset
            while time.perf_counter() < until:
                body = bodies[i % len(bodies)]
                i += clients
                started = time.perf_counter()
                try:
                    async with session.post("/predict", data=body, headers=headers) as response:
                        await response.read()
                        ok = response.status == 200
                except (aiohttp.ClientError, TimeoutError):
                    ok = False
                if not record:
                    continue
                if ok:
                    latencies.append(time.perf_counter() - started)
                else:
                    errors += 1

        warm = time.perf_counter() + 1.0
        await asyncio.gather(*(worker(c, warm, False) for c in range(clients)))
        started = time.perf_counter()
        until = started + seconds
        await asyncio.gather(*(worker(c, until, True) for c in range(clients)))
        elapsed = time.perf_counter() - started
    done = len(latencies) + errors
    ms = 1000 * np.array(latencies or [np.nan])
    return {
        "requests": done,
        "rps": len(latencies) / elapsed,
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "errors": errors,
    }


WRK_SCRIPT = """
local bodies = {BODIES}
local i = 0
request = function()
  i = i % #bodies + 1
  return wrk.format("POST", "/predict", {["Content-Type"] = "application/json"}, bodies[i])
end
"""


def _wrk_load(url: str, rows: np.ndarray, clients: int, seconds: float) -> dict[str, Any]:
    """The same closed loop driven by ``wrk`` (one thread, ``clients`` connections)."""
    import re
    import shutil

    wrk = shutil.which("wrk")
    if wrk is None:
        raise SystemExit("--generator wrk needs wrk on PATH (apt-get install wrk)")
    bodies = ", ".join(json.dumps(json.dumps({"input": r.tolist()})) for r in rows[:64])
    script = Path(tempfile.mkdtemp(prefix="hamnet-wrk-")) / "predict.lua"
    script.write_text(WRK_SCRIPT.replace("{BODIES}", "{" + bodies + "}"))

    def run(duration: float) -> str:
        args = [wrk, "-t1", f"-c{clients}", f"-d{max(1, round(duration))}s", "--latency",
                "-s", str(script), url]  # fmt: skip
        return subprocess.run(args, capture_output=True, text=True, check=True).stdout

    run(1.0)  # warm-up, untimed
    out = run(seconds)
    units = {"us": 1e-3, "ms": 1.0, "s": 1e3}

    def percentile(p: int) -> float:
        found = re.search(rf"^\s*{p}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        return float(found[1]) * units[found[2]] if found else float("nan")

    total = re.search(r"(\d+) requests in", out)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    sockets = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out
    )
    errors = (int(bad[1]) if bad else 0) + (sum(map(int, sockets.groups())) if sockets else 0)
    return {
        "requests": int(total[1]) if total else 0,
        "rps": float(rps[1]) if rps else float("nan"),
        "p50_ms": percentile(50),
        "p99_ms": percentile(99),
        "errors": errors,
    }


def _verdict(results: list[dict[str, Any]], levels: tuple[int, ...]) -> list[str]:
    """The targets: hamnet vs plain at 1 and 50 clients, tail vs unloaded p50, errors."""
    table = {(r["server"], r["clients"]): r for r in results}
    lines = []
    low, high = levels[0], levels[-1]
    if ("plain", low) in table and ("hamnet", low) in table:
        ratio = table["hamnet", low]["rps"] / table["plain", low]["rps"]
        lines.append(f"hamnet/plain throughput at {low} client(s): {ratio:.2f}x (target >= 0.8x)")
    if ("plain", high) in table and ("hamnet", high) in table:
        ratio = table["hamnet", high]["rps"] / table["plain", high]["rps"]
        lines.append(f"hamnet/plain throughput at {high} clients: {ratio:.2f}x (target >= 1x)")
    if ("hamnet", low) in table and ("hamnet", high) in table:
        ratio = table["hamnet", high]["p99_ms"] / table["hamnet", low]["p50_ms"]
        lines.append(f"hamnet p99 at {high} clients / p50 at {low}: {ratio:.1f}x (target <= 20x)")
    for level in levels:
        if ("ray1", level) in table and ("ray2", level) in table:
            ratio = table["ray2", level]["rps"] / table["ray1", level]["rps"]
            lines.append(f"Ray Serve 2 replicas / 1 replica at {level} clients: {ratio:.2f}x")
    lines.append(f"errors: {sum(r['errors'] for r in results)}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="benchmarks/results/serving")
    parser.add_argument("--seconds", type=float, default=5.0, help="Timed seconds per level.")
    parser.add_argument("--levels", default=",".join(map(str, LEVELS)))
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--servers", default=",".join(SERVERS))
    parser.add_argument(
        "--generator", choices=("auto", "wrk", "aiohttp"), default="auto",
        help="Load generator: wrk when on PATH (auto), else aiohttp in this process.",
    )  # fmt: skip
    args = parser.parse_args()
    import shutil

    generator = args.generator
    if generator == "auto":
        generator = "wrk" if shutil.which("wrk") else "aiohttp"
    from hamnet.core.env import apply_defaults

    apply_defaults()
    from hamnet.core.config import DataSection
    from hamnet.training.data import load_dataset

    levels = tuple(int(v) for v in args.levels.split(","))
    servers = [s for s in args.servers.split(",") if s]
    unknown = sorted(set(servers) - set(SERVERS))
    if unknown:
        raise SystemExit(f"--servers must be among {list(SERVERS)}, but got {unknown}")
    rows = load_dataset(DataSection()).x_test
    work = Path(tempfile.mkdtemp(prefix="hamnet-serving-bench-"))
    path, facts = _model(work, args.epochs)
    print(json.dumps(facts))
    results = []
    for kind in servers:
        server = ServerProcess(kind, path, work)
        try:
            server.wait_ready()
            for clients in levels:
                if generator == "wrk":
                    row = _wrk_load(server.url, rows, clients, args.seconds)
                else:
                    row = asyncio.run(_load(server.url, rows, clients, args.seconds))
                row = {"server": kind, "clients": clients, **row}
                results.append(row)
                print(json.dumps(row), flush=True)
        finally:
            server.stop()
    verdict = _verdict(results, levels)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    settings = {"seconds": args.seconds, "levels": levels, "epochs": args.epochs,
                "cpus": os.cpu_count(), "generator": generator}  # fmt: skip
    document = {"settings": settings, "model": facts, "load": results, "verdict": verdict}
    (out / "serving.json").write_text(json.dumps(document, indent=2))
    lines = [
        f"# Serving under load (loopback, one-sample requests, {generator} closed loop)", "",
        f"Settings: {settings}. Model: digits HAMNet ONNX FP32, accuracy "
        f"{facts['accuracy']:.4f}, {facts['size_mb']:.3f} MB, direct p50 "
        f"{facts['direct_p50_ms']:.3f} ms at batch 1.", "",
        "| server | clients | requests | req/s | p50 ms | p99 ms | errors |",
        "|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for r in results:
        lines.append(
            f"| {r['server']} | {r['clients']} | {r['requests']} | {r['rps']:.0f} | "
            f"{r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['errors']} |"
        )
    lines += ["", *(f"- {line}" for line in verdict)]
    (out / "serving.md").write_text("\n".join(lines) + "\n")
    print((out / "serving.md").read_text())


if __name__ == "__main__":
    main()
