"""Every quantization method: loads in its runtime, keeps predictions, shrinks the file."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from hamnet.backends.export import convert_openvino, export_onnx
from hamnet.backends.session import load_session
from hamnet.compress.quantize.base import (
    QuantizationMethod,
    get_quantizer,
    has_attention,
    make_calibration_reader,
    resolve_reduce_range,
)
from hamnet.core import registry
from hamnet.core.artifacts import ArtifactRef, ArtifactStore
from hamnet.core.config import QuantizeStageConfig
from hamnet.core.errors import ConfigError, DataError
from hamnet.core.hardware import HardwareProfile, load_profile

INPUT_SIZE, CLASSES = 32, 4


class MLP(nn.Module):
    """Wide enough (256) that weights dominate the file."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(INPUT_SIZE, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(),
            nn.Linear(256, CLASSES),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class TinyAttention(nn.Module):
    """Tokens -> self-attention (MatMul/Softmax) -> LayerNorm -> FFN -> linear head."""

    def __init__(self, tokens: int = 4, dim: int = 32) -> None:
        super().__init__()
        self.tokens, self.dim = tokens, dim
        self.embed = nn.Linear(INPUT_SIZE // tokens, dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, 64), nn.GELU(), nn.Linear(64, dim))
        self.head = nn.Linear(tokens * dim, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x.reshape(x.shape[0], self.tokens, -1))
        q, k, v = self.qkv(h).chunk(3, dim=-1)
        weights = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(self.dim), dim=-1)
        h = self.norm1(h + weights @ v)
        return self.head(self.norm2(h + self.ffn(h)).flatten(1))


