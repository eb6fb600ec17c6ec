"""Dynamic batching: requests that queue up together share one inference.

:class:`DynamicBatcher` queues each request's rows; a collector task takes every request
already waiting (up to ``max_batch_size`` rows) and, when that is more than one request
(so requests are queuing), gives the event loop one more turn at a time to add arrivals,
for as long as each turn brings some and at most ``window_ms``. A lone request runs at
once (through the queue: answering it straight from :meth:`DynamicBatcher.submit`
would answer every request of a burst alone, each before the next is read) and a batch
stops growing as soon as arrivals stop, so batching adds no fixed wait (a fixed window
waits its full length whenever batches stay under the cap). Every caller gets its own
rows of the result; a batch that fails fails only its own requests. ``window_ms=0``
turns batching off: every request runs alone.

Where a batch runs is decided by :class:`InferenceCaller` from measured times: a model
whose calls take under ``inline_below_ms`` runs on the event loop itself (a hop to a
worker thread costs about as much as a 0.05 ms model, and more under load), a slower
one in a worker thread so the loop keeps accepting requests meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from hamnet.core.errors import ConfigError


class Rows(Protocol):
    """A batch's outputs, one per input row: an array, or anything sliced like one."""

    def __len__(self) -> int: ...

    def __getitem__(self, rows: slice, /) -> Any: ...


RunFn = Callable[[np.ndarray], tuple[Rows, Any]]
"""Runs a ``[batch, features]`` array; returns the outputs (one per row, e.g. an array
or :class:`hamnet.serving.state.Scores`) and a tag (e.g. model info)."""


@dataclass(frozen=True)
class BatchResult:
    """One request's share of a batch.

    Attributes:
        outputs: The request's rows of the batch output.
        tag: What the run function returned beside the outputs (e.g. the model's info).
        batch_rows: Rows in the inference call that served the request.
    """

    outputs: Any
    tag: Any
    batch_rows: int


class InferenceCaller:
    """Runs a :data:`RunFn` on the event loop or in a worker thread, by its measured time.

    The first calls run in a worker thread; every call updates an exponential moving
    average of the time per row, and a call whose rows are expected to take under
    ``inline_below_ms`` runs on the loop itself (no thread hop), a longer one in a
    worker thread (so small batches of a fast model skip the hop and large ones run
    beside the loop). ``inline_below_ms=0`` always uses a worker thread.

    Args:
        run: The inference function.
        inline_below_ms: Mean call time below which calls run on the event loop.

    Raises:
        ConfigError: If ``inline_below_ms`` < 0.
    """

    WARMUP_CALLS = 3
    """Calls that run in a worker thread before the average decides."""

    def __init__(self, run: RunFn, *, inline_below_ms: float = 0.5) -> None:
        if inline_below_ms < 0:
            raise ConfigError(f"inline_below_ms must be non-negative, but got {inline_below_ms}")
        self.run = run
        self.inline_below_s = inline_below_ms / 1000.0
        self.seconds_per_row: float | None = None
        self.calls = 0

    def inline(self, rows: int) -> bool:
        """Whether a call with ``rows`` rows runs on the event loop."""
        return (
            self.calls >= self.WARMUP_CALLS
            and self.seconds_per_row is not None
            and self.seconds_per_row * rows < self.inline_below_s
        )

    async def __call__(self, x: np.ndarray) -> tuple[Rows, Any]:
        """Run ``x`` and return the run function's ``(outputs, tag)``."""
        rows = max(len(x), 1)
        if self.inline(rows):
            started = time.perf_counter()
            result = self.run(x)
            self._observe((time.perf_counter() - started) / rows)
            return result
        result, seconds = await asyncio.to_thread(self._timed, x)
        self._observe(seconds / rows)
        return result

    def _timed(self, x: np.ndarray) -> tuple[tuple[Rows, Any], float]:
        started = time.perf_counter()
        result = self.run(x)
        return result, time.perf_counter() - started

    def _observe(self, per_row: float) -> None:
        self.calls += 1
        mean = self.seconds_per_row
        self.seconds_per_row = per_row if mean is None else 0.9 * mean + 0.1 * per_row


@dataclass
class _Pending:
    x: np.ndarray
    future: asyncio.Future[BatchResult]


async def run_alone(
    caller: InferenceCaller, x: np.ndarray, on_batch: Callable[[int], None] | None
) -> BatchResult:
    """Run one request as its own inference call (batching off, or a request too big)."""
    outputs, tag = await caller(x)
    if on_batch is not None:
        on_batch(len(x))
    return BatchResult(outputs, tag, len(x))


