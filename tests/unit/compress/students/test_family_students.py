"""Contract of ``shrink_module``: students of the user's own architecture.

Four families (a residual conv net, a 4-layer random Hugging Face BERT built from a
``BertConfig``, an MLP, an ``nn.TransformerEncoder``) x (width, depth) pairs: the
student keeps the output shape, has fewer parameters, exports to ONNX with the same
outputs, its plan replays exactly (JSON round trip, depth then width) and it saves and
loads as a module artifact; KD into a depth-halved student lowers the distillation
loss; and the errors that come before any training.
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

from hamnet.compress.distill.modules import distill_module
from hamnet.compress.students.shrink import (
    depth_multipliers,
    find_block_stacks,
    kept_positions,
    shrink_module,
)
from hamnet.core.errors import ConfigError
from hamnet.models.replay import ModulePlan, apply_module_plan, call_module, primary_output
from hamnet.models.sources import (
    InputSpec,
    ModuleSource,
    load_module_artifact,
    save_module_artifact,
)

pytestmark = [
    pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]

HAS_TRANSFORMERS = importlib.util.find_spec("transformers") is not None
PAIRS = [(1.0, 0.5), (0.5, 0.5), (0.5, 1.0)]


class Block(nn.Module):
    """A residual block; a 1x1 shortcut when it changes the width or the resolution."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1)
        self.bn2 = nn.BatchNorm2d(cout)
        changes = cin != cout or stride != 1
        self.shortcut: nn.Module = nn.Conv2d(cin, cout, 1, stride) if changes else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        body = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        return torch.relu(self.shortcut(x) + body)


class ResNet(nn.Module):
    """Two stages: three equal blocks, then a down-sampling block and an equal one."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.layer1 = nn.Sequential(Block(8, 8), Block(8, 8), Block(8, 8))
        self.layer2 = nn.Sequential(Block(8, 16, 2), Block(16, 16))
        self.fc = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.layer2(self.layer1(torch.relu(self.stem(x))))
        return self.fc(h.mean(dim=(2, 3)))


class Encoder(nn.Module):
    """Linear embedding, a 4-layer nn.TransformerEncoder, mean-pooled head."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(6, 16)
        layer = nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 4, enable_nested_tensor=False)
        self.head = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.embed(x)).mean(dim=1))


