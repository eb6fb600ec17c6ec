"""What a server serves: its settings and its arms, each a model slot with a batcher.

:meth:`ServingState.build` loads every arm's model before anything listens, so a server
never starts with a model it cannot run. Nothing here imports FastAPI.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from hamnet.core.errors import ConfigError
from hamnet.serving.ab import ABLog, ABRecord, ABRouter
from hamnet.serving.batching import BatchResult, DynamicBatcher, RunFn
from hamnet.serving.metrics import Metrics
from hamnet.serving.models import ModelInfo, ModelRef, ModelSlot

logger = logging.getLogger("hamnet.serving")


@dataclass(frozen=True)
class Scores:
    """A batch's logits with their softmax and argmax, computed once for the whole batch.

    NumPy's per-call overhead, not arithmetic, is the cost on a few rows: scoring the
    batch once and slicing each request's rows out is cheaper than scoring every
    request's slice (profiled: per-request softmax was ~12% of the app's time at 50
    clients). Slicing keeps the three arrays aligned, so the batchers split it like an
    array.

    Attributes:
        logits: ``[rows, classes]`` float64 logits.
        probabilities: Their softmax, row by row.
        predictions: The argmax of each row.
    """

    logits: np.ndarray
    probabilities: np.ndarray
    predictions: np.ndarray

    @classmethod
    def of(cls, outputs: np.ndarray) -> Scores:
        """Score a model's ``[rows, classes]`` outputs."""
        logits = np.asarray(outputs, dtype=np.float64)
        shifted = logits - logits.max(axis=1, keepdims=True)
        exp = np.exp(shifted)
        return cls(logits, exp / exp.sum(axis=1, keepdims=True), logits.argmax(axis=1))

    def __len__(self) -> int:
        return len(self.logits)

    def __getitem__(self, rows: slice) -> Scores:
        return Scores(self.logits[rows], self.probabilities[rows], self.predictions[rows])


@dataclass
class ServeSettings:
    """How to serve.

    Attributes:
        arms: Arm name to model reference (``models:/name@alias``, ``models:/name/3`` or
            a file); one arm serves all traffic.
        split: Arm name to traffic share (default: all to the first arm).
        hardware: Hardware profile name or YAML path.
        runtime: Force a runtime (default: the registry's tag, else the profile's first).
        threads: Intra-op threads (default: the profile's, else 1: a server runs many
            small inferences, batched, and the event loop needs a core of its own; a
            runtime left to pick its own count spins a second thread that takes it).
        tracking_uri: MLflow tracking URI (default: ``$MLFLOW_TRACKING_URI``).
        max_batch_size: Most rows per inference (default: the profile's throughput
            batch size).
        batch_window_ms: How long a request waits for others to batch with; 0 disables.
        poll_seconds: How often aliases are checked for a new version; 0 disables.
        ab_log: JSON-lines file where every request is recorded (None: no log).
        max_request_rows: Most samples one request may send.
        seed: Seed of the random assignment of requests without a key.
        inline_below_ms: Inferences measured faster than this run on the event loop,
            slower ones in a worker thread (0: always a worker thread).
        gc_freeze: Freeze the objects alive after start-up out of the garbage
            collector's full passes (they set the tail latency under load).
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
    inline_below_ms: float = 0.5
    gc_freeze: bool = True


@dataclass
class Arm:
    """One A/B arm: its model slot, its batcher and its traffic share."""

    name: str
    slot: ModelSlot
    weight: float
    batcher: Batcher = field(init=False)


class Batcher(Protocol):
    """What an arm batches with: :class:`DynamicBatcher`, or Ray Serve's ``@serve.batch``."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def submit(self, x: np.ndarray) -> BatchResult: ...


BatcherFactory = Callable[[RunFn, ServeSettings, int, Callable[[int], None]], Batcher]
"""Builds an arm's batcher from its run function, the settings, the most rows per call
and the callback that records each call's rows."""


def dynamic_batcher(
    run: RunFn, settings: ServeSettings, max_batch: int, on_batch: Callable[[int], None]
) -> Batcher:
    """The single-process batcher (:class:`DynamicBatcher`), the default factory."""
    return DynamicBatcher(
        run, max_batch_size=max_batch, window_ms=settings.batch_window_ms, on_batch=on_batch,
        inline_below_ms=settings.inline_below_ms,
    )  # fmt: skip