async def run_together(
    caller: InferenceCaller, parts: list[np.ndarray], on_batch: Callable[[int], None] | None
) -> list[BatchResult]:
    """Run several requests as one inference call and split the outputs back, in order.

    Raises:
        RuntimeError: The model returned a different number of rows than it was given.
        Exception: Whatever the inference raised.
    """
    x = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)
    outputs, tag = await caller(x)
    if len(outputs) != len(x):
        raise RuntimeError(
            f"the model must return one output row per input row, but got "
            f"{len(outputs)} rows for {len(x)}"
        )
    if on_batch is not None:
        on_batch(len(x))
    results = []
    start = 0
    for part in parts:
        stop = start + len(part)
        results.append(BatchResult(outputs[start:stop], tag, len(x)))
        start = stop
    return results


class DynamicBatcher:
    """Collects concurrent requests into batches of at most ``max_batch_size`` rows.

    Args:
        run: The inference function.
        max_batch_size: Most rows per inference call (a larger request runs alone).
        window_ms: Most time a batch of queued requests keeps growing while arrivals
            continue; 0 disables batching.
        on_batch: Called with the row count of every inference call (for metrics).
        inline_below_ms: Calls measured faster than this run on the event loop, slower
            ones in a worker thread (see :class:`InferenceCaller`).

    Raises:
        ConfigError: If ``max_batch_size`` < 1, ``window_ms`` < 0 or
            ``inline_below_ms`` < 0.
    """

    def __init__(
        self,
        run: RunFn,
        *,
        max_batch_size: int,
        window_ms: float,
        on_batch: Callable[[int], None] | None = None,
        inline_below_ms: float = 0.5,
    ) -> None:
        if max_batch_size < 1:
            raise ConfigError(f"max_batch_size must be at least 1, but got {max_batch_size}")
        if window_ms < 0:
            raise ConfigError(f"window_ms must be non-negative, but got {window_ms}")
        self.run = run
        self.caller = InferenceCaller(run, inline_below_ms=inline_below_ms)
        self.max_batch_size = max_batch_size
        self.window_s = window_ms / 1000.0
        self.on_batch = on_batch
        self._queue: asyncio.Queue[_Pending] | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def enabled(self) -> bool:
        """Whether requests are batched (window > 0 and batches of more than one row)."""
        return self.window_s > 0 and self.max_batch_size > 1

    async def start(self) -> None:
        """Start the collector task on the running loop (no-op when batching is off)."""
        if self.enabled and self._task is None:
            self._queue = asyncio.Queue()
            self._task = asyncio.create_task(self._collect(), name="hamnet-batcher")

    async def stop(self) -> None:
        """Stop the collector; requests still queued fail with ``RuntimeError``."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._queue is not None:
            while not self._queue.empty():
                pending = self._queue.get_nowait()
                if not pending.future.done():
                    pending.future.set_exception(RuntimeError("the server is shutting down"))

    async def submit(self, x: np.ndarray) -> BatchResult:
        """Run ``x`` (``[rows, features]``) in the next batch and return its outputs.

        Raises:
            Exception: Whatever the run function raised for the batch.
        """
        if self._queue is None or len(x) >= self.max_batch_size:
            return await run_alone(self.caller, x, self.on_batch)
        future: asyncio.Future[BatchResult] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Pending(x, future))
        return await future

    async def _collect(self) -> None:
        assert self._queue is not None
        queue = self._queue
        carry: _Pending | None = None
        while True:
            first = carry if carry is not None else await queue.get()
            carry = None
            batch = [first]
            rows = len(first.x)
            deadline = time.perf_counter() + self.window_s
            while rows < self.max_batch_size:
                if queue.empty():
                    if len(batch) == 1 or time.perf_counter() >= deadline:
                        break  # a lone request, or the window is spent: run now
                    await asyncio.sleep(0)  # one loop turn: let ready handlers enqueue
                    if queue.empty():
                        break  # arrivals stopped: waiting longer would only add latency
                item = queue.get_nowait()
                if rows + len(item.x) > self.max_batch_size:
                    carry = item
                    break
                batch.append(item)
                rows += len(item.x)
            await self._run_batch(batch)

    async def _run_batch(self, batch: list[_Pending]) -> None:
        live = [p for p in batch if not p.future.done()]  # callers may have gone away
        if not live:
            return
        try:
            results = await run_together(self.caller, [p.x for p in live], self.on_batch)
        except Exception as err:
            for pending in live:
                if not pending.future.done():
                    pending.future.set_exception(err)
            return
        for pending, result in zip(live, results, strict=True):
            if not pending.future.done():
                pending.future.set_result(result)
