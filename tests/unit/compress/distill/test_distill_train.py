"""distill_model: KD through the foundation's trainer, with cached teacher outputs."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import digits_subset

from hamnet.compress.distill.train import array_digest, distill_model, model_digest
from hamnet.core.config import TrainStageConfig
from hamnet.core.errors import ConfigError, DataError
from hamnet.models import HAMNet, HAMNetConfig
from hamnet.training.data import Dataset
from hamnet.training.trainer import evaluate_accuracy, train_model

CFG = TrainStageConfig(epochs=2, patience=2, warmup_epochs=0, batch_size=64)


@pytest.fixture(scope="module")
def data() -> Dataset:
    subset: Dataset = digits_subset()
    return subset


def _hamnet(data: Dataset, hidden: int, seed: int) -> HAMNet:
    torch.manual_seed(seed)
    return HAMNet(
        HAMNetConfig(
            input_size=data.num_features, num_classes=data.num_classes, hidden_size=hidden,
            num_layers=2, num_heads=2, token_size=8, dropout_rate=0.0,
        )
    )  # fmt: skip


@pytest.fixture(scope="module")
def teacher(data: Dataset) -> HAMNet:
    model = _hamnet(data, 32, 0)
    train_model(model, data, TrainStageConfig(epochs=6, batch_size=64), progress=False)
    return model


def test_teacher_outputs_are_cached_once_and_reused(
    data: Dataset, teacher: HAMNet, tmp_path: Path
) -> None:
    before = copy.deepcopy(teacher.state_dict())
    teacher.train()  # its mode must come back
    spec = [{"method": "soft"}, {"method": "feature", "layers": "depth"}]
    first = distill_model(
        _hamnet(data, 16, 1), [teacher], data, spec, CFG, cache_dir=tmp_path, progress=False
    )
    assert first.methods == ["soft", "feature"]
    assert len(first.teacher_cache_files) == 1 and first.teacher_cache_files[0].is_file()
    assert first.teacher_cache_hits == 0
    assert {"soft", "feature", "total"} <= set(first.last_terms)
    second = distill_model(
        _hamnet(data, 16, 2), [teacher], data, spec, CFG, cache_dir=tmp_path, progress=False
    )
    assert second.teacher_cache_files == first.teacher_cache_files
    assert second.teacher_cache_hits == 1
    # The teacher is never trained or left in another mode.
    assert teacher.training
    teacher.eval()
    for name, value in teacher.state_dict().items():
        torch.testing.assert_close(value, before[name])
    assert all(p.requires_grad for p in teacher.parameters())


def test_kd_student_learns(data: Dataset, teacher: HAMNet) -> None:
    student = _hamnet(data, 16, 3)
    chance = evaluate_accuracy(student, data.x_val, data.y_val)
    cfg = CFG.model_copy(update={"epochs": 10, "patience": 10, "learning_rate": 5e-3})
    distill_model(student, [teacher], data, [{"method": "soft"}], cfg, progress=False)
    assert evaluate_accuracy(student, data.x_val, data.y_val) > chance + 0.2


def test_mixup_runs_the_teacher_live(data: Dataset, teacher: HAMNet, tmp_path: Path) -> None:
    cfg = CFG.model_copy(update={"augment": "mixup"})
    result = distill_model(
        _hamnet(data, 16, 4), [teacher], data, [{"method": "soft"}], cfg, cache_dir=tmp_path,
        progress=False,
    )  # fmt: skip
    assert result.teacher_cache_files == [] and not list(tmp_path.iterdir())


def test_multi_teacher_and_self_distillation_end_to_end(data: Dataset, teacher: HAMNet) -> None:
    second = _hamnet(data, 24, 5)
    train_model(second, data, TrainStageConfig(epochs=3, batch_size=64), progress=False)
    spec = [{"method": "multi_teacher", "weighting": "confidence"}, {"method": "relational"}]
    multi = distill_model(_hamnet(data, 16, 6), [teacher, second], data, spec, CFG, progress=False)
    assert multi.train.epochs_run == 2 and np.isfinite(multi.last_terms["total"])
    deep = distill_model(
        _hamnet(data, 16, 7), [], data, [{"method": "self", "mode": "deep"}], CFG, progress=False
    )
    assert np.isfinite(deep.last_terms["total"])
    snapshot_teacher = _hamnet(data, 16, 8)
    train_model(snapshot_teacher, data, CFG, progress=False)
    snapshot = distill_model(
        copy.deepcopy(snapshot_teacher), [snapshot_teacher], data,
        [{"method": "self", "mode": "snapshot"}], CFG, progress=False,
    )  # fmt: skip
    assert np.isfinite(snapshot.last_terms["total"])


def test_bad_input_is_a_clear_error(data: Dataset, teacher: HAMNet) -> None:
    with pytest.raises(ConfigError, match="one teacher id per teacher"):
        distill_model(
            _hamnet(data, 16, 9), [teacher], data, [{"method": "soft"}], CFG,
            teacher_ids=["a", "b"], progress=False,
        )  # fmt: skip
    with pytest.raises(ConfigError, match="needs a teacher"):
        distill_model(_hamnet(data, 16, 9), [], data, [{"method": "soft"}], CFG, progress=False)


def test_digests_are_stable(data: Dataset, teacher: HAMNet) -> None:
    assert model_digest(teacher) == model_digest(copy.deepcopy(teacher))
    assert model_digest(teacher) != model_digest(_hamnet(data, 32, 11))
    assert array_digest(data.x_train) == array_digest(data.x_train.copy())
    assert array_digest(data.x_train) != array_digest(data.x_val)


def test_labelled_cross_entropy_skips_unlabelled_samples() -> None:
    from hamnet.training.trainer import UNLABELLED, labelled_cross_entropy

    logits = torch.randn(4, 3, requires_grad=True)
    y = torch.tensor([0, UNLABELLED, 2, UNLABELLED])
    expected = torch.nn.functional.cross_entropy(logits[[0, 2]], y[[0, 2]])
    assert torch.allclose(labelled_cross_entropy(logits, y), expected)
    none = labelled_cross_entropy(logits, torch.full((4,), UNLABELLED))
    none.backward()
    assert none.item() == 0.0 and logits.grad is not None and not logits.grad.any()


def test_confidence_weighting_falls_back_to_entropy_without_a_label() -> None:
    from hamnet.compress.distill.kd import MultiTeacherLoss
    from hamnet.compress.distill.outputs import DistillOutputs

    sharp = DistillOutputs(logits=torch.tensor([[4.0, 0.0, 0.0], [4.0, 0.0, 0.0]]))
    flat = DistillOutputs(logits=torch.tensor([[0.0, 0.1, 0.0], [0.0, 0.1, 0.0]]))
    loss = MultiTeacherLoss(weighting="confidence")
    w = loss.teacher_weights([sharp, flat], torch.tensor([1, -1]))
    assert w[1, 0] > w[0, 0]  # labelled: the teacher that gives class 1 more wins
    assert w[0, 1] > w[1, 1]  # unlabelled: the sharper teacher wins


def test_a_transfer_set_feeds_the_kd_terms_only(data: Dataset, teacher: HAMNet) -> None:
    from hamnet.compress.distill.train import with_transfer_set

    extra = data.x_val[:64]
    grown = with_transfer_set(data, extra)
    assert len(grown.x_train) == len(data.x_train) + 64
    assert (grown.y_train[-64:] == -1).all() and (grown.y_train[:-64] == data.y_train).all()
    student = _hamnet(data, 16, 3)
    result = distill_model(
        student, [teacher], data, [{"method": "soft"}], CFG, unlabelled_x=extra, progress=False
    )
    assert result.train.epochs_run == CFG.epochs
    with pytest.raises(DataError, match=r"must hold at least one sample of shape \[64\]"):
        with_transfer_set(data, np.zeros((3, 5), dtype=np.float32))


def test_load_transfer_set_formats_preprocessing_and_errors(tmp_path: Path) -> None:
    import pandas as pd

    from hamnet.compress.distill.transfer import load_transfer_set

    raw = np.arange(12, dtype=np.float32).reshape(3, 4)
    labelled = Dataset(
        x_train=np.zeros((2, 4), np.float32), y_train=np.zeros(2, np.int64),
        x_val=np.zeros((2, 4), np.float32), y_val=np.zeros(2, np.int64),
        x_test=np.zeros((2, 4), np.float32), y_test=np.zeros(2, np.int64),
        num_features=4, num_classes=1, class_names=["a"], source="toy",
        feature_mean=np.ones(4, np.float32), feature_std=np.full(4, 2.0, np.float32),
    )  # fmt: skip
    np.savez(tmp_path / "u.npz", x=raw)
    assert np.allclose(load_transfer_set(tmp_path / "u.npz", labelled), (raw - 1) / 2)
    frame = pd.DataFrame(raw, columns=list("abcd")).assign(label=[0, 1, 0])
    frame.to_csv(tmp_path / "u.csv", index=False)
    assert np.allclose(load_transfer_set(tmp_path / "u.csv", labelled), (raw - 1) / 2)
    with pytest.raises(DataError, match="does not exist"):
        load_transfer_set(tmp_path / "missing.npz", labelled)
    np.savez(tmp_path / "wide.npz", x=np.zeros((3, 5)))
    with pytest.raises(DataError, match=r"samples of shape \[4\].*got shape \[3, 5\]"):
        load_transfer_set(tmp_path / "wide.npz", labelled)
    bad = raw.copy()
    bad[1, 2] = np.nan
    np.savez(tmp_path / "nan.npz", x=bad)
    with pytest.raises(DataError, match=r"must be finite, but 1 sample"):
        load_transfer_set(tmp_path / "nan.npz", labelled)
    (tmp_path / "u.txt").write_text("1,2")
    with pytest.raises(DataError, match="must be one of"):
        load_transfer_set(tmp_path / "u.txt", labelled)


def test_spec_methods_reads_one_term_or_many() -> None:
    from hamnet.compress.distill.train import spec_methods

    assert spec_methods({"method": "soft", "temperature": 4.0}) == ["soft"]
    assert spec_methods([{"method": "soft"}, {"method": "feature"}]) == ["soft", "feature"]
    assert spec_methods([]) == []


def test_the_loss_hook_gives_the_same_loss_from_caches_and_live(
    data: Dataset, teacher: HAMNet
) -> None:
    from hamnet.compress.distill.kd import build_distill_loss
    from hamnet.compress.distill.teacher_cache import compute_teacher_outputs
    from hamnet.compress.distill.train import _DistillLossFn
    from hamnet.training.trainer import Batch

    student = _hamnet(data, 16, 3).eval()
    teacher.eval()
    spec = [{"method": "soft"}, {"method": "feature", "layers": "depth"}]
    plan = build_distill_loss(spec, student=student, teachers=[teacher], ce_weight=0.0)
    x = data.x_train[:48]
    teacher_spec = plan.teacher_spec(0)
    cache = compute_teacher_outputs(
        teacher, x, feature_layers=teacher_spec.features,
        attention_layers=teacher_spec.attentions, need_embedding=teacher_spec.embedding,
        device=torch.device("cpu"),
    )  # fmt: skip
    index = torch.arange(8, 40)
    batch = Batch(
        x=torch.as_tensor(x[8:40]), y=torch.as_tensor(data.y_train[8:40]).long(), index=index
    )
    common = {"ce_weight": 0.5, "label_smoothing": 0.0}
    cached = _DistillLossFn(plan, [teacher], [cache], live=False, **common)(student, batch)
    live = _DistillLossFn(plan, [teacher], [], live=True, **common)(student, batch)
    torch.testing.assert_close(cached, live, rtol=1e-4, atol=1e-5)
    kd_only = _DistillLossFn(plan, [teacher], [cache], live=False, ce_weight=0.0,
                             label_smoothing=0.0)(student, batch)  # fmt: skip
    assert kd_only.item() < cached.item()
