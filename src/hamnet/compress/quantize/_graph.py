"""What the quantizers read from an ONNX graph: inputs, operators, transformer shape.

The graph is read by :func:`hamnet.backends.onnx_graph.graph_facts`, which family
detection and export share; :func:`has_attention` is that module's.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

from hamnet.backends.export import TRANSFORMER_METADATA
from hamnet.backends.onnx_graph import graph_facts
from hamnet.backends.onnx_graph import has_attention as has_attention
from hamnet.backends.session import require
from hamnet.core.errors import ExportError

logger = logging.getLogger("hamnet.quantize")


def input_names(path: Path) -> list[str]:
    """Return the names of the graph inputs of ``path`` that are not initializers.

    Raises:
        ExportError: The graph has no input.
        ModelLoadError: If the file is not a readable ONNX model.
    """
    inputs = list(graph_facts(path).inputs)
    if not inputs:
        raise ExportError(
            f"quantization expects an ONNX model with at least one input, but {str(path)!r} "
            f"has none"
        )
    return inputs


def op_types(path: Path) -> set[str]:
    """Return the operator types used by the main graph of ``path``."""
    return set(graph_facts(path).op_types)


def transformer_shape(path: Path) -> tuple[int, int]:
    """``(num_heads, hidden_size)`` recorded in an ONNX file's metadata, or zeros."""
    props = graph_facts(path).metadata
    values = []
    for key in TRANSFORMER_METADATA:
        try:
            values.append(int(props.get(key, 0)))
        except ValueError:
            values.append(0)
    return values[0], values[1]


def preprocess(source: Path, work_dir: Path) -> Path:
    """Run ONNX Runtime's ``quant_pre_process`` (shape inference + optimization).

    Falls back to the source file when pre-processing fails: it only helps the
    quantizer pick better nodes, it is never required for a correct result.

    Args:
        source: The FP32 ONNX model.
        work_dir: Scratch folder for the pre-processed copy.

    Returns:
        The pre-processed model, or ``source`` when pre-processing failed.
    """
    shape_inference = require("onnxruntime.quantization.shape_inference", "onnxruntime")
    target = Path(work_dir).resolve() / "preprocessed.onnx"
    try:
        # When symbolic shape inference fails (e.g. on BERT graphs) quant_pre_process
        # leaves sym_shape_infer_temp.onnx and a <uuid>.data file in the current
        # directory: run it from the scratch folder so nothing leaks.
        with contextlib.chdir(target.parent):
            shape_inference.quant_pre_process(str(Path(source).resolve()), str(target))
    except Exception as err:
        logger.warning("quant_pre_process failed on %s, quantizing it as is: %s", source, err)
        return source
    return target