class ServingState:
    """Everything the app serves: arms, router, metrics, A/B log.

    Build it with :meth:`build`, which loads every model first, so a server never
    starts with a model it cannot run.

    Args:
        settings: How to serve.
        arms: The loaded arms.
        max_batch: Most rows per inference call.
        batcher: Builds each arm's batcher (default: :func:`dynamic_batcher`).
    """

    def __init__(
        self,
        settings: ServeSettings,
        arms: dict[str, Arm],
        max_batch: int,
        batcher: BatcherFactory = dynamic_batcher,
    ) -> None:
        self.settings = settings
        self.arms = arms
        self.max_batch_size = max_batch
        self.router = ABRouter({a.name: a.weight for a in arms.values()}, seed=settings.seed)
        self.metrics = Metrics()
        self.log = ABLog(settings.ab_log) if settings.ab_log is not None else None
        self.ready = False
        self.cache_dir: Path | None = None
        self._poller: asyncio.Task[None] | None = None
        for arm in arms.values():
            on_batch = self.metrics.batch_size.labels(arm.name).observe
            arm.batcher = batcher(self._runner(arm), settings, max_batch, on_batch)
            self.metrics.set_model(arm.name, arm.slot.model.info)

    @staticmethod
    def _runner(arm: Arm) -> Any:
        def run(x: np.ndarray) -> tuple[Scores, ModelInfo]:
            model = arm.slot.model  # one model for the whole batch, even during a reload
            return Scores.of(model.run(x)), model.info

        return run

    @classmethod
    def build(
        cls, settings: ServeSettings, batcher: BatcherFactory = dynamic_batcher
    ) -> ServingState:
        """Load every arm's model.

        Args:
            settings: How to serve.
            batcher: Builds each arm's batcher (default: :func:`dynamic_batcher`).

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
        threads = settings.threads if settings.threads is not None else profile.threads or 1
        cache = Path(tempfile.mkdtemp(prefix="hamnet-serve-"))
        arms = {}
        try:
            for name, weight in split.items():
                slot = ModelSlot(
                    ModelRef.parse(settings.arms[name]), profile, runtime=settings.runtime,
                    threads=threads, tracking_uri=settings.tracking_uri,
                    cache_dir=cache,
                )  # fmt: skip
                arms[name] = Arm(name, slot, weight)
        except BaseException:
            shutil.rmtree(cache, ignore_errors=True)
            raise
        state = cls(settings, arms, max_batch, batcher)
        state.cache_dir = cache
        return state

    async def start(self) -> None:
        """Start the batchers and, when an arm follows an alias, the registry poller."""
        for arm in self.arms.values():
            await arm.batcher.start()
        if self.settings.poll_seconds > 0 and any(a.slot.ref.alias for a in self.arms.values()):
            self._poller = asyncio.create_task(self.poll(), name="hamnet-registry-poll")
        self.ready = True

    async def stop(self) -> None:
        """Stop the poller and the batchers, and remove the downloaded model files."""
        self.ready = False
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
            self._poller = None
        for arm in self.arms.values():
            await arm.batcher.stop()
        if self.cache_dir is not None:
            shutil.rmtree(self.cache_dir, ignore_errors=True)

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

    def record(
        self,
        arm: str,
        version: str,
        key: str | None,
        elapsed: float,
        rows: int,
        error: str | None,
        labelled: int = 0,
        correct: int = 0,
    ) -> None:
        """Append one request to the A/B log, if there is one.

        Args:
            arm: The arm that served it.
            version: The model version that answered ("" when inference failed).
            key: The assignment key, if any.
            elapsed: Seconds from arrival to response.
            rows: Samples in the request.
            error: The exception's type name when inference failed.
            labelled: Samples sent with a true label.
            correct: Labelled samples predicted right.
        """
        if self.log is None:
            return
        self.log.write(
            ABRecord(time.time(), arm, version, key, 1000 * elapsed, rows, error, labelled, correct)
        )

    def model_document(self) -> dict[str, Any]:
        """What ``GET /model`` returns."""
        arms = [
            {"arm": a.name, "weight": a.weight, **a.slot.model.info.to_dict()}
            for a in self.arms.values()
        ]
        return {**arms[0], "arms": arms, "max_batch_size": self.max_batch_size,
                "batch_window_ms": self.settings.batch_window_ms}  # fmt: skip
