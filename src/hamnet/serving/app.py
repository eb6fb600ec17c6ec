"""The FastAPI app that serves one model, or several A/B arms, with dynamic batching.

Endpoints: ``POST /predict`` (one sample or a batch), ``GET /health`` (liveness),
``GET /ready`` (readiness), ``GET /metrics`` (Prometheus text), ``GET /model`` (name,
version, alias, run id and MLflow metrics of every arm) and ``POST /reload`` (load the
version an alias points at now). What is served lives in :class:`ServingState`
(:mod:`hamnet.serving.state`); this module holds the HTTP layer only. It imports
FastAPI at import time: import it lazily (``hamnet serve`` does).

The ``/predict`` path is kept short because at a fraction of a millisecond per
inference the HTTP layer is the cost (profiled with py-spy, see ``docs/serving.md``):
``POST /predict`` is answered before FastAPI's and Starlette's middleware and routing
(:class:`ServingApp` hands it to :class:`PredictFastPath`), the body is parsed and
validated in one pass by pydantic's JSON parser (``model_validate_json``) instead of
FastAPI's ``json.loads`` + dependency solving, the answer is an :class:`Answer` (status
and JSON bytes, serialised with orjson when it is installed) sent as two raw ASGI
messages, a batch is scored once (:class:`~hamnet.serving.state.Scores`), the
Prometheus children of each arm are looked up once, the routes sit on the app's own
router, and the lifespan freezes the objects alive after start-up out of the garbage
collector's full passes. The HTTP server (uvicorn or granian) is chosen and run by
:mod:`hamnet.serving.servers`.

Example:
    >>> state = ServingState.build(ServeSettings(arms={"main": "model.onnx"}))  # doctest: +SKIP
    >>> uvicorn.run(create_app(state), host="127.0.0.1", port=8000)  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from hamnet.serving.batching import BatchResult
from hamnet.serving.metrics import BATCH_BUCKETS, LATENCY_BUCKETS, Metrics
from hamnet.serving.models import ModelInfo
from hamnet.serving.state import Arm, Scores, ServeSettings, ServingState

__all__ = [
    "BATCH_BUCKETS",
    "KEY_HEADER",
    "LATENCY_BUCKETS",
    "Answer",
    "Arm",
    "FastJSONResponse",
    "Metrics",
    "PredictFastPath",
    "PredictRequest",
    "Predictor",
    "ServeSettings",
    "ServingApp",
    "ServingState",
    "create_app",
    "freeze_heap",
]

logger = logging.getLogger("hamnet.serving")

KEY_HEADER = "X-Request-Key"

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


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
            reason = (error.get("ctx") or {}).get("error")
            where = f" near character {loc[0]}" if loc else f" ({reason})" if reason else ""
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


def _json_bytes() -> Callable[[Any], bytes]:
    """orjson's ``dumps`` when installed (about 10x faster), else the standard library's."""
    try:
        import orjson
    except ImportError:
        return lambda document: json.dumps(document, separators=(",", ":")).encode()
    return orjson.dumps


_dumps = _json_bytes()


@dataclass(frozen=True)
class Answer:
    """What ``POST /predict`` answers: a status and a JSON body, whatever the server.

    The same answer goes out as two raw ASGI messages (:meth:`send_asgi`), as a
    Starlette response (:meth:`response`, for the documented FastAPI route) or through
    granian's RSGI protocol (:mod:`hamnet.serving.servers`).

    Attributes:
        status: HTTP status code.
        body: The JSON document, serialised.
    """

    status: int
    body: bytes

    CONTENT_TYPE = "application/json"

    @classmethod
    def json(cls, status: int, document: Any) -> Answer:
        """An answer whose body is ``document`` as JSON (orjson when installed)."""
        return cls(status, _dumps(document))

    @classmethod
    def error(cls, status: int, detail: str) -> Answer:
        """A ``{"detail": ...}`` answer, as FastAPI's own errors are shaped."""
        return cls.json(status, {"detail": detail})

    def response(self) -> Response:
        """As a Starlette response."""
        return Response(self.body, status_code=self.status, media_type=self.CONTENT_TYPE)

    async def send_asgi(self, send: Send) -> None:
        """Send it as an ASGI ``http.response.start`` and one ``http.response.body``."""
        headers = [(b"content-type", b"application/json"),
                   (b"content-length", str(len(self.body)).encode())]  # fmt: skip
        await send({"type": "http.response.start", "status": self.status, "headers": headers})
        await send({"type": "http.response.body", "body": self.body})


def _invalid_body(errors: list[Any]) -> Answer:
    return Answer.json(
        422, {"detail": _validation_message(errors), "errors": _clean_errors(errors)}
    )


class FastJSONResponse(JSONResponse):
    """A JSON response serialised by orjson when it is installed."""

    dumps = staticmethod(_dumps)

    def render(self, content: Any) -> bytes:
        return self.dumps(content)


