"""Export to ONNX and OpenVINO IR, and output parity across the three runtimes."""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from hamnet.backends.export import check_parity, convert_openvino, export_onnx, max_abs_diff
from hamnet.backends.session import InferenceSession, TorchSession, load_session
from hamnet.core.artifacts import ArtifactStore
from hamnet.core.errors import ExportError
from hamnet.core.hardware import load_profile

INPUT_SIZE = 16


class TinyAttention(nn.Module):
    """Tokens -> self-attention (MatMul/Softmax) -> LayerNorm -> FFN -> linear head."""

    def __init__(self, input_size: int = INPUT_SIZE, tokens: int = 4, dim: int = 16) -> None:
        super().__init__()
        self.tokens, self.dim = tokens, dim
        self.embed = nn.Linear(input_size // tokens, dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.norm = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, 32), nn.GELU(), nn.Linear(32, dim))
        self.head = nn.Linear(tokens * dim, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x.reshape(x.shape[0], self.tokens, -1))
        q, k, v = self.qkv(h).chunk(3, dim=-1)
        weights = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(self.dim), dim=-1)
        h = self.norm(h + weights @ v)
        return self.head((h + self.ffn(h)).flatten(1))


class Shifted(InferenceSession):
    """Another session's outputs plus a constant."""

    runtime = "shifted"

    def __init__(self, inner: InferenceSession, shift: float) -> None:
        self.inner, self.shift = inner, shift

    def run(self, x: np.ndarray) -> np.ndarray:
        return self.inner.run(x) + np.float32(self.shift)


@pytest.fixture(scope="module")
def model() -> nn.Module:
    torch.manual_seed(0)
    return TinyAttention().eval()


@pytest.fixture(scope="module")
def x() -> np.ndarray:
    return np.random.default_rng(0).normal(size=(50, INPUT_SIZE)).astype(np.float32)


def test_export_onnx_names_dynamic_batch_and_checker(tmp_path: Path, model: nn.Module) -> None:
    import onnx

    path = export_onnx(model, INPUT_SIZE, tmp_path / "nested" / "model.onnx", opset=17)
    assert path == tmp_path / "nested" / "model.onnx" and path.is_file()
    graph = onnx.load(str(path)).graph
    assert [i.name for i in graph.input] == ["input"]
    assert [o.name for o in graph.output] == ["logits"]
    batch, features = graph.input[0].type.tensor_type.shape.dim
    assert batch.dim_param and not batch.dim_value
    assert features.dim_value == INPUT_SIZE
    assert {"MatMul", "Softmax"} <= {n.op_type for n in graph.node}


