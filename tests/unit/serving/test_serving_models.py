"""Serving model resolution: references, formats from the runtimes, main files, runtimes."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
from conftest import export_tiny_onnx

from hamnet.backends.runtimes.base import InferenceSession, Runtime
from hamnet.core import registry
from hamnet.core.errors import ConfigError, ModelLoadError
from hamnet.core.hardware import load_profile
from hamnet.serving.refs import ModelRef, ModelSource, main_file, model_format, resolve
from hamnet.serving.sessions import choose_runtime, feature_count, open_session, select_runtime


class NpyRuntime(Runtime):
    """A runtime from outside hamnet that owns ``.npy`` files."""

    name: ClassVar[str] = "npy_matrix"
    formats: ClassVar[tuple[str, ...]] = ("npy",)
    file_suffixes: ClassVar[Mapping[str, tuple[str, ...]]] = {"npy": (".npy",)}
    package: ClassVar[str] = "numpy"
    module: ClassVar[str] = "numpy"

    def load(self, artifact: Any, spec: Any, threads: Any, **_: Any) -> InferenceSession:
        raise NotImplementedError


@pytest.fixture
def npy_runtime() -> Iterator[str]:
    registry.register("runtime", "npy_matrix", f"{__name__}:NpyRuntime")
    try:
        yield "npy_matrix"
    finally:
        registry.unregister("runtime", "npy_matrix")


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_tiny_onnx(tmp_path_factory.mktemp("refs") / "tiny.onnx")


def _touch(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    ("text", "name", "alias", "version"),
    [
        ("models:/fraud@champion", "fraud", "champion", None),
        ("models:/fraud/3", "fraud", None, "3"),
    ],
)
def test_registry_references_parse(text: str, name: str, alias: Any, version: Any) -> None:
    ref = ModelRef.parse(text)
    assert (ref.name, ref.alias, ref.version, ref.path) == (name, alias, version, None)
    assert ref.is_registry
    assert ref.with_alias("challenger").text == "models:/fraud@challenger"


@pytest.mark.parametrize("text", ["models:/x@y/z", "models:/", "models:/x/v1", "models:/a@"])
def test_malformed_registry_references_are_refused(text: str) -> None:
    with pytest.raises(ConfigError, match="models:/<name>@<alias> or models:/<name>/<version>"):
        ModelRef.parse(text)


def test_file_references_need_an_existing_file_a_runtime_owns(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="must exist"):
        ModelRef.parse(str(tmp_path / "none.onnx"))
    weird = _touch(tmp_path / "model.bin")
    with pytest.raises(ModelLoadError, match=r"one of \['.json', '.onnx', '.pt', '.xml'\]"):
        ModelRef.parse(str(weird))
    ref = ModelRef.parse(str(_touch(tmp_path / "model.XML")))
    assert not ref.is_registry and ref.path == (tmp_path / "model.XML").resolve()
    with pytest.raises(ConfigError, match="needs a models:/ reference"):
        ref.with_alias("champion")


@pytest.mark.parametrize(
    ("name", "fmt"),
    [("m.onnx", "onnx"), ("m.xml", "openvino"), ("m.pt", "torch"), ("M.ONNX", "onnx")],
)
def test_formats_come_from_the_runtimes_suffixes(name: str, fmt: str) -> None:
    assert model_format(name) == fmt


def test_a_runtime_added_from_outside_brings_its_suffix(npy_runtime: str, tmp_path: Path) -> None:
    weights = _touch(tmp_path / "dl" / "w.npy")
    assert model_format(weights) == "npy"
    assert ModelRef.parse(str(weights)).path == weights.resolve()
    assert main_file(tmp_path / "dl", None) == weights
    registry.unregister("runtime", npy_runtime)
    with pytest.raises(ModelLoadError, match="must end with one of"):
        model_format(weights)


def test_main_file_prefers_the_tagged_format_and_skips_siblings(tmp_path: Path) -> None:
    _touch(tmp_path / "model" / "a.onnx")
    _touch(tmp_path / "model" / "b.xml")
    _touch(tmp_path / "model" / "b.bin")
    assert main_file(tmp_path, None) == tmp_path / "model" / "a.onnx"
    assert main_file(tmp_path, "openvino") == tmp_path / "model" / "b.xml"
    assert main_file(tmp_path, "torch") == tmp_path / "model" / "a.onnx"
    empty = tmp_path / "empty"
    _touch(empty / "weights.bin")
    with pytest.raises(
        ModelLoadError, match=r"include a \.onnx, \.xml, \.pt or \.json file.*weights\.bin"
    ):
        main_file(empty, None)


def test_a_file_source_hashes_every_file_of_its_format(tmp_path: Path) -> None:
    xml = _touch(tmp_path / "m.xml", b"<net/>")
    _touch(tmp_path / "m.bin", b"\x00" * 10)
    source = ModelSource.of_file(xml)
    assert source.format == "openvino" and source.size_bytes == 16
    assert source.name == "m.xml" and source.version == source.sha256[:12] != ""
    assert source.artifact().files == [xml, tmp_path / "m.bin"]
    (tmp_path / "m.bin").write_bytes(b"\x01" * 10)
    assert ModelSource.of_file(xml).sha256 != source.sha256
    named = ModelSource.of_file(xml, name="fraud", version="7", tags={"a": "b"})
    assert (named.name, named.version, dict(named.tags)) == ("fraud", "7", {"a": "b"})


def test_resolve_a_file_and_refuse_a_registry_reference_without_client(onnx_model: Path):
    source = resolve(ModelRef.parse(str(onnx_model)))
    assert source.format == "onnx" and source.path == onnx_model.resolve()
    assert source.download_dir is None and source.run_id is None and not source.metrics
    with pytest.raises(ConfigError, match="registry client is needed"):
        resolve(ModelRef.parse("models:/m@champion"))


def test_runtime_choice_forced_tagged_or_the_profiles_first() -> None:
    profile = load_profile("x86-avx2")  # openvino, onnxruntime, torch
    assert select_runtime("onnx", profile) == "openvino"
    assert select_runtime("onnx", profile, tagged="onnxruntime") == "onnxruntime"
    assert select_runtime("onnx", profile, tagged="torch") == "openvino"
    assert select_runtime("onnx", profile, "onnxruntime", tagged="openvino") == "onnxruntime"
    assert select_runtime("torch", profile) == "torch"
    with pytest.raises(ConfigError, match="runtime must be listed by profile 'x86-avx2'"):
        select_runtime("onnx", profile, "torch")
    with pytest.raises(ConfigError, match="must list a runtime that reads npy models"):
        choose_runtime("npy", profile)


def test_feature_count_reads_the_model_input(onnx_model: Path, tmp_path: Path) -> None:
    import torch

    assert feature_count(onnx_model, "onnx") == 16
    bare = tmp_path / "bare.pt"
    torch.save({"state_dict": {}}, bare)
    with pytest.raises(ModelLoadError, match=r"fixed feature count.*\[None, None\]"):
        feature_count(bare, "torch")


def test_open_session_probes_the_model_once(onnx_model: Path) -> None:
    profile = load_profile("x86-avx2")
    opened = open_session(ModelSource.of_file(onnx_model), profile, "onnxruntime", threads=1)
    assert (opened.runtime, opened.features, opened.classes) == ("onnxruntime", 16, 3)
    logits = opened.session.run(np.zeros((2, 16), dtype=np.float32))
    assert logits.shape == (2, 3)
