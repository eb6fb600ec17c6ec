"""The runtime registry, loading stored models, and refusing what the machine lacks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from hamnet.backends.export import convert_openvino, export_onnx
from hamnet.backends.session import (
    OnnxRuntimeSession,
    OpenVINOSession,
    TorchSession,
    format_of,
    format_suffixes,
    get_runtime,
    load_session,
    openvino_core,
    runtime_class,
)
from hamnet.core import registry
from hamnet.core.artifacts import ArtifactRef, ArtifactStore, artifact_files, artifact_formats
from hamnet.core.errors import ConfigError, DataError, HardwareProfileError, ModelLoadError
from hamnet.core.hardware import HardwareProfile, RuntimeSpec, load_profile

INPUT_SIZE = 12


@pytest.fixture(scope="module")
def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(INPUT_SIZE, 32), nn.ReLU(), nn.Linear(32, 5)).eval()


@pytest.fixture(scope="module")
def refs(tmp_path_factory: pytest.TempPathFactory, model: nn.Module) -> dict[str, ArtifactRef]:
    tmp = tmp_path_factory.mktemp("runtimes")
    store = ArtifactStore(tmp / "store")
    onnx_path = export_onnx(model, INPUT_SIZE, tmp / "model.onnx")
    xml_path = convert_openvino(onnx_path, tmp / "model.xml")
    fake_pt = tmp / "model.pt"
    fake_pt.write_bytes(b"not a checkpoint")
    return {
        "onnx": store.put(onnx_path, "onnx"),
        "openvino": store.put(xml_path, "openvino"),
        "torch": store.put(fake_pt, "torch"),
    }


@pytest.fixture(scope="module")
def cpu() -> HardwareProfile:
    return load_profile("x86-avx2")


@pytest.fixture(scope="module")
def gpu() -> HardwareProfile:
    return load_profile("nvidia-gpu", require_present=False)


@pytest.fixture(scope="module")
def x() -> np.ndarray:
    return np.random.default_rng(0).normal(size=(10, INPUT_SIZE)).astype(np.float32)


def test_registry_names_formats_and_availability() -> None:
    assert registry.names("runtime") == ("onnxruntime", "openvino", "torch")
    for name in registry.names("runtime"):
        cls = registry.load("runtime", name)
        assert cls is runtime_class(name)
        assert cls.kind == "runtime" and cls.name == name
        assert runtime_class(name).is_available()
        assert get_runtime(name).name == name
    assert runtime_class("onnxruntime").formats == ("onnx",)
    assert set(runtime_class("openvino").formats) == {"openvino", "onnx"}
    assert runtime_class("torch").formats == ("torch", "torch-module")


def test_formats_and_files_come_from_the_runtimes(tmp_path: Path) -> None:
    assert format_suffixes() == {
        "onnx": (".onnx",),
        "openvino": (".xml", ".bin"),
        "torch": (".pt",),
        "torch-module": (".json",),
    }
    assert artifact_formats() == ("onnx", "openvino", "torch", "torch-module")
    assert format_of("a/model.XML") == "openvino" and format_of("m.onnx") == "onnx"
    assert format_of("weights.bin") is None
    assert artifact_files(tmp_path / "model.xml", "openvino") == [
        tmp_path / "model.xml",
        tmp_path / "model.bin",
    ]
    assert artifact_files(tmp_path / "m.onnx", "onnx") == [tmp_path / "m.onnx"]
    with pytest.raises(ValueError, match=r"artifact format must be one of \['onnx', 'openvino'"):
        ArtifactRef(path="m.trt", sha256="0", format="tensorrt", size_bytes=1)


def test_unknown_runtime_lists_known_ones(
    refs: dict[str, ArtifactRef], cpu: HardwareProfile
) -> None:
    with pytest.raises(ConfigError, match=r"unknown runtime 'tensorrt': expected one of \["):
        get_runtime("tensorrt")
    with pytest.raises(ConfigError, match=r"did you mean 'openvino'\?"):
        get_runtime("openvin")
    with pytest.raises(ConfigError, match="'onnxruntime', 'openvino', 'torch'"):
        load_session(refs["onnx"], "tensorrt", cpu)


def test_sessions_match_torch(
    refs: dict[str, ArtifactRef], cpu: HardwareProfile, model: nn.Module, x: np.ndarray
) -> None:
    expected = TorchSession(model).run(x)
    for ref, runtime in (
        (refs["onnx"], "onnxruntime"),
        (refs["openvino"], "openvino"),
        (refs["onnx"], "openvino"),
    ):
        session = load_session(ref, runtime, cpu)
        assert session.runtime == runtime
        out = session.run(x)
        assert out.shape == (len(x), 5) and out.dtype == np.float32
        np.testing.assert_allclose(out, expected, atol=1e-5)
        out[:] = 0  # outputs are the caller's: later calls are unaffected
        np.testing.assert_allclose(session.run(x), expected, atol=1e-5)


def test_onnxruntime_settings(refs: dict[str, ArtifactRef], x: np.ndarray) -> None:
    spec = RuntimeSpec(name="onnxruntime", providers=["CPUExecutionProvider"])
    session = get_runtime("onnxruntime").load(refs["onnx"], spec, 1)
    assert isinstance(session, OnnxRuntimeSession)
    assert session.providers == ["CPUExecutionProvider"]
    options = session.session.get_session_options()
    assert options.intra_op_num_threads == 1
    with pytest.raises(ValueError, match=r"2-D array \[batch, features\], but got shape \(12,\)"):
        session.run(x[0])
    # The direct path (contiguous float32 of the right rank) and the general one agree.
    direct = session.run(np.ascontiguousarray(x, dtype=np.float32))
    for other in (x.astype(np.float64), np.asfortranarray(x), x.tolist(), {"input": x}):
        np.testing.assert_array_equal(session.run(other), direct)  # type: ignore[arg-type]
    assert direct.dtype == np.float32


def test_openvino_settings_and_throughput_hint(refs: dict[str, ArtifactRef], x: np.ndarray) -> None:
    import openvino

    runtime = get_runtime("openvino")
    spec = RuntimeSpec(name="openvino", device="CPU")
    latency = runtime.load(refs["openvino"], spec, 1)
    assert isinstance(latency, OpenVINOSession)
    compiled = latency.compiled
    assert str(compiled.get_property("PERFORMANCE_HINT")).endswith("LATENCY")
    assert compiled.get_property("INFERENCE_NUM_THREADS") == 1
    # FP32 stays FP32 even where the CPU plugin would default to BF16 (AMX, AVX512-BF16).
    assert compiled.get_property("INFERENCE_PRECISION_HINT") == openvino.Type.f32
    throughput = runtime.throughput_session(refs["openvino"], spec, 2)
    assert isinstance(throughput, OpenVINOSession) and throughput.hint == "THROUGHPUT"
    big = np.concatenate([x] * 4)
    np.testing.assert_allclose(throughput.run(big), latency.run(big), atol=1e-5)
    assert get_runtime("onnxruntime").throughput_session(refs["onnx"], spec, 1) is None
    with pytest.raises(ConfigError, match="hint must be one of"):
        runtime.load(refs["openvino"], spec, 1, hint="FASTEST")  # type: ignore[call-arg]
    assert openvino_core() is openvino_core()


def test_runtime_not_in_profile(refs: dict[str, ArtifactRef], gpu: HardwareProfile) -> None:
    with pytest.raises(HardwareProfileError, match=r"'openvino' is not listed by hardware"):
        load_session(refs["openvino"], "openvino", gpu)


def test_cuda_provider_is_refused_not_replaced(
    refs: dict[str, ArtifactRef], gpu: HardwareProfile
) -> None:
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this machine has the CUDA provider")
    with pytest.raises(HardwareProfileError, match=r"\['CUDAExecutionProvider'\] requested"):
        load_session(refs["onnx"], "onnxruntime", gpu)


def test_prepare_warms_each_runtime_once(cpu: HardwareProfile, gpu: HardwareProfile) -> None:
    for name in registry.names("runtime"):
        spec = cpu.runtime(name)
        assert spec is not None
        get_runtime(name).prepare(spec)
        get_runtime(name).prepare(spec)
    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        with pytest.raises(HardwareProfileError, match="CUDAExecutionProvider"):
            get_runtime("onnxruntime").prepare(gpu.runtimes[0])


def test_absent_devices_are_refused(refs: dict[str, ArtifactRef], gpu: HardwareProfile) -> None:
    if not torch.cuda.is_available():
        with pytest.raises(HardwareProfileError, match="torch sees no CUDA device"):
            load_session(refs["torch"], "torch", gpu)
    if "NPU" not in openvino_core().available_devices:
        with pytest.raises(HardwareProfileError, match=r"OpenVINO device 'NPU' requested"):
            get_runtime("openvino").load(
                refs["openvino"], RuntimeSpec(name="openvino", device="npu"), None
            )


def test_wrong_format_and_missing_files(
    refs: dict[str, ArtifactRef], cpu: HardwareProfile, tmp_path: Path
) -> None:
    with pytest.raises(ModelLoadError, match=r"loads formats \['onnx'\], but .* format 'openvino'"):
        load_session(refs["openvino"], "onnxruntime", cpu)
    gone = refs["onnx"].model_copy(update={"path": str(tmp_path / "gone.onnx")})
    with pytest.raises(ModelLoadError, match="do not exist"):
        load_session(gone, "onnxruntime", cpu)
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"garbage")
    bad = ArtifactStore(tmp_path / "store").put(broken, "onnx")
    with pytest.raises(ModelLoadError, match="ONNX Runtime cannot load"):
        load_session(bad, "onnxruntime", cpu)
    with pytest.raises(ModelLoadError, match="OpenVINO cannot compile"):
        load_session(bad, "openvino", cpu)


def test_torch_runtime_loads_hamnet_checkpoint(
    tmp_path: Path, cpu: HardwareProfile, refs: dict[str, ArtifactRef]
) -> None:
    models = pytest.importorskip("hamnet.models")
    if not hasattr(models, "load_checkpoint"):
        pytest.skip("hamnet.models.load_checkpoint is not written yet")
    torch.manual_seed(0)
    config = models.HAMNetConfig(
        input_size=INPUT_SIZE, num_classes=4, hidden_size=8, num_heads=2, token_size=4
    )
    model = models.HAMNet(config).eval()
    ref = ArtifactStore(tmp_path / "store").put(
        models.save_checkpoint(model, tmp_path / "model.pt"), "torch"
    )
    threads = torch.get_num_threads()
    try:
        one_thread = cpu.model_copy(update={"threads": 1})
        session = load_session(ref, "torch", one_thread)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)
    x = np.random.default_rng(0).normal(size=(6, INPUT_SIZE)).astype(np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(session.run(x), expected, atol=1e-6)
    with pytest.raises(ModelLoadError):
        load_session(refs["torch"], "torch", cpu)  # not a hamnet checkpoint


class _Tokens(nn.Module):
    """int64 token ids + mask -> [batch, seq, 4] (two named integer inputs)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(20, 4)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.embed(input_ids) * attention_mask.unsqueeze(-1).float()