class _ArmMetrics:
    """The Prometheus children one arm's requests touch, looked up once."""

    def __init__(self, metrics: Metrics, arm: str) -> None:
        self.ok = metrics.requests.labels(arm, "200")
        self.latency = metrics.latency.labels(arm)
        self.samples = metrics.samples.labels(arm)


class Predictor:
    """Answers ``POST /predict``: routes to an arm, checks, batches, predicts, counts, logs.

    Args:
        state: What is served.
    """

    def __init__(self, state: ServingState) -> None:
        self.state = state
        self.metrics = state.metrics
        self._arm_metrics = {name: _ArmMetrics(state.metrics, name) for name in state.arms}

    async def handle_raw(self, raw: bytes, header_key: str | None) -> Answer:
        """Validate a raw JSON body in one pass and answer it (see :meth:`handle`).

        Returns:
            The answer, or a 422 whose ``detail`` says where, what must hold and what
            was sent when the body is not a valid :class:`PredictRequest`.
        """
        try:
            body = PredictRequest.model_validate_json(raw)
        except ValidationError as err:
            self.metrics.errors.labels("none", "validation").inc()
            self.metrics.requests.labels("none", "422").inc()
            return _invalid_body(list(err.errors(include_url=False)))
        return await self.handle(body, header_key or body.key)

    async def handle(self, body: PredictRequest, key: str | None) -> Answer:
        """Answer one request; ``key`` makes its A/B assignment sticky.

        Returns:
            200 with the predictions; 422 for a wrong feature count or too many samples;
            503 when the server is not ready; 500 when the inference raised.
        """
        started = time.perf_counter()
        arm = self.state.arms[self.state.router.assign(key)]
        rows = body.rows()
        refused = self._admit(arm, rows)
        if refused is not None:
            return refused
        try:
            result = await arm.batcher.submit(np.asarray(rows, dtype=np.float32))
        except Exception as err:
            return self._failed(arm, key, len(rows), time.perf_counter() - started, err)
        return self._answer(arm, key, body, result, started)

    def _admit(self, arm: Arm, rows: list[list[float]]) -> Answer | None:
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
            return Answer.error(422, message)
        if not self.state.ready:
            self.metrics.requests.labels(arm.name, "503").inc()
            return Answer.error(503, "the server is not ready")
        return None

    def _failed(
        self, arm: Arm, key: str | None, rows: int, elapsed: float, err: Exception
    ) -> Answer:
        logger.exception("inference failed on arm %s", arm.name)
        self.metrics.errors.labels(arm.name, "inference").inc()
        self.metrics.requests.labels(arm.name, "500").inc()
        self.state.record(arm.name, "", key, elapsed, rows, type(err).__name__)
        return Answer.json(
            500, {"detail": f"inference failed: {type(err).__name__}: {err}", "arm": arm.name}
        )

    def _answer(
        self, arm: Arm, key: str | None, body: PredictRequest, result: BatchResult, started: float
    ) -> Answer:
        served: ModelInfo = result.tag
        scores = result.outputs
        if not isinstance(scores, Scores):  # a run function that returns bare logits
            scores = Scores.of(scores)
        predictions = scores.predictions.tolist()
        labels = body.true_labels() or []
        correct = sum(int(p == t) for p, t in zip(predictions, labels, strict=False))
        rows = len(predictions)
        elapsed = time.perf_counter() - started
        counters = self._arm_metrics[arm.name]
        counters.latency.observe(elapsed)
        counters.ok.inc()
        counters.samples.inc(rows)
        self.state.record(arm.name, served.version, key, elapsed, rows, None, len(labels), correct)
        return Answer.json(
            200,
            {
                "arm": arm.name,
                "model": served.name,
                "version": served.version,
                "runtime": served.runtime,
                "batch_rows": result.batch_rows,
                "predictions": predictions,
                "probabilities": scores.probabilities.tolist(),
                "logits": scores.logits.tolist(),
            },
        )


def _lifespan(
    state: ServingState,
) -> Callable[[FastAPI], contextlib.AbstractAsyncContextManager[None]]:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await state.start()
        if state.settings.gc_freeze:
            freeze_heap()
        try:
            yield
        finally:
            await state.stop()

    return lifespan


def freeze_heap() -> None:
    """Collect once, then move every object alive now out of the collector's reach.

    A server that imported MLflow and the runtimes tracks ~5x the objects of a plain
    app, so each full collection pauses it for ~150 ms and sets the tail latency under
    load; the models, routes and modules live as long as the process and need not be
    scanned again.
    """
    gc.collect()
    gc.freeze()


