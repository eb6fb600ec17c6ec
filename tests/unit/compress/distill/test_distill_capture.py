"""Feature capture, layer mapping and teacher caches (hamnet.compress.distill)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import tiny_hamnet
from torch import nn

from hamnet.compress.distill import (
    CaptureSpec,
    FeatureCapture,
    FeatureLoss,
    TeacherOutputs,
    attention_layers,
    available_layers,
    block_layers,
    cache_key,
    compute_teacher_outputs,
    depth_pairs,
    map_layers,
    model_outputs,
)
from hamnet.core.errors import ConfigError, DataError
from hamnet.models.hamnet import HAMNet

torch.set_num_threads(1)


def tiny(seed: int = 0, **overrides: Any) -> HAMNet:
    model: HAMNet = tiny_hamnet(seed, **overrides)
    return model


def _hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) for m in model.modules())


def test_capture_records_outputs_and_removes_hooks() -> None:
    model = tiny()
    x = torch.randn(5, 16)
    names = ["blocks.0", "blocks.1.attn.attn_probe", "norm"]
    with FeatureCapture(model, names) as capture:
        assert _hook_count(model) == 3
        logits = model(x)
    assert _hook_count(model) == 0
    assert capture.outputs["blocks.0"].shape == (5, 4, 8)
    attn = capture.outputs["blocks.1.attn.attn_probe"]
    assert attn.shape == (5, 2, 4, 4)
    torch.testing.assert_close(attn.sum(-1), torch.ones(5, 2, 4))
    head = model.head(capture.outputs["norm"].mean(dim=1))
    torch.testing.assert_close(head, logits)


def test_capture_removes_hooks_when_the_forward_fails() -> None:
    model = tiny()
    with pytest.raises(DataError), FeatureCapture(model, ["blocks.0"]):
        model(torch.zeros(2, 7))
    assert _hook_count(model) == 0


def test_unknown_layer_lists_available_ones() -> None:
    model = tiny()
    assert "blocks.1.attn.attn_probe" in available_layers(model)
    with pytest.raises(ConfigError, match=r"'blocks\.7'") as err:
        FeatureCapture(model, ["blocks.7"])
    assert "blocks.*" in str(err.value)
    assert "blocks.*.attn.attn_probe" in str(err.value)


def test_block_and_attention_layers() -> None:
    model = tiny(num_layers=3)
    assert block_layers(model) == ["blocks.0", "blocks.1", "blocks.2"]
    assert attention_layers(model)[2] == "blocks.2.attn.attn_probe"
    with pytest.raises(ConfigError, match="blocks"):
        block_layers(nn.Sequential(nn.Linear(16, 3)))


def test_depth_pairs() -> None:
    assert depth_pairs(2, 4) == [(0, 1), (1, 3)]
    assert depth_pairs(4, 2) == [(0, 0), (1, 0), (2, 1), (3, 1)]
    assert depth_pairs(3, 3) == [(0, 0), (1, 1), (2, 2)]
    assert depth_pairs(6, 2)[0] == (0, 0)


def test_depth_mapping_two_to_four_layers() -> None:
    student, teacher = tiny(), tiny(1, num_layers=4)
    pairs = map_layers(student, teacher, "depth", "feature")
    assert [(p.student, p.teacher) for p in pairs] == [
        ("blocks.0", "blocks.1"),
        ("blocks.1", "blocks.3"),
    ]
    assert pairs[0].student_shape == (4, 8)
    attn = map_layers(student, teacher, "depth", "attention")
    assert [(p.student, p.teacher) for p in attn] == [
        ("blocks.0.attn.attn_probe", "blocks.1.attn.attn_probe"),
        ("blocks.1.attn.attn_probe", "blocks.3.attn.attn_probe"),
    ]
    assert attn[0].kind == "attention"
    assert attn[0].teacher_shape == (2, 4, 4)


def test_mapping_restores_training_mode() -> None:
    student, teacher = tiny(), tiny(1)
    student.train()
    teacher.eval()
    map_layers(student, teacher)
    assert student.training
    assert not teacher.training


@pytest.mark.parametrize(
    ("spec", "side", "layer"),
    [
        ({"blocks.9": "blocks.0"}, "student", "blocks.9"),
        ({"blocks.0": "blocks.0.nope"}, "teacher", "blocks.0.nope"),
    ],
)
def test_mapping_names_unknown_layer_and_side(spec: dict[str, str], side: str, layer: str) -> None:
    with pytest.raises(ConfigError, match=rf"{side} has no layer '{layer}'"):
        map_layers(tiny(), tiny(1), spec)


def test_mapping_rejects_unprojectable_shapes() -> None:
    teacher = tiny(1, token_size=2)
    with pytest.raises(ConfigError, match=r"\[4, 8\].*\[8, 8\]"):
        map_layers(tiny(), teacher, "depth", "feature")
    with pytest.raises(ConfigError, match=r"same number of tokens.*\[2, 4, 4\].*\[2, 8, 8\]"):
        map_layers(tiny(), teacher, "depth", "attention")
    with pytest.raises(ConfigError, match="attention maps"):
        map_layers(tiny(), tiny(1), {"blocks.0": "blocks.0"}, "attention")


def test_mapping_rejects_bad_specs() -> None:
    with pytest.raises(ConfigError, match="'depth' or"):
        map_layers(tiny(), tiny(1), "width")
    with pytest.raises(ConfigError, match="kind"):
        map_layers(tiny(), tiny(1), "depth", "logits")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="same inputs"):
        map_layers(tiny(), tiny(1, input_size=32))


def test_different_widths_get_a_projection_and_heads_may_differ() -> None:
    student, teacher = tiny(), tiny(1, hidden_size=12, num_heads=3)
    loss = FeatureLoss(map_layers(student, teacher))
    assert all(isinstance(p, nn.Linear) for p in loss.projections)
    linear = loss.projections[0]
    assert isinstance(linear, nn.Linear)
    assert (linear.in_features, linear.out_features) == (8, 12)
    same = FeatureLoss(map_layers(student, tiny(1)))
    assert all(isinstance(p, nn.Identity) for p in same.projections)
    assert len(list(same.parameters())) == 0
    pairs = map_layers(student, teacher, "depth", "attention")
    assert pairs[0].student_shape == (2, 4, 4)
    assert pairs[0].teacher_shape == (3, 4, 4)


SPEC = CaptureSpec(
    features=("blocks.0", "blocks.1"),
    attentions=("blocks.1.attn.attn_probe",),
    embedding=True,
)


def _compute(model: HAMNet, x: np.ndarray, **kwargs: Any) -> TeacherOutputs:
    return compute_teacher_outputs(
        model,
        x,
        feature_layers=SPEC.features,
        attention_layers=SPEC.attentions,
        need_embedding=True,
        **kwargs,
    )


def test_teacher_cache_round_trip_equals_fresh_forward(tmp_path: Path) -> None:
    teacher = tiny(3).train()
    x = np.random.default_rng(0).standard_normal((11, 16)).astype(np.float32)
    cache = _compute(teacher, x, batch_size=4)
    assert teacher.training
    assert len(cache) == 11
    path = cache.save(tmp_path / "cache" / "teacher.npz")
    loaded = TeacherOutputs.load(path)
    assert loaded.spec == SPEC
    teacher.eval()
    with torch.no_grad():
        fresh = model_outputs(teacher, torch.from_numpy(x), SPEC)
    np.testing.assert_allclose(loaded.logits, fresh.logits.numpy(), rtol=1e-5, atol=1e-6)
    for name in SPEC.features:
        np.testing.assert_allclose(loaded.features[name], fresh.features[name].numpy(), atol=1e-5)
    for name in SPEC.attentions:
        np.testing.assert_allclose(
            loaded.attentions[name], fresh.attentions[name].numpy(), atol=1e-6
        )
    assert loaded.embedding is not None and fresh.embedding is not None
    np.testing.assert_allclose(loaded.embedding, fresh.embedding.numpy(), atol=1e-5)


def test_teacher_cache_batch_rows_match() -> None:
    x = np.random.default_rng(1).standard_normal((9, 16)).astype(np.float32)
    cache = _compute(tiny(3), x)
    index = torch.tensor([7, 0, 3])
    batch = cache.batch(index, "cpu")
    assert batch.logits.dtype == torch.float32
    np.testing.assert_array_equal(batch.logits.numpy(), cache.logits[[7, 0, 3]])
    np.testing.assert_array_equal(
        batch.attentions["blocks.1.attn.attn_probe"].numpy(),
        cache.attentions["blocks.1.attn.attn_probe"][[7, 0, 3]],
    )
    assert batch.embedding is not None and cache.embedding is not None
    np.testing.assert_array_equal(batch.embedding.numpy(), cache.embedding[[7, 0, 3]])


def test_teacher_cache_half_precision_storage() -> None:
    x = np.zeros((3, 16), dtype=np.float32)
    cache = _compute(tiny(3), x, dtype=np.float16)
    assert cache.logits.dtype == np.float32
    assert cache.features["blocks.0"].dtype == np.float16
    assert cache.batch(torch.tensor([0])).features["blocks.0"].dtype == torch.float32


def test_teacher_cache_load_rejects_other_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="do not exist"):
        TeacherOutputs.load(tmp_path / "missing.npz")
    other = tmp_path / "other.npz"
    np.savez(other, logits=np.zeros(2))
    with pytest.raises(DataError, match="not a teacher-outputs file"):
        TeacherOutputs.load(other)
    junk = tmp_path / "junk.npz"
    junk.write_text("not a zip")
    with pytest.raises(DataError, match="not a readable"):
        TeacherOutputs.load(junk)


def test_cache_key() -> None:
    key = cache_key("t" * 64, "d" * 64, feature_layers=["blocks.1", "blocks.0"])
    assert key == cache_key("t" * 64, "d" * 64, feature_layers=["blocks.0", "blocks.1"])
    assert key != cache_key("t" * 64, "d" * 64, feature_layers=["blocks.0"])
    assert key != cache_key("u" * 64, "d" * 64, feature_layers=["blocks.0", "blocks.1"])
    assert key != cache_key(
        "t" * 64, "d" * 64, feature_layers=["blocks.0", "blocks.1"], dtype="float16"
    )
    assert len(key) == 64


def test_import_hamnet_does_not_import_distill() -> None:
    code = "import sys, hamnet; print('hamnet.compress.distill' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.stdout.strip() == "False", proc.stdout + proc.stderr
