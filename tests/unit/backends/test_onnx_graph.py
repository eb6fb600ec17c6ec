"""One read of an ONNX graph serves family detection, the quantizers, export and serving."""

from __future__ import annotations

from pathlib import Path

import pytest
from onnx import TensorProto, helper, save_model

from hamnet.backends.onnx_graph import (
    ATTENTION_OPS,
    GraphFacts,
    graph_facts,
    has_attention,
    input_dims,
    uses_ort_contrib_ops,
)
from hamnet.core.errors import ModelLoadError


def _save(
    path: Path,
    ops: list[str],
    *,
    metadata: dict[str, str] | None = None,
    weight_type: int = TensorProto.FLOAT,
) -> Path:
    nodes = []
    name = "x"
    for i, op in enumerate(ops):
        inputs = [name, "w"] if op == "MatMul" else [name]
        nodes.append(helper.make_node(op, inputs, [f"t{i}"]))
        name = f"t{i}"
    weight = helper.make_tensor("w", weight_type, [4, 4], [0.0] * 16)
    graph = helper.make_graph(
        nodes,
        "g",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4]),
            helper.make_tensor_value_info("w", TensorProto.FLOAT, [4, 4]),
        ],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", 4])],
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    helper.set_model_props(model, metadata or {})
    save_model(model, str(path))
    return path


def test_graph_facts_lists_inputs_ops_and_metadata(tmp_path: Path) -> None:
    path = _save(tmp_path / "a.onnx", ["MatMul", "Softmax"], metadata={"hamnet.num_heads": "2"})
    facts = graph_facts(path)
    assert isinstance(facts, GraphFacts)
    assert facts.inputs == {"x": [None, 4]}
    assert facts.op_types == ATTENTION_OPS
    assert facts.metadata == {"hamnet.num_heads": "2"}
    assert facts.has_attention and has_attention(path)
    assert not uses_ort_contrib_ops(path)
    assert input_dims(path) == [None, 4]
    assert facts.precision == "fp32"


def test_precision_is_told_from_operators_and_weights(tmp_path: Path) -> None:
    assert graph_facts(_save(tmp_path / "q.onnx", ["DynamicQuantizeLinear"])).precision == "int8"
    half = _save(tmp_path / "h.onnx", ["Relu"], weight_type=TensorProto.FLOAT16)
    assert graph_facts(half).precision == "fp16"


def test_graph_facts_follow_a_rewritten_file(tmp_path: Path) -> None:
    path = _save(tmp_path / "m.onnx", ["MatMul", "Softmax"])
    assert has_attention(path)
    _save(path, ["MatMul", "Relu", "Relu"])
    assert not has_attention(path)
    assert graph_facts(path).op_types == {"MatMul", "Relu"}


def test_an_unreadable_file_is_a_model_load_error(tmp_path: Path) -> None:
    path = tmp_path / "broken.onnx"
    path.write_bytes(b"not a model")
    with pytest.raises(ModelLoadError, match="is not a readable ONNX model"):
        graph_facts(path)