def test_export_restores_training_mode_and_hides_deprecation(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = TinyAttention().train()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        export_onnx(model, INPUT_SIZE, tmp_path / "model.onnx")
    assert model.training
    assert not [w for w in caught if issubclass(w.category, DeprecationWarning)]


def test_export_failure_is_export_error_with_cause(tmp_path: Path, model: nn.Module) -> None:
    with pytest.raises(ExportError, match=r"ONNX export of TinyAttention \(input_size=7"):
        export_onnx(model, 7, tmp_path / "model.onnx")
    with pytest.raises(ExportError, match="input_size must be positive, but got 0"):
        export_onnx(model, 0, tmp_path / "model.onnx")


def test_parity_across_runtimes(tmp_path: Path, model: nn.Module, x: np.ndarray) -> None:
    profile = load_profile("x86-avx2")
    store = ArtifactStore(tmp_path / "store")
    onnx_path = export_onnx(model, INPUT_SIZE, tmp_path / "model.onnx")
    xml_path = convert_openvino(onnx_path, tmp_path / "model.xml")
    onnx_ref = store.put(onnx_path, "onnx")
    ir_ref = store.put(xml_path, "openvino")
    reference = TorchSession(model)
    sessions = [
        load_session(onnx_ref, "onnxruntime", profile),
        load_session(ir_ref, "openvino", profile),
        load_session(onnx_ref, "openvino", profile),
    ]
    for session in sessions:
        assert check_parity(reference, session, x, atol=1e-4) <= 1e-4
        for rows in (1, 7):  # the batch axis is dynamic
            assert session.run(x[:rows]).shape == (rows, 3)
            assert session.run(x[:rows]).dtype == np.float32


def test_convert_openvino_keeps_fp32_unless_asked(tmp_path: Path, model: nn.Module) -> None:
    onnx_path = export_onnx(model, INPUT_SIZE, tmp_path / "model.onnx")
    fp32 = convert_openvino(onnx_path, tmp_path / "fp32" / "model.xml")
    fp16 = convert_openvino(onnx_path, tmp_path / "fp16" / "model.xml", compress_to_fp16=True)
    params = sum(p.numel() for p in model.parameters())
    fp32_bin = fp32.with_suffix(".bin").stat().st_size
    assert fp32_bin >= 4 * params * 0.95  # FP32 weights, not the FP16 save_model default
    assert fp16.with_suffix(".bin").stat().st_size < 0.6 * fp32_bin


def test_convert_openvino_errors(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match=r"must end with \.xml, but got"):
        convert_openvino(tmp_path / "model.onnx", tmp_path / "model.bin")
    with pytest.raises(ExportError, match="OpenVINO conversion of"):
        convert_openvino(tmp_path / "missing.onnx", tmp_path / "model.xml")


def test_check_parity_reports_difference_and_tolerance(model: nn.Module, x: np.ndarray) -> None:
    reference = TorchSession(model)
    assert max_abs_diff(reference, reference, x) == 0.0
    assert max_abs_diff(reference, Shifted(reference, 0.5), x, batch_size=8) == pytest.approx(0.5)
    with pytest.raises(ExportError, match=r"outputs differ by up to 0\.5, more than the tolerance"):
        check_parity(reference, Shifted(reference, 0.5), x, atol=1e-3)
    assert check_parity(reference, Shifted(reference, 1e-4), x, atol=1e-3) <= 1e-3


def test_max_abs_diff_rejects_nan_and_shape_mismatch(model: nn.Module, x: np.ndarray) -> None:
    reference = TorchSession(model)
    assert max_abs_diff(reference, Shifted(reference, float("nan")), x) == math.inf
    with pytest.raises(ExportError, match=r"outputs differ by up to inf"):
        check_parity(reference, Shifted(reference, float("nan")), x, atol=1.0)

    class Wider(InferenceSession):
        runtime = "wider"

        def run(self, x: np.ndarray) -> np.ndarray:
            return np.zeros((len(x), 4), dtype=np.float32)

    with pytest.raises(ExportError, match="output shapes differ"):
        max_abs_diff(reference, Wider(), x)
    with pytest.raises(ExportError, match="empty array"):
        max_abs_diff(reference, reference, x[:0])


def test_hamnet_checkpoint_exports_with_parity(tmp_path: Path) -> None:
    models = pytest.importorskip("hamnet.models")
    if not hasattr(models, "HAMNet"):
        pytest.skip("hamnet.models.HAMNet is not written yet")
    torch.manual_seed(0)
    config = models.HAMNetConfig(
        input_size=INPUT_SIZE, num_classes=3, hidden_size=16, num_heads=2, token_size=4
    )
    model = models.HAMNet(config).eval()
    store = ArtifactStore(tmp_path / "store")
    ckpt = store.put(models.save_checkpoint(model, tmp_path / "model.pt"), "torch")
    profile = load_profile("x86-avx2")
    reference = load_session(ckpt, "torch", profile)
    onnx_ref = store.put(export_onnx(model, config.input_size, tmp_path / "model.onnx"), "onnx")
    ir_ref = store.put(convert_openvino(onnx_ref.path, tmp_path / "model.xml"), "openvino")
    x = np.random.default_rng(1).normal(size=(20, INPUT_SIZE)).astype(np.float32)
    for ref, runtime in ((onnx_ref, "onnxruntime"), (ir_ref, "openvino")):
        assert check_parity(reference, load_session(ref, runtime, profile), x, atol=1e-4) < 1e-4


def test_ort_fused_attention_is_one_node_per_block_with_parity(tmp_path: Path) -> None:
    """Pruned per-layer heads included; plain ONNX stays plain; eager PyTorch unchanged."""
    import onnx

    from hamnet.backends.export import uses_ort_contrib_ops
    from hamnet.compress.quantize.base import get_quantizer
    from hamnet.core.config import QuantizeStageConfig
    from hamnet.models import HAMNet, HAMNetConfig

    torch.manual_seed(0)
    config = HAMNetConfig(
        input_size=INPUT_SIZE, num_classes=3, hidden_size=16, num_heads=4, token_size=4,
        num_layers=2, layer_heads=[3, 1], layer_ffn=[20, 8],
    )  # fmt: skip
    model = HAMNet(config).eval()
    x = np.random.default_rng(2).normal(size=(7, INPUT_SIZE)).astype(np.float32)
    expected = model(torch.from_numpy(x)).detach().numpy()
    fused = export_onnx(model, INPUT_SIZE, tmp_path / "fused.onnx", ort_fused_attention=True)
    plain = export_onnx(model, INPUT_SIZE, tmp_path / "plain.onnx")
    ops = [n.op_type for n in onnx.load(str(fused)).graph.node]
    assert ops.count("Attention") == 2 and "Softmax" not in ops
    assert uses_ort_contrib_ops(fused) and not uses_ort_contrib_ops(plain)
    assert len(ops) < len(onnx.load(str(plain)).graph.node) / 2
    profile = load_profile("x86-avx2")
    store = ArtifactStore(tmp_path / "store")
    session = load_session(store.put(fused, "onnx"), "onnxruntime", profile)
    np.testing.assert_allclose(session.run(x), expected, atol=1e-5)
    np.testing.assert_allclose(model(torch.from_numpy(x)).detach().numpy(), expected)
    assert not any(m.ort_fused_export for m in model.modules() if hasattr(m, "ort_fused_export"))
    # Only ORT dynamic INT8 quantizes a graph with contrib ops; the others say why not.
    assert get_quantizer("ort_dynamic_int8").applicable(fused) is None
    for name in ("ort_static_int8", "nncf_int8", "openvino_fp16", "ort_fused_dynamic_int8"):
        assert "contrib operators" in (get_quantizer(name).applicable(fused) or "")
    int8 = get_quantizer("ort_dynamic_int8").quantize(
        fused, tmp_path / "int8", calibration=None, cfg=QuantizeStageConfig(), profile=profile
    )
    quantized = load_session(store.put(int8, "onnx"), "onnxruntime", profile).run(x)
    assert (quantized.argmax(1) == expected.argmax(1)).mean() >= 6 / 7


def test_ort_fused_attention_needs_hamnet_attention(tmp_path: Path, model: nn.Module) -> None:
    with pytest.raises(ExportError, match="needs a model with HAMNet attention"):
        export_onnx(model, INPUT_SIZE, tmp_path / "m.onnx", ort_fused_attention=True)


class BatchDependent(nn.Module):
    """Python control flow on the batch size: traced as a constant, so it cannot export."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x) * float(x.shape[0])


class Keywords(nn.Module):
    """Keyword inputs of different dtypes, a tuple output."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 3)
        self.dropout = nn.Dropout(0.5)

    def forward(
        self, tokens: torch.Tensor, scale: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.dropout(self.embed(tokens)) * scale.unsqueeze(-1)
        return h, h.sum()


def test_export_module_dict_tuple_and_dynamic_axes(tmp_path: Path) -> None:
    import onnx

    from hamnet.backends.export import export_module

    torch.manual_seed(0)
    model = Keywords().train()
    examples = {"tokens": torch.randint(0, 10, (2, 5)), "scale": torch.rand(2, 5)}
    path = export_module(model, examples, tmp_path / "kw.onnx")
    assert model.training and model.dropout.training  # modes restored
    graph = onnx.load(str(path)).graph
    assert [i.name for i in graph.input] == ["tokens", "scale"]
    dims = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim]
            for i in graph.input}  # fmt: skip
    assert dims == {"tokens": ["batch", "sequence"], "scale": ["batch", 5]}
    assert [d.dim_param for d in graph.output[0].type.tensor_type.shape.dim][:2] == [
        "batch", "sequence"
    ]  # fmt: skip
    tuple_path = export_module(
        TinyAttention().eval(), (torch.randn(1, INPUT_SIZE),), tmp_path / "t.onnx",
        input_names=["features"],
    )  # fmt: skip
    assert [i.name for i in onnx.load(str(tuple_path)).graph.input] == ["features"]


