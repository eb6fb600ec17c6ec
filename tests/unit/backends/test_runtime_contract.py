"""Every ``runtime`` plugin keeps one contract: it loads a tiny model in each format it
reads and reproduces the torch reference at batch 1 and batch 3.

A new runtime is covered by adding its module to :mod:`hamnet.backends.runtimes`; a
runtime that reads a new format also needs a writer in :data:`WRITERS`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch

from hamnet.backends.session import InferenceSession, Inputs, Runtime, runtime_class
from hamnet.core import registry
from hamnet.core.artifacts import ArtifactRef, ArtifactStore
from hamnet.core.hardware import RuntimeSpec, load_profile

INPUT_SIZE = 12


def _write_torch(model: torch.nn.Module, folder: Path) -> Path:
    from hamnet.models import save_checkpoint

    return save_checkpoint(model, folder / "model.pt")  # type: ignore[arg-type]


def _write_onnx(model: torch.nn.Module, folder: Path) -> Path:
    from hamnet.backends.export import export_onnx

    return export_onnx(model, INPUT_SIZE, folder / "model.onnx")


def _write_openvino(model: torch.nn.Module, folder: Path) -> Path:
    from hamnet.backends.export import convert_openvino

    return convert_openvino(_write_onnx(model, folder), folder / "ir" / "model.xml")


def _write_module(model: torch.nn.Module, folder: Path) -> Path:
    """A user's module artifact: the module object saved whole, its input spec beside it."""
    from hamnet.models.sources import InputSpec, save_module_artifact

    spec = InputSpec.of(torch.zeros(1, INPUT_SIZE))
    return save_module_artifact(folder / "module", inputs=spec, module=model)


WRITERS: dict[str, Callable[[torch.nn.Module, Path], Path]] = {
    "torch": _write_torch,
    "torch-module": _write_module,
    "onnx": _write_onnx,
    "openvino": _write_openvino,
}
"""Artifact format -> writes the tiny model in that format and returns its main file."""


def _cases() -> list[tuple[str, str]]:
    return [
        (name, fmt) for name in registry.names("runtime") for fmt in runtime_class(name).formats
    ]


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    from hamnet.models import HAMNet, HAMNetConfig

    torch.manual_seed(0)
    config = HAMNetConfig(
        input_size=INPUT_SIZE, num_classes=4, hidden_size=8, num_heads=2, token_size=4
    )
    return HAMNet(config).eval()


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> ArtifactStore:
    return ArtifactStore(tmp_path_factory.mktemp("contract") / "store")


def _spec(name: str) -> RuntimeSpec:
    listed = load_profile("x86-avx2").runtime(name)
    return listed if listed is not None else RuntimeSpec(name=name)  # type: ignore[arg-type]