class MeanPooled(nn.Module):
    """A sentence encoder: a Hugging Face BERT under ``.model``, mean pooling."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)


def _mlp() -> tuple[nn.Module, Any]:
    layers: list[nn.Module] = [nn.Linear(10, 32), nn.ReLU()]
    for _ in range(3):
        layers += [nn.Linear(32, 32), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(32, 4)), torch.randn(2, 10)


def _bert() -> tuple[nn.Module, Any]:
    from transformers import BertConfig, BertModel

    config = BertConfig(
        vocab_size=60, hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=16, attn_implementation="eager",
    )  # fmt: skip
    ids = torch.randint(1, 60, (2, 8), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(2, 8, dtype=torch.long)
    mask[1, 6:] = 0
    return MeanPooled(BertModel(config)), {"input_ids": ids, "attention_mask": mask}


FAMILIES: dict[str, Callable[[], tuple[nn.Module, Any]]] = {
    "resnet": lambda: (ResNet(), torch.randn(2, 3, 8, 8)),
    "bert": _bert,
    "mlp": _mlp,
    "transformer_encoder": lambda: (Encoder(), torch.randn(2, 5, 6)),
}


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def families() -> dict[str, tuple[nn.Module, Any]]:
    built = {}
    for name, build in FAMILIES.items():
        if name == "bert" and not HAS_TRANSFORMERS:
            continue
        torch.manual_seed(0)
        model, example = build()
        built[name] = (model.eval(), example)
    return built


def _run(model: nn.Module, inputs: Any) -> torch.Tensor:
    with torch.no_grad():
        return primary_output(call_module(model.eval(), inputs))


@pytest.mark.parametrize(("width", "depth"), PAIRS)
@pytest.mark.parametrize("family", list(FAMILIES))
def test_shrink_module_contract(
    families: dict[str, tuple[nn.Module, Any]],
    family: str,
    width: float,
    depth: float,
    tmp_path: Path,
) -> None:
    if family not in families:
        pytest.skip("transformers is not importable")
    model, example = families[family]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    expected = _run(model, example)

    result = shrink_module(model, example, width=width, depth=depth)

    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    got = _run(result.model, example)
    assert got.shape == expected.shape and torch.isfinite(got).all()
    assert result.params_after < result.params_before == sum(p.numel() for p in model.parameters())
    assert result.params_after == sum(p.numel() for p in result.model.parameters())
    if depth < 1:
        assert result.plan.blocks and result.layer_map
        student_blocks = {n for n, _ in result.model.named_modules()}
        assert set(result.layer_map) <= student_blocks
        assert set(result.layer_map.values()) <= {n for n, _ in model.named_modules()}
    else:
        assert not result.plan.blocks
    if width < 1:
        assert result.plan.history

    onnx_out = module_onnx_outputs(result.model, example, tmp_path / "student.onnx")
    np.testing.assert_allclose(onnx_out, got.numpy(), atol=1e-4, rtol=1e-4)

    plan = ModulePlan.load(result.plan.save(tmp_path / "plan.json"))
    assert plan == result.plan
    replayed = apply_module_plan(model, plan, example)
    replayed.load_state_dict(result.model.state_dict(), strict=True)
    assert torch.equal(_run(replayed, example), got)

    root = save_module_artifact(tmp_path / "root", module=model, inputs=InputSpec.of(example))
    source = ModuleSource(kind="pickle", path=str(root.parent / "root.pt"))
    child = save_module_artifact(
        tmp_path / "student", source=source, inputs=InputSpec.of(example),
        module=result.model, plan=result.plan,
    )  # fmt: skip
    loaded = load_module_artifact(child, trust_checkpoint=True)
    assert torch.equal(_run(loaded, example), got)


def test_depth_keeps_evenly_spaced_blocks_and_updates_counts(
    families: dict[str, tuple[nn.Module, Any]],
) -> None:
    assert kept_positions(4, 0.5) == [0, 3]
    assert kept_positions(12, 0.5) == [0, 2, 4, 7, 9, 11]
    assert kept_positions(3, 0.25) == [0]
    resnet, x = families["resnet"]
    stacks = find_block_stacks(resnet, x)
    assert [(s.container, s.size, s.entry) for s in stacks] == [
        ("layer1", 3, False),
        ("layer2", 2, True),
    ]
    mlp, x = families["mlp"]
    (stack,) = find_block_stacks(mlp, x)
    assert (stack.period, stack.size, stack.entry) == (2, 4, True)
    assert depth_multipliers(mlp, x) == [0.25, 0.5, 0.75, 1.0]
    encoder, x = families["transformer_encoder"]
    result = shrink_module(encoder, x, depth=0.5)
    assert result.model.encoder.num_layers == len(result.model.encoder.layers) == 2
    assert result.layer_map == {"encoder.layers.0": "encoder.layers.0",
                                "encoder.layers.1": "encoder.layers.3"}  # fmt: skip
    if "bert" in families:
        bert, x = families["bert"]
        student = shrink_module(bert, x, depth=0.5).model
        assert student.model.config.num_hidden_layers == 2
        assert len(student.model.encoder.layer) == 2
        assert bert.model.config.num_hidden_layers == 4  # the teacher is untouched


def test_kd_into_a_depth_halved_student_lowers_the_distillation_loss(
    families: dict[str, tuple[nn.Module, Any]],
) -> None:
    torch.manual_seed(0)
    encoder, _ = families["transformer_encoder"]
    x = torch.randn(96, 5, 6)
    result = shrink_module(encoder, x[:2], depth=0.5)
    distilled = distill_module(
        encoder, result.model, x[:64], objective="mse", hidden_map=result.layer_map,
        epochs=4, lr=3e-3, batch_size=16, val_x=x[64:], seed=0,
    )  # fmt: skip
    assert distilled.mapped_layers == result.layer_map
    assert distilled.loss_after < distilled.loss_before


def test_clear_errors_before_any_training(families: dict[str, tuple[nn.Module, Any]]) -> None:
    flat = nn.Sequential(nn.Linear(10, 8), nn.ReLU(), nn.Linear(8, 3))
    x = torch.randn(2, 10)
    with pytest.raises(ConfigError, match="no repeated shape-preserving blocks in Sequential"):
        shrink_module(flat, x, depth=0.5)
    with pytest.raises(ConfigError, match=r"leaves group .* empty"):
        shrink_module(flat, x, width=0.01)
    with pytest.raises(ConfigError, match="width or depth must be below 1"):
        shrink_module(flat, x)
    with pytest.raises(ConfigError, match=r"width must be a multiplier in \(0, 1\], but got 0"):
        shrink_module(flat, x, width=0)
    resnet, x = families["resnet"]
    with pytest.raises(ConfigError, match="must drop at least one block"):
        shrink_module(resnet, x, depth=0.9)
    with pytest.raises(ConfigError, match="example_inputs must run"):
        shrink_module(resnet, torch.randn(2, 4, 8, 8), depth=0.5)


def test_a_pruned_student_replays_from_the_root(families: dict[str, tuple[nn.Module, Any]]) -> None:
    from hamnet.compress.pruning.modules import prune_module

    model, example = families["resnet"]
    student = shrink_module(model, example, depth=0.5)
    pruned = prune_module(student.model, example, ratio=0.5)
    plan = student.plan.followed_by(pruned.plan)
    assert plan.blocks == student.plan.blocks and plan.params_before == student.params_before
    replayed = apply_module_plan(model, ModulePlan.from_json(plan.to_json()), example)
    replayed.load_state_dict(pruned.model.state_dict(), strict=True)
    assert torch.equal(_run(replayed, example), _run(pruned.model, example))
    with pytest.raises(ConfigError, match="must not drop blocks itself"):
        pruned.plan.followed_by(student.plan)
