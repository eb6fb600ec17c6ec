"""Dynamic batching: requests arriving within a short window share one inference.

:class:`DynamicBatcher` queues each request's rows; a collector task takes every
request already waiting (up to ``max_batch_size`` rows) and, when that is more than
one request (so requests are queuing), keeps adding arrivals for up to ``window_ms``;
a lone request runs at once, so batching adds no latency at low load. The batch runs
as ONE inference in a worker thread, so the event loop keeps accepting requests (the
next batch gathers meanwhile), and every caller gets its own rows of the result. A
batch that fails fails only its own requests. ``window_ms=0`` turns batching off:
every request runs alone, still in a worker thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from hamnet.core.errors import ConfigError

RunFn = Callable[[np.ndarray], tuple[np.ndarray, Any]]
"""Runs a ``[batch, features]`` array; returns the outputs and a tag (e.g. model info)."""


@dataclass(frozen=True)
class BatchResult:
    """One request's share of a batch.

    Attributes:
        outputs: The request's rows of the batch output.
        tag: What the run function returned beside the outputs (e.g. the model's info).
        batch_rows: Rows in the inference call that served the request.
    """

    outputs: np.ndarray
    tag: Any
    batch_rows: int


@dataclass
class _Pending:
    x: np.ndarray
    future: asyncio.Future[BatchResult]


class DynamicBatcher:
    """Collects concurrent requests into batches of at most ``max_batch_size`` rows.

    Args:
        run: The inference function, called from a worker thread.
        max_batch_size: Most rows per inference call (a larger request runs alone).
        window_ms: How long a batch of queued requests waits for more; 0 disables
            batching.
        on_batch: Called with the row count of every inference call (for metrics).

    Raises:
        ConfigError: If ``max_batch_size`` < 1 or ``window_ms`` < 0.
    """

    def __init__(
        self,
        run: RunFn,
        *,
        max_batch_size: int,
        window_ms: float,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        if max_batch_size < 1:
            raise ConfigError(f"max_batch_size must be at least 1, but got {max_batch_size}")
        if window_ms < 0:
            raise ConfigError(f"window_ms must be non-negative, but got {window_ms}")
        self.run = run
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
            outputs, tag = await asyncio.to_thread(self.run, x)
            self._record(len(x))
            return BatchResult(outputs, tag, len(x))
        future: asyncio.Future[BatchResult] = asyncio.get_running_loop().create_future()
        await self._queue.put(_Pending(x, future))
        return await future

    def _record(self, rows: int) -> None:
        if self.on_batch is not None:
            self.on_batch(rows)

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
                if not queue.empty():
                    item = queue.get_nowait()
                elif len(batch) == 1:
                    break  # a lone request: nobody is queuing, waiting would only add latency
                else:
                    remaining = deadline - time.perf_counter()
                    if remaining <= 0:
                        break
                    try:
                        item = await asyncio.wait_for(queue.get(), remaining)
                    except TimeoutError:
                        break
                if rows + len(item.x) > self.max_batch_size:
                    carry = item
                    break
                batch.append(item)
                rows += len(item.x)
            await self._run_batch(batch, rows)

    async def _run_batch(self, batch: list[_Pending], rows: int) -> None:
        live = [p for p in batch if not p.future.done()]  # callers may have gone away
        if not live:
            return
        x = live[0].x if len(live) == 1 else np.concatenate([p.x for p in live], axis=0)
        try:
            outputs, tag = await asyncio.to_thread(self.run, x)
            if len(outputs) != len(x):
                raise RuntimeError(
                    f"the model must return one output row per input row, but got "
                    f"{len(outputs)} rows for {len(x)}"
                )
        except Exception as err:
            for pending in live:
                if not pending.future.done():
                    pending.future.set_exception(err)
            return
        self._record(len(x))
        start = 0
        for pending in live:
            stop = start + len(pending.x)
            if not pending.future.done():
                pending.future.set_result(BatchResult(outputs[start:stop], tag, len(x)))
            start = stop
