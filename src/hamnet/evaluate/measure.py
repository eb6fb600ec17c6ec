"""Measure a candidate: one code path for every model, runtime and stage.

:func:`measure_artifact` loads a stored model in a runtime with the hardware
profile's settings and returns :class:`~hamnet.core.candidate.Metrics`: top-1 accuracy
or, without labels, fidelity to the original model's outputs (top-1 agreement for
class scores, mean cosine similarity for embeddings and hidden states: see
:mod:`hamnet.evaluate.fidelity`), latency p50/p90 at
the profile's latency batch size (calls cycle through the first
:data:`LATENCY_BATCHES` batches of the split), throughput at its throughput batch size, file size,
peak memory, and the thread count used. The building blocks (:func:`latency_ms`,
:func:`throughput_sps`, :func:`accuracy`, :func:`agreement`, :func:`peak_memory_mb`)
work on any :class:`~hamnet.backends.session.InferenceSession`, on inputs of any rank and on
models with several named inputs (batches slice axis 0 of every input).

Example:
    >>> metrics = measure_artifact(ref, "openvino", profile, x_test, y_test,
    ...                            config.measure, params=n_params, flops=n_flops)
    >>> metrics.latency_p50_ms
"""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

import numpy as np

from hamnet.backends.session import get_runtime, pack_inputs, runtime_spec, unpack_inputs
from hamnet.core.candidate import Metrics
from hamnet.core.errors import DataError
from hamnet.core.hardware import resolved_threads
from hamnet.evaluate.fidelity import cosine_similarity as cosine_similarity  # re-exported
from hamnet.evaluate.fidelity import fidelity_kind, score_fidelity

if TYPE_CHECKING:
    from hamnet.backends.session import InferenceSession, Inputs, Runtime
    from hamnet.core.artifacts import ArtifactRef
    from hamnet.core.config import MeasureSection
    from hamnet.core.hardware import HardwareProfile, RuntimeSpec

T = TypeVar("T")

_MB = 1e6


def _check_same_length(what: str, first: int, second: int) -> None:
    if first != second:
        raise DataError(f"{what} must have the same length, but got {first} and {second}")


def _head(values: np.ndarray | None, n: int) -> np.ndarray | None:
    """The first ``n`` rows of ``values`` (None stays None)."""
    return None if values is None else np.asarray(values)[:n]


def eval_rows(x_test: Inputs, max_eval_samples: int | None) -> tuple[np.ndarray, int]:
    """The test inputs that are scored, packed, and the cap applied to labels alike.

    Args:
        x_test: Test inputs (one array of any rank, or named inputs).
        max_eval_samples: At most this many rows are scored (all when None).

    Returns:
        The first rows of ``x_test`` (packed, contiguous) and the cap to slice labels,
        reference outputs and logits with.
    """
    packed = pack_inputs(x_test)
    n = len(packed) if max_eval_samples is None else max_eval_samples
    return np.ascontiguousarray(packed[:n]), n


