"""Load test of `hamnet serve` over loopback: 1, 10 and 50 concurrent clients.

Usage::

    .venv/bin/python benchmarks/serving.py [--out benchmarks/results/serving]
        [--requests 600] [--max-seconds 15] [--epochs 30] [--threads 1] [--window-ms 2]

Models: the digits HAMNet (hidden 64, 2 layers, 4 heads, 8-feature tokens, as in
``benchmarks/optimizer.py``) is trained here (``--epochs``), exported to ONNX FP32 (the
baseline) and quantized with the ``ort_dynamic_int8`` quantizer plugin (per-channel,
reduce_range as the x86-avx2 profile says): that INT8 model stands for the recommended
model, the pipeline's usual pick for attention models on this CPU; its accuracy and
its direct (in-process) latency are reported beside the FP32 one so the choice can be
checked. Both run in ONNX Runtime (``--runtime onnxruntime``).

For each model and for batching on (``--window-ms``, up to the profile's 32 rows) and
off (``--batch-window-ms 0``), one real server is started (``python -m hamnet
serve FILE --port P``) with ``--threads`` intra-op threads. Clients are
``httpx.AsyncClient`` tasks in this process, each sending one-sample ``/predict``
requests (digits test rows) back to back; a level stops after ``--requests`` requests
or ``--max-seconds``, whichever comes first, after 30 untimed warm-up requests.
Recorded per level: requests/s, p50/p95/p99 latency seen by the client, error rate,
and the mean rows per inference call (from the server's ``/metrics``).

Client and server share the machine: on a 2-core box the client's own CPU use caps
the request rate, and other load on the box moves the figures by up to 2x between
runs (compare configurations within one run only). Writes ``serving.md`` /
``serving.json`` to ``--out``.
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

from hamnet.core.env import apply_defaults

LEVELS = (1, 10, 50)
WARMUP = 30


def _models(work: Path, epochs: int, threads: int) -> tuple[dict[str, Path], list[dict[str, Any]]]:
    """Train, export and quantize; return the model files and their direct measurements."""
    import torch

    from hamnet.backends.export import export_onnx
    from hamnet.backends.session import load_session
    from hamnet.compress.quantize.base import get_quantizer
    from hamnet.core.artifacts import ArtifactRef
    from hamnet.core.config import DataSection, QuantizeStageConfig, TrainStageConfig
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
    fp32 = export_onnx(model, 64, work / "fp32" / "model.onnx")
    profile = load_profile("x86-avx2")
    int8 = get_quantizer("ort_dynamic_int8").quantize(
        fp32, work / "int8", calibration=None, cfg=QuantizeStageConfig(), profile=profile
    )
    files = {"fp32 baseline": fp32, "int8 recommended": int8}
    facts = []
    for name, path in files.items():
        ref = ArtifactRef(path=str(path), sha256="", format="onnx", size_bytes=1)
        session = load_session(ref, "onnxruntime", profile.model_copy(update={"threads": threads}))
        accuracy = float((session.run(data.x_test).argmax(1) == data.y_test).mean())
        one = data.x_test[:1]
        for _ in range(50):
            session.run(one)
        times = []
        for _ in range(300):
            started = time.perf_counter()
            session.run(one)
            times.append(time.perf_counter() - started)
        facts.append(
            {"model": name, "accuracy": accuracy, "size_mb": path.stat().st_size / 1e6,
             "direct_p50_ms": 1000 * float(np.median(times))}
        )  # fmt: skip
    return files, facts


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    """``hamnet serve`` in a subprocess on a free loopback port."""

    def __init__(self, model: Path, *, window_ms: float, threads: int) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        command = [
            sys.executable, "-m", "hamnet", "serve", str(model), "--port", str(self.port),
            "--runtime", "onnxruntime", "--threads", str(threads), "--poll-seconds", "0",
            "--batch-window-ms", str(window_ms),
        ]  # fmt: skip
        self.process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "OMP_NUM_THREADS": str(threads)},
        )  # fmt: skip

    def wait_ready(self, timeout: float = 120.0) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited: {self.process.stderr.read()}")  # type: ignore[union-attr]
            try:
                if httpx.get(self.url + "/ready", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise RuntimeError("server did not become ready")

    def batch_totals(self) -> tuple[float, float]:
        """(sum, count) of the server's rows-per-inference histogram."""
        import httpx

        totals = {"sum": 0.0, "count": 0.0}
        for line in httpx.get(self.url + "/metrics", timeout=10).text.splitlines():
            for part in totals:
                if line.startswith(f"hamnet_batch_size_{part}{{"):
                    totals[part] += float(line.rsplit(" ", 1)[1])
        return totals["sum"], totals["count"]

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


