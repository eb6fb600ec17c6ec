"""The FastAPI app that serves one model, or several A/B arms, with dynamic batching.

Endpoints: ``POST /predict`` (one sample or a batch), ``GET /health`` (liveness),
``GET /ready`` (readiness), ``GET /metrics`` (Prometheus text), ``GET /model`` (name,
version, alias, run id and MLflow metrics of every arm) and ``POST /reload`` (load the
version an alias points at now). What is served lives in :class:`ServingState`
(:mod:`hamnet.serving.state`); this module holds the HTTP layer only. It imports
FastAPI at import time: import it lazily (``hamnet serve`` does).

Example:
    >>> state = ServingState.build(ServeSettings(arms={"main": "model.onnx"}))  # doctest: +SKIP
    >>> uvicorn.run(create_app(state), host="127.0.0.1", port=8000)  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import numpy as np
from fastapi import APIRouter, FastAPI, Header, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, model_validator

from hamnet.serving.batching import BatchResult
from hamnet.serving.metrics import BATCH_BUCKETS, LATENCY_BUCKETS, Metrics
from hamnet.serving.models import ModelInfo
from hamnet.serving.state import Arm, ServeSettings, ServingState

__all__ = [
    "BATCH_BUCKETS",
    "KEY_HEADER",
    "LATENCY_BUCKETS",
    "Arm",
    "Metrics",
    "PredictRequest",
    "Predictor",
    "ServeSettings",
    "ServingState",
    "create_app",
]

logger = logging.getLogger("hamnet.serving")

KEY_HEADER = "X-Request-Key"


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


class Predictor:
    """Answers ``POST /predict``: routes to an arm, checks, batches, predicts, counts, logs.

    Args:
        state: What is served.
    """

    def __init__(self, state: ServingState) -> None:
        self.state = state
        self.metrics = state.metrics

    async def handle(self, body: PredictRequest, key: str | None) -> JSONResponse:
        """Answer one request; ``key`` makes its A/B assignment sticky.

        Raises:
            HTTPException: 422 for a wrong feature count or too many samples, 503 when
                the server is not ready.
        """
        started = time.perf_counter()
        arm = self.state.arms[self.state.router.assign(key)]
        rows = body.rows()
        self._admit(arm, rows)
        try:
            result = await arm.batcher.submit(np.asarray(rows, dtype=np.float32))
        except Exception as err:
            return self._failed(arm, key, len(rows), time.perf_counter() - started, err)
        return self._answer(arm, key, body, result, started)

    def _admit(self, arm: Arm, rows: list[list[float]]) -> None:
        info = arm.slot.model.info
        limit = self.state.settings.max_request_rows
        bad = next((len(r) for r in rows if len(r) != info.features), None)
        if bad is not None or len(rows) > limit:
            self.metrics.errors.labels(arm.name, "validation").inc()
            self.metrics.requests.labels(arm.name, "422").inc()
            message = (
                f"each sample must have {info.features} features, but got {bad}"
                if bad is not None
                else f"a request must hold at most {limit} samples, but got {len(rows)}"
            )
            raise HTTPException(422, detail=message)
        if not self.state.ready:
            self.metrics.requests.labels(arm.name, "503").inc()
            raise HTTPException(503, detail="the server is not ready")

    def _failed(
        self, arm: Arm, key: str | None, rows: int, elapsed: float, err: Exception
    ) -> JSONResponse:
        logger.exception("inference failed on arm %s", arm.name)
        self.metrics.errors.labels(arm.name, "inference").inc()
        self.metrics.requests.labels(arm.name, "500").inc()
        self.state.record(arm.name, "", key, elapsed, rows, type(err).__name__)
        return JSONResponse(
            {"detail": f"inference failed: {type(err).__name__}: {err}", "arm": arm.name},
            status_code=500,
        )

    def _answer(
        self, arm: Arm, key: str | None, body: PredictRequest, result: BatchResult, started: float
    ) -> JSONResponse:
        served: ModelInfo = result.tag
        logits = np.asarray(result.outputs, dtype=np.float64)
        predictions = logits.argmax(axis=1).tolist()
        labels = body.true_labels() or []
        correct = sum(int(p == t) for p, t in zip(predictions, labels, strict=False))
        rows = len(predictions)
        elapsed = time.perf_counter() - started
        self.metrics.latency.labels(arm.name).observe(elapsed)
        self.metrics.requests.labels(arm.name, "200").inc()
        self.metrics.samples.labels(arm.name).inc(rows)
        self.state.record(arm.name, served.version, key, elapsed, rows, None, len(labels), correct)
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


def _lifespan(
    state: ServingState,
) -> Callable[[FastAPI], contextlib.AbstractAsyncContextManager[None]]:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await state.start()
        try:
            yield
        finally:
            await state.stop()

    return lifespan


def _validation_handler(metrics: Metrics) -> Any:
    async def invalid_request(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        errors = list(exc.errors())
        metrics.errors.labels("none", "validation").inc()
        metrics.requests.labels("none", "422").inc()
        return JSONResponse(
            {"detail": _validation_message(errors), "errors": _clean_errors(errors)},
            status_code=422,
        )

    return invalid_request


def status_routes(state: ServingState) -> APIRouter:
    """The routes that report on the server: health, readiness, metrics, model, reload."""
    router = APIRouter()

    @router.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @router.get("/ready")
    async def ready() -> JSONResponse:
        versions = {a.name: a.slot.model.info.version for a in state.arms.values()}
        code = 200 if state.ready else 503
        return JSONResponse({"ready": state.ready, "versions": versions}, status_code=code)

    @router.get("/metrics")
    async def prometheus() -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST

        return Response(state.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    @router.get("/model")
    async def model() -> dict[str, Any]:
        return state.model_document()

    @router.post("/reload")
    async def reload() -> JSONResponse:
        try:
            result = await state.refresh()
        except Exception as err:
            return JSONResponse(
                {"detail": f"reload failed, still serving the loaded models: {err}"},
                status_code=500,
            )
        return JSONResponse({"arms": result})

    return router


def predict_routes(state: ServingState) -> APIRouter:
    """The ``POST /predict`` route, answered by a :class:`Predictor`."""
    router = APIRouter()
    predictor = Predictor(state)

    @router.post("/predict")
    async def predict(
        body: PredictRequest,
        x_request_key: str | None = Header(None, alias=KEY_HEADER),
    ) -> JSONResponse:
        return await predictor.handle(body, x_request_key or body.key)

    return router


def create_app(state: ServingState) -> FastAPI:
    """The FastAPI app serving ``state``.

    Args:
        state: Loaded arms and settings (from :meth:`ServingState.build`).

    Returns:
        An ASGI app; its lifespan starts the batchers and the registry poller.
    """
    app = FastAPI(title="hamnet serve", version="1", lifespan=_lifespan(state))
    app.state.serving = state
    app.add_exception_handler(RequestValidationError, _validation_handler(state.metrics))
    app.include_router(status_routes(state))
    app.include_router(predict_routes(state))
    return app
