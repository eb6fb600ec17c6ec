"""What hamnet reads from an ONNX file's graph, read once per file and cached.

Family detection, the quantizers, export and serving all ask the same questions of an
ONNX file: its inputs and their dims, the operators it uses, whether it holds attention,
whether it needs ONNX Runtime's contrib operators, and its metadata. :func:`graph_facts`
answers them from one read of the file (without its external weights), cached on the
file's path, size and modification time. ``onnx`` is imported on the first read.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from hamnet.backends.runtimes.base import require
from hamnet.core.errors import ModelLoadError

ATTENTION_OPS = frozenset({"MatMul", "Softmax"})
"""Operators that together mark a graph as holding attention."""

ORT_DOMAIN = "com.microsoft"
"""The operator domain of ONNX Runtime's contrib operators."""

INT8_OPS = frozenset(
    {
        "QuantizeLinear",
        "DequantizeLinear",
        "QLinearMatMul",
        "QLinearConv",
        "MatMulInteger",
        "ConvInteger",
        "DynamicQuantizeLinear",
    }
)
"""Operators that mark a graph as quantized to INT8."""

_FLOAT16 = 10
"""``onnx.TensorProto.FLOAT16``."""


@dataclass(frozen=True)
class GraphFacts:
    """What an ONNX graph declares.

    Attributes:
        inputs: The graph inputs that are not initializers, ``{name: dims}`` in graph
            order (None for a dynamic axis).
        op_types: The operator types of the main graph.
        domains: The operator domains of the opset imports and of the main graph's nodes
            (``""`` is the default ONNX domain).
        metadata: The model's ``metadata_props``.
        initializer_types: The ``TensorProto`` data types of the graph's initializers.
    """

    inputs: dict[str, list[int | None]]
    op_types: frozenset[str]
    domains: frozenset[str] = frozenset()
    metadata: dict[str, str] = field(default_factory=dict)
    initializer_types: frozenset[int] = frozenset()

    @property
    def has_attention(self) -> bool:
        """Whether the graph holds attention (every operator of :data:`ATTENTION_OPS`)."""
        return self.op_types >= ATTENTION_OPS

    @property
    def precision(self) -> str:
        """``"mixed"`` with weight-only MatMulNBits, ``"int8"`` with quantization operators,
        ``"fp16"`` with FP16 weights, else ``"fp32"``."""
        if "MatMulNBits" in self.op_types:
            return "mixed"
        if self.op_types & INT8_OPS:
            return "int8"
        return "fp16" if _FLOAT16 in self.initializer_types else "fp32"

    @property
    def uses_ort_contrib_ops(self) -> bool:
        """Whether the graph uses ONNX Runtime contrib operators (:data:`ORT_DOMAIN`)."""
        return ORT_DOMAIN in self.domains


def graph_facts(path: str | Path) -> GraphFacts:
    """Read the inputs, operators and metadata of an ONNX file.

    Args:
        path: The ONNX file.

    Returns:
        The graph's facts (cached by path, size and modification time).

    Raises:
        ModelLoadError: If the file is not a readable ONNX model.
        FileNotFoundError: If the file does not exist.
    """
    resolved = Path(path).resolve()
    stat = resolved.stat()
    return _graph_facts(str(resolved), stat.st_size, stat.st_mtime_ns)


@lru_cache(maxsize=64)
def _graph_facts(path: str, size: int, mtime_ns: int) -> GraphFacts:
    del size, mtime_ns  # part of the cache key only
    onnx = require("onnx")
    try:
        model = onnx.load(path, load_external_data=False)
    except Exception as err:
        raise ModelLoadError(f"model file {path!r} is not a readable ONNX model: {err}") from None
    graph = model.graph
    initializers = {t.name for t in graph.initializer}
    inputs = {
        str(i.name): [d.dim_value or None for d in i.type.tensor_type.shape.dim]
        for i in graph.input
        if i.name not in initializers
    }
    domains = {str(op.domain) for op in model.opset_import}
    domains.update(str(node.domain) for node in graph.node)
    return GraphFacts(
        inputs=inputs,
        op_types=frozenset(str(node.op_type) for node in graph.node),
        domains=frozenset(domains),
        metadata={str(p.key): str(p.value) for p in model.metadata_props},
        initializer_types=frozenset(int(t.data_type) for t in graph.initializer),
    )


def input_dims(path: str | Path) -> list[int | None]:
    """Return the dims of an ONNX file's first input (empty when it has no input).

    Raises:
        ModelLoadError: If the file is not a readable ONNX model.
    """
    return next(iter(graph_facts(path).inputs.values()), [])


def has_attention(path: str | Path) -> bool:
    """Return whether an ONNX graph contains attention (both MatMul and Softmax).

    Raises:
        ModelLoadError: If the file is not a readable ONNX model.
    """
    return graph_facts(path).has_attention


def uses_ort_contrib_ops(path: str | Path) -> bool:
    """Whether an ONNX file uses ONNX Runtime contrib operators (``com.microsoft``).

    Such graphs run in ONNX Runtime only: OpenVINO, NNCF and plain ONNX tools cannot
    load them.

    Raises:
        ModelLoadError: If the file is not a readable ONNX model.
    """
    return graph_facts(path).uses_ort_contrib_ops
