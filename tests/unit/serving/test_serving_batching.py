"""The dynamic batcher: coalescing, splitting results back, failure isolation."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from hamnet.core.errors import ConfigError
from hamnet.serving.batching import DynamicBatcher


class Recorder:
    """A run function that doubles its input and records every batch it saw."""

    def __init__(self, fail_when: float | None = None) -> None:
        self.batches: list[int] = []
        self.threads: set[int] = set()
        self.fail_when = fail_when

    def __call__(self, x: np.ndarray) -> tuple[np.ndarray, str]:
        self.batches.append(len(x))
        self.threads.add(threading.get_ident())
        if self.fail_when is not None and np.any(x == self.fail_when):
            raise RuntimeError("poisoned batch")
        return x * 2, "v1"


async def _many(batcher: DynamicBatcher, rows: list[np.ndarray]) -> list[object]:
    await batcher.start()
    try:
        return await asyncio.gather(*(batcher.submit(r) for r in rows), return_exceptions=True)
    finally:
        await batcher.stop()


def test_concurrent_requests_share_batches_and_get_their_own_rows() -> None:
    run = Recorder()
    batcher = DynamicBatcher(run, max_batch_size=8, window_ms=50, on_batch=lambda n: None)
    rows = [np.full((1 + i % 2, 3), float(i), dtype=np.float32) for i in range(12)]
    results = asyncio.run(_many(batcher, rows))
    for x, result in zip(rows, results, strict=True):
        np.testing.assert_array_equal(result.outputs, x * 2)  # type: ignore[attr-defined]
        assert result.tag == "v1"  # type: ignore[attr-defined]
    assert sum(run.batches) == sum(len(r) for r in rows)
    assert len(run.batches) < len(rows)
    assert max(run.batches) <= 8
    assert threading.get_ident() not in run.threads  # inference ran off the event loop


def test_zero_window_runs_every_request_alone() -> None:
    run = Recorder()
    seen: list[int] = []
    batcher = DynamicBatcher(run, max_batch_size=8, window_ms=0, on_batch=seen.append)
    assert not batcher.enabled
    rows = [np.full((2, 3), float(i), dtype=np.float32) for i in range(5)]
    results = asyncio.run(_many(batcher, rows))
    assert run.batches == [2] * 5 and seen == [2] * 5
    np.testing.assert_array_equal(results[3].outputs, rows[3] * 2)  # type: ignore[attr-defined]


def test_request_larger_than_the_batch_runs_alone() -> None:
    run = Recorder()
    batcher = DynamicBatcher(run, max_batch_size=4, window_ms=20)
    rows = [np.ones((10, 3), dtype=np.float32), np.zeros((1, 3), dtype=np.float32)]
    results = asyncio.run(_many(batcher, rows))
    assert sorted(run.batches) == [1, 10]
    assert results[0].batch_rows == 10  # type: ignore[attr-defined]


def test_a_failing_batch_fails_only_its_requests() -> None:
    run = Recorder(fail_when=-1.0)
    batcher = DynamicBatcher(run, max_batch_size=2, window_ms=30)
    rows = [np.full((1, 3), v, dtype=np.float32) for v in (-1.0, 5.0, 6.0, 7.0)]

    async def scenario() -> list[object]:
        await batcher.start()
        try:
            first = await asyncio.gather(*(batcher.submit(r) for r in rows[:2]),
                                         return_exceptions=True)  # fmt: skip
            later = await asyncio.gather(*(batcher.submit(r) for r in rows[2:]))
            return [*first, *later]
        finally:
            await batcher.stop()

    results = asyncio.run(scenario())
    assert isinstance(results[0], RuntimeError)
    assert isinstance(results[1], RuntimeError)  # same batch as the poisoned row
    np.testing.assert_array_equal(results[2].outputs, rows[2] * 2)  # type: ignore[attr-defined]
    np.testing.assert_array_equal(results[3].outputs, rows[3] * 2)  # type: ignore[attr-defined]


@pytest.mark.parametrize(("size", "window"), [(0, 1.0), (4, -1.0)])
def test_bad_settings_are_refused(size: int, window: float) -> None:
    with pytest.raises(ConfigError, match="must be"):
        DynamicBatcher(Recorder(), max_batch_size=size, window_ms=window)
