"""Where a model's time goes, operator by operator: why an INT8 model can be slower.

A quantized model is not faster by itself: only the operators that run integer kernels
gain, every boundary between INT8 and FP32 costs a ``QuantizeLinear`` /
``DequantizeLinear`` (ONNX Runtime) or a ``FakeQuantize`` / ``Reorder`` (OpenVINO), and
on a CPU without VNNI or AMX the integer kernels themselves gain little. An
:class:`OpProfile` says how the time of one call splits into these parts, from the
runtime's own profiler:

* ONNX Runtime: ``SessionOptions.enable_profiling``; its JSON trace holds one
  ``<node>_kernel_time`` event per node and call (the median per node is kept), with
  the executed node's op type (after graph optimization: ``QLinearMatMul`` where a QDQ
  pair was fused), its execution provider, input types and duration.
* OpenVINO: the ``PERF_COUNT`` property and ``InferRequest.get_profiling_info()``
  (read after the warm-up and at the end: its times are running means over every
  call); each executed node names the kernel that ran it (``exec_type``, e.g.
  ``brgemm_avx512_I8`` or ``jit_avx2_FP32``).

Each executed operator falls in one category (:data:`CATEGORIES`): ``int8`` (an
integer kernel: ``QLinear*``, ``MatMulInteger``, ``ConvInteger``, ``MatMulNBits``, an
OpenVINO kernel of ``I8``/``U8`` type), ``qdq`` (quantize / dequantize:
``QuantizeLinear``, ``DequantizeLinear``, ``DynamicQuantizeLinear``,
``FakeQuantize``), ``layout`` (reorders, transposes, reshapes, casts), ``fp32``
(floating point compute) and ``other`` (integer shape arithmetic and the like).
:func:`cpu_int8_support` says whether this CPU has VNNI or AMX (from
:func:`hamnet.core.hardware.cpu_flags`), and :func:`why_slower` writes the one-line
explanation that goes into a slower quantized candidate's notes.

Example:
    >>> child = profile_ops(int8_ref, "onnxruntime", profile, x[:1])
    >>> parent = profile_ops(fp32_ref, "onnxruntime", profile, x[:1])
    >>> why_slower(child, parent)
    'INT8 runs 2 of 6 ops (31% of time); 44% of time is QuantizeLinear/DequantizeLinear; ...'
"""

from __future__ import annotations

import json
import statistics
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from hamnet.core.errors import ConfigError, DataError

if TYPE_CHECKING:
    from hamnet.backends.inputs import Inputs
    from hamnet.core.artifacts import ArtifactRef
    from hamnet.core.hardware import HardwareProfile

Category = Literal["int8", "qdq", "layout", "fp32", "other"]
CATEGORIES: tuple[Category, ...] = ("int8", "qdq", "layout", "fp32", "other")
"""The categories of :class:`OpTiming`, in the order tables show them."""

CATEGORY_LABELS: dict[str, str] = {
    "int8": "INT8",
    "qdq": "quantize/dequantize",
    "layout": "reorder/transpose",
    "fp32": "FP32",
    "other": "other",
}
"""How tables and notes name each category."""

PROFILED_RUNTIMES: tuple[str, ...] = ("onnxruntime", "openvino")
"""The runtimes whose operators can be profiled."""

ORT_QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"})
"""ONNX Runtime operators that convert between FP32 and INT8."""

ORT_INT8_OPS = frozenset(
    {
        "MatMulInteger",
        "ConvInteger",
        "MatMulIntegerToFloat",
        "DynamicQuantizeMatMul",
        "QGemm",
        "QAttention",
        "QEmbedLayerNormalization",
        "QOrderedMatMul",
        "DynamicQuantizeLSTM",
        "MatMulNBits",
    }
)
"""ONNX Runtime operators that run integer kernels (besides every ``QLinear*``)."""