def _validation_handler(metrics: Metrics) -> Any:
    async def invalid_request(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        metrics.errors.labels("none", "validation").inc()
        metrics.requests.labels("none", "422").inc()
        return _invalid_body(list(exc.errors())).response()

    return invalid_request


def status_routes(state: ServingState, router: APIRouter | None = None) -> APIRouter:
    """The routes that report on the server: health, readiness, metrics, model, reload.

    Args:
        state: What is served.
        router: Where to add them (a new router when None; the app's own router saves
            a routing layer per request).
    """
    router = router if router is not None else APIRouter()

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


class PredictFastPath:
    """Answers ``POST /predict`` straight from the ASGI messages, before any other layer.

    At a fraction of a millisecond per inference, FastAPI's and Starlette's middleware
    (server errors, FastAPI's telemetry check, exceptions), routing, ``Request`` object
    and endpoint machinery cost more than the model (profiled, ``docs/serving.md``).
    This reads the body, hands it to :meth:`Predictor.handle_raw` and sends the
    :class:`Answer` as two raw ASGI messages. An unexpected error is logged and answered
    with a 500 (when nothing was sent yet), so the server stays up. Every other request
    goes on to ``app``. As an ASGI app it wraps any app; :class:`ServingApp` calls
    :meth:`answer` itself, and granian's RSGI bridge shares :meth:`predict`.

    Args:
        app: The rest of the ASGI stack.
        predictor: Answers the requests.
    """

    PATH = "/predict"

    def __init__(self, app: Any, predictor: Predictor) -> None:
        self.app = app
        self.predictor = predictor
        self._key = KEY_HEADER.lower().encode("latin-1")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.takes(scope):
            await self.answer(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    def takes(self, scope: Scope) -> bool:
        """Whether ``scope`` is a ``POST /predict`` this path answers."""
        if scope["type"] != "http" or scope["method"] != "POST":
            return False
        path: str = scope["path"]
        root: str = scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root) :]
        return path == self.PATH

    async def answer(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Read the request's body, answer it and send the answer."""
        chunks = []
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        key = next((v.decode("latin-1") for k, v in scope["headers"] if k == self._key), None)
        answer = await self.predict(chunks[0] if len(chunks) == 1 else b"".join(chunks), key)
        await answer.send_asgi(send)

    async def predict(self, raw: bytes, key: str | None) -> Answer:
        """Answer a raw body; an unexpected error becomes a logged 500."""
        try:
            return await self.predictor.handle_raw(raw, key)
        except Exception as err:
            logger.exception("POST %s failed", self.PATH)
            return Answer.error(500, f"internal error: {type(err).__name__}: {err}")


class ServingApp(FastAPI):
    """hamnet's FastAPI app: ``POST /predict`` goes to its :class:`PredictFastPath` first.

    Everything else (``/health``, ``/ready``, ``/metrics``, ``/model``, ``/reload``, the
    OpenAPI document, the lifespan) is FastAPI as usual.

    Attributes:
        fast_path: Answers ``POST /predict`` (None: the ``/predict`` route does).
    """

    fast_path: PredictFastPath | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        fast = self.fast_path
        if fast is not None and fast.takes(scope):
            await fast.answer(scope, receive, send)
            return
        await super().__call__(scope, receive, send)


def predict_routes(
    state: ServingState, router: APIRouter | None = None, predictor: Predictor | None = None
) -> APIRouter:
    """The ``POST /predict`` route, answered by a :class:`Predictor`.

    The body is read raw and validated by :meth:`Predictor.handle_raw` (one pydantic
    pass over the JSON); the OpenAPI document still shows :class:`PredictRequest`.
    In :func:`create_app`'s app :class:`PredictFastPath` answers before the route is
    reached; the route documents the endpoint and serves apps built without it.

    Args:
        state: What is served.
        router: Where to add it (a new router when None).
        predictor: Answers the requests (a new one when None).
    """
    router = router if router is not None else APIRouter()
    predictor = predictor if predictor is not None else Predictor(state)
    body_doc = {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": PredictRequest.model_json_schema()}},
        },
        "parameters": [
            {"name": KEY_HEADER, "in": "header", "required": False, "schema": {"type": "string"},
             "description": "A/B assignment key (the body's `key` does the same)."}
        ],
    }  # fmt: skip

    @router.post("/predict", openapi_extra=body_doc)
    async def predict(request: Request) -> Response:
        raw = await request.body()
        answer = await predictor.handle_raw(raw, request.headers.get(KEY_HEADER))
        return answer.response()

    return router


def create_app(state: ServingState) -> ServingApp:
    """The FastAPI app serving ``state``.

    Args:
        state: Loaded arms and settings (from :meth:`ServingState.build`).

    Returns:
        An ASGI app (run it with :func:`hamnet.serving.servers.run_server`); its
        lifespan starts the batchers and the registry poller.
    """
    app = ServingApp(title="hamnet serve", version="1", lifespan=_lifespan(state))
    app.state.serving = state
    app.add_exception_handler(RequestValidationError, _validation_handler(state.metrics))
    predictor = Predictor(state)
    status_routes(state, app.router)
    predict_routes(state, app.router, predictor)
    app.fast_path = PredictFastPath(None, predictor)
    return app
