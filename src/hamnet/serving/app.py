"""The FastAPI app that serves one model, or several A/B arms, with dynamic batching.

Endpoints: ``POST /predict`` (one sample or a batch), ``GET /health`` (liveness),
``GET /ready`` (readiness), ``GET /metrics`` (Prometheus text), ``GET /model`` (name,
version, alias, run id and MLflow metrics of every arm) and ``POST /reload`` (load the
version an alias points at now). This module imports FastAPI at import time: import
it lazily (``hamnet serve`` does).

Example:
    >>> state = ServingState.build(ServeSettings(arms={"main": "model.onnx"}))  # doctest: +SKIP
    >>> uvicorn.run(create_app(state), host="127.0.0.1", port=8000)  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Header, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, model_validator

from hamnet.core.errors import ConfigError
from hamnet.serving.ab import ABLog, ABRecord, ABRouter
from hamnet.serving.batching import DynamicBatcher
from hamnet.serving.models import ModelInfo, ModelRef, ModelSlot

logger = logging.getLogger("hamnet.serving")

KEY_HEADER = "X-Request-Key"
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.5, 5.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class PredictRequest(BaseModel):
    """The body of ``POST /predict``: ``input`` (one sample) or ``inputs`` (a batch).

    Numbers only (no strings, booleans or NaN/inf). ``label``/``labels`` are optional
    true classes, used only to measure accuracy per A/B arm; ``key`` makes the A/B
    assignment sticky (the ``X-Request-Key`` header does the same).
    """

    model_config = ConfigDict(strict=True, allow_inf_nan=False, extra="forbid")

    input: list[float] | None = Field(None, description="One sample: its features.")
    inputs: list[list[float]] | None = Field(None, description="A batch of samples.")
    label: int | None = Field(None, ge=0, description="True class of `input`.")
    labels: list[int] | None = Field(None, description="True classes of `inputs`.")
    key: str | None = Field(None, max_length=256, description="A/B assignment key.")

    @model_validator(mode="after")
    def _one_form(self) -> PredictRequest:
        if (self.input is None) == (self.inputs is None):
            raise ValueError("exactly one of 'input' (one sample) or 'inputs' (a batch) is needed")
        if self.inputs is not None and not self.inputs:
            raise ValueError("'inputs' must hold at least one sample, but got an empty list")
        if self.label is not None and self.input is None:
            raise ValueError("'label' goes with 'input'; use 'labels' with 'inputs'")
        if self.labels is not None:
            if self.inputs is None:
                raise ValueError("'labels' goes with 'inputs'; use 'label' with 'input'")
            if len(self.labels) != len(self.inputs):
                raise ValueError(
                    f"'labels' must have one entry per sample ({len(self.inputs)}), but got "
                    f"{len(self.labels)}"
                )
        return self

    def rows(self) -> list[list[float]]:
        """The samples as a list of rows."""
        return [self.input] if self.input is not None else list(self.inputs or [])

    def true_labels(self) -> list[int] | None:
        """The labels as a list (one per row), if sent."""
        if self.label is not None:
            return [self.label]
        return self.labels


@dataclass
class ServeSettings:
    """How to serve.

    Attributes:
        arms: Arm name to model reference (``models:/name@alias``, ``models:/name/3`` or
            a file); one arm serves all traffic.
        split: Arm name to traffic share (default: all to the first arm).
        hardware: Hardware profile name or YAML path.
        runtime: Force a runtime (default: the registry's tag, else the profile's first).
        threads: Intra-op threads (default: the profile's).
        tracking_uri: MLflow tracking URI (default: ``$MLFLOW_TRACKING_URI``).
        max_batch_size: Most rows per inference (default: the profile's throughput
            batch size).
        batch_window_ms: How long a request waits for others to batch with; 0 disables.
        poll_seconds: How often aliases are checked for a new version; 0 disables.
        ab_log: JSON-lines file where every request is recorded (None: no log).
        max_request_rows: Most samples one request may send.
        seed: Seed of the random assignment of requests without a key.
    """

    arms: Mapping[str, str]
    split: Mapping[str, float] | None = None
    hardware: str = "x86-avx2"
    runtime: str | None = None
    threads: int | None = None
    tracking_uri: str | None = None
    max_batch_size: int | None = None
    batch_window_ms: float = 2.0
    poll_seconds: float = 30.0
    ab_log: Path | None = None
    max_request_rows: int = 1024
    seed: int | None = None


class Metrics:
    """The app's Prometheus metrics, in a registry of their own (one per app)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter(
            "hamnet_requests", "Prediction requests by arm and HTTP status.",
            ["arm", "status"], registry=self.registry,
        )  # fmt: skip
        self.latency = Histogram(
            "hamnet_request_latency_seconds", "Time from arrival to response of /predict.",
            ["arm"], buckets=LATENCY_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.batch_size = Histogram(
            "hamnet_batch_size", "Rows per inference call (after dynamic batching).",
            ["arm"], buckets=BATCH_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.errors = Counter(
            "hamnet_errors", "Failed requests by arm and kind (validation, inference).",
            ["arm", "kind"], registry=self.registry,
        )  # fmt: skip
        self.samples = Counter(
            "hamnet_samples", "Samples predicted.", ["arm"], registry=self.registry
        )
        self.model = Gauge(
            "hamnet_model_info", "The model version each arm serves (value 1).",
            ["arm", "name", "version", "runtime"], registry=self.registry,
        )  # fmt: skip
        self.reloads = Counter(
            "hamnet_reloads", "Times an arm switched to a new model version.", ["arm"],
            registry=self.registry,
        )  # fmt: skip

    def set_model(self, arm: str, info: ModelInfo, previous: ModelInfo | None = None) -> None:
        """Point the ``hamnet_model_info`` gauge of ``arm`` at ``info``."""
        if previous is not None:
            with contextlib.suppress(KeyError):
                self.model.remove(arm, previous.name, previous.version, previous.runtime)
        self.model.labels(arm, info.name, info.version, info.runtime).set(1)

    def exposition(self) -> bytes:
        """The Prometheus text format."""
        from prometheus_client import generate_latest

        return bytes(generate_latest(self.registry))


@dataclass
class Arm:
    """One A/B arm: its model slot, its batcher and its traffic share."""

    name: str
    slot: ModelSlot
    weight: float
    batcher: DynamicBatcher = field(init=False)


class ServingState:
    """Everything the app serves: arms, router, metrics, A/B log.

    Build it with :meth:`build`, which loads every model first, so a server never
    starts with a model it cannot run.
    """

    def __init__(self, settings: ServeSettings, arms: dict[str, Arm], max_batch: int) -> None:
        self.settings = settings
        self.arms = arms
        self.max_batch_size = max_batch
        self.router = ABRouter({a.name: a.weight for a in arms.values()}, seed=settings.seed)
        self.metrics = Metrics()
        self.log = ABLog(settings.ab_log) if settings.ab_log is not None else None
        self.ready = False
        self.cache_dir: Path | None = None
        for arm in arms.values():
            arm.batcher = DynamicBatcher(
                self._runner(arm),
                max_batch_size=max_batch,
                window_ms=settings.batch_window_ms,
                on_batch=self.metrics.batch_size.labels(arm.name).observe,
            )
            self.metrics.set_model(arm.name, arm.slot.model.info)

    @staticmethod
    def _runner(arm: Arm) -> Any:
        def run(x: np.ndarray) -> tuple[np.ndarray, ModelInfo]:
            model = arm.slot.model  # one model for the whole batch, even during a reload
            return model.run(x), model.info

        return run

    @classmethod
    def build(cls, settings: ServeSettings) -> ServingState:
        """Load every arm's model.

        Raises:
            ConfigError: If the split names arms that do not exist, or is invalid.
            ModelLoadError: If a model cannot be loaded.
            HardwareProfileError: If the profile's hardware is absent.
        """
        from hamnet.core.hardware import load_profile

        if not settings.arms:
            raise ConfigError("at least one model must be served, but got none")
        split = dict(settings.split or {next(iter(settings.arms)): 1.0})
        orphans = sorted(set(split) - set(settings.arms))
        if orphans:
            raise ConfigError(
                f"every A/B arm must have a model, but arms {orphans} "
                f"have none (models for {sorted(settings.arms)})"
            )
        profile = load_profile(settings.hardware)
        max_batch = settings.max_batch_size or profile.throughput_batch_size
        cache = Path(tempfile.mkdtemp(prefix="hamnet-serve-"))
        arms = {}
        try:
            for name, weight in split.items():
                slot = ModelSlot(
                    ModelRef.parse(settings.arms[name]), profile, runtime=settings.runtime,
                    threads=settings.threads, tracking_uri=settings.tracking_uri,
                    cache_dir=cache,
                )  # fmt: skip
                arms[name] = Arm(name, slot, weight)
        except BaseException:
            shutil.rmtree(cache, ignore_errors=True)
            raise
        state = cls(settings, arms, max_batch)
        state.cache_dir = cache
        return state

    async def refresh(self) -> dict[str, dict[str, Any]]:
        """Check every arm's alias and swap in moved versions (in worker threads)."""
        result: dict[str, dict[str, Any]] = {}
        for arm in self.arms.values():
            before = arm.slot.model.info
            reloaded = await asyncio.to_thread(arm.slot.refresh)
            after = arm.slot.model.info
            if reloaded:
                self.metrics.set_model(arm.name, after, before)
                self.metrics.reloads.labels(arm.name).inc()
            result[arm.name] = {"reloaded": reloaded, "from": before.version, "to": after.version}
        return result

    async def poll(self) -> None:
        """Refresh every ``poll_seconds`` until cancelled; failures are logged, not fatal."""
        while True:
            await asyncio.sleep(self.settings.poll_seconds)
            try:
                await self.refresh()
            except Exception as err:
                logger.warning("registry poll failed, still serving: %s", err)

    def model_document(self) -> dict[str, Any]:
        """What ``GET /model`` returns."""
        arms = [
            {"arm": a.name, "weight": a.weight, **a.slot.model.info.to_dict()}
            for a in self.arms.values()
        ]
        return {**arms[0], "arms": arms, "max_batch_size": self.max_batch_size,
                "batch_window_ms": self.settings.batch_window_ms}  # fmt: skip


def _validation_message(errors: list[Any], limit: int = 5) -> str:
    """One readable sentence per error: where, what must hold, what was got."""
    parts = []
    for error in errors[:limit]:
        loc = [str(p) for p in error.get("loc", ()) if p != "body"]
        kind = error.get("type", "")
        if kind == "json_invalid":
            where = f" near character {loc[0]}" if loc else ""
            parts.append(f"the body must be valid JSON, but it is not{where}")
            continue
        text = f"{'.'.join(loc) or 'body'}: {error.get('msg', 'invalid')}"
        if kind not in ("value_error", "missing", "extra_forbidden") and "input" in error:
            got = repr(error["input"])
            text += f", but got {got if len(got) <= 40 else got[:37] + '...'}"
        parts.append(text)
    if len(errors) > limit:
        parts.append(f"and {len(errors) - limit} more errors")
    return "; ".join(parts)


def _clean_errors(errors: list[Any]) -> list[dict[str, Any]]:
    return [{k: e.get(k) for k in ("type", "loc", "msg")} for e in errors]


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return np.asarray(exp / exp.sum(axis=1, keepdims=True), dtype=np.float64)


def create_app(state: ServingState) -> FastAPI:
    """The FastAPI app serving ``state``.

    Args:
        state: Loaded arms and settings (from :meth:`ServingState.build`).

    Returns:
        An ASGI app; its lifespan starts the batchers and the registry poller.
    """

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        for arm in state.arms.values():
            await arm.batcher.start()
        poller = None
        if state.settings.poll_seconds > 0 and any(a.slot.ref.alias for a in state.arms.values()):
            poller = asyncio.create_task(state.poll(), name="hamnet-registry-poll")
        state.ready = True
        try:
            yield
        finally:
            state.ready = False
            if poller is not None:
                poller.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await poller
            for arm in state.arms.values():
                await arm.batcher.stop()
            if state.cache_dir is not None:
                shutil.rmtree(state.cache_dir, ignore_errors=True)

    app = FastAPI(title="hamnet serve", version="1", lifespan=lifespan)
    app.state.serving = state
    metrics = state.metrics

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = list(exc.errors())
        metrics.errors.labels("none", "validation").inc()
        metrics.requests.labels("none", "422").inc()
        return JSONResponse(
            {"detail": _validation_message(errors), "errors": _clean_errors(errors)},
            status_code=422,
        )

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready")
    async def ready() -> JSONResponse:
        versions = {a.name: a.slot.model.info.version for a in state.arms.values()}
        code = 200 if state.ready else 503
        return JSONResponse({"ready": state.ready, "versions": versions}, status_code=code)

    @app.get("/metrics")
    async def prometheus() -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST

        return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/model")
    async def model() -> dict[str, Any]:
        return state.model_document()

    @app.post("/reload")
    async def reload() -> JSONResponse:
        try:
            result = await state.refresh()
        except Exception as err:
            return JSONResponse(
                {"detail": f"reload failed, still serving the loaded models: {err}"},
                status_code=500,
            )
        return JSONResponse({"arms": result})

    @app.post("/predict")
    async def predict(
        body: PredictRequest,
        x_request_key: str | None = Header(None, alias=KEY_HEADER),
    ) -> JSONResponse:
        started = time.perf_counter()
        key = x_request_key or body.key
        arm = state.arms[state.router.assign(key)]
        info = arm.slot.model.info
        rows = body.rows()
        bad = next((len(r) for r in rows if len(r) != info.features), None)
        if bad is not None or len(rows) > state.settings.max_request_rows:
            metrics.errors.labels(arm.name, "validation").inc()
            metrics.requests.labels(arm.name, "422").inc()
            message = (
                f"each sample must have {info.features} features, but got {bad}"
                if bad is not None
                else f"a request must hold at most {state.settings.max_request_rows} samples, "
                f"but got {len(rows)}"
            )
            raise HTTPException(422, detail=message)
        if not state.ready:
            metrics.requests.labels(arm.name, "503").inc()
            raise HTTPException(503, detail="the server is not ready")
        x = np.asarray(rows, dtype=np.float32)
        try:
            result = await arm.batcher.submit(x)
        except Exception as err:
            elapsed = time.perf_counter() - started
            logger.exception("inference failed on arm %s", arm.name)
            metrics.errors.labels(arm.name, "inference").inc()
            metrics.requests.labels(arm.name, "500").inc()
            _record(state, arm.name, "", key, elapsed, len(rows), type(err).__name__)
            return JSONResponse(
                {"detail": f"inference failed: {type(err).__name__}: {err}", "arm": arm.name},
                status_code=500,
            )
        served: ModelInfo = result.tag
        logits = np.asarray(result.outputs, dtype=np.float64)
        predictions = logits.argmax(axis=1).tolist()
        labels = body.true_labels()
        correct = sum(int(p == t) for p, t in zip(predictions, labels or [], strict=False))
        elapsed = time.perf_counter() - started
        metrics.latency.labels(arm.name).observe(elapsed)
        metrics.requests.labels(arm.name, "200").inc()
        metrics.samples.labels(arm.name).inc(len(rows))
        _record(state, arm.name, served.version, key, elapsed, len(rows), None,
                len(labels or []), correct)  # fmt: skip
        return JSONResponse(
            {
                "arm": arm.name,
                "model": served.name,
                "version": served.version,
                "runtime": served.runtime,
                "batch_rows": result.batch_rows,
                "predictions": predictions,
                "probabilities": _softmax(logits).tolist(),
                "logits": logits.tolist(),
            }
        )

    return app


def _record(
    state: ServingState,
    arm: str,
    version: str,
    key: str | None,
    elapsed: float,
    rows: int,
    error: str | None,
    labelled: int = 0,
    correct: int = 0,
) -> None:
    if state.log is None:
        return
    state.log.write(
        ABRecord(time.time(), arm, version, key, 1000 * elapsed, rows, error, labelled, correct)
    )