def test_named_integer_inputs_in_every_runtime(tmp_path: Path) -> None:
    from hamnet.backends.export import convert_openvino, export_module
    from hamnet.backends.session import pack_inputs, unpack_inputs
    from hamnet.core.artifacts import ArtifactStore

    torch.manual_seed(0)
    model = _Tokens().eval()
    examples = {
        "input_ids": torch.randint(0, 20, (2, 5)),
        "attention_mask": torch.ones(2, 5, dtype=torch.long),
    }
    onnx_path = export_module(model, examples, tmp_path / "tokens.onnx")
    store = ArtifactStore(tmp_path / "store")
    refs = {
        "onnxruntime": store.put(onnx_path, "onnx"),
        "openvino": store.put(
            convert_openvino(onnx_path, tmp_path / "ov" / "model.xml"), "openvino"
        ),
    }
    rng = np.random.default_rng(0)
    x = {
        "input_ids": rng.integers(0, 20, size=(6, 7)),  # another batch and sequence length
        "attention_mask": (rng.random((6, 7)) > 0.3).astype(np.int64),
    }
    with torch.no_grad():
        expected = model(**{k: torch.from_numpy(v) for k, v in x.items()}).numpy()
    profile = load_profile("x86-avx2")
    packed = pack_inputs(x)
    assert packed.dtype["input_ids"].base == np.int64 and len(packed) == 6
    unpacked = unpack_inputs(packed)
    assert isinstance(unpacked, dict) and unpacked["input_ids"].dtype == np.int64
    for runtime, ref in refs.items():
        session = load_session(ref, runtime, profile)
        np.testing.assert_allclose(session.run(x), expected, atol=1e-5)
        np.testing.assert_allclose(session.run(packed), expected, atol=1e-5)
        with pytest.raises(
            DataError, match=r"inputs must be named \['input_ids', 'attention_mask'\]"
        ):
            session.run({"input_ids": x["input_ids"]})
        with pytest.raises(DataError, match="mapping of the model's 2 named inputs"):
            session.run(x["input_ids"])
    torch_out = TorchSession(model).run(x)
    np.testing.assert_allclose(torch_out, expected, atol=1e-6)
    with pytest.raises(DataError, match="same batch size"):
        pack_inputs({"a": np.zeros((2, 3)), "b": np.zeros((3, 3))})


def test_nd_float_input_runs_as_float32(tmp_path: Path) -> None:
    from hamnet.backends.export import export_module
    from hamnet.core.artifacts import ArtifactStore

    torch.manual_seed(0)
    conv = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(2 * 6 * 6, 3)).eval()
    path = export_module(conv, torch.randn(1, 1, 8, 8), tmp_path / "conv.onnx")
    session = load_session(ArtifactStore(tmp_path / "s").put(path, "onnx"), "onnxruntime",
                           load_profile("x86-avx2"))  # fmt: skip
    x = np.random.default_rng(0).normal(size=(4, 1, 8, 8))  # float64 on purpose
    with torch.no_grad():
        expected = conv(torch.from_numpy(x.astype(np.float32))).numpy()
    np.testing.assert_allclose(session.run(x), expected, atol=1e-5)
    with pytest.raises(DataError, match=r"'input' must be a 4-D array"):
        session.run(x.reshape(4, 64))