def test_export_module_errors(tmp_path: Path) -> None:
    from hamnet.backends.export import export_module

    with pytest.raises(ExportError, match=r"must match the module within atol=0.0001, but differ"):
        export_module(BatchDependent(), torch.randn(1, 4), tmp_path / "b.onnx")
    with pytest.raises(ExportError, match="input_names must name each of the 1 example inputs"):
        export_module(BatchDependent(), torch.randn(1, 4), tmp_path / "n.onnx",
                      input_names=["a", "b"])  # fmt: skip
    with pytest.raises(ExportError, match="every example input must have a batch axis"):
        export_module(BatchDependent(), torch.tensor(1.0), tmp_path / "s.onnx")
    with pytest.raises(ExportError, match=r"ONNX export of Keywords \(inputs \['input'\]"):
        export_module(Keywords(), torch.randint(0, 10, (1, 3)), tmp_path / "k.onnx")


def test_export_module_hf_encoder_records_fusion_shape(tmp_path: Path) -> None:
    import onnx
    from conftest import tiny_bert

    from hamnet.backends.export import export_module

    model = tiny_bert()
    examples = {
        "input_ids": torch.randint(1, 50, (2, 8)),
        "attention_mask": torch.ones(2, 8, dtype=torch.long),
    }
    path = export_module(model, examples, tmp_path / "bert.onnx")
    assert model.config._attn_implementation == "eager"
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert props == {"hamnet.num_heads": "4", "hamnet.hidden_size": "32"}