@pytest.mark.parametrize(("runtime", "fmt"), _cases())
def test_runtime_reproduces_torch_at_batch_1_and_3(
    runtime: str, fmt: str, model: torch.nn.Module, store: ArtifactStore, tmp_path: Path
) -> None:
    cls = runtime_class(runtime)
    if not cls.is_available():
        pytest.skip(f"runtime {runtime!r} needs `pip install {cls.package}` ({cls.module})")
    assert fmt in WRITERS, f"add a writer for format {fmt!r} (read by {runtime!r}) to WRITERS"
    ref: ArtifactRef = store.put(WRITERS[fmt](model, tmp_path), fmt)
    assert ref.is_present()
    # A module artifact written here from a module object is a pickle hamnet made itself.
    session = cls().load(ref, _spec(runtime), 1, trust_checkpoint=fmt == "torch-module")
    assert isinstance(session, InferenceSession) and session.runtime == runtime
    x = np.random.default_rng(1).normal(size=(3, INPUT_SIZE)).astype(np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    for batch in (x[:1], x):
        out = session.run(batch)
        assert out.dtype == np.float32 and out.shape == (len(batch), 4)
        np.testing.assert_allclose(out, expected[: len(batch)], atol=1e-5)


def _owned() -> list[tuple[str, str]]:
    return [
        (name, fmt)
        for name in registry.names("runtime")
        for fmt in runtime_class(name).file_suffixes
    ]


@pytest.mark.parametrize(("runtime", "fmt"), _owned())
def test_runtime_reads_the_input_dims_of_its_formats(
    runtime: str, fmt: str, model: torch.nn.Module, tmp_path: Path
) -> None:
    from hamnet.backends.session import format_owner, input_dims

    cls = runtime_class(runtime)
    if not cls.is_available():
        pytest.skip(f"runtime {runtime!r} needs `pip install {cls.package}` ({cls.module})")
    assert format_owner(fmt) is cls
    path = WRITERS[fmt](model, tmp_path)
    assert cls.input_dims(path) == [None, INPUT_SIZE]
    assert input_dims(path, fmt) == [None, INPUT_SIZE]
    assert cls.weight_precision(path) == "fp32"


def test_a_format_no_runtime_owns_is_refused(tmp_path: Path) -> None:
    from hamnet.backends.session import format_owner
    from hamnet.core.errors import ModelLoadError

    with pytest.raises(ModelLoadError, match=r"format must be one a runtime owns.*'tensorrt'"):
        format_owner("tensorrt")


@pytest.mark.parametrize("runtime", registry.names("runtime"))
def test_runtime_declares_its_capabilities(runtime: str) -> None:
    cls = runtime_class(runtime)
    assert cls.kind == "runtime" and cls.name == runtime
    assert cls.formats and cls.package and cls.module
    for fmt, suffixes in cls.file_suffixes.items():
        assert fmt in cls.formats, f"{runtime} owns {fmt!r} but does not load it"
        assert suffixes and all(s.startswith(".") for s in suffixes)
    assert cls.parse_options({}) is not None


def test_listing_runtimes_imports_no_runtime_library() -> None:
    import subprocess
    import sys

    code = (
        "import sys; from hamnet.core import registry; "
        "from hamnet.backends.session import runtime_class; "
        "[runtime_class(n).formats for n in registry.names('runtime')]; "
        "print(sorted(m for m in ('torch', 'onnxruntime', 'openvino') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


class _MatrixSession(InferenceSession):
    runtime = "matrix"

    def __init__(self, weights: np.ndarray) -> None:
        self.weights = weights

    def run(self, x: Inputs) -> np.ndarray:
        return np.asarray(x, dtype=np.float32) @ self.weights


class MatrixRuntime(Runtime):
    """A runtime from outside hamnet: ``.npy`` weights, logits = inputs @ weights."""

    name: ClassVar[str] = "matrix"
    formats: ClassVar[tuple[str, ...]] = ("npy",)
    file_suffixes: ClassVar[Mapping[str, tuple[str, ...]]] = {"npy": (".npy",)}
    package: ClassVar[str] = "numpy"
    module: ClassVar[str] = "numpy"

    def load(
        self,
        artifact: ArtifactRef,
        spec: RuntimeSpec,
        threads: int | None,
        *,
        trust_checkpoint: bool = False,
    ) -> InferenceSession:
        return _MatrixSession(np.load(self._check(artifact)))


class ServedMatrixRuntime(MatrixRuntime):
    """The outside runtime, reading its files' input width so that it can be served."""

    @classmethod
    def input_dims(cls, path: Path) -> list[int | None]:
        return [None, int(np.load(path, mmap_mode="r").shape[0])]


@pytest.fixture
def matrix_runtime() -> Iterator[str]:
    registry.register("runtime", "matrix", f"{__name__}:MatrixRuntime")
    try:
        yield "matrix"
    finally:
        registry.unregister("runtime", "matrix")


def test_an_added_runtime_brings_its_format(matrix_runtime: str, tmp_path: Path) -> None:
    from hamnet.backends.session import format_of
    from hamnet.core.artifacts import artifact_formats

    assert matrix_runtime in registry.names("runtime")
    assert "npy" in artifact_formats() and format_of("w.npy") == "npy"
    weights = np.arange(8, dtype=np.float32).reshape(4, 2)
    np.save(tmp_path / "w.npy", weights)
    ref = ArtifactStore(tmp_path / "store").put(tmp_path / "w.npy", "npy")
    spec = RuntimeSpec.model_construct(name=matrix_runtime)
    session = runtime_class(matrix_runtime)().load(ref, spec, None)
    x = np.ones((3, 4), dtype=np.float32)
    np.testing.assert_array_equal(session.run(x), x @ weights)


def test_an_added_runtime_is_served(tmp_path: Path) -> None:
    from hamnet.backends.session import weight_precision
    from hamnet.serving.sessions import feature_count

    np.save(tmp_path / "w.npy", np.zeros((5, 2), dtype=np.float32))
    registry.register("runtime", "matrix", f"{__name__}:ServedMatrixRuntime")
    try:
        assert feature_count(tmp_path / "w.npy", "npy") == 5
        assert weight_precision(tmp_path / "w.npy", "npy") is None
    finally:
        registry.unregister("runtime", "matrix")


def test_a_runtime_without_input_dims_says_so(matrix_runtime: str, tmp_path: Path) -> None:
    from hamnet.backends.session import input_dims
    from hamnet.core.errors import ModelLoadError

    with pytest.raises(ModelLoadError, match=r"'matrix' must implement Runtime.input_dims"):
        input_dims(tmp_path / "w.npy", "npy")