def separable_task(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels are the argmax of a fixed random projection: learnable, not trivial."""
    projection = np.random.default_rng(0).normal(size=(INPUT_SIZE, CLASSES))
    x = np.random.default_rng(seed).normal(size=(n, INPUT_SIZE)).astype(np.float32)
    return x, np.argmax(x @ projection, axis=1)


def trained(model: nn.Module, steps: int = 300) -> nn.Module:
    x, y = separable_task(2048, seed=1)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small ops: one thread is faster and immune to a busy machine
    try:
        for _ in range(steps):
            batch = torch.randint(0, len(x), (128,), generator=generator)
            loss = nn.functional.cross_entropy(model(xt[batch]), yt[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    finally:
        torch.set_num_threads(threads)
    return model.eval()


@dataclass
class Case:
    onnx: ArtifactRef
    ir: ArtifactRef
    reference: np.ndarray  # FP32 logits on x_test
    accuracy: float


@pytest.fixture(scope="module")
def data() -> dict[str, np.ndarray]:
    x_test, y_test = separable_task(1000, seed=2)
    return {"calibration": separable_task(200, seed=3)[0], "x": x_test, "y": y_test}


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> ArtifactStore:
    return ArtifactStore(tmp_path_factory.mktemp("quantize") / "store")


@pytest.fixture(scope="module")
def cases(store: ArtifactStore, data: dict[str, np.ndarray]) -> dict[str, Case]:
    out = {}
    for name, cls in (("mlp", MLP), ("attention", TinyAttention)):
        torch.manual_seed(0)
        model = trained(cls())
        staging = store.staging_dir()
        onnx_ref = store.put(export_onnx(model, INPUT_SIZE, staging / "model.onnx"), "onnx")
        ir_ref = store.put(convert_openvino(onnx_ref.path, staging / "model.xml"), "openvino")
        with torch.no_grad():
            logits = model(torch.from_numpy(data["x"])).numpy()
        accuracy = float(np.mean(logits.argmax(1) == data["y"]))
        out[name] = Case(onnx_ref, ir_ref, logits, accuracy)
    return out


@pytest.fixture(scope="module")
def cpu() -> HardwareProfile:
    return load_profile("x86-avx2")


def test_models_learned_the_task(cases: dict[str, Case]) -> None:
    for case in cases.values():
        assert case.accuracy > 0.8  # meaningful agreement needs confident predictions


@pytest.mark.parametrize("model_name", ["mlp", "attention"])
@pytest.mark.parametrize(
    "method_name", ["ort_dynamic_int8", "ort_static_int8", "nncf_int8", "openvino_fp16"]
)
def test_method_loads_in_its_runtime_and_keeps_predictions(
    method_name: str,
    model_name: str,
    cases: dict[str, Case],
    store: ArtifactStore,
    data: dict[str, np.ndarray],
    cpu: HardwareProfile,
) -> None:
    method = get_quantizer(method_name)
    assert method.supported(cpu) is None
    case = cases[model_name]
    main = method.quantize(
        Path(case.onnx.path),
        store.staging_dir(),
        calibration=data["calibration"] if method.needs_calibration else None,
        cfg=QuantizeStageConfig(),
        profile=cpu,
    )
    assert main.name == {"onnx": "model.onnx", "openvino": "model.xml"}[method.output_format]
    ref = store.put(main, method.output_format)  # type: ignore[arg-type]
    logits = load_session(ref, method.runtime, cpu).run(data["x"])
    agreement = float(np.mean(logits.argmax(1) == case.reference.argmax(1)))
    assert agreement >= 0.9, f"{method_name} on {model_name}: agreement {agreement:.3f}"
    accuracy = float(np.mean(logits.argmax(1) == data["y"]))
    assert accuracy >= case.accuracy - 0.05
    fp32 = case.ir if method.output_format == "openvino" else case.onnx
    if model_name == "mlp":  # weights dominate the file
        limit = 0.6 if method.precision == "fp16" else 0.4
        assert ref.size_bytes < limit * fp32.size_bytes
        if method.precision == "fp16":
            assert ref.size_bytes > 0.4 * fp32.size_bytes  # about half, not less


def test_onnx_fp16_is_for_cuda_profiles(
    cases: dict[str, Case], store: ArtifactStore, data: dict[str, np.ndarray], cpu: HardwareProfile
) -> None:
    import onnx

    method = get_quantizer("onnx_fp16")
    reason = method.supported(cpu)
    assert reason is not None and "cuda" in reason.lower() and "'x86-avx2'" in reason
    assert method.supported(load_profile("nvidia-gpu", require_present=False)) is None
    case = cases["mlp"]
    main = method.quantize(
        Path(case.onnx.path), store.staging_dir(), calibration=None,
        cfg=QuantizeStageConfig(), profile=cpu,
    )  # fmt: skip
    graph = onnx.load(str(main)).graph
    assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # keep_io_types
    assert graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert {t.data_type for t in graph.initializer} == {onnx.TensorProto.FLOAT16}
    assert 0.4 < main.stat().st_size / case.onnx.size_bytes < 0.6
    logits = load_session(store.put(main, "onnx"), "onnxruntime", cpu).run(data["x"][:100])
    np.testing.assert_allclose(logits, case.reference[:100], atol=0.05)


def test_supported_reasons() -> None:
    gpu = load_profile("nvidia-gpu", require_present=False)  # fp32/fp16, no openvino
    nncf_reason = get_quantizer("nncf_int8").supported(gpu)
    assert nncf_reason is not None and "int8" in nncf_reason and "precisions" in nncf_reason
    fp16_reason = get_quantizer("openvino_fp16").supported(gpu)
    assert fp16_reason is not None and "needs runtime 'openvino'" in fp16_reason
    edge = load_profile("arm64-edge", require_present=False)
    assert all(
        get_quantizer(n).supported(edge) is None
        for n in registry.names("quantizer")
        if n != "onnx_fp16"
    )


def test_registry_matches_config_and_declares_itself() -> None:
    assert set(registry.names("quantizer")) == {
        "ort_dynamic_int8", "ort_fused_dynamic_int8", "ort_static_int8", "nncf_int8",
        "openvino_fp16", "onnx_fp16", "int8_accuracy_aware", "nncf_int8_accuracy_aware",
        "ort_weight_only_int4", "ort_weight_only_int8", "nncf_weight_compression",
    }  # fmt: skip
    for name in registry.names("quantizer"):
        cls = registry.load("quantizer", name)
        method = get_quantizer(name)
        assert isinstance(method, QuantizationMethod) and isinstance(method, cls)
        assert method.name == name and method.source_format == "onnx"
        assert method.output_format in ("onnx", "openvino")
        assert (
            method.runtime == {"onnx": "onnxruntime", "openvino": "openvino"}[method.output_format]
        )
        assert method.precision in ("int8", "fp16", "mixed") and method.notes
    with pytest.raises(ConfigError, match=r"unknown quantization method 'int4': expected one"):
        get_quantizer("int4")


def test_resolve_reduce_range() -> None:
    avx2 = load_profile("x86-avx2", require_present=False)
    vnni = load_profile("x86-vnni-server", require_present=False)
    assert resolve_reduce_range(QuantizeStageConfig(), avx2) is True
    assert resolve_reduce_range(QuantizeStageConfig(), vnni) is False
    assert resolve_reduce_range(QuantizeStageConfig(reduce_range=False), avx2) is False
    assert resolve_reduce_range(QuantizeStageConfig(reduce_range=True), vnni) is True


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, dict[str, Any]]]:
    """Replace ONNX Runtime's quantizers with recorders of their keyword arguments."""
    from onnxruntime import quantization

    calls: dict[str, dict[str, Any]] = {}

    def recorder(name: str) -> Any:
        def record(model_input: str, model_output: str, *args: Any, **kwargs: Any) -> None:
            calls[name] = {"args": args, **kwargs}
            Path(model_output).write_bytes(b"")

        return record

    monkeypatch.setattr(quantization, "quantize_dynamic", recorder("dynamic"))
    monkeypatch.setattr(quantization, "quantize_static", recorder("static"))
    yield calls


def test_ort_settings_follow_config_and_profile(
    captured: dict[str, dict[str, Any]],
    cases: dict[str, Case],
    data: dict[str, np.ndarray],
    tmp_path: Path,
) -> None:
    from onnxruntime import quantization

    source = Path(cases["mlp"].onnx.path)
    vnni = load_profile("x86-vnni-server", require_present=False)
    cfg = QuantizeStageConfig(per_channel=False)
    get_quantizer("ort_dynamic_int8").quantize(
        source, tmp_path / "d", calibration=None, cfg=cfg, profile=vnni
    )
    assert captured["dynamic"]["reduce_range"] is False
    assert captured["dynamic"]["per_channel"] is False
    avx2 = load_profile("x86-avx2", require_present=False)
    get_quantizer("ort_static_int8").quantize(
        source, tmp_path / "s", calibration=data["calibration"], cfg=QuantizeStageConfig(),
        profile=avx2,
    )  # fmt: skip
    static = captured["static"]
    assert static["reduce_range"] is True and static["per_channel"] is True
    assert static["quant_format"] == quantization.QuantFormat.QDQ
    assert static["activation_type"] == quantization.QuantType.QUInt8
    assert static["weight_type"] == quantization.QuantType.QInt8


def test_calibration_is_required_and_read_in_batches(
    cases: dict[str, Case], cpu: HardwareProfile, tmp_path: Path
) -> None:
    for name in ("ort_static_int8", "nncf_int8"):
        with pytest.raises(DataError, match=f"{name} needs calibration inputs.*but got none"):
            get_quantizer(name).quantize(
                Path(cases["mlp"].onnx.path), tmp_path, calibration=None,
                cfg=QuantizeStageConfig(), profile=cpu,
            )  # fmt: skip
    reader = make_calibration_reader(np.zeros((70, INPUT_SIZE), np.float32), "input", 32)
    sizes = []
    while (batch := reader.get_next()) is not None:
        sizes.append(len(batch["input"]))
    assert sizes == [32, 32, 6]


def test_attention_detection(cases: dict[str, Case]) -> None:
    assert has_attention(Path(cases["attention"].onnx.path))
    assert not has_attention(Path(cases["mlp"].onnx.path))


class TwoInputNet(nn.Module):
    """Float features and a float side input (two named graph inputs)."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(INPUT_SIZE, 64), nn.Linear(4, 64)
        self.head = nn.Linear(64, CLASSES)

    def forward(self, features: torch.Tensor, side: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.a(features) + self.b(side)))


def test_static_and_nncf_calibrate_named_inputs(tmp_path: Path) -> None:
    from hamnet.backends.export import export_module
    from hamnet.backends.session import pack_inputs

    torch.manual_seed(0)
    model = TwoInputNet().eval()
    src = export_module(
        model, (torch.randn(1, INPUT_SIZE), torch.randn(1, 4)), tmp_path / "two.onnx",
        input_names=["features", "side"],
    )  # fmt: skip
    rng = np.random.default_rng(0)
    data = pack_inputs(
        {"features": rng.normal(size=(40, INPUT_SIZE)), "side": rng.normal(size=(40, 4))}
    )
    profile = load_profile("x86-avx2")
    store = ArtifactStore(tmp_path / "store")
    reference = load_session(store.put(src, "onnx"), "onnxruntime", profile)
    expected = reference.run(data[:8]).argmax(axis=1)
    for name in ("ort_static_int8", "nncf_int8"):
        method = get_quantizer(name)
        out = method.quantize(
            src, tmp_path / name, calibration=data, cfg=QuantizeStageConfig(), profile=profile
        )
        ref = store.put(out, method.output_format)  # type: ignore[arg-type]
        got = load_session(ref, method.runtime, profile).run(data[:8])
        assert got.shape == (8, CLASSES)
        assert np.mean(got.argmax(axis=1) == expected) >= 0.75
    reader = make_calibration_reader(data, batch_size=16)
    first = reader.get_next()
    assert set(first) == {"features", "side"} and first["side"].shape == (16, 4)


def test_fused_dynamic_int8_on_bert_and_its_limits(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    from hamnet.backends.export import export_module
    from hamnet.evaluate.measure import cosine_similarity, predict

    torch.manual_seed(0)
    cfg = transformers.BertConfig(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
        vocab_size=100, max_position_embeddings=64,
    )  # fmt: skip
    bert = transformers.BertModel(cfg).eval()
    examples = {
        "input_ids": torch.randint(1, 100, (2, 16)),
        "attention_mask": torch.ones(2, 16, dtype=torch.long),
    }
    src = export_module(bert, examples, tmp_path / "bert.onnx")
    method = get_quantizer("ort_fused_dynamic_int8")
    assert method.applicable(src) is None and method.needs_calibration is False
    profile = load_profile("x86-avx2")
    out = method.quantize(
        src, tmp_path / "fused", calibration=None, cfg=QuantizeStageConfig(), profile=profile
    )
    assert any("Attention" in n for n in method.extra_notes)
    store = ArtifactStore(tmp_path / "store")
    fp32 = load_session(store.put(src, "onnx"), "onnxruntime", profile)
    int8 = load_session(store.put(out, "onnx"), "onnxruntime", profile)
    rng = np.random.default_rng(1)
    x = {
        "input_ids": rng.integers(1, 100, size=(12, 16)),
        "attention_mask": np.ones((12, 16), dtype=np.int64),
    }
    assert cosine_similarity(predict(int8, x, 4), predict(fp32, x, 4)) > 0.95
    assert out.stat().st_size < src.stat().st_size

    mlp = export_onnx(MLP().eval(), INPUT_SIZE, tmp_path / "mlp.onnx")
    reason = method.applicable(mlp)
    assert reason is not None and "has no attention" in reason
    # A graph with attention that the BERT fusion cannot match degrades to plain
    # dynamic INT8, and says so.
    tiny = export_onnx(TinyAttention().eval(), INPUT_SIZE, tmp_path / "tiny.onnx")
    method.quantize(
        tiny, tmp_path / "tiny", calibration=None, cfg=QuantizeStageConfig(), profile=profile
    )
    assert any("found no attention block" in n for n in method.extra_notes)
