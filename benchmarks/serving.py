"""Load test over loopback: a plain FastAPI + ONNX Runtime app, `hamnet serve` on uvicorn
and on granian, and `hamnet serve` on Ray Serve with 1 and 2 replicas, side by side in
one run.

Usage::

    .venv/bin/python benchmarks/serving.py [--out benchmarks/results/serving]
        [--seconds 5] [--levels 1,10,50] [--epochs 3] [--rounds 1]
        [--servers plain,uvicorn,granian,ray1,ray2]

Model: the digits HAMNet (hidden 64, 2 layers, 4 heads, 8-feature tokens, as in
``benchmarks/optimizer.py``), trained for ``--epochs`` and exported to ONNX FP32; its
direct (in-process) latency at batch 1 is printed first.

Servers, one at a time, each a real process on a free loopback port:

- ``plain``: the 30-line app a user writes (:data:`PLAIN_APP`): FastAPI, a pydantic body,
  ``onnxruntime.InferenceSession(path)`` with its defaults, ``async def predict``, run
  by ``uvicorn app:app``.
- ``uvicorn`` / ``granian``: ``python -m hamnet serve model.onnx --runtime onnxruntime
  --server uvicorn|granian``, otherwise its defaults (dynamic batching on). ``hamnet``
  is accepted for the default (``--server auto``).
- ``ray1`` / ``ray2``: the same with ``--ray-address local --replicas N``: Ray Serve's
  HTTP proxy in front of N replicas that batch with ``@serve.batch``.

``--rounds R`` runs the whole list of servers R times in turn (so a burst of load from
elsewhere on the machine hits one round, not one server) and reports each cell's median
over the rounds; every round's figures are kept in the JSON.

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
SERVERS = ("plain", "uvicorn", "granian", "ray1", "ray2")
HAMNET_SERVERS = ("hamnet", "uvicorn", "granian")
"""The single-process hamnet servers: ``--server auto``, ``uvicorn``, ``granian``."""
KNOWN = (*SERVERS, "hamnet")

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
            elif kind != "hamnet":
                command += ["--server", kind]
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

    def cpu_seconds(self) -> tuple[float, float]:
        """CPU seconds (user + system) the server process and its main thread used so far.

        The main thread runs the event loop: under load it is the bottleneck of a
        single-process server (granian moves HTTP parsing and socket I/O to a Rust
        thread, so its loop thread does less per request than the process does).
        """
        tick = os.sysconf("SC_CLK_TCK")
        pid = self.process.pid

        def used(path: str) -> float:
            fields = Path(path).read_text().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / tick

        return used(f"/proc/{pid}/stat"), used(f"/proc/{pid}/task/{pid}/stat")

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
local requests = {}
local i = 0
init = function(args)
  for k, body in ipairs(bodies) do
    requests[k] = wrk.format("POST", "/predict", {["Content-Type"] = "application/json"}, body)
  end
end
request = function()
  i = i % #requests + 1
  return requests[i]
end
"""
"""wrk's Lua: the requests are formatted once (``init``), then sent in turn; formatting
each one in ``request()`` cost wrk ~15 µs of CPU per request on the shared 2 cores."""


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


TARGETS = {
    "throughput_low": 0.8,  # hamnet / plain requests/s at the lowest level, at least
    "throughput_high": 1.0,  # hamnet / plain requests/s at the highest level, at least
    "tail": 20.0,  # hamnet p99 at the highest level / its p50 at the lowest, at most
}


def _mark(ok: bool) -> str:
    return "met" if ok else "NO"


def _verdict(results: list[dict[str, Any]], levels: tuple[int, ...]) -> list[str]:
    """The targets for each single-process hamnet server, Ray Serve scaling, errors."""
    table = {(r["server"], r["clients"]): r for r in results}
    lines = []
    low, high = levels[0], levels[-1]
    for kind in HAMNET_SERVERS:
        if (kind, low) not in table:
            continue
        name = f"hamnet/{kind}" if kind != "hamnet" else "hamnet (auto)"
        if ("plain", low) in table:
            ratio = table[kind, low]["rps"] / table["plain", low]["rps"]
            goal = TARGETS["throughput_low"]
            lines.append(
                f"{name}/plain throughput at {low} client(s): {ratio:.2f}x (target >= "
                f"{goal:g}x: {_mark(ratio >= goal)})"
            )
        if ("plain", high) in table and (kind, high) in table:
            ratio = table[kind, high]["rps"] / table["plain", high]["rps"]
            goal = TARGETS["throughput_high"]
            lines.append(
                f"{name}/plain throughput at {high} clients: {ratio:.2f}x (target >= "
                f"{goal:g}x: {_mark(ratio >= goal)})"
            )
        if (kind, high) in table:
            ratio = table[kind, high]["p99_ms"] / table[kind, low]["p50_ms"]
            goal = TARGETS["tail"]
            lines.append(
                f"{name} p99 at {high} clients / p50 at {low}: {ratio:.1f}x "
                f"({table[kind, high]['p99_ms']:.2f} / {table[kind, low]['p50_ms']:.3f} ms; "
                f"target <= {goal:g}x: {_mark(ratio <= goal)})"
            )
        errors = sum(table[kind, level]["errors"] for level in levels if (kind, level) in table)
        lines.append(f"{name} errors: {errors} ({_mark(errors == 0)})")
    for level in levels:
        if ("ray1", level) in table and ("ray2", level) in table:
            ratio = table["ray2", level]["rps"] / table["ray1", level]["rps"]
            lines.append(f"Ray Serve 2 replicas / 1 replica at {level} clients: {ratio:.2f}x")
    lines.append(f"errors, all servers: {sum(r['errors'] for r in results)}")
    return lines


