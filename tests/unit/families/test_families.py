"""Model-family adapters: found by the registry, detected on tiny models, capabilities."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import export_tiny_onnx, tiny_hamnet
from torch import nn

from hamnet.core import registry
from hamnet.core.errors import ConfigError
from hamnet.families.base import (
    ModelFamily,
    ModelSource,
    detect_family,
    families,
    get_family,
    graph_facts,
)
from hamnet.models import save_checkpoint

FAMILIES = ["hamnet", "transformer", "conv", "generic"]


class TinyConv(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.head = nn.Linear(4 * 8 * 8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.conv(x)).flatten(1))


class TinyAttention(nn.Module):
    """One softmax attention over 4 tokens of 8 features: MatMul + Softmax in the graph."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv = nn.Linear(8, 24)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        return torch.softmax(q @ k.transpose(1, 2), dim=-1) @ v


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3))


def _export(module: nn.Module, example: torch.Tensor, path: Path) -> Path:
    return get_family("generic").export_onnx(module.eval(), example, path)


@pytest.mark.parametrize("name", FAMILIES)
def test_every_family_is_a_registered_plugin(name: str) -> None:
    assert name in registry.names("family")
    family = get_family(name)
    assert issubclass(family, ModelFamily) and family.name == name and family.kind == "family"
    assert family.parse_options({}) is not None
    assert family.prunable_groups and family.description
    assert not family.can_prune or family.prune_reason


def test_listing_families_imports_nothing_heavy() -> None:
    code = (
        "import sys; from hamnet.families.base import families; families(); "
        "print(sorted(m for m in ('torch', 'onnx', 'onnxruntime') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_detection_order_puts_generic_last() -> None:
    order = [f.name for f in families()]
    assert order[0] == "hamnet" and order[-1] == "generic"


def test_hamnet_instance_and_checkpoint(tmp_path: Path) -> None:
    model = tiny_hamnet()
    assert detect_family(ModelSource(module=model)).name == "hamnet"
    path = save_checkpoint(model, tmp_path / "tiny.pt")
    family = detect_family(ModelSource(path=path))
    assert family.name == "hamnet" and family.loads_checkpoint and family.can_distill
    assert family.load(path).config.input_size == 16
    assert family.predict(path, torch.zeros(4, 16).numpy()).shape == (4, 3)
    assert family.fits_builtin_data(path) is False
    out = family.export_onnx(model, None, tmp_path / "tiny.onnx")
    assert graph_facts(out).inputs == {"input": [None, 16]}


def test_conv_module_and_its_onnx(tmp_path: Path) -> None:
    model = TinyConv()
    assert detect_family(ModelSource(module=model)).name == "conv"
    path = _export(model, torch.zeros(1, 1, 8, 8), tmp_path / "conv.onnx")
    assert detect_family(ModelSource(path=path)).name == "conv"
    assert detect_family(ModelSource(module=model, path=path)).name == "conv"
    # A conv net given as a torch module is pruned; as an ONNX file only once converted.
    assert get_family("conv").can_prune
    assert "onnx2torch" in get_family("conv").why_not_prunable


def test_mlp_module_and_onnx_file_are_generic(tmp_path: Path) -> None:
    assert detect_family(ModelSource(module=_mlp())).name == "generic"
    path = export_tiny_onnx(tmp_path / "mlp.onnx")
    family = detect_family(ModelSource(path=path))
    assert family.name == "generic" and not family.loads_checkpoint
    assert family.predict(path, torch.zeros(5, 16).numpy()).shape == (5, 3)
    assert family.load(path).graph.input[0].name == "x"


def test_attention_graph_is_a_transformer(tmp_path: Path) -> None:
    path = _export(TinyAttention(), torch.zeros(1, 4, 8), tmp_path / "attention.onnx")
    assert {"MatMul", "Softmax"} <= graph_facts(path).op_types
    family = detect_family(ModelSource(path=path))
    assert family.name == "transformer"
    assert family.pruner == "hamnet.compress.pruning.hf:prune_bert"
    assert "ort_fused_dynamic_int8" in family.extra_quantizers


def test_hugging_face_module_is_a_transformer() -> None:
    class Config:
        num_attention_heads = 2

    model = _mlp()
    model.config = Config()  # type: ignore[assignment]
    assert detect_family(ModelSource(module=model)).name == "transformer"


@pytest.mark.parametrize(
    ("name", "runtimes", "methods"),
    [
        ("transformer", ["onnxruntime"], ["ort_fused_dynamic_int8", "ort_dynamic_int8"]),
        ("transformer", ["openvino"], []),
        ("conv", ["onnxruntime", "openvino"], ["nncf_int8"]),
        ("conv", ["onnxruntime"], ["ort_static_int8"]),
        ("hamnet", ["onnxruntime", "openvino"], []),
        ("generic", ["onnxruntime", "openvino"], []),
    ],
)
def test_preferred_quantizers(name: str, runtimes: list[str], methods: list[str]) -> None:
    family = get_family(name)
    choice = family.preferred_quantizers(["int8"], runtimes, "cpu")
    assert choice.methods == methods and (choice.reason is not None) == bool(methods)
    assert family.preferred_quantizers(["fp16"], runtimes, "cpu").methods == []


def test_unknown_family_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"family must be one of .* but got 'cnn'"):
        get_family("cnn")


def test_outside_family_plugins_are_detected_first_by_order() -> None:
    registry.register("family", "always", f"{__name__}:AlwaysFamily")
    try:
        assert detect_family(ModelSource(module=_mlp())).name == "always"
    finally:
        registry.unregister("family", "always")
    assert detect_family(ModelSource(module=_mlp())).name == "generic"


class AlwaysFamily(ModelFamily):
    name = "always"
    detect_order = 1

    @classmethod
    def detect(cls, source: ModelSource) -> bool:
        return True
