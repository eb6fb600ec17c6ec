"""Every ``runtime`` plugin keeps one contract: it loads a tiny model in each format it
reads and reproduces the torch reference at batch 1 and batch 3.

A new runtime is covered by adding its module to :mod:`hamnet.backends.runtimes`; a
runtime that reads a new format also needs a writer in :data:`WRITERS`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from hamnet.backends.session import InferenceSession, runtime_class
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


WRITERS: dict[str, Callable[[torch.nn.Module, Path], Path]] = {
    "torch": _write_torch,
    "onnx": _write_onnx,
    "openvino": _write_openvino,
}
"""Artifact format -> writes the tiny model in that format and returns its main file."""


def _cases() -> list[tuple[str, str]]:
    return [
        (name, fmt)
        for name in registry.names("runtime")
        for fmt in runtime_class(name).formats
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
    session = cls().load(ref, _spec(runtime), 1)
    assert isinstance(session, InferenceSession) and session.runtime == runtime
    x = np.random.default_rng(1).normal(size=(3, INPUT_SIZE)).astype(np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    for batch in (x[:1], x):
        out = session.run(batch)
        assert out.dtype == np.float32 and out.shape == (len(batch), 4)
        np.testing.assert_allclose(out, expected[: len(batch)], atol=1e-5)


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