LAYOUT_OPS = frozenset(
    {
        "Transpose",
        "Reshape",
        "Flatten",
        "Squeeze",
        "Unsqueeze",
        "Identity",
        "Cast",
        "Concat",
        "Split",
        "Slice",
        "Expand",
        "ReorderInput",
        "ReorderOutput",
        "Reorder",
        "Concatenation",
        "Convert",
        "StridedSlice",
    }
)
"""Operators (ONNX Runtime and OpenVINO names) that move or re-type data, computing nothing."""

OPENVINO_QDQ_OPS = frozenset({"FakeQuantize", "Quantize", "Dequantize"})
"""OpenVINO node types that quantize or dequantize activations."""

OPENVINO_SKIPPED = frozenset({"Parameter", "Result", "Constant"})
"""OpenVINO node types that are not operators (inputs, outputs, weights)."""

_INT8_TYPES = ("int8", "uint8")
_FLOAT_TYPES = ("float", "float16", "double", "bfloat16")


@dataclass(frozen=True)
class OpTiming:
    """One executed operator of a profiled model.

    Attributes:
        name: The node's name in the executed graph.
        op_type: Its operator type (ONNX Runtime op type, OpenVINO node type).
        category: One of :data:`CATEGORIES`.
        kernel: The execution provider (ONNX Runtime) or the kernel (OpenVINO
            ``exec_type``) that ran it.
        time_us: Its typical time per call in microseconds: the median over the
            profiled calls (robust to a preempted call on a busy machine).
    """

    name: str
    op_type: str
    category: Category
    kernel: str
    time_us: float


@dataclass(frozen=True)
class CpuInt8Support:
    """Whether this CPU has the instructions INT8 kernels need to be fast.

    Attributes:
        vnni: VNNI (``avx512_vnni``, ``avx_vnni``) or, on ARM, the dot-product
            instructions (``asimddp``): one instruction per 8-bit multiply-accumulate.
        amx: AMX tiles for INT8 (``amx_int8``).
        flags: The flags that told it.
    """

    vnni: bool
    amx: bool
    flags: tuple[str, ...] = ()

    def describe(self) -> str:
        """``"CPU has VNNI (avx512_vnni), no AMX"`` and the like."""
        vnni = f"VNNI ({', '.join(f for f in self.flags if 'amx' not in f)})" if self.vnni else ""
        parts = [p for p in (vnni, "AMX" if self.amx else "") if p]
        missing = [name for name, has in (("VNNI", self.vnni), ("AMX", self.amx)) if not has]
        text = "CPU has " + " and ".join(parts) if parts else "CPU has neither VNNI nor AMX"
        if parts and missing:
            text += ", no " + " nor ".join(missing)
        return text


VNNI_FLAGS: tuple[str, ...] = ("avx512_vnni", "avx_vnni", "avx_vnni_int8", "asimddp")
AMX_FLAGS: tuple[str, ...] = ("amx_int8",)


def cpu_int8_support(flags: Iterable[str] | None = None) -> CpuInt8Support:
    """Tell whether a CPU has VNNI and AMX.

    Args:
        flags: CPU flags; None reads this machine's (:func:`hamnet.core.hardware.cpu_flags`).

    Returns:
        What the flags say.
    """
    from hamnet.core.hardware import cpu_flags

    have = frozenset(cpu_flags() if flags is None else flags)
    found = tuple(f for f in (*VNNI_FLAGS, *AMX_FLAGS) if f in have)
    return CpuInt8Support(
        vnni=any(f in have for f in VNNI_FLAGS), amx=any(f in have for f in AMX_FLAGS), flags=found
    )