def _rows(x: Inputs, n: int) -> np.ndarray:
    """Return exactly ``n`` rows of ``x`` (repeating rows when ``x`` has fewer), packed."""
    x = pack_inputs(x)
    if len(x) == 0:
        raise DataError("measurement needs at least one input row, but got an empty array")
    if len(x) < n:
        x = np.concatenate([x] * (n // len(x) + 1), axis=0)
    return np.ascontiguousarray(x[:n])


LATENCY_BATCHES = 32
"""Distinct batches :func:`measure_session` times in turn: a model whose cost depends on
its input (a graph that skips padded tokens, see :mod:`hamnet.backends.padding`) is
timed over a spread of real inputs, not on whichever row comes first."""


def latency_rows(x: Inputs, batch_size: int, batches: int = LATENCY_BATCHES) -> np.ndarray:
    """The rows :func:`latency_ms` cycles through: up to ``batches`` batches of
    ``batch_size`` from the start of ``x`` (repeating rows when ``x`` has fewer), packed."""
    n = max(1, min(batches, len(pack_inputs(x)) // max(1, batch_size)))
    return _rows(x, n * batch_size)


def latency_ms(
    session: InferenceSession,
    x_one: Inputs,
    *,
    warmup: int,
    repeats: int,
    batch_size: int | None = None,
) -> tuple[float, float]:
    """Time single calls of ``session.run``.

    Args:
        session: The model.
        x_one: The batch run in every call (its size is the latency batch size): one
            array of any rank or named inputs (a mapping or a packed structured array);
            with ``batch_size``, several batches (see :func:`latency_rows`).
        warmup: Untimed calls first (caches, lazy allocations, JIT).
        repeats: Timed calls.
        batch_size: Rows per call: the calls cycle through the consecutive batches of
            ``x_one``; None runs all of ``x_one`` in every call.

    Returns:
        The median and 90th percentile latency in milliseconds.

    Raises:
        DataError: If ``repeats`` is not positive.
    """
    if repeats < 1:
        raise DataError(f"repeats must be positive, but got {repeats}")
    packed = pack_inputs(x_one)
    step = len(packed) if batch_size is None else batch_size
    if not 1 <= step <= len(packed):
        raise DataError(
            f"batch_size must be between 1 and the {len(packed)} rows given, but got {step}"
        )
    batches = [unpack_inputs(packed[i : i + step]) for i in range(0, len(packed) - step + 1, step)]
    for i in range(warmup):
        session.run(batches[i % len(batches)])  # type: ignore[arg-type]
    times = np.empty(repeats, dtype=np.float64)
    for i in range(repeats):
        batch = batches[i % len(batches)]
        start = time.perf_counter_ns()
        session.run(batch)  # type: ignore[arg-type]
        times[i] = time.perf_counter_ns() - start
    p50, p90 = np.percentile(times, [50, 90]) / 1e6
    return float(p50), float(p90)


def paired_latency_ms(
    sessions: Sequence[InferenceSession],
    x_one: Inputs,
    *,
    warmup: int,
    repeats: int,
    rounds: int,
    batch_size: int | None = None,
) -> list[float]:
    """Time several models side by side: ``rounds`` interleaved rounds, one
    :func:`latency_ms` per model per round, so drifts of the machine hit all alike;
    every other round runs the models in reverse order, so going first or last (warm
    caches, frequency steps) favours none of them.

    Args:
        sessions: The models, all fed ``x_one``.
        x_one: The latency batch (or batches, with ``batch_size``).
        warmup: Untimed calls before each timing.
        repeats: Timed calls per model per round.
        rounds: Interleaved rounds (at least 1).
        batch_size: As for :func:`latency_ms`.

    Returns:
        Each model's median over the rounds of its p50 latency, in milliseconds.

    Raises:
        DataError: If ``rounds`` or ``repeats`` is not positive.
    """
    if rounds < 1:
        raise DataError(f"rounds must be positive, but got {rounds}")
    per_model: list[list[float]] = [[] for _ in sessions]
    order = list(range(len(sessions)))
    for round_index in range(rounds):
        for i in order if round_index % 2 == 0 else order[::-1]:
            per_model[i].append(
                latency_ms(
                    sessions[i], x_one, warmup=warmup, repeats=repeats, batch_size=batch_size
                )[0]
            )
    return [float(np.median(t)) for t in per_model]


def throughput_sps(
    session: InferenceSession,
    x_batch: Inputs,
    *,
    warmup: int,
    min_seconds: float = 0.5,
    max_iters: int = 1000,
) -> float:
    """Return samples per second when running ``x_batch`` back to back.

    Calls repeat until ``min_seconds`` have passed or ``max_iters`` calls were made
    (at least one call is always timed).

    Args:
        session: The model.
        x_batch: The batch run in every call (its size is the throughput batch size).
        warmup: Untimed calls first.
        min_seconds: Time to keep running for a stable figure.
        max_iters: Upper bound on timed calls.

    Returns:
        Samples per second.
    """
    packed = pack_inputs(x_batch)
    x_batch = unpack_inputs(packed)  # type: ignore[assignment]
    for _ in range(warmup):
        session.run(x_batch)
    iters = 0
    start = time.perf_counter_ns()
    elapsed = 0
    while iters < max(1, max_iters):
        session.run(x_batch)
        iters += 1
        elapsed = time.perf_counter_ns() - start
        if elapsed >= min_seconds * 1e9:
            break
    return iters * len(packed) / (max(elapsed, 1) / 1e9)


def predict(session: InferenceSession, x: Inputs, batch_size: int) -> np.ndarray:
    """Return the outputs for every sample of ``x``, computed ``batch_size`` at a time.

    ``x`` is one array of any rank or named inputs; batches are sliced along axis 0 of
    every input.
    """
    if batch_size < 1:
        raise DataError(f"batch_size must be positive, but got {batch_size}")
    x = pack_inputs(x)
    if len(x) == 0:
        raise DataError("prediction needs at least one input row, but got an empty array")
    return np.concatenate(
        [
            session.run(unpack_inputs(x[i : i + batch_size]))  # type: ignore[arg-type]
            for i in range(0, len(x), batch_size)
        ],
        axis=0,
    )


def fidelity(
    outputs: np.ndarray,
    reference: np.ndarray,
    *,
    setting: str = "auto",
    output_kind: str | None = None,
) -> tuple[float, str]:
    """Score outputs against the original model's outputs (no labels needed).

    How is chosen by :func:`hamnet.evaluate.fidelity.fidelity_kind` from ``setting``,
    ``output_kind`` and the reference outputs themselves: top-1 agreement for class
    scores, mean cosine similarity for embeddings and hidden states.

    Args:
        outputs: The candidate's outputs ``[N, ...]``.
        reference: The original model's outputs on the same inputs.
        setting: ``data.fidelity``: ``"auto"``, ``"agreement"`` or ``"cosine"``.
        output_kind: What the model declares its output to be (``"class_scores"``,
            ``"embedding"``, ``"hidden_states"``), or None.

    Returns:
        The score and its kind: ``"top1_agreement"`` or ``"mean_cosine_similarity"``.

    Raises:
        DataError: If the lengths or shapes differ.
        ConfigError: If ``setting`` or ``output_kind`` is unknown.
    """
    reference = np.asarray(reference)
    _check_same_length("reference outputs and x_test", len(reference), len(outputs))
    kind = fidelity_kind(reference, output_kind, setting=setting)
    return score_fidelity(np.asarray(outputs), reference, kind)


def is_reference(y: np.ndarray | None) -> bool:
    """Whether ``y`` holds reference outputs (float, 2-D or more) rather than labels."""
    if y is None:
        return False
    y = np.asarray(y)
    return bool(np.issubdtype(y.dtype, np.floating) and y.ndim >= 2)


def accuracy(session: InferenceSession, x: Inputs, y: np.ndarray, batch_size: int) -> float:
    """Return the top-1 accuracy of ``session`` on inputs ``x`` with labels ``y``.

    Raises:
        DataError: If ``x`` and ``y`` have different lengths or are empty.
    """
    x = pack_inputs(x)
    _check_same_length("x and y", len(x), len(y))
    return _top1_rate(predict(session, x, batch_size), np.asarray(y))


def agreement(
    session: InferenceSession, reference_logits: np.ndarray, x: Inputs, batch_size: int
) -> float:
    """Return how often ``session``'s top-1 class equals the reference's (no labels needed).

    Raises:
        DataError: If ``reference_logits`` and ``x`` have different lengths or are empty.
    """
    x = pack_inputs(x)
    _check_same_length("reference_logits and x", len(reference_logits), len(x))
    return _top1_rate(predict(session, x, batch_size), np.asarray(reference_logits).argmax(axis=1))


def _top1_rate(logits: np.ndarray, labels: np.ndarray) -> float:
    """How often the top-1 class of ``logits`` (or 1-D predictions) equals ``labels``."""
    predictions = logits.argmax(axis=1) if logits.ndim >= 2 else logits
    return float(np.mean(predictions == labels))


def score_outputs(
    logits: np.ndarray,
    y: np.ndarray | None,
    reference_logits: np.ndarray | None = None,
    *,
    required: bool = True,
    fidelity_setting: str = "auto",
    output_kind: str | None = None,
) -> tuple[float | None, str]:
    """Score a model's outputs: top-1 accuracy on labels, else fidelity to a reference.

    Args:
        logits: The model's outputs ``[N, ...]``.
        y: Integer labels ``[N]``, the original model's float outputs (scored by
            fidelity), or None.
        reference_logits: The original model's outputs, scored by fidelity when ``y``
            is None.
        required: Raise when there is nothing to score against; False gives None.
        fidelity_setting: ``data.fidelity`` (see :func:`fidelity`).
        output_kind: The model's declared output kind (see :func:`fidelity`).

    Returns:
        The score (None when not required and nothing to score against) and its kind:
        ``"top1_accuracy"``, ``"top1_agreement"``, ``"mean_cosine_similarity"`` or
        ``"none"``.

    Raises:
        DataError: If there is nothing to score against, or the arrays do not line up.
    """
    if is_reference(y):
        assert y is not None
        return fidelity(logits, y, setting=fidelity_setting, output_kind=output_kind)
    if y is None and reference_logits is not None:
        _check_same_length("reference_logits and x_test", len(reference_logits), len(logits))
        return fidelity(logits, reference_logits, setting=fidelity_setting, output_kind=output_kind)
    if y is not None:
        _check_same_length("x_test and y_test", len(logits), len(y))
        return _top1_rate(logits, y), "top1_accuracy"
    if not required:
        return None, "none"
    raise DataError(
        "measuring needs labels (y_test) or reference logits for agreement, but got neither"
    )


def peak_memory_mb(fn: Callable[[], T], *, interval_s: float = 0.001) -> tuple[T, float]:
    """Run ``fn`` while a background thread samples this process's RSS.

    The figure is the peak resident set size during ``fn`` minus the RSS just before
    it: for a model load followed by inference, the memory that loading and running it
    added. It is a process-level estimate: memory the allocator reuses from earlier
    work is not counted again, and a library imported for the first time inside ``fn``
    is charged to it.

    Args:
        fn: The work to measure.
        interval_s: Seconds between samples.

    Returns:
        ``fn``'s result and the RSS increase in MB (10^6 bytes), never negative.
    """
    import psutil

    process = psutil.Process()
    gc.collect()
    baseline = process.memory_info().rss
    peak = baseline
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, process.memory_info().rss)
            stop.wait(interval_s)

    sampler = threading.Thread(target=sample, name="hamnet-rss-sampler", daemon=True)
    sampler.start()
    try:
        result = fn()
    finally:
        stop.set()
        sampler.join()
    peak = max(peak, process.memory_info().rss)
    return result, max(0.0, (peak - baseline) / _MB)


@dataclass(frozen=True)
class SessionMeasurement:
    """What :func:`measure_session` found (the runtime-independent part of Metrics).

    ``accuracy`` is None (kind ``"none"``) when neither labels nor reference outputs
    were given and the caller did not require a score.
    """

    accuracy: float | None
    accuracy_kind: str
    latency_p50_ms: float
    latency_p90_ms: float
    throughput_sps: float
    eval_samples: int


def measure_session(
    session: InferenceSession,
    x_test: Inputs,
    y_test: np.ndarray | None,
    settings: MeasureSection,
    *,
    latency_batch_size: int,
    throughput_batch_size: int,
    throughput_session: InferenceSession | None = None,
    reference_logits: np.ndarray | None = None,
    eval_logits: np.ndarray | None = None,
    require_score: bool = True,
    fidelity: str = "auto",
    output_kind: str | None = None,
) -> SessionMeasurement:
    """Measure accuracy, latency and throughput of a loaded model.

    The score is, in this order: fidelity (see :func:`fidelity`) when ``y_test`` holds
    float reference outputs (2-D or more), or when ``y_test`` is None and
    ``reference_logits`` is given; top-1 accuracy for integer labels ``y_test``.

    Args:
        session: The model.
        x_test: Test inputs ``[N, ...]``: one array of any rank, or named inputs (a
            mapping or a packed structured array); batches slice axis 0 of each.
        y_test: Integer labels ``[N]``, or the original model's float outputs
            ``[N, ...]``; None to score ``reference_logits`` instead (or nothing).
        settings: Warm-up, repeats and the optional cap on evaluated samples.
        latency_batch_size: Rows per call when timing latency.
        throughput_batch_size: Rows per call for throughput and accuracy.
        throughput_session: The session timed for throughput (default: ``session``).
        reference_logits: Logits ``[N, classes]`` of the reference model on ``x_test``,
            required when ``y_test`` is None.
        eval_logits: ``session``'s logits on ``x_test`` when already computed (skips a
            second pass over the test set).
        require_score: Raise when there is nothing to score against; False gives an
            ``accuracy`` of None instead.
        fidelity: ``data.fidelity``: ``"auto"``, ``"agreement"`` or ``"cosine"``
            (how reference outputs are compared, see
            :func:`hamnet.evaluate.fidelity.fidelity_kind`).
        output_kind: What the model declares its output to be, or None.

    Returns:
        The measurement.

    Raises:
        DataError: If there is nothing to measure or the inputs do not line up.
    """
    x_eval, n = eval_rows(x_test, settings.max_eval_samples)
    logits = (
        eval_logits if eval_logits is not None else predict(session, x_eval, throughput_batch_size)
    )
    score, kind = score_outputs(
        logits[:n],
        _head(y_test, n),
        _head(reference_logits, n),
        required=require_score,
        fidelity_setting=fidelity,
        output_kind=output_kind,
    )
    p50, p90 = latency_ms(
        session,
        latency_rows(x_eval, latency_batch_size),
        warmup=settings.warmup,
        repeats=settings.repeats,
        batch_size=latency_batch_size,
    )
    sps = throughput_sps(
        throughput_session or session,
        _rows(x_eval, throughput_batch_size),
        warmup=max(1, settings.warmup // 4),
        max_iters=settings.repeats,
    )
    return SessionMeasurement(
        accuracy=score,
        accuracy_kind=kind,
        latency_p50_ms=p50,
        latency_p90_ms=p90,
        throughput_sps=sps,
        eval_samples=len(x_eval),
    )


def measure_artifact(
    artifact: ArtifactRef,
    runtime: str,
    profile: HardwareProfile,
    x_test: Inputs,
    y_test: np.ndarray | None,
    settings: MeasureSection,
    *,
    params: int,
    flops: int,
    trust_checkpoint: bool = False,
    reference_logits: np.ndarray | None = None,
    require_score: bool = True,
    fidelity: str = "auto",
    output_kind: str | None = None,
) -> Metrics:
    """Load a stored model in ``runtime`` and measure it on the profile's settings.

    Peak memory covers loading the model and the accuracy pass over the test set
    (see :func:`peak_memory_mb`); the runtime's library is imported before sampling.
    Runtimes that compile differently for throughput (OpenVINO's ``THROUGHPUT``
    hint) get a second session for the throughput figure.

    Args:
        artifact: The model.
        runtime: A runtime the profile lists.
        profile: Threads, batch sizes and runtime settings.
        x_test: Test inputs ``[N, ...]`` (one array of any rank) or named inputs.
        y_test: Integer labels ``[N]``, the original model's float outputs (scored
            by fidelity, see :func:`measure_session`), or None to score agreement with
            ``reference_logits``.
        settings: Warm-up, repeats and the optional cap on evaluated samples.
        params: Parameter count of the torch model the candidate descends from.
        flops: FLOPs per sample of that model.
        trust_checkpoint: Allow pickled code in torch checkpoints.
        reference_logits: Reference outputs on ``x_test`` (needed when ``y_test`` is
            None and ``require_score`` is True).
        require_score: With False and nothing to score against, ``accuracy`` is NaN
            and ``accuracy_kind`` is ``"none"`` (the benchmarker's unlabelled case).
        fidelity: How reference outputs are compared (see :func:`measure_session`).
        output_kind: What the model declares its output to be, or None.

    Returns:
        The candidate's metrics.

    Raises:
        ConfigError: If the runtime is unknown.
        HardwareProfileError: If the profile does not list it or the machine lacks it.
        ModelLoadError: If the model cannot be loaded.
        DataError: If the test data is empty or does not line up.
    """
    spec = runtime_spec(profile, runtime)
    engine = get_runtime(runtime)
    engine.prepare(spec)
    x_eval, n = eval_rows(x_test, settings.max_eval_samples)
    if len(x_eval) == 0:
        raise DataError("measuring needs at least one test sample, but got an empty array")
    (session, logits), memory = peak_memory_mb(
        lambda: _load_and_predict(engine, artifact, spec, profile, x_eval, trust_checkpoint)
    )
    throughput = engine.throughput_session(
        artifact, spec, profile.threads, trust_checkpoint=trust_checkpoint
    )
    found = measure_session(
        session,
        x_eval,
        _head(y_test, n),
        settings,
        latency_batch_size=profile.latency_batch_size,
        throughput_batch_size=profile.throughput_batch_size,
        throughput_session=throughput,
        reference_logits=_head(reference_logits, n),
        eval_logits=logits,
        require_score=require_score,
        fidelity=fidelity,
        output_kind=output_kind,
    )
    return _artifact_metrics(
        found, artifact, runtime, profile, params=params, flops=flops, memory=memory
    )


def score_artifact(
    artifact: ArtifactRef,
    runtime: str,
    profile: HardwareProfile,
    x: Inputs,
    y: np.ndarray | None,
    settings: MeasureSection,
    *,
    trust_checkpoint: bool = False,
    fidelity: str = "auto",
    output_kind: str | None = None,
) -> tuple[float, str]:
    """Load a stored model and score it on ``x``, ``y`` only (nothing timed).

    The pipeline selects on the validation split with :func:`measure_artifact`, then
    scores the recommended model and the baseline once on the test split with this.

    Args:
        artifact: The model.
        runtime: A runtime the profile lists.
        profile: Threads and batch size of the prediction pass.
        x: Inputs ``[N, ...]`` (one array of any rank) or named inputs.
        y: Integer labels ``[N]`` or the original model's float outputs.
        settings: The optional cap on evaluated samples (as for :func:`measure_artifact`).
        trust_checkpoint: Allow pickled code in torch checkpoints.
        fidelity: How reference outputs are compared (see :func:`measure_session`).
        output_kind: What the model declares its output to be, or None.

    Returns:
        The score and its ``accuracy_kind``.

    Raises:
        DataError: If ``x`` is empty, ``y`` is None or they do not line up.
    """
    spec = runtime_spec(profile, runtime)
    engine = get_runtime(runtime)
    engine.prepare(spec)
    x_eval, n = eval_rows(x, settings.max_eval_samples)
    if len(x_eval) == 0:
        raise DataError("scoring needs at least one sample, but got an empty array")
    session = engine.load(artifact, spec, profile.threads, trust_checkpoint=trust_checkpoint)
    outputs = predict(session, x_eval, profile.throughput_batch_size)
    score, kind = score_outputs(
        outputs, _head(y, n), fidelity_setting=fidelity, output_kind=output_kind
    )
    assert score is not None  # required=True raises instead
    return score, kind


def _load_and_predict(
    engine: Runtime,
    artifact: ArtifactRef,
    spec: RuntimeSpec,
    profile: HardwareProfile,
    x_eval: np.ndarray,
    trust_checkpoint: bool,
) -> tuple[InferenceSession, np.ndarray]:
    """Load the model and compute its outputs on ``x_eval`` (what peak memory covers)."""
    session = engine.load(artifact, spec, profile.threads, trust_checkpoint=trust_checkpoint)
    return session, predict(session, x_eval, profile.throughput_batch_size)


def _artifact_metrics(
    found: SessionMeasurement,
    artifact: ArtifactRef,
    runtime: str,
    profile: HardwareProfile,
    *,
    params: int,
    flops: int,
    memory: float,
) -> Metrics:
    """The candidate's metrics: what the session measured plus size, counts and settings."""
    return Metrics(
        accuracy=float("nan") if found.accuracy is None else found.accuracy,
        accuracy_kind=found.accuracy_kind,
        latency_p50_ms=found.latency_p50_ms,
        latency_p90_ms=found.latency_p90_ms,
        latency_batch_size=profile.latency_batch_size,
        throughput_sps=found.throughput_sps,
        throughput_batch_size=profile.throughput_batch_size,
        size_mb=artifact.size_mb,
        params=params,
        flops=flops,
        peak_memory_mb=memory,
        runtime=runtime,  # type: ignore[arg-type]
        threads=resolved_threads(profile),
        eval_samples=found.eval_samples,
    )
