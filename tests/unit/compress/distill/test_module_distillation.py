"""distill_module: knowledge distillation between any two torch modules."""

from __future__ import annotations

import copy
import importlib.util
import itertools
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from hamnet.backends.inputs import pack_inputs
from hamnet.compress.distill.module_outputs import (
    ModuleInputs,
    auto_layer_map,
    block_class,
    primary_output,
)
from hamnet.compress.distill.modules import ModuleDistillResult, distill_module
from hamnet.core.errors import ConfigError, DataError

HAS_TRANSFORMERS = importlib.util.find_spec("transformers") is not None


def _conv_net(width: int, classes: int = 4, seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU()),
        nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU()),
        nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, classes)),
    )


def _mlp(*widths: int, seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(widths)):
        layers.append(nn.Linear(a, b))
        if i < len(widths) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class TwoInputs(nn.Module):
    """Reads two named inputs: float features and an integer category."""

    def __init__(self, features: int, hidden: int, out: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(5, hidden)
        self.proj = nn.Linear(features, hidden)
        self.head = nn.Linear(hidden, out)

    def forward(self, features: torch.Tensor, category: torch.Tensor) -> dict[str, torch.Tensor]:
        h = torch.relu(self.proj(features) + self.embed(category))
        return {"embedding": self.head(h)}


def _random(shape: tuple[int, ...], seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def test_conv_teacher_to_width_halved_student_with_labels() -> None:
    teacher, student = _conv_net(8), _conv_net(4, seed=1)
    x = _random((96, 1, 8, 8))
    with torch.no_grad():
        y = teacher.eval()(torch.from_numpy(x)).argmax(1).numpy()
    before = copy.deepcopy(teacher.state_dict())
    records: list[dict[str, Any]] = []
    result = distill_module(
        teacher, student, x, y, epochs=4, lr=1e-2, batch_size=32, progress=records.append
    )
    assert isinstance(result, ModuleDistillResult)
    assert result.objective == "logits"
    assert result.mapped_layers == {"0": "0", "1": "1"}
    assert result.loss_after < result.loss_before
    assert [r["epoch"] for r in records] == [1, 2, 3, 4]
    assert set(records[0]) == {"epoch", "loss", "val_loss", "seconds", "kept"}
    assert records[0]["val_loss"] is None
    assert result.model is student and not student.training
    for key, value in teacher.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert all(p.grad is None for p in teacher.parameters())


def test_mlp_unlabelled_learns_the_teachers_scores() -> None:
    teacher, student = _mlp(10, 32, 32, 5), _mlp(10, 16, 5, seed=3)
    x, x_val = _random((128, 10)), _random((64, 10), seed=2)
    result = distill_module(
        teacher, student, x, class_scores=True, val_x=x_val, epochs=5, lr=1e-2, batch_size=32
    )
    assert result.objective == "logits"
    # one student block (its hidden layer) spreads to the teacher's last hidden layer
    assert result.mapped_layers == {"0": "2"}
    assert result.loss_after < 0.7 * result.loss_before
    assert all(r["val_loss"] is not None for r in result.history)
    assert result.history[-1]["val_loss"] == pytest.approx(result.loss_after)


def test_unlabelled_without_class_scores_is_cosine_and_deterministic() -> None:
    x = _random((64, 10))
    runs = []
    for _ in range(2):
        teacher, student = _mlp(10, 16, 6), _mlp(10, 8, 6, seed=4)
        runs.append(distill_module(teacher, student, x, epochs=2, lr=1e-2, seed=7))
    assert runs[0].objective == "cosine"
    assert runs[0].loss_after < runs[0].loss_before
    assert runs[0].loss_after == runs[1].loss_after
    for a, b in zip(runs[0].model.parameters(), runs[1].model.parameters(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.skipif(not HAS_TRANSFORMERS, reason="transformers is not installed")
def test_bert_encoder_to_one_layer_student_with_named_int_inputs() -> None:
    from transformers import BertConfig, BertModel

    class MeanPooled(nn.Module):
        def __init__(self, layers: int) -> None:
            super().__init__()
            config = BertConfig(
                vocab_size=40, hidden_size=16, num_hidden_layers=layers, num_attention_heads=2,
                intermediate_size=32, max_position_embeddings=16, hidden_dropout_prob=0.0,
                attention_probs_dropout_prob=0.0,
            )  # fmt: skip
            self.bert = BertModel(config, add_pooling_layer=False)

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask)
            mask = attention_mask.unsqueeze(-1).to(hidden.last_hidden_state.dtype)
            return (hidden.last_hidden_state * mask).sum(1) / mask.sum(1).clamp(min=1.0)

    torch.manual_seed(0)
    teacher, student = MeanPooled(3), MeanPooled(1)
    rng = np.random.default_rng(0)
    ids = rng.integers(1, 40, size=(48, 8)).astype(np.int64)
    mask = np.ones_like(ids)
    mask[::3, 6:] = 0
    result = distill_module(
        teacher, student, {"input_ids": ids, "attention_mask": mask},
        objective="cosine", epochs=3, lr=3e-3, batch_size=16,
    )  # fmt: skip
    assert result.objective == "cosine"
    assert result.mapped_layers == {"bert.encoder.layer.0": "bert.encoder.layer.2"}
    assert result.loss_after < result.loss_before
    # the BERT output itself (a ModelOutput) is read by its last_hidden_state
    out = teacher.bert(input_ids=torch.from_numpy(ids[:2]))
    assert primary_output(out).shape == (2, 8, 16)


def test_structured_array_inputs_are_named_inputs() -> None:
    rng = np.random.default_rng(0)
    packed = pack_inputs(
        {"features": _random((80, 6)), "category": rng.integers(0, 5, size=80).astype(np.int64)}
    )
    assert packed.dtype.names == ("features", "category")
    torch.manual_seed(0)
    teacher, student = TwoInputs(6, 16, 4), TwoInputs(6, 8, 4)
    result = distill_module(teacher, student, packed, objective="mse", epochs=4, lr=1e-2)
    assert result.objective == "mse"
    assert result.loss_after < result.loss_before
    assert ModuleInputs(packed).batch(slice(0, 2))["category"].dtype == torch.int64


def test_explicit_hidden_map_and_projection_along_channels() -> None:
    teacher, student = _conv_net(8), _conv_net(4, seed=1)
    result = distill_module(
        teacher, student, _random((32, 1, 8, 8)), class_scores=True,
        hidden_map={"1.0": "1.0"}, epochs=1, lr=1e-2,
    )  # fmt: skip
    assert result.mapped_layers == {"1.0": "1.0"}
    assert (
        distill_module(
            teacher, student, _random((32, 1, 8, 8)), class_scores=True, hidden_map=None, epochs=1
        ).mapped_layers
        == {}
    )


def test_max_seconds_stops_between_epochs() -> None:
    teacher, student = _mlp(10, 6), _mlp(10, 6, seed=1)
    result = distill_module(teacher, student, _random((40, 10)), epochs=5, max_seconds=0.0)
    assert len(result.history) == 1


def test_output_forms() -> None:
    t = torch.ones(2, 3)
    assert primary_output(t) is t
    assert primary_output((t, torch.zeros(1))) is t
    assert primary_output({"hidden": torch.zeros(1), "logits": t}) is t
    assert primary_output({"last_hidden_state": t, "other": torch.zeros(1)}) is t
    assert primary_output({"pooled": t}) is t
    with pytest.raises(DataError, match="must be a tensor"):
        primary_output("text")


def test_auto_blocks_of_residual_stages() -> None:
    class Block(nn.Module):
        def __init__(self, width: int) -> None:
            super().__init__()
            self.conv = nn.Conv2d(width, width, 3, padding=1)
            self.down = nn.Sequential(nn.Conv2d(width, width, 1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.relu(self.conv(x) + self.down(x))

    class ResNetLike(nn.Module):
        def __init__(self, width: int) -> None:
            super().__init__()
            self.stem = nn.Conv2d(1, width, 3)
            self.layer1 = nn.Sequential(Block(width), Block(width))
            self.layer2 = nn.Sequential(Block(width), Block(width))
            self.fc = nn.Linear(width, 2)

    assert block_class(ResNetLike(4)) == "Sequential"
    assert auto_layer_map(ResNetLike(2), ResNetLike(4)) == {"layer1": "layer1", "layer2": "layer2"}


# --- errors, all before any training ---------------------------------------------------


def test_inputs_the_student_cannot_run_on() -> None:
    teacher = _conv_net(8)
    student = nn.Sequential(nn.Flatten(), nn.Linear(32, 4))
    with pytest.raises(DataError, match=r"student .*tensor \[8, 1, 8, 8\] float32"):
        distill_module(teacher, student, _random((8, 1, 8, 8)), epochs=1)


def test_validation_inputs_the_teacher_cannot_run_on() -> None:
    with pytest.raises(DataError, match=r"teacher .*tensor \[4, 5\] float32"):
        distill_module(_mlp(4, 3), _mlp(4, 3), _random((8, 4)), val_x=_random((4, 5)), epochs=1)


def test_named_inputs_the_model_does_not_take() -> None:
    model = TwoInputs(6, 8, 4)
    x = {"features": _random((8, 6)), "categroy": np.zeros(8, dtype=np.int64)}
    with pytest.raises(DataError, match=r"'categroy' \(did you mean 'category'\?\)"):
        distill_module(model, copy.deepcopy(model), x)


def test_labels_of_another_length() -> None:
    with pytest.raises(
        DataError, match=r"one label per sample \(16 samples\), but got shape \[15\]"
    ):
        distill_module(_mlp(4, 3), _mlp(4, 3), _random((16, 4)), np.zeros(15, dtype=np.int64))


def test_float_labels_and_labels_out_of_range() -> None:
    with pytest.raises(DataError, match="integer class indices"):
        distill_module(_mlp(4, 3), _mlp(4, 3), _random((16, 4)), np.zeros(16))
    with pytest.raises(DataError, match="below 3"):
        distill_module(_mlp(4, 3), _mlp(4, 3), _random((16, 4)), np.full(16, 3))


def test_logits_objective_needs_2d_outputs() -> None:
    with pytest.raises(ConfigError, match=r"\[batch, classes\].*\[4, 3, 5\]"):
        distill_module(nn.Linear(6, 5), nn.Linear(6, 5), _random((4, 3, 6)), objective="logits")


def test_outputs_of_different_shapes() -> None:
    with pytest.raises(ConfigError, match=r"same shape.*teacher \[8, 8\] and student \[8, 4\]"):
        distill_module(nn.Linear(6, 8), nn.Linear(6, 4), _random((8, 6)), objective="cosine")


def test_empty_data() -> None:
    with pytest.raises(DataError, match="at least one sample, but got 0"):
        distill_module(_mlp(4, 3), _mlp(4, 3), np.zeros((0, 4), dtype=np.float32))


def test_unknown_layers_and_options() -> None:
    teacher, student = _conv_net(8), _conv_net(4)
    with pytest.raises(ConfigError, match=r"student, but got '1\.00' \(did you mean '1\.0'\?\)"):
        distill_module(teacher, student, _random((8, 1, 8, 8)), hidden_map={"1.00": "1.0"})
    with pytest.raises(ConfigError, match=r"teacher, but got '2\.9'"):
        distill_module(teacher, student, _random((8, 1, 8, 8)), hidden_map={"1.0": "2.9"})
    with pytest.raises(ConfigError, match=r"but got 'cosin' \(did you mean 'cosine'\?\)"):
        distill_module(teacher, student, _random((8, 1, 8, 8)), objective="cosin")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="epochs must be a positive integer, but got 0"):
        distill_module(teacher, student, _random((8, 1, 8, 8)), epochs=0)


def test_student_with_nothing_to_train() -> None:
    student = _mlp(4, 3)
    student.requires_grad_(False)
    with pytest.raises(ConfigError, match="trainable parameters, but Sequential has none"):
        distill_module(_mlp(4, 3), student, _random((8, 4)))


def test_mapped_layer_that_does_not_run() -> None:
    class WithSpare(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.used = nn.Linear(4, 3)
            self.spare = nn.Linear(4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.used(x)

    with pytest.raises(ConfigError, match="teacher layer 'spare' did not"):
        distill_module(WithSpare(), WithSpare(), _random((8, 4)), hidden_map={"used": "spare"})


def test_module_inputs_forms() -> None:
    assert ModuleInputs(np.zeros((3, 2))).batch(slice(0, 2)).dtype == torch.float32  # type: ignore[union-attr]
    tensor = torch.zeros(3, 2, dtype=torch.float64)
    assert ModuleInputs(tensor).batch(slice(0, 1)).dtype == torch.float64  # type: ignore[union-attr]
    named = ModuleInputs({"ids": torch.ones(4, 5, dtype=torch.int32), "x": np.ones((4, 1))})
    assert named.names == ("ids", "x")
    assert named.describe() == "{ids: [4, 5] int32, x: [4, 1] float32}"
    with pytest.raises(DataError, match=r"same number of samples, but got \{'a': 4, 'b': 3\}"):
        ModuleInputs({"a": np.ones((4, 1)), "b": np.ones((3, 1))})
    with pytest.raises(DataError, match="empty mapping"):
        ModuleInputs({})