@dataclass(frozen=True)
class OpProfile:
    """Where one call of a model spends its time, per operator and category.

    Attributes:
        runtime: The runtime that ran the model.
        model: The model file.
        runs: How many profiled calls the timings average over.
        ops: Every executed operator, slowest first.
        cpu: VNNI and AMX of the CPU it ran on.
    """

    runtime: str
    model: str
    runs: int
    ops: tuple[OpTiming, ...]
    cpu: CpuInt8Support = field(default_factory=lambda: cpu_int8_support())

    @property
    def total_us(self) -> float:
        """The summed operator time of one call, in microseconds."""
        return sum(op.time_us for op in self.ops)

    def ops_in(self, category: str) -> list[OpTiming]:
        """The operators of ``category``, slowest first."""
        return [op for op in self.ops if op.category == category]

    def share(self, category: str) -> float:
        """The fraction of operator time spent in ``category`` (0 when nothing ran)."""
        total = self.total_us
        return sum(op.time_us for op in self.ops_in(category)) / total if total > 0 else 0.0

    def shares(self) -> dict[str, float]:
        """:meth:`share` of every category, in :data:`CATEGORIES` order."""
        return {c: self.share(c) for c in CATEGORIES}

    def op_types(self, category: str) -> list[str]:
        """The distinct op types of ``category``, the most time first."""
        by_type: dict[str, float] = {}
        for op in self.ops_in(category):
            by_type[op.op_type] = by_type.get(op.op_type, 0.0) + op.time_us
        return sorted(by_type, key=lambda t: -by_type[t])

    def top(self, n: int = 10) -> list[OpTiming]:
        """The ``n`` slowest operators."""
        return list(self.ops[:n])

    def summary(self) -> str:
        """One line: INT8 ops and their share, QDQ and reorder shares, FP32 ops, the CPU."""
        int8 = self.ops_in("int8")
        parts = [f"INT8 runs {len(int8)} of {len(self.ops)} ops ({self.share('int8'):.0%} of time)"]
        qdq = self.op_types("qdq")
        if qdq:
            parts.append(f"{self.share('qdq'):.0%} of time is {'/'.join(qdq)}")
        layout = self.op_types("layout")
        if layout:
            parts.append(f"{self.share('layout'):.0%} of time is {'/'.join(layout[:4])}")
        fp32 = self.op_types("fp32")
        if fp32:
            more = f" and {len(fp32) - 6} more" if len(fp32) > 6 else ""
            parts.append(f"FP32 ({self.share('fp32'):.0%} of time): {', '.join(fp32[:6])}{more}")
        parts.append(self.cpu.describe())
        return "; ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        """The profile as a JSON-ready dict (with the category shares)."""
        out = asdict(self)
        out["total_us"] = self.total_us
        out["shares"] = self.shares()
        return out


def classify_ort_op(op_type: str, input_types: Sequence[str] = ()) -> Category:
    """The category of an ONNX Runtime operator.

    Args:
        op_type: The executed node's op type (``QLinearMatMul``, ``LayerNormalization``).
        input_types: Its inputs' element types as the trace names them (``"float"``,
            ``"uint8"``); an operator with 8-bit inputs that is no QDQ op counts as INT8
            (e.g. a ``MaxPool`` on quantized activations).

    Returns:
        One of :data:`CATEGORIES`.
    """
    if op_type in ORT_QDQ_OPS:
        return "qdq"
    if op_type.startswith("QLinear") or op_type in ORT_INT8_OPS:
        return "int8"
    if op_type in LAYOUT_OPS:
        return "layout"
    if input_types and input_types[0] in _INT8_TYPES:
        return "int8"
    if not input_types or any(t in _FLOAT_TYPES for t in input_types):
        return "fp32"
    return "other"


def classify_openvino_op(node_type: str, exec_type: str) -> Category:
    """The category of an OpenVINO node from its type and the kernel that ran it.

    Args:
        node_type: The node's type (``FullyConnected``, ``FakeQuantize``, ``Reorder``).
        exec_type: The kernel (``brgemm_avx512_I8``, ``jit_avx2_FP32``, ``ref_any_f32``).

    Returns:
        One of :data:`CATEGORIES`.
    """
    kernel = exec_type.lower()
    if node_type in OPENVINO_QDQ_OPS:
        return "qdq"
    if node_type in LAYOUT_OPS:
        return "layout"
    if kernel.endswith(("_i8", "_u8", "_i4", "_u4")):
        return "int8"
    if kernel.endswith(("_f32", "_fp32", "_bf16", "_f16", "_fp16")):
        return "fp32"
    return "other"


def _median_after(values: list[float], skip: int) -> float:
    kept = values[skip:] if len(values) > skip else values
    return float(statistics.median(kept)) if kept else 0.0


def _sorted(ops: Iterable[OpTiming]) -> tuple[OpTiming, ...]:
    return tuple(sorted(ops, key=lambda op: (-op.time_us, op.name)))


def parse_ort_trace(
    trace: str | Path | Sequence[Mapping[str, Any]], *, skip: int = 0
) -> list[OpTiming]:
    """Read ONNX Runtime's profiling trace into per-operator timings.

    Args:
        trace: The JSON file :meth:`OnnxRuntimeSession.end_profiling` wrote, or its events.
        skip: The first calls of every node to leave out (warm-up).

    Returns:
        One :class:`OpTiming` per executed node, slowest first.

    Raises:
        DataError: If the file is no JSON list of events, or holds no node event.
    """
    if isinstance(trace, (str, Path)):
        try:
            events = json.loads(Path(trace).read_text())
        except (OSError, ValueError) as err:
            raise DataError(
                f"an ONNX Runtime profile must be a readable JSON trace, but {str(trace)!r} "
                f"is not: {err}"
            ) from err
    else:
        events = list(trace)
    if not isinstance(events, list):
        raise DataError(
            "an ONNX Runtime profile must be a JSON list of events, but got "
            f"{type(events).__name__}"
        )
    durations: dict[str, list[float]] = {}
    facts: dict[str, tuple[str, str, list[str]]] = {}
    suffix = "_kernel_time"
    for event in events:
        if event.get("cat") != "Node" or not str(event.get("name", "")).endswith(suffix):
            continue
        args = event.get("args") or {}
        name = str(event["name"])[: -len(suffix)]
        durations.setdefault(name, []).append(float(event.get("dur", 0)))
        if name not in facts:
            types = [next(iter(t), "") for t in args.get("input_type_shape") or [] if t]
            facts[name] = (str(args.get("op_name", "")), str(args.get("provider", "")), types)
    if not durations:
        raise DataError(
            "an ONNX Runtime profile must hold node events (<node>_kernel_time), but the "
            "trace has none: was the session loaded with profiling on and run?"
        )
    timings = []
    for name, values in durations.items():
        op_type, provider, types = facts[name]
        category = classify_ort_op(op_type, types)
        timings.append(OpTiming(name, op_type, category, provider, _median_after(values, skip)))
    return list(_sorted(timings))


def parse_openvino_profiling(
    infos: Sequence[Any],
    *,
    calls: int,
    before: Sequence[Any] = (),
    before_calls: int = 0,
) -> list[OpTiming]:
    """Read OpenVINO's per-node profiling info into per-operator timings.

    OpenVINO's ``real_time`` of a node is the running mean over every call of the
    infer request so far, the first one included (weight packing makes that one ~100x
    slower). The time of the calls after a warm-up is therefore taken from two
    readings: ``(mean after all calls * calls - mean after warm-up * before_calls) /
    (calls - before_calls)``.

    Args:
        infos: The ``openvino.ProfilingInfo`` objects of
            ``InferRequest.get_profiling_info()`` after ``calls`` calls
            (``node_name``, ``node_type``, ``exec_type``, ``status``, ``real_time``).
        calls: The calls the request had made when ``infos`` was read (at least 1).
        before: The same request's profiling info after the warm-up calls.
        before_calls: The warm-up calls (fewer than ``calls``).

    Returns:
        One :class:`OpTiming` per executed node (inputs, outputs and constants left
        out), slowest first.

    Raises:
        DataError: If no node was executed, or the call counts do not fit.
    """
    if not 0 <= before_calls < calls:
        raise DataError(
            f"profiling calls must satisfy 0 <= before_calls < calls, but got "
            f"before_calls={before_calls}, calls={calls}"
        )
    earlier = {
        info.node_name: info.real_time.total_seconds() * 1e6 for info in before
    } if before_calls else {}  # fmt: skip
    timings = []
    for info in infos:
        if info.node_type in OPENVINO_SKIPPED or not str(info.status).endswith("EXECUTED"):
            continue
        total = info.real_time.total_seconds() * 1e6 * calls
        total -= earlier.get(info.node_name, 0.0) * before_calls
        node_type, exec_type = str(info.node_type), str(info.exec_type)
        category = classify_openvino_op(node_type, exec_type)
        per_call = max(total / (calls - before_calls), 0.0)
        timings.append(OpTiming(str(info.node_name), node_type, category, exec_type, per_call))
    if not timings:
        raise DataError(
            "an OpenVINO profile must hold executed nodes, but got none: was the model "
            "compiled with PERF_COUNT and run?"
        )
    return list(_sorted(timings))


def profile_ops(
    artifact: ArtifactRef,
    runtime: str,
    profile: HardwareProfile,
    x_one: Inputs,
    *,
    warmup: int = 10,
    runs: int = 50,
) -> OpProfile:
    """Run a model with its runtime's profiler on and say where the time goes.

    The model is loaded as measurement loads it (the profile's providers or device and
    threads), run ``warmup`` untimed and ``runs`` profiled calls on ``x_one``.

    Args:
        artifact: The model.
        runtime: ``"onnxruntime"`` or ``"openvino"`` (see :data:`PROFILED_RUNTIMES`).
        profile: The target hardware profile.
        x_one: The batch every call runs (the latency batch).
        warmup: Calls left out of the timings.
        runs: Profiled calls (at least 1).

    Returns:
        The operators' median times per call, their categories and the CPU's VNNI/AMX.

    Raises:
        ConfigError: If ``runtime`` has no operator profiler, or ``runs`` < 1.
        ModelLoadError: If the model does not load.
    """
    from hamnet.backends.session import get_runtime, pack_inputs, runtime_spec, unpack_inputs
    from hamnet.core.hardware import resolved_threads

    if runtime not in PROFILED_RUNTIMES:
        raise ConfigError(
            f"operator profiles exist for runtimes {list(PROFILED_RUNTIMES)}, but got {runtime!r}"
        )
    if runs < 1 or warmup < 0:
        raise ConfigError(
            f"runs must be positive and warmup non-negative, but got runs={runs}, warmup={warmup}"
        )
    spec = runtime_spec(profile, runtime)
    threads = resolved_threads(profile)
    engine = get_runtime(runtime)
    engine.prepare(spec)
    x = unpack_inputs(pack_inputs(x_one))
    if runtime == "onnxruntime":
        with tempfile.TemporaryDirectory(prefix="hamnet-profile-") as folder:
            session: Any = engine.load(  # type: ignore[call-arg]
                artifact, spec, threads, profile_prefix=str(Path(folder) / "ort")
            )
            for _ in range(warmup + runs):
                session.run(x)
            ops = parse_ort_trace(session.end_profiling(), skip=warmup)
    else:
        session = engine.load(artifact, spec, threads, perf_count=True)  # type: ignore[call-arg]
        for _ in range(warmup):
            session.run(x)
        warm = session.profiling_info() if warmup else []
        for _ in range(runs):
            session.run(x)
        ops = parse_openvino_profiling(
            session.profiling_info(), calls=warmup + runs, before=warm, before_calls=warmup
        )
    return OpProfile(runtime=runtime, model=artifact.path, runs=runs, ops=tuple(ops))


def why_slower(child: OpProfile, parent: OpProfile | None = None) -> str:
    """Explain, from operator profiles, why a quantized model is slower than its parent.

    Args:
        child: The quantized model's profile.
        parent: Its FP32 parent's profile (same runtime), for the operator totals.

    Returns:
        One line, e.g. ``"why slower (onnxruntime op profile): INT8 runs 2 of 6 ops
        (31% of time); 44% of time is QuantizeLinear/DequantizeLinear; FP32 (25% of
        time): LayerNormalization, Softmax; CPU has VNNI (avx512_vnni), no AMX;
        operator time 98.1 us per call vs parent 47.0 us in 3 ops"``.
    """
    text = f"why slower ({child.runtime} op profile): {child.summary()}"
    if parent is not None:
        text += (
            f"; operator time {child.total_us:.1f} us per call in {len(child.ops)} ops vs "
            f"parent {parent.total_us:.1f} us in {len(parent.ops)} ops"
        )
    return text