def _us(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def _median_rows(rounds: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Each (server, clients) cell's median over the rounds (errors: summed)."""
    cells: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for rows in rounds:
        for row in rows:
            cells.setdefault((row["server"], row["clients"]), []).append(row)
    merged = []
    for (server, clients), rows in cells.items():
        merged.append({
            "server": server, "clients": clients,
            "requests": int(np.median([r["requests"] for r in rows])),
            "rps": float(np.median([r["rps"] for r in rows])),
            "p50_ms": float(np.median([r["p50_ms"] for r in rows])),
            "p99_ms": float(np.median([r["p99_ms"] for r in rows])),
            **{key: float(np.median([r[key] for r in rows])) for key in ("cpu_us", "loop_us")
               if all(key in r for r in rows)},
            "errors": sum(r["errors"] for r in rows),
            "rounds": len(rows),
        })  # fmt: skip
    return merged


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="benchmarks/results/serving")
    parser.add_argument("--seconds", type=float, default=5.0, help="Timed seconds per level.")
    parser.add_argument("--levels", default=",".join(map(str, LEVELS)))
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--servers", default=",".join(SERVERS))
    parser.add_argument(
        "--rounds", type=int, default=1, help="Run every server this many times in turn."
    )
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
    unknown = sorted(set(servers) - set(KNOWN))
    if unknown:
        raise SystemExit(f"--servers must be among {list(KNOWN)}, but got {unknown}")
    if args.rounds < 1:
        raise SystemExit(f"--rounds must be at least 1, but got {args.rounds}")
    rows = load_dataset(DataSection()).x_test
    work = Path(tempfile.mkdtemp(prefix="hamnet-serving-bench-"))
    path, facts = _model(work, args.epochs)
    print(json.dumps(facts))
    load_before = os.getloadavg()  # other work on the machine moves every figure
    rounds: list[list[dict[str, Any]]] = []
    for number in range(args.rounds):
        results = []
        for kind in servers:
            server = ServerProcess(kind, path, work)
            try:
                server.wait_ready()
                for clients in levels:
                    before = server.cpu_seconds()
                    if generator == "wrk":
                        row = _wrk_load(server.url, rows, clients, args.seconds)
                    else:
                        row = asyncio.run(_load(server.url, rows, clients, args.seconds))
                    after = server.cpu_seconds()
                    # wrk's untimed 1 s warm-up is counted too: per request, scale by it
                    served = max(row["requests"] * (1 + 1 / args.seconds), 1)
                    if not kind.startswith("ray"):  # Ray's replicas are other processes
                        row["cpu_us"] = 1e6 * (after[0] - before[0]) / served
                        row["loop_us"] = 1e6 * (after[1] - before[1]) / served
                    row = {"server": kind, "clients": clients, "round": number, **row}
                    results.append(row)
                    print(json.dumps(row), flush=True)
            finally:
                server.stop()
        rounds.append(results)
    results = _median_rows(rounds) if args.rounds > 1 else rounds[0]
    verdict = _verdict(results, levels)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    settings = {"seconds": args.seconds, "levels": levels, "epochs": args.epochs,
                "rounds": args.rounds, "cpus": os.cpu_count(), "generator": generator,
                "load_average_before": load_before,
                "load_average_after": os.getloadavg()}  # fmt: skip
    document = {"settings": settings, "model": facts, "load": results, "verdict": verdict,
                "rounds": rounds}  # fmt: skip
    (out / "serving.json").write_text(json.dumps(document, indent=2))
    lines = [
        f"# Serving under load (loopback, one-sample requests, {generator} closed loop)", "",
        *(["Each cell: the median over the rounds.", ""] if args.rounds > 1 else []),
        f"Settings: {settings}. Model: digits HAMNet ONNX FP32, accuracy "
        f"{facts['accuracy']:.4f}, {facts['size_mb']:.3f} MB, direct p50 "
        f"{facts['direct_p50_ms']:.3f} ms at batch 1.", "",
        "| server | clients | requests | req/s | p50 ms | p99 ms | errors | server CPU µs/req "
        "| loop thread µs/req |",
        "|---|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for r in results:
        lines.append(
            f"| {r['server']} | {r['clients']} | {r['requests']} | {r['rps']:.0f} | "
            f"{r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['errors']} | "
            f"{_us(r.get('cpu_us'))} | {_us(r.get('loop_us'))} |"
        )
    lines += ["", *(f"- {line}" for line in verdict)]
    (out / "serving.md").write_text("\n".join(lines) + "\n")
    print((out / "serving.md").read_text())


if __name__ == "__main__":
    main()
