"""Contract of ``prune_module``: every model family x criterion x allocation.

Each pruned model keeps its output shape, loses parameters and its plan replays
exactly (JSON round trip -> apply_module_plan -> strict state_dict load). The ONNX
export (the TorchScript exporter) is checked against PyTorch in ONNX Runtime once per
family and criterion (uniform allocation) and once per family and allocation (l1):
the exported graph depends on the pruned shapes, not on how the units were chosen,
and exporting all 80 combinations would not fit the unit tier's time.
Criteria and allocations are read from the registry (those that ``supports_modules``),
so a new plugin joins this test by itself.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import module_onnx_outputs
from torch import nn

from hamnet.compress.pruning.allocation import allocation_class
from hamnet.compress.pruning.importance import criterion_class
from hamnet.compress.pruning.modules import prune_module
from hamnet.core import registry
from hamnet.models.replay import ModulePlan, apply_module_plan, call_module, primary_output

pytestmark = [
    pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning"),
    pytest.mark.filterwarnings("ignore:Exporting aten.index operator:UserWarning"),
]

CRITERIA = [n for n in registry.names("criterion") if criterion_class(n).supports_modules]
ALLOCATIONS = [n for n in registry.names("allocation") if allocation_class(n).supports_modules]
OPTIONS: dict[str, dict[str, Any]] = {"rspar": {"episodes": 2}}
HAS_TRANSFORMERS = importlib.util.find_spec("transformers") is not None


class ConvNet(nn.Module):
    """Conv2d + BN + ReLU with a residual add, pooled into a classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv = nn.Conv2d(8, 8, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(8)
        self.expand = nn.Conv2d(8, 16, 3, padding=1, stride=2)
        self.fc = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn1(self.stem(x)))
        h = h + torch.relu(self.bn2(self.conv(h)))
        h = torch.relu(self.expand(h))
        return self.fc(h.mean(dim=(2, 3)))


class AttentionNet(nn.Module):
    """Linear embedding + learned positions, one nn.TransformerEncoderLayer, pooled head."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(6, 16)
        self.pos = nn.Parameter(torch.randn(1, 5, 16) * 0.1)
        self.encoder = nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0, batch_first=True)
        self.head = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.embed(x) + self.pos).mean(dim=1))


class MeanPooled(nn.Module):
    """A sentence-embedding wrapper: a Hugging Face encoder under ``.model``, mean pooling."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)


def _conv() -> tuple[nn.Module, Any, list[Any]]:
    x = torch.randn(4, 3, 8, 8)
    return ConvNet(), x[:2], [(x[:2], torch.tensor([0, 1])), (x[2:], torch.tensor([2, 3]))]


def _mlp() -> tuple[nn.Module, Any, list[Any]]:
    model = nn.Sequential(
        nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 24), nn.GELU(), nn.Linear(24, 4)
    )
    x = torch.randn(8, 10)
    return model, x[:2], [(x[:4], torch.randn(4, 4)), (x[4:], None)]


def _attention() -> tuple[nn.Module, Any, list[Any]]:
    x = torch.randn(4, 5, 6)
    return AttentionNet(), x[:2], [(x[:2], torch.tensor([0, 2])), (x[2:], None)]


def _bert() -> tuple[nn.Module, Any, list[Any]]:
    from transformers import BertConfig, BertModel

    config = BertConfig(
        vocab_size=60, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=16, attn_implementation="eager",
    )  # fmt: skip
    ids = torch.randint(0, 60, (4, 8), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(4, 8, dtype=torch.long)
    mask[1, 6:] = 0
    inputs = {"input_ids": ids[:2], "attention_mask": mask[:2]}
    calib = [({"input_ids": ids[2:], "attention_mask": mask[2:]}, None), (inputs, None)]
    return MeanPooled(BertModel(config)), inputs, calib


FAMILIES: dict[str, Callable[[], tuple[nn.Module, Any, list[Any]]]] = {
    "conv": _conv,
    "mlp": _mlp,
    "attention": _attention,
    "bert": _bert,
}


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny models on a shared 2-core machine: intra-op threads only add contention."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def families() -> dict[str, tuple[nn.Module, Any, list[Any]]]:
    built = {}
    for name, build in FAMILIES.items():
        if name == "bert" and not HAS_TRANSFORMERS:
            continue
        torch.manual_seed(0)
        model, example, calibration = build()
        built[name] = (model.eval(), example, calibration)
    return built


def _run(model: nn.Module, inputs: Any) -> torch.Tensor:
    with torch.no_grad():
        return primary_output(call_module(model, inputs))


@pytest.mark.parametrize("allocation", ALLOCATIONS)
@pytest.mark.parametrize("criterion", CRITERIA)
@pytest.mark.parametrize("family", list(FAMILIES))
def test_prune_module_contract(
    families: dict[str, tuple[nn.Module, Any, list[Any]]],
    family: str,
    criterion: str,
    allocation: str,
    tmp_path: Path,
) -> None:
    if family not in families:
        pytest.skip("transformers is not importable")
    model, example, calibration = families[family]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    expected = _run(model, example)

    result = prune_module(
        model, example, ratio=0.5, criterion=criterion, allocation=allocation,
        calibration=calibration, seed=1, allocation_options=OPTIONS.get(allocation),
    )  # fmt: skip

    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    got = _run(result.model, example)
    assert got.shape == expected.shape
    assert torch.isfinite(got).all()
    assert result.params_after < result.params_before == sum(p.numel() for p in model.parameters())
    assert result.params_after == sum(p.numel() for p in result.model.parameters())
    assert sum(g.removed for g in result.plan.groups) > 0
    assert len(result.layer_ratios) == len(result.groups) == len(result.plan.groups)

    if allocation == "uniform" or criterion == "l1":  # export once per plugin and family
        onnx_out = module_onnx_outputs(result.model, example, tmp_path / "pruned.onnx")
        np.testing.assert_allclose(onnx_out, got.numpy(), atol=1e-4, rtol=1e-4)

    plan = ModulePlan.load(result.plan.save(tmp_path / "plan.json"))
    assert plan == result.plan
    replayed = apply_module_plan(model, plan, example)
    replayed.load_state_dict(result.model.state_dict(), strict=True)
    assert torch.equal(_run(replayed, example), got)