async def _load(url: str, rows: np.ndarray, clients: int, requests: int, seconds: float):  # type: ignore[no-untyped-def]
    import httpx

    latencies: list[float] = []
    errors = 0
    sent = 0
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30) as client:
        for i in range(WARMUP):
            await client.post("/predict", json={"input": rows[i % len(rows)].tolist()})
        deadline = time.perf_counter() + seconds

        async def worker(offset: int) -> None:
            nonlocal sent, errors
            i = offset
            while sent < requests and time.perf_counter() < deadline:
                sent += 1
                body = {"input": rows[i % len(rows)].tolist()}
                i += clients
                started = time.perf_counter()
                try:
                    response = await client.post("/predict", json=body)
                    ok = response.status_code == 200
                except httpx.HTTPError:
                    ok = False
                if ok:
                    latencies.append(time.perf_counter() - started)
                else:
                    errors += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker(c) for c in range(clients)))
        elapsed = time.perf_counter() - started
    done = len(latencies) + errors
    ms = 1000 * np.array(latencies or [np.nan])
    return {
        "requests": done,
        "seconds": round(elapsed, 2),
        "rps": done / elapsed,
        "p50_ms": float(np.percentile(ms, 50)),
        "p95_ms": float(np.percentile(ms, 95)),
        "p99_ms": float(np.percentile(ms, 99)),
        "error_rate": errors / max(done, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="benchmarks/results/serving")
    parser.add_argument("--requests", type=int, default=600, help="Most timed requests per level.")
    parser.add_argument("--max-seconds", type=float, default=15.0, help="Most seconds per level.")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1, help="Server intra-op threads.")
    parser.add_argument("--window-ms", type=float, default=2.0, help="Batching window.")
    args = parser.parse_args()
    apply_defaults()
    from hamnet.core.config import DataSection
    from hamnet.training.data import load_dataset

    rows = load_dataset(DataSection()).x_test
    work = Path(tempfile.mkdtemp(prefix="hamnet-serving-bench-"))
    files, facts = _models(work, args.epochs, args.threads)
    for fact in facts:
        print(json.dumps(fact))
    results = []
    for name, path in files.items():
        for batching, window in (("on", args.window_ms), ("off", 0.0)):
            server = ServerProcess(path, window_ms=window, threads=args.threads)
            try:
                server.wait_ready()
                for clients in LEVELS:
                    before = server.batch_totals()
                    row = asyncio.run(
                        _load(server.url, rows, clients, args.requests, args.max_seconds)
                    )
                    after = server.batch_totals()
                    calls = after[1] - before[1]
                    per_call = (after[0] - before[0]) / calls if calls else 0.0
                    row = {"model": name, "batching": batching, "clients": clients, **row,
                           "rows_per_call": per_call}  # fmt: skip
                    results.append(row)
                    print(json.dumps(row))
            finally:
                server.stop()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    settings = {k: getattr(args, k) for k in ("requests", "max_seconds", "epochs", "threads",
                                               "window_ms")}  # fmt: skip
    document = {"settings": settings, "models": facts, "load": results}
    (out / "serving.json").write_text(json.dumps(document, indent=2))
    lines = [
        "# hamnet serve under load (loopback, one-sample requests)", "",
        f"Settings: {settings}", "",
        "| model | accuracy | size MB | direct p50 ms |", "|---|---|---|---|",
        *(f"| {f['model']} | {f['accuracy']:.4f} | {f['size_mb']:.3f} | "
          f"{f['direct_p50_ms']:.3f} |" for f in facts),
        "",
        "| model | batching | clients | requests | req/s | p50 ms | p95 ms | p99 ms | errors "
        "| rows/call |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for r in results:
        lines.append(
            f"| {r['model']} | {r['batching']} | {r['clients']} | {r['requests']} | "
            f"{r['rps']:.0f} | {r['p50_ms']:.2f} | {r['p95_ms']:.2f} | {r['p99_ms']:.2f} | "
            f"{100 * r['error_rate']:.1f}% | {r['rows_per_call']:.2f} |"
        )
    (out / "serving.md").write_text("\n".join(lines) + "\n")
    print((out / "serving.md").read_text())


if __name__ == "__main__":
    main()