def test_export_module_records_the_fusion_shape_through_a_users_wrapper(tmp_path: Path) -> None:
    """A mean-pooling sentence encoder holds the Hugging Face model as a submodule."""
    transformers = pytest.importorskip("transformers")
    import onnx

    from hamnet.backends.export import export_module

    class MeanPooled(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            cfg = transformers.BertConfig(
                hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                intermediate_size=64, vocab_size=50, max_position_embeddings=32,
            )  # fmt: skip
            self.model = transformers.BertModel(cfg)

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            hidden = self.model(input_ids=input_ids, attention_mask=attention_mask)[0]
            mask = attention_mask.unsqueeze(-1).float()
            return (hidden * mask).sum(1) / mask.sum(1)

    torch.manual_seed(0)
    wrapper = MeanPooled().eval()
    examples = {
        "input_ids": torch.randint(1, 50, (2, 8)),
        "attention_mask": torch.ones(2, 8, dtype=torch.long),
    }
    path = export_module(wrapper, examples, tmp_path / "pooled.onnx")
    assert wrapper.model.config._attn_implementation == "eager"
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert props == {"hamnet.num_heads": "4", "hamnet.hidden_size": "32"}


def test_export_stage_adds_a_fused_twin_only_where_attention_spans_tokens(
    tmp_path: Path,
) -> None:
    """A one-token model's attention is already one linear map: no fused twin of it."""
    from conftest import tiny_config

    from hamnet.core.candidate import Candidate
    from hamnet.core.config import config_from_dict
    from hamnet.models import HAMNet, HAMNetConfig, save_checkpoint
    from hamnet.pipeline.plan import ExportStage
    from hamnet.pipeline.run import make_context

    export = {"formats": ["onnx"], "ort_fused_attention": True}
    ctx = make_context(config_from_dict(tiny_config(stages={"export": export})), tmp_path)
    names = {}
    for token_size in (8, 64):
        torch.manual_seed(0)
        config = HAMNetConfig(
            input_size=64, num_classes=10, hidden_size=8, num_heads=2, token_size=token_size
        )
        path = save_checkpoint(HAMNet(config), tmp_path / f"t{token_size}.pt")
        parent = Candidate.create(
            name=f"t{token_size}", stage="train", method="train",
            artifact=ctx.store.put(path, "torch"), runtime="torch",
        )  # fmt: skip
        out = ExportStage().run([parent], ctx)
        names[token_size] = sorted(c.name for c in out)
        assert all(c.parity_max_abs_diff is not None and c.parity_max_abs_diff < 1e-4 for c in out)
    assert names == {8: ["onnxruntime-fp32", "onnxruntime-fused-fp32"], 64: ["onnxruntime-fp32"]}


def test_modes_are_restored_even_when_the_block_fails() -> None:
    from hamnet.backends.export import _modes_restored

    model = Keywords().train()
    model.dropout.eval()
    with pytest.raises(RuntimeError), _modes_restored(model):
        model.eval()
        raise RuntimeError("boom")
    assert model.training and not model.dropout.training


def test_export_module_keeps_explicit_dynamic_axes_and_modes_after_failure(
    tmp_path: Path,
) -> None:
    import onnx

    from hamnet.backends.export import export_module

    model = TinyAttention().train()
    path = export_module(
        model, torch.randn(2, INPUT_SIZE), tmp_path / "fixed.onnx",
        dynamic_axes={"input": {0: "rows"}},
    )  # fmt: skip
    assert model.training
    shape = onnx.load(str(path)).graph.input[0].type.tensor_type.shape
    dims = [d.dim_param or d.dim_value for d in shape.dim]
    assert dims == ["rows", INPUT_SIZE]
    failing = Keywords().train()
    with pytest.raises(ExportError, match="ONNX export of Keywords"):
        export_module(failing, torch.randint(0, 10, (1, 3)), tmp_path / "k.onnx")
    assert failing.training and failing.dropout.training


def test_export_module_records_a_uniformly_pruned_head_count_for_fusion(tmp_path: Path) -> None:
    """Every layer kept 3 of 4 heads: ORT's fusion gets 3 heads of width 24, and fuses."""
    import onnx
    from conftest import tiny_bert
    from onnxruntime.transformers import optimizer

    from hamnet.backends.export import export_module

    model = tiny_bert(layers=2)
    examples = {
        "input_ids": torch.randint(1, 50, (2, 8)),
        "attention_mask": torch.ones(2, 8, dtype=torch.long),
    }
    from hamnet.compress.pruning.hf import prune_bert

    model, _ = prune_bert(model, 0.25, example_inputs=examples)  # 1 of 4 heads per layer
    path = export_module(model, examples, tmp_path / "pruned.onnx")
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert props == {"hamnet.num_heads": "3", "hamnet.hidden_size": "24"}
    fused = optimizer.optimize_model(
        str(path), model_type="bert", num_heads=3, hidden_size=24, use_gpu=False
    )
    assert fused.get_fused_operator_statistics()["Attention"] == 2
    model.encoder.layer[0].attention.self.num_attention_heads = 2  # layers differ: no record
    path = export_module(model, examples, tmp_path / "uneven.onnx")
    assert not {p.key for p in onnx.load(str(path)).metadata_props} & {"hamnet.num_heads"}
